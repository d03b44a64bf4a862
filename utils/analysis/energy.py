r"""Synaptic operations and estimated energy per sample, with the convention of the authors' group.

    python3 -m utils.analysis.energy runs/<run>/best.pth                  # rates: the run's metrics.csv row
    python3 -m utils.analysis.energy runs/<run>/best.pth --rates runs/<run>/eval.json --json energy.json

Counting (per test sample, i.e. one clip of T frames; 45 nm figures of Horowitz 2014):

* ``MACs_l`` of a synaptic layer l = multiply-accumulates of ONE time step of a dense pass:
  conv: C_out * H_out * W_out * (C_in / groups) * k_h * k_w; linear: in_features * out_features.
  Biases, batch norm (folded into the conv at inference), pooling and the neuron updates are not
  counted.
* The first layer receives real-valued frames (event counts): it is counted as MAC at
  E_MAC = 4.6 pJ, ``ops = T * MACs_l`` (it runs once per time step).
* Every other conv / linear layer is spike-driven and counted as AC at E_AC = 0.9 pJ with
  ``SOPs_l = r_in * T * MACs_l``, where r_in is the firing rate of the layer's input spikes: the
  firing rate r (docs/reference.md, NASFR; logged in metrics.csv as fr_<layer>) of the spiking layer that
  feeds it -- the last spiking layer executed before it, or, for a net that defines
  ``synaptic_sources()`` (SEW-ResNet: the ADD connection feeds sums of spike tensors), the sum of
  the rates of the listed spiking layers. Pooling between the spiking layer and the synapses is
  ignored (max pooling of spikes raises the rate a little, average pooling keeps it).
* ASA's own operations are counted as MAC (4.6 pJ). With n = T*C*H*W (the ASA input of one sample)::

      2n          spatial mean and max of every (t, c) map (the scores)
      3*T*C       score = 0.5*(avg + mx) + alpha*avg + beta*mx
      C * fc      the fc along T for every channel: T*T (reduction 1) or 2*T*(T//r)
      2n          mean and max over T*C of each element's part (important or sub-important)
      2 * 18*H*W  conv1 and conv2 (2 -> 1 channels, 3x3)
      2*H*W       the two sigmoids
      n           every element multiplied by its part's spatial gate

  The top-k selections and the masks are comparisons and are not counted.
* Energy per sample: E = 4.6 pJ * (first-layer MACs + ASA MACs) + 0.9 pJ * sum_l SOPs_l. "Without
  ASA" is the synaptic part (first layer + SOPs); "with ASA" adds the ASA MACs.

``count(net, T, frame_size)`` traces the net once with zeros to get the layers and their MACs;
``energy(layers, rates)`` applies a dict of firing rates {spiking layer name: r}.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass, field

import torch
from torch import nn

from models.module import ASA, SpikingNeuron
from utils.analysis.runs import net_from_checkpoint, rates_from_json, rates_from_metrics, read_config
from utils.errors import UserError
from utils.files import atomic_write

E_MAC = 4.6e-12          # J per multiply-accumulate (32-bit float, 45 nm)
E_AC = 0.9e-12           # J per accumulate


@dataclass
class Layer:
    """One counted layer: a synaptic layer (conv/linear) or an ASA block."""
    name: str
    kind: str                          # "conv", "linear" or "asa"
    macs: int                          # conv/linear: MACs of one time step; asa: MACs over all T
    sources: list = field(default_factory=list)   # spiking layers feeding a synaptic layer
    first: bool = False                # receives the real-valued input


def _asa_macs(m: nn.Module, shape) -> int:
    _, T, C, H, W = shape
    n = T * C * H * W
    fc = sum(l.in_features * l.out_features for l in m.fc.modules() if isinstance(l, nn.Linear))
    return 2 * n + 3 * T * C + C * fc + 2 * n + 2 * 18 * H * W + 2 * H * W + n


def count(net: nn.Module, T: int, frame_size, in_channels: int = 2) -> list[Layer]:
    """The synaptic layers and ASA blocks of ``net`` in execution order, with their MAC counts.

    ``net`` maps ``[N, T, in_channels, *frame_size]`` to logits; it is run once on zeros in eval
    mode (and put back in its previous mode)."""
    asa_names = [n for n, m in net.named_modules() if isinstance(m, ASA)]
    inside_asa = lambda n: any(n.startswith(a + ".") for a in asa_names)   # noqa: E731
    order: list = []          # (name, module kind, shapes)
    hooks = []

    def hook(name, kind):
        def fn(module, inputs, output):
            order.append((name, kind, module, tuple(inputs[0].shape), tuple(output.shape)))
        return fn

    for name, m in net.named_modules():
        if isinstance(m, SpikingNeuron):
            hooks.append(m.register_forward_hook(hook(name, "spiking")))
        elif isinstance(m, ASA):
            hooks.append(m.register_forward_hook(hook(name, "asa")))
        elif isinstance(m, (nn.Conv2d, nn.Linear)) and not inside_asa(name):
            hooks.append(m.register_forward_hook(hook(name, "synapse")))
    was_training = net.training
    net.eval()
    try:
        p = next(net.parameters())
        with torch.no_grad():
            net(torch.zeros(1, T, in_channels, *frame_size, device=p.device, dtype=p.dtype))
    finally:
        for h in hooks:
            h.remove()
        net.train(was_training)

    sources = net.synaptic_sources() if hasattr(net, "synaptic_sources") else None
    layers, last_spiking, seen = [], None, set()
    for name, kind, m, in_shape, out_shape in order:
        if kind == "spiking":
            last_spiking = name
            continue
        if name in seen:
            raise ValueError(f"{name} runs more than once per forward; count() expects each layer once")
        seen.add(name)
        if kind == "asa":
            layers.append(Layer(name, "asa", _asa_macs(m, in_shape)))
        elif isinstance(m, nn.Conv2d):
            kh, kw = m.kernel_size
            macs = int(torch.tensor(out_shape[1:]).prod()) * (m.in_channels // m.groups) * kh * kw
            src = sources[name] if sources is not None else ([last_spiking] if last_spiking else [])
            layers.append(Layer(name, "conv", macs, list(src), first=not src))
        else:
            src = sources[name] if sources is not None else ([last_spiking] if last_spiking else [])
            layers.append(Layer(name, "linear", m.in_features * m.out_features, list(src), first=not src))
    return layers


def energy(layers: list[Layer], rates: dict, T: int) -> dict:
    """Per-layer ops and energy per sample, and totals, from firing rates {spiking layer: r}.

    Returns {'layers': [{name, kind, op, macs_per_step, input_rate, ops, energy_uJ}],
    'total_uJ', 'synaptic_uJ' (without ASA), 'asa_uJ', 'sops' (AC operations), 'macs' (MAC
    operations incl. ASA), 'asa_macs'}."""
    rows, tot = [], dict(sops=0.0, macs=0.0, asa_macs=0.0, synaptic_J=0.0, asa_J=0.0)
    for l in layers:
        if l.kind == "asa":
            ops, op, rate, e = float(l.macs), "MAC", None, l.macs * E_MAC
            tot["asa_macs"] += ops
            tot["macs"] += ops
            tot["asa_J"] += e
        elif l.first:
            ops, op, rate = float(T * l.macs), "MAC", None
            e = ops * E_MAC
            tot["macs"] += ops
            tot["synaptic_J"] += e
        else:
            missing = [s for s in l.sources if s not in rates]
            if missing:
                raise KeyError(f"no firing rate for {missing} (feeding {l.name}); known: {sorted(rates)}")
            rate = float(sum(rates[s] for s in l.sources))
            ops, op = rate * T * l.macs, "AC"
            e = ops * E_AC
            tot["sops"] += ops
            tot["synaptic_J"] += e
        rows.append(dict(name=l.name, kind=l.kind, op=op, macs_per_step=l.macs if l.kind != "asa" else None,
                         input_rate=rate, ops=ops, energy_uJ=e * 1e6))
    return {"layers": rows, "total_uJ": (tot["synaptic_J"] + tot["asa_J"]) * 1e6,
            "synaptic_uJ": tot["synaptic_J"] * 1e6, "asa_uJ": tot["asa_J"] * 1e6,
            "sops": tot["sops"], "macs": tot["macs"], "asa_macs": tot["asa_macs"]}


def checkpoint_energy(path: str, rates: dict | None = None, rates_file: str | None = None,
                      config: dict | None = None) -> dict:
    """Energy report for a checkpoint. Rates: ``rates``, else ``rates_file`` (eval.json or
    metrics.csv), else the checkpoint folder's metrics.csv row of the checkpoint's epoch, else its
    eval.json."""
    net, args, ck_epoch = net_from_checkpoint(path, config)
    folder = os.path.dirname(os.path.abspath(path))
    source = "given"
    if rates is None:
        cands = [rates_file] if rates_file else [os.path.join(folder, "metrics.csv"),
                                                 os.path.join(folder, "eval.json")]
        for c in cands:
            if c and os.path.isfile(c):
                if c.endswith(".json"):
                    rates, source = rates_from_json(c), c
                else:
                    rates, ep = rates_from_metrics(c, ck_epoch)
                    source = f"{c} (epoch {ep})"
                break
        if rates is None:
            raise ValueError(f"{path}: no firing rates found (metrics.csv / eval.json beside it); "
                             f"pass --rates FILE")
    layers = count(net, args.T, args.frame_size)
    out = energy(layers, rates, args.T)
    out.update(checkpoint=os.path.abspath(path), rates_from=source, arch=args.arch,
               attention=args.attention, T=args.T)
    return out


def format_report(rep: dict) -> str:
    lines = [f"{'layer':<28} {'op':<4} {'MACs/step':>12} {'in rate':>8} {'ops/sample':>14} {'energy uJ':>10}"]
    for r in rep["layers"]:
        macs = "" if r["macs_per_step"] is None else f"{r['macs_per_step']:,}"
        rate = "" if r["input_rate"] is None else f"{r['input_rate']:.4f}"
        lines.append(f"{r['name'][:28]:<28} {r['op']:<4} {macs:>12} {rate:>8} {r['ops']:>14,.0f} "
                     f"{r['energy_uJ']:>10.3f}")
    lines.append(f"total {rep['total_uJ']:.3f} uJ per sample = synaptic {rep['synaptic_uJ']:.3f} uJ "
                 f"(first-layer MAC + {rep['sops']:,.0f} SOPs)" +
                 (f" + ASA {rep['asa_uJ']:.3f} uJ ({rep['asa_macs']:,.0f} MACs)" if rep["asa_macs"] else ""))
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python3 -m utils.analysis.energy",
                                description="Synaptic operations and energy per sample of a checkpoint "
                                            "(first layer MAC 4.6 pJ, spike-driven layers AC 0.9 pJ, "
                                            "ASA as MAC); see the module docstring for the counting.")
    p.add_argument("checkpoint", help="a checkpoint of this project (best.pth / last.pth)")
    p.add_argument("--rates", metavar="FILE", help="eval.json or metrics.csv with the firing rates "
                   "(default: metrics.csv beside the checkpoint, row of the checkpoint's epoch)")
    p.add_argument("--config", metavar="FILE", help="config.json to build the net (for raw state dicts)")
    p.add_argument("--json", metavar="FILE", help="also write the report as JSON")
    a = p.parse_args(argv)
    try:
        cfg = None
        if a.config:
            if not os.path.isfile(a.config):
                raise UserError(f"--config {a.config}: no such file")
            cfg = read_config(os.path.dirname(os.path.abspath(a.config)), os.path.basename(a.config))
        rep = checkpoint_energy(a.checkpoint, rates_file=a.rates, config=cfg)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (OSError, ValueError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{rep['checkpoint']}: arch {rep['arch']}, attention {rep['attention']}, T {rep['T']}; "
          f"rates from {rep['rates_from']}")
    print(format_report(rep))
    if a.json:
        try:
            atomic_write(a.json, json.dumps(rep, indent=2))
        except UserError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
