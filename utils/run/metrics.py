"""Clip vote, per-layer firing rates and NASFR (docs/reference.md, "Windows, frames and clips" and "NASFR").

Firing rates are accumulated by forward hooks during the ordinary test pass: every module with
spiking layer (models/module/neuron.py, ``SpikingNeuron``) returns spikes [N, T, ...]; the hook adds its spike count per time step. Nothing is
written per batch and no second pass is needed.

    r_l   = total spikes of layer l / (T * n_l * number of clip-samples)
    NASFR = sum_l r_l * n_l / sum_l n_l        (n_l = neurons of layer l per sample per step)
"""
from __future__ import annotations

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
