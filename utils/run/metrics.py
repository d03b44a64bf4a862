"""The metrics of a run: per-sample metrics (loss, accuracy by clip vote), per-layer firing rates
and NASFR (docs/reference.md, "Windows, frames and clips" and "NASFR").

Per-sample metrics are averaged over an epoch's samples. Each is one function registered under its
name (:func:`sample_metric`) that gives a batch's sum over its samples; the training and test
passes (utils/run/engine.py) add these sums up, in one float64 tensor per pass that is summed over
processes and saved when a run stops inside an epoch, and the epoch's value, ``scale * sum /
samples``, becomes the metrics.csv columns ``train_<name>`` and ``test_<name>``, which TensorBoard
(utils/run/tblog.py) and the results table read by name. A new metric is one registered function.

Firing rates are accumulated by forward hooks during the ordinary test pass: every spiking layer
(models/module/neuron.py, ``SpikingNeuron``) returns spikes [N, T, ...]; the hook adds its spike
count per time step. Nothing is written per batch and no second pass is needed.

    r_l   = total spikes of layer l / (T * n_l * number of clip-samples)
    NASFR = sum_l r_l * n_l / sum_l n_l        (n_l = neurons of layer l per sample per step)
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from models.module.neuron import spiking_layers


class SpikeMonitor:
    """Counts spikes per layer and step while enabled (``with monitor:``)."""

    def __init__(self, net):
        self.layers = spiking_layers(net)
        if not self.layers:
            raise ValueError("the network has no spiking layer (no SpikingNeuron module)")
        self.handles = [m.register_forward_hook(self._hook(i)) for i, (_, m) in enumerate(self.layers)]
        self.active = False
        self.reset()

    def reset(self):
        n = len(self.layers)
        self.spikes = [None] * n                      # per layer: float64 tensor [T]
        self.neurons = [0] * n                        # per sample per step
        self.samples = [0] * n

    def _hook(self, i):
        def hook(module, inputs, out):
            if not self.active:
                return
            out = out[0] if isinstance(out, tuple) else out
            dims = (0,) + tuple(range(2, out.dim()))
            s = out.detach().sum(dim=dims, dtype=torch.float64)
            self.spikes[i] = s if self.spikes[i] is None else self.spikes[i] + s
            self.neurons[i] = out[0, 0].numel()
            self.samples[i] += out.shape[0]
        return hook

    def __enter__(self):
        self.active = True
        return self

    def __exit__(self, *exc):
        self.active = False

    def remove(self):
        for h in self.handles:
            h.remove()

    def totals(self) -> torch.Tensor:
        """Per-layer [spikes, steps*samples] as one float64 tensor [L, 2] (summable across ranks)."""
        rows = []
        for s, n in zip(self.spikes, self.samples):
            rows.append([0.0, 0.0] if s is None else [float(s.sum()), float(n * len(s))])
        return torch.tensor(rows, dtype=torch.float64)

    def rates(self, totals: torch.Tensor | None = None) -> dict:
        """{'firing_rates': {layer: r_l}, 'nasfr': float}; ``totals`` may be a reduced copy."""
        totals = self.totals() if totals is None else totals
        names = [n for n, _ in self.layers]
        rates = {}
        for name, (spk, steps_samples), n_l in zip(names, totals.tolist(), self.neurons):
            rates[name] = spk / (steps_samples * n_l) if steps_samples and n_l else 0.0
        return {"firing_rates": rates, "nasfr": nasfr(list(rates.values()), self.neurons)}


def nasfr(rates, neurons) -> float:
    """Neuron-weighted mean of the layer firing rates."""
    total = sum(neurons)
    return sum(r * n for r, n in zip(rates, neurons)) / total if total else 0.0


def clip_vote(logits: torch.Tensor, labels: torch.Tensor, clip: int) -> torch.Tensor:
    """Per-sample correctness: logits [B*clip, K] (sample-major), labels [B] -> bool [B].

    A sample is correct when MORE than half of its clips are classified correctly."""
    pred = logits.argmax(dim=1).view(-1, clip)
    hits = (pred == labels.view(-1, 1)).sum(dim=1)
    return hits * 2 > clip


@dataclass(frozen=True)
class Batch:
    """What a per-sample metric sees of one batch: ``logits`` [samples * clip, classes] (float32,
    sample-major), ``labels`` [samples], ``clip`` windows per sample (1 in training), and
    ``loss_sum``, the batch's loss summed over its samples (float64; training: the step's mean
    loss times the samples, test: the MSE over clips and classes / classes / clip per sample).
    Only the samples that count are in it (a distributed run's stand-ins are left out)."""
    logits: torch.Tensor
    labels: torch.Tensor
    clip: int
    loss_sum: torch.Tensor


@dataclass(frozen=True)
class SampleMetric:
    """``fn(batch)``: the batch's sum over its samples; the epoch's value is ``scale * sum / samples``."""
    fn: Callable[[Batch], torch.Tensor]
    scale: float = 1.0


SAMPLE_METRICS: dict[str, SampleMetric] = {}


def sample_metric(name: str, scale: float = 1.0):
    """Decorator registering ``fn(batch) -> the batch's sum`` as the per-sample metric ``name``."""
    def wrap(fn):
        if name in SAMPLE_METRICS:
            raise ValueError(f"metric {name!r} is already registered")
        SAMPLE_METRICS[name] = SampleMetric(fn, scale)
        return fn
    return wrap


@sample_metric("loss")
def _loss(b: Batch) -> torch.Tensor:
    return b.loss_sum


@sample_metric("acc", scale=100.0)               # percent
def _correct(b: Batch) -> torch.Tensor:
    return clip_vote(b.logits, b.labels, b.clip).sum()


def metric_columns(prefix: str) -> list[str]:
    """``<prefix>_<name>`` of every per-sample metric, in registration order."""
    return [f"{prefix}_{name}" for name in SAMPLE_METRICS]


def zero_sums(device=None) -> torch.Tensor:
    """Sums of every per-sample metric and the sample count (last), float64 [metrics + 1]."""
    return torch.zeros(len(SAMPLE_METRICS) + 1, dtype=torch.float64, device=device)


def add_batch(sums: torch.Tensor, batch: Batch) -> None:
    """Add ``batch``'s sum of every per-sample metric and its sample count to ``sums`` in place."""
    values = [m.fn(batch).to(torch.float64).reshape(()) for m in SAMPLE_METRICS.values()]
    values.append(torch.tensor(float(len(batch.labels)), dtype=torch.float64, device=sums.device))
    sums += torch.stack([v.to(sums.device) for v in values])


def means(sums: torch.Tensor, prefix: str) -> dict:
    """Per-sample sums (:func:`zero_sums`'s layout) -> {``<prefix>_<name>``: the epoch's value}."""
    *totals, seen = sums.tolist()
    seen = max(seen, 1)
    return {f"{prefix}_{name}": m.scale * total / seen
            for (name, m), total in zip(SAMPLE_METRICS.items(), totals)}


def is_better(acc: float, best: float) -> bool:
    """The tie rule of the best epoch: the highest test accuracy, and among equal ones the later
    epoch, as the reference (it saves its best checkpoint on >=). Training (best.pth) and the
    results table (utils/analysis/runs.py) both use it."""
    return acc >= best
