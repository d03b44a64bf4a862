r"""Export a trained LIF-SNN (``-attention no``) to NIR, the Neuromorphic Intermediate Representation.

    python3 -m utils.analysis.export_nir runs/<run>/best.pth --out model.nir
    python3 -m utils.analysis.export_nir runs/<run> --out model.nir --samples 8 --check snntorch

The graph holds, per layer, the convolution or linear layer with its BatchNorm folded in
(evaluation statistics), the pooling, the flatten and each spiking layer as a ``nir.LIF`` whose
Euler step of length ``dt`` is the project's update bit for bit in float32 (docs/nir.md has the
equations and what each importer needs). The graph's metadata holds ``dt``, the time steps ``T``,
the readout (mean over T of the output spikes; arch B/C also average groups of 10 outputs) and
which importers run the graph exactly.

Exported: arch A and D (LIF), B, C and SEW-ResNet-18 (spikingjelly PLIF / LIF). Refused with one
line: a network with ASA (its mask reads the whole time window and takes a data-dependent top-k:
not causal, and no NIR primitive expresses it). ``--samples N`` also writes
``<out>.samples.npz`` (format in docs/nir.md): the first clip of N test recordings and the spikes
of every spiking layer of this project's network, so that a chip can be checked against it.
"""
from __future__ import annotations

import argparse
import copy
import io
import json
import os
import sys
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from utils.errors import UserError
from utils.files import atomic_write

DT = 1e-4                       # seconds per time step (snntorch's importer assumes this one)
EXACT = {"A": ("snntorch",), "D": ("snntorch",), "B": ("norse",), "C": ("norse",), "sew18": ()}
ASA_REASON = ("ASA is not exportable: its mask reads the whole time window (all T steps decide "
              "step t: not causal) and keeps a data-dependent top-k; no NIR primitive expresses "
              "either. Export a network trained with -attention no")


# --- the neuron maps --------------------------------------------------------------------------

def below(x: float) -> np.float32:
    """The largest float32 below float32(x). NIR fires at v > v_threshold, the project at
    u >= Vth; for float32 u, ``u > below(Vth)`` equals ``u >= float32(Vth)`` because no float32
    lies strictly between the two (docs/nir.md, "Firing at equality")."""
    return np.nextafter(np.float32(x), np.float32(-np.inf))


def _f32(shape, value) -> np.ndarray:
    return np.full(tuple(int(s) for s in shape), value, dtype=np.float32)


def search_tau(target: float, coefficient, start: float, ulps: int = 8) -> np.float32 | None:
    """The float32 tau nearest ``start`` (within ``ulps``) whose importer-side ``coefficient(tau)``
    (computed in float32 as the importer does) equals float32(``target``) exactly, else None."""
    target = np.float32(target)
    up = down = np.float32(start)
    if coefficient(up) == target:
        return up
    for _ in range(ulps):
        up, down = np.nextafter(up, np.float32(np.inf)), np.nextafter(down, np.float32(0))
        for tau in (up, down):
            if coefficient(tau) == target:
                return tau
    return None


def snntorch_beta(tau: np.float32, dt: float = DT) -> np.float32:
    """snntorch's decay for a nir.LIF: 1 - dt/tau, in float32 (numpy with a float32 tau)."""
    return np.float32(1 - dt / np.asarray([tau], dtype=np.float32))[0]


def norse_factor(tau: np.float32, dt: float) -> np.float32:
    """norse's Euler factor dt * (1/tau) of LIFBoxCell, in torch float32."""
    inv = 1 / torch.from_numpy(np.asarray([tau], dtype=np.float32)).float()
    return np.float32((dt * inv)[0].item())


def decay_input_tau(k: float, dt: float) -> np.float32 | None:
    return search_tau(k, lambda tau: norse_factor(tau, dt), dt / k)


def choose_dt(factors: list[float], tries: int = 4096) -> float | None:
    """The time step of the graph: snntorch's 1e-4 s when every decay-input factor k has a
    float32 tau whose norse factor dt*(1/tau) is k exactly, else the nearest step above it (in
    steps of 1e-4 * 2^-20) that has one for every k: norse's factor is a product of two roundings
    and misses about one k in two. None when no step tried has one for every k."""
    for j in range(tries):
        dt = DT * (1.0 + j * 2.0 ** -20)
        if all(decay_input_tau(k, dt) is not None for k in factors):
            return dt
    return None


def lif_node(shape, decay: float, vth: float, dt: float):
    """Arch A/D's LIF, u[t] = decay*r[t-1] + I[t], fire u >= Vth, reset to 0, as a nir.LIF.

    NIR's Euler step v += dt/tau*(v_leak - v + R*I) with tau = dt/(1 - decay), R = tau/dt,
    v_leak = 0 is v = decay*v + I: the input is not decayed."""
    import nir
    tau = search_tau(decay, lambda t: snntorch_beta(t, dt), dt / (1.0 - decay))
    if tau is None:
        raise UserError(f"LIF decay {decay}: no float32 time constant gives it exactly at dt {dt}")
    return nir.LIF(tau=_f32(shape, tau), r=_f32(shape, tau / np.float32(dt)), v_leak=_f32(shape, 0.0),
                   v_threshold=_f32(shape, below(vth)), v_reset=_f32(shape, 0.0))


def decay_input_node(shape, k: float, vth: float, dt: float):
    """Arch B/C's decay-input neuron, H = V + (X - V)*k, fire H >= Vth, reset to 0, as a nir.LIF.

    NIR's Euler step with tau = dt/k, R = 1, v_leak = 0 is v + k*(I - v)."""
    import nir
    tau = decay_input_tau(k, dt)
    tau = np.float32(dt / k) if tau is None else tau       # no exact one (choose_dt found no step)
    return nir.LIF(tau=_f32(shape, tau), r=_f32(shape, 1.0), v_leak=_f32(shape, 0.0),
                   v_threshold=_f32(shape, below(vth)), v_reset=_f32(shape, 0.0))


def any_spike_node(shape, dt: float):
    """Fires when its input is >= 1 and keeps nothing (tau = dt): after a SumPool2d of spikes
    (counts 0, 1, 2, ...) it is the max pool of those spikes."""
    import nir
    return nir.LIF(tau=_f32(shape, dt), r=_f32(shape, 1.0), v_leak=_f32(shape, 0.0),
                   v_threshold=_f32(shape, 0.5), v_reset=_f32(shape, 0.0))


# --- BatchNorm folding and the reference network ----------------------------------------------

def fold(conv: nn.Module, bn: nn.BatchNorm2d | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(weight, bias) of ``conv`` with ``bn``'s evaluation statistics folded in, in float64 then
    rounded once to float32: y = (W x + b - mean) * g/sqrt(var + eps) + beta."""
    w = conv.weight.detach().double()
    b = conv.bias.detach().double() if conv.bias is not None else torch.zeros(w.shape[0], dtype=torch.float64)
    if bn is not None:
        scale = bn.weight.detach().double() / torch.sqrt(bn.running_var.double() + bn.eps)
        w = w * scale.reshape(-1, *([1] * (w.dim() - 1)))
        b = (b - bn.running_mean.double()) * scale + bn.bias.detach().double()
    return w.float(), b.float()


def _folded_conv(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    new = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride,
                    padding=conv.padding, dilation=conv.dilation, groups=conv.groups, bias=True)
    w, b = fold(conv, bn)
    with torch.no_grad():
        new.weight.copy_(w)
        new.bias.copy_(b)
    return new.eval()


class OneFrame(nn.Module):
    """A conv or linear layer applied to one frame (one sample, one time step) at a time, without
    a batch dimension, as a simulator stepping a NIR graph calls it. oneDNN sums a frame in another
    order when it is part of a batch (about 10% of the outputs of a conv differ by an ulp), and an
    ulp at a threshold is a spike."""

    def __init__(self, layer: nn.Module):
        super().__init__()
        self.layer = layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        per_frame = 3 if isinstance(self.layer, nn.Conv2d) else 1
        flat = x.reshape(-1, *x.shape[x.dim() - per_frame:])
        return torch.stack([self.layer(f) for f in flat]).reshape(*x.shape[:x.dim() - per_frame],
                                                                 *self.layer(flat[0]).shape)


def folded_network(net: nn.Module, one_frame: bool = True) -> nn.Module:
    """A copy of ``net`` (eval mode) whose every conv -> BatchNorm pair is one conv with the
    BatchNorm folded in: the network the NIR graph describes, run by this project's own layers;
    ``one_frame``: its convs and linear layers see one frame at a time (``OneFrame``), as in a
    simulator that steps the graph."""
    net = copy.deepcopy(net).eval()
    for m in net.modules():
        conv, bn = getattr(m, "conv", None), getattr(m, "bn", None)
        if isinstance(conv, nn.Sequential) and isinstance(bn, nn.Sequential):
            conv[0], bn[0] = _folded_conv(conv[0], bn[0]), nn.Identity()
        elif isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):        # sew18
            m.conv, m.bn = _folded_conv(conv, bn), nn.Identity()
    if one_frame:
        for m in list(net.modules()):
            for name, child in list(m.named_children()):
                if isinstance(child, (nn.Conv2d, nn.Linear)):
                    setattr(m, name, OneFrame(child))
    return net


# --- the graph --------------------------------------------------------------------------------

@dataclass
class Builder:
    """Nodes and edges, added in order; a node reads ``inputs`` (NIR sums several) or else the
    node added before it (``last``)."""
    nodes: dict = field(default_factory=dict)
    edges: list = field(default_factory=list)
    dt: float = DT
    last: str = "input"
    spiking: dict = field(default_factory=dict)       # node name -> project module name

    def add(self, name: str, node, project: str | None = None, inputs: list | None = None) -> str:
        self.nodes[name] = node
        self.edges.extend((src, name) for src in (inputs or [self.last]))
        self.last = name
        if project is not None:
            self.spiking[name] = project
        return name


def _conv_node(conv: nn.Conv2d, bn, hw, scale: float = 1.0):
    import nir
    w, b = fold(conv, bn)
    w = w * scale
    if scale != 1.0 and not torch.equal(w / scale, fold(conv, bn)[0]):
        raise UserError(f"{conv}: weights too small to scale by {scale} exactly")
    return nir.Conv2d(input_shape=tuple(int(s) for s in hw), weight=w.numpy(), stride=conv.stride,
                      padding=conv.padding, dilation=conv.dilation, groups=conv.groups, bias=b.numpy())


def _pool_args(k: int) -> dict:
    return dict(kernel_size=np.array([k, k]), stride=np.array([k, k]), padding=np.array([0, 0]))


def _out_hw(conv: nn.Conv2d, hw):
    return tuple((s + 2 * p - d * (k - 1) - 1) // st + 1
                 for s, p, d, k, st in zip(hw, conv.padding, conv.dilation, conv.kernel_size, conv.stride))


def _affine(linear: nn.Linear):
    import nir
    return nir.Affine(weight=linear.weight.detach().float().numpy().copy(),
                      bias=linear.bias.detach().float().numpy().copy())


def charge_factor(m: nn.Module) -> float:
    """k of a decay-input neuron (models/module/decay_input.py), as the float32 the project uses."""
    return float(m.charge_factor(torch.zeros((), dtype=torch.float32)).detach())


def _neuron(m: nn.Module, shape, dt: float):
    """The nir.LIF of a project neuron (models/module/lif.py or decay_input.py)."""
    from models.module.lif import LIF
    from models.module.decay_input import DecayInputNode
    if isinstance(m, LIF):
        if m.beta != 0.0 or m.vreset != 0.0:
            raise UserError(f"LIF with beta {m.beta} / vreset {m.vreset}: only beta = vreset = 0 is exported")
        return lif_node(shape, m.decay, m.vth, dt)
    if isinstance(m, DecayInputNode):
        return decay_input_node(shape, charge_factor(m), m.v_threshold, dt)
    raise UserError(f"no NIR neuron for {type(m).__name__}")


def _lif_snn(net, b: Builder, frame) -> int:
    """Arch A/D: conv+BN -> avg pool (of currents) -> LIF, x3; flatten; (linear -> LIF) x2."""
    import nir
    hw = tuple(frame)
    for i, layer in enumerate(net.ConvAttLIFs):
        p = f"ConvAttLIFs.{i}"
        conv = layer.conv[0]
        b.add(f"{p}.conv", _conv_node(conv, layer.bn[0], hw))
        hw = _out_hw(conv, hw)
        if isinstance(layer.pool, nn.AvgPool2d):
            b.add(f"{p}.pool", nir.AvgPool2d(**_pool_args(layer.pool.kernel_size)))
            hw = tuple(s // layer.pool.kernel_size for s in hw)
        b.add(f"{p}.spike", _neuron(layer.spike[0], (conv.out_channels, *hw), b.dt), f"{p}.spike.0")
    b.add("flatten", nir.Flatten(input_type={"input": np.array([conv.out_channels, *hw])},
                                 start_dim=0, end_dim=-1))
    for i, layer in enumerate(net.FCs):
        b.add(f"FCs.{i}.linear", _affine(layer.linear[0]))
        b.add(f"FCs.{i}.spike", _neuron(layer.spike[0], (layer.linear[0].out_features,), b.dt), f"FCs.{i}.spike.0")
    return 1


def _plif_snn(net, b: Builder, frame) -> int:
    """Arch B/C: (conv+BN -> neuron -> 2x2 pool of spikes) x5; flatten; (linear -> neuron) x2.

    A max pool of spikes is a sum pool followed by a unit that fires at a count >= 1; an average
    pool of spikes is a sum pool whose 1/4 goes into the next layer's weights (exact: a power of 2)."""
    import nir
    hw, scale = tuple(frame), 1.0
    for i, seq in enumerate(net.ConvAttLIFs):
        block, pool = seq[0], seq[1].pool
        p = f"ConvAttLIFs.{i}"
        conv = block.conv[0]
        b.add(f"{p}.conv", _conv_node(conv, block.bn[0], hw, scale))
        hw = _out_hw(conv, hw)
        shape = (conv.out_channels, *hw)
        b.add(f"{p}.spike", _neuron(block.spike[0], shape, b.dt), f"{p}.0.spike.0")
        b.add(f"{p}.pool", nir.SumPool2d(**_pool_args(2)))
        hw = tuple(s // 2 for s in hw)
        if isinstance(pool, nn.MaxPool2d):
            b.add(f"{p}.max", any_spike_node((conv.out_channels, *hw), b.dt), f"{p}.1")
            scale = 1.0
        else:
            scale = 0.25
    b.add("flatten", nir.Flatten(input_type={"input": np.array([conv.out_channels, *hw])},
                                 start_dim=0, end_dim=-1))
    for i, seq in enumerate(net.FCs):
        fc = seq[1]
        b.add(f"FCs.{i}.fc", _affine(fc.fc))
        b.add(f"FCs.{i}.spike", _neuron(fc.spike[0], (fc.fc.out_features,), b.dt), f"FCs.{i}.1.spike.0")
    return net.voting


def _sew_unit(b: Builder, unit, p: str, hw, inputs: list) -> tuple[str, tuple]:
    """conv+BN -> neuron of a SEW-ResNet unit reading the sum of ``inputs``."""
    b.add(f"{p}.conv", _conv_node(unit.conv, unit.bn, hw), inputs=inputs)
    hw = _out_hw(unit.conv, hw)
    return b.add(f"{p}.sn", _neuron(unit.sn, (unit.conv.out_channels, *hw), b.dt), f"{p}.sn"), hw


def _sew_resnet(net, b: Builder, frame) -> int:
    """SEW-ResNet-18: stem -> max pool -> 4 x 2 SEW blocks (ADD) -> average pool -> flatten -> fc.

    The stem's 3x3/2 max pool (padding 1) of spikes is a conv that counts each channel's spikes in
    the window (a zero pad adds nothing to a count; the other channels enter with weight 0) and a
    unit that fires at a count >= 1. A block's output ``conv2 + identity``
    is not a node: every reader of it gets an edge from each summand, and NIR sums the edges into a
    node (sums of spike counts, exact in float32 in any order). The head's average over the last
    H x W map is a SumPool2d, its 1/(H*W) in the fc weights: the readout is not spiking."""
    import nir
    hw = tuple(frame)
    sn, hw = _sew_unit(b, net.stem, "stem", hw, ["input"])
    c = net.stem.conv.out_channels
    mp = net.maxpool
    ones = np.zeros((c, c, 3, 3), np.float32)      # channel to itself (nir types no grouped conv)
    ones[np.arange(c), np.arange(c)] = 1.0
    b.add("maxpool.sum", nir.Conv2d(input_shape=hw, weight=ones, stride=mp.stride, padding=mp.padding,
                                    dilation=1, groups=1, bias=np.zeros(c, np.float32)), inputs=[sn])
    hw = tuple((s + 2 * mp.padding - 3) // mp.stride + 1 for s in hw)
    sources = [b.add("maxpool", any_spike_node((c, *hw), b.dt), "maxpool")]
    for li in range(1, 5):
        for bi, block in enumerate(getattr(net, f"layer{li}")):
            p = f"layer{li}.{bi}"
            r, out_hw = _sew_unit(b, block.conv1, f"{p}.conv1", hw, sources)
            r, out_hw = _sew_unit(b, block.conv2, f"{p}.conv2", out_hw, [r])
            if block.downsample is not None:
                sources = [_sew_unit(b, block.downsample, f"{p}.downsample", hw, sources)[0]]
            sources, hw = [r] + sources, out_hw
    c = net.fc.in_features
    b.add("avgpool", nir.SumPool2d(kernel_size=np.array(hw), stride=np.array(hw), padding=np.array([0, 0])),
          inputs=sources)
    b.add("flatten", nir.Flatten(input_type={"input": np.array([c, 1, 1])}, start_dim=0, end_dim=-1))
    w = net.fc.weight.detach().double() / (hw[0] * hw[1])
    b.add("fc", nir.Affine(weight=w.float().numpy(), bias=net.fc.bias.detach().float().numpy().copy()))
    return 1


def build_graph(net: nn.Module, args):
    """(nir.NIRGraph, {spiking node name: project module name}) of ``net`` built with ``args``."""
    import nir
    if args.attention != "no":
        raise UserError(ASA_REASON)
    if args.arch not in EXACT:
        raise UserError(f"arch {args.arch!r} has no NIR export (exported: {', '.join(sorted(EXACT))})")
    from models.module.decay_input import DecayInputNode
    dt = choose_dt([charge_factor(m) for m in net.modules() if isinstance(m, DecayInputNode)])
    exact = EXACT[args.arch] if dt is not None else tuple(i for i in EXACT[args.arch] if i != "norse")
    b = Builder(dt=DT if dt is None else dt)
    frame = tuple(int(s) for s in args.frame_size)
    build = {"A": _lif_snn, "D": _lif_snn, "B": _plif_snn, "C": _plif_snn, "sew18": _sew_resnet}[args.arch]
    voting = build(net, b, frame)
    classes = int(args.num_classes)
    nodes = {"input": nir.Input(input_type={"input": np.array([2, *frame])}), **b.nodes,
             "output": nir.Output(output_type={"output": np.array([classes * voting])})}
    edges = b.edges + [(b.last, "output")]
    readout = ("mean over the T time steps of the output " + ("values (fc, no neuron)" if args.arch == "sew18" else "spikes") +
               (f", then the mean of each group of {voting} consecutive outputs (class votes)" if voting > 1 else "") +
               "; the predicted class is the largest")
    metadata = {"source": "ASA-SNN", "arch": args.arch, "dt": b.dt, "time_steps": int(args.T),
                "num_classes": classes, "voting": int(voting), "readout": readout,
                "input": "per time step the event counts [2 polarities, X, Y] of one frame",
                "firing": "v > v_threshold, v_threshold = the largest float32 below the project's "
                          "threshold: the project's u >= Vth in float32",
                "exact_importers": ",".join(exact),
                "spiking_layers": json.dumps(b.spiking)}
    graph = nir.NIRGraph(nodes=nodes, edges=edges, metadata=metadata)
    return graph, dict(b.spiking)


# --- reference spikes -------------------------------------------------------------------------

def _steps(x: torch.Tensor, n: int, t: int) -> torch.Tensor:
    """``x`` as [N, T, ...]: sew18's max pool runs on the [N*T, ...] frames."""
    return x if tuple(x.shape[:2]) == (n, t) else x.reshape(n, t, *x.shape[1:])


@torch.no_grad()
def reference(net: nn.Module, frames: torch.Tensor, layers: dict) -> tuple[dict, torch.Tensor]:
    """({spiking node: spikes [N, T, ...] as uint8}, logits [N, classes]) of ``net`` on
    ``frames`` [N, T, 2, X, Y]; ``layers`` maps node names to the project's module names."""
    modules = dict(net.named_modules())
    got, hooks = {}, []
    for node, name in layers.items():
        def hook(_m, _inp, out, node=node):
            got[node] = _steps(out.detach(), *frames.shape[:2]).to(torch.uint8)
        hooks.append(modules[name].register_forward_hook(hook))
    try:
        logits = net(frames.float())
    finally:
        for h in hooks:
            h.remove()
    return got, logits


def test_frames(args, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(the first clip of each of the first ``n`` test recordings [n, T, 2, X, Y], labels)."""
    from datasets import create_dataset
    args = copy.copy(args)
    args.num_work = 0
    _, test_set = create_dataset(args)
    xs, ys = [], []
    for i in range(min(n, len(test_set))):
        frames, label = test_set[i][:2]
        frames = torch.as_tensor(np.asarray(frames))
        xs.append(frames[0] if frames.dim() == 5 else frames)
        ys.append(int(label))
    if not xs:
        raise UserError(f"--samples {n}: the test set of -dataset {args.dataset} is empty")
    return torch.stack(xs).float(), torch.as_tensor(ys)


def samples_npz(frames: torch.Tensor, labels, spikes: dict, logits: torch.Tensor) -> bytes:
    """The --samples file (docs/nir.md): frames, labels, predicted classes, logits and, per
    spiking node, its spikes [N, T, ...] (uint8) under ``spikes/<node>``."""
    arrays = {"frames": frames.numpy().astype(np.float32), "labels": np.asarray(labels, dtype=np.int64),
              "predicted": logits.argmax(1).numpy().astype(np.int64),
              "logits": logits.numpy().astype(np.float32)}
    arrays.update({f"spikes/{k}": v.numpy() for k, v in spikes.items()})
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return buf.getvalue()


def samples_path(out: str) -> str:
    return (out[:-4] if out.endswith(".nir") else out) + ".samples.npz"


# --- the command ------------------------------------------------------------------------------

def checkpoint_of(path: str) -> str:
    """A checkpoint file, or a run folder's best.pth (else last.pth)."""
    if os.path.isdir(path):
        for name in ("best.pth", "last.pth"):
            if os.path.isfile(os.path.join(path, name)):
                return os.path.join(path, name)
        raise UserError(f"{path}: a folder without best.pth or last.pth; give a checkpoint or a run folder")
    return path


def load(path: str):
    """(network in eval mode, its run configuration) of a checkpoint or run folder."""
    from utils.analysis.runs import net_from_checkpoint
    ckpt = checkpoint_of(path)
    try:
        net, args, _ = net_from_checkpoint(ckpt)
    except (ValueError, KeyError, TypeError, RuntimeError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UserError(f"checkpoint {ckpt}: not a network of this project ({first})") from None
    return net, args


def export(path: str, out: str, samples: int = 0) -> dict:
    """Write the NIR graph of checkpoint/run folder ``path`` to ``out`` (and the samples file);
    returns a report: file sizes, export seconds, spiking layers."""
    import nir
    t0 = time.perf_counter()
    net, args = load(path)
    if args.attention != "no":
        raise UserError(f"{path}: {ASA_REASON}")
    graph, layers = build_graph(net, args)
    buf = io.BytesIO()
    nir.write(buf, graph)
    data = buf.getvalue()
    report = {"out": out, "arch": args.arch, "T": int(args.T), "dt": float(graph.metadata["dt"]), "bytes": len(data),
              "spiking_layers": len(layers),
              "exact_importers": [i for i in str(graph.metadata["exact_importers"]).split(",") if i]}
    written = []
    if samples:
        frames, labels = test_frames(args, samples)
        spikes, logits = reference(folded_network(net), frames, layers)
        written.append((samples_path(out), samples_npz(frames, labels, spikes, logits)))
        report["samples"] = {"path": samples_path(out), "n": int(frames.shape[0])}
    atomic_write(out, data, what="NIR graph")
    for p, d in written:
        atomic_write(p, d, what="samples file")
    report["seconds"] = time.perf_counter() - t0
    return report


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python3 -m utils.analysis.export_nir",
                                description="Export a LIF-SNN checkpoint (-attention no; arch A, B, C, D, sew18) "
                                            "to a NIR graph (docs/nir.md).")
    p.add_argument("checkpoint", metavar="CHECKPOINT|RUN_DIR",
                   help="a checkpoint of this project, or a run folder (its best.pth)")
    g = p.add_argument_group("output")
    g.add_argument("--out", required=True, metavar="FILE", help="the NIR file to write (HDF5, e.g. model.nir)")
    g.add_argument("--samples", type=int, default=0, metavar="N",
                   help="also write FILE.samples.npz: the first clip of N test recordings of the "
                        "checkpoint's dataset and every spiking layer's spikes (default 0: none)")
    g.add_argument("--check", nargs="+", default=[], metavar="IMPORTER", choices=("snntorch", "norse"),
                   help="after writing, run the --samples recordings through the file in these "
                        "importers (snntorch, norse) and count spikes that differ from this project's")
    a = p.parse_args(argv)
    if a.samples < 0:
        p.error("--samples must be >= 0")
    if a.check and not a.samples:
        p.error("--check needs --samples N (the recordings to compare on)")
    try:
        rep = export(a.checkpoint, a.out, a.samples)
        print(f"wrote {a.out}: arch {rep['arch']}, T {rep['T']}, dt {rep['dt']!r} s, "
              f"{rep['spiking_layers']} spiking layers, {rep['bytes']:,} bytes in {rep['seconds']:.2f} s; "
              f"runs exactly in: {', '.join(rep['exact_importers']) or 'none of snntorch, norse (docs/nir.md)'}")
        if "samples" in rep:
            print(f"wrote {rep['samples']['path']}: {rep['samples']['n']} test recordings")
        failed = False
        for importer in a.check:
            from utils.analysis.nir_run import compare_file
            try:
                res = compare_file(a.out, rep["samples"]["path"], importer)
            except UserError as e:
                print(f"{importer}: not run: {e}")
                failed = True
                continue
            print(f"{importer}: {res.compared:,} neuron-steps ({res.spikes:,} spikes) compared in "
                  f"{res.layers} spiking layers x {res.steps} steps x {res.recordings} recordings: "
                  f"{res.mismatches} differ; predicted classes {'equal' if res.same_classes else 'DIFFER'}")
            failed |= res.mismatches > 0 or not res.same_classes
        if failed:
            return 1
    except (UserError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
