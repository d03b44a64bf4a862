"""Run an exported NIR graph in another simulator (snntorch or norse) one time step at a time and
compare every spiking layer with the spikes this project wrote (export_nir.py --samples).

    from utils.analysis.nir_run import compare_file
    res = compare_file("model.nir", "model.samples.npz", "snntorch")   # res.mismatches == 0

Each importer reads the file with ``nir.read`` and builds its own modules; recordings go in one at
a time without a batch dimension (NIR's shapes have none), the state is carried from step to step
and reset between recordings. Forward hooks on the importer's neuron modules record their spikes.
"""
from __future__ import annotations

import contextlib
import io
import json
from dataclasses import dataclass, field

import numpy as np
import torch

from utils.errors import UserError

IMPORTERS = ("snntorch", "norse")
# NIR node types each importer builds a module for (snntorch 1.0.0 with nirtorch's defaults, norse 1.1.0)
SUPPORTED = {
    "snntorch": {"Input", "Output", "Affine", "Linear", "Conv2d", "Flatten", "AvgPool2d", "SumPool2d",
                 "IF", "LIF", "CubaLIF"},
    "norse": {"Input", "Output", "Affine", "Linear", "Conv2d", "Flatten", "SumPool2d", "IF", "LIF",
              "CubaLIF"},
}
SNNTORCH_DT = 1e-4              # snntorch's importer steps every graph at this dt


def _snntorch(graph):
    from snntorch.import_nir import import_from_nir
    with contextlib.redirect_stdout(io.StringIO()):          # it prints progress lines
        return import_from_nir(graph)


def _norse(graph, dt: float):
    import warnings
    from norse.torch.utils.import_nir import from_nir
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return from_nir(graph, dt=dt)


def check_importable(graph, importer: str) -> None:
    """UserError naming the first node (or the time step) that ``importer`` cannot run."""
    if importer not in SUPPORTED:
        raise UserError(f"importer {importer!r}: expected one of {', '.join(IMPORTERS)}")
    for name, node in graph.nodes.items():
        if type(node).__name__ not in SUPPORTED[importer]:
            raise UserError(f"{importer} cannot import node {name!r}: it has no {type(node).__name__}")
    if importer == "norse":
        joins = sorted({dst for _, dst in graph.edges if sum(d == dst for _, d in graph.edges) > 1})
        if joins:
            raise UserError(f"norse cannot run node {joins[0]!r} right: it sums several inputs, and "
                            f"norse's executor (nirtorch.load) orders nodes depth first, so a sum can "
                            f"run before one of its inputs and read that input's previous time step")
    dt = float(graph.metadata["dt"])
    if importer == "snntorch" and dt != SNNTORCH_DT:
        raise UserError(f"snntorch steps every graph at dt {SNNTORCH_DT} s, this graph's dt is {dt!r} s")


def load_module(graph, importer: str) -> torch.nn.Module:
    """The importer's torch module of ``graph`` (a nir.NIRGraph)."""
    check_importable(graph, importer)
    if importer == "snntorch":
        return _snntorch(graph)
    if importer == "norse":
        return _norse(graph, float(graph.metadata["dt"]))
    raise UserError(f"importer {importer!r}: expected one of {', '.join(IMPORTERS)}")


def _reset(module: torch.nn.Module) -> None:
    """snntorch keeps its membranes in the neuron modules (init_hidden): zero them."""
    for m in module.modules():
        if hasattr(m, "reset_mem") and hasattr(m, "mem"):
            m.reset_mem()


@torch.no_grad()
def run(module: torch.nn.Module, frames: np.ndarray, layers: list[str]) -> tuple[dict, np.ndarray]:
    """({node: spikes [N, T, ...] uint8}, output [N, T, ...]) of ``module`` on ``frames``
    [N, T, 2, X, Y], recording by recording and step by step."""
    subs = dict(module.named_modules())
    got: dict = {}
    hooks = []
    for node in layers:
        name = node.replace(".", "_")
        if name not in subs:
            raise UserError(f"the imported module has no layer {name!r} for node {node!r}")

        def hook(_m, _inp, out, node=node):
            z = out[0] if isinstance(out, tuple) else out
            got.setdefault(node, []).append(z.detach().to(torch.uint8).clone())
        hooks.append(subs[name].register_forward_hook(hook))
    outputs = []
    try:
        for rec in frames:
            _reset(module)
            state, outs = None, []
            for t in range(rec.shape[0]):
                out, state = module(torch.from_numpy(np.ascontiguousarray(rec[t])).float(), state)
                outs.append(out.detach().float().clone())
            outputs.append(torch.stack(outs))
    finally:
        for h in hooks:
            h.remove()
    n, T = frames.shape[:2]
    spikes = {k: torch.stack(v).reshape(n, T, *v[0].shape).numpy() for k, v in got.items()}
    return spikes, torch.stack(outputs).numpy()


def predicted(outputs: np.ndarray, voting: int) -> np.ndarray:
    """Classes from the graph's outputs [N, T, classes*voting] (spikes, or sew18's fc values):
    the mean of each vote group, then over T, in float32 in the project's order (equal spike
    counts spread differently over the steps round apart, and argmax breaks ties by order)."""
    x = torch.from_numpy(outputs).float()
    return x.unflatten(2, (-1, voting)).mean(dim=3).mean(dim=1).argmax(dim=1).numpy()


@dataclass
class Comparison:
    importer: str
    spikes: int = 0                 # spikes of this project's network, all layers, steps, recordings
    compared: int = 0               # neuron-steps compared
    mismatches: int = 0             # neuron-steps whose spike differs
    layers: int = 0
    steps: int = 0
    recordings: int = 0
    same_classes: bool = False
    per_layer: dict = field(default_factory=dict)


def compare(graph, samples: dict, importer: str) -> Comparison:
    """Run ``samples`` (the arrays of a --samples file) through ``graph`` in ``importer``."""
    layers = json.loads(str(graph.metadata["spiking_layers"]))
    module = load_module(graph, importer)
    ref = {k[len("spikes/"):]: v for k, v in samples.items() if k.startswith("spikes/")}
    got, outputs = run(module, samples["frames"], list(layers))
    res = Comparison(importer, layers=len(layers), steps=int(samples["frames"].shape[1]),
                     recordings=int(samples["frames"].shape[0]))
    for node in layers:
        a, b = ref[node], got[node]
        if a.shape != b.shape:
            raise UserError(f"layer {node}: {importer} gave spikes {b.shape}, the project {a.shape}")
        bad = int((a != b).sum())
        res.per_layer[node] = bad
        res.mismatches += bad
        res.spikes += int(a.sum())
        res.compared += a.size
    res.same_classes = bool(np.array_equal(predicted(outputs, int(graph.metadata["voting"])),
                                           samples["predicted"]))
    return res


def read_samples(path: str) -> dict:
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: not a samples file of export_nir ({e})") from None


def compare_file(nir_path: str, samples_path: str, importer: str) -> Comparison:
    import nir
    return compare(nir.read(nir_path), read_samples(samples_path), importer)
