"""What every spiking layer is: :class:`SpikingNeuron`, and :func:`spiking_layers` to find them.

A spiking layer maps an input current ``[N, T, ...]`` to spikes ``[N, T, ...]`` (0/1 in the input's
dtype), starting from a zero membrane at every call. The rest of the project reads a network's
neurons only through this class: NASFR and the per-layer firing rates (utils/run/metrics.py) count
the spikes of every :class:`SpikingNeuron`, ``-amp`` keeps them in float32 (utils/run/precision.py),
the figures (utils/analysis/plots.py) draw their membrane potentials, and the energy count
(utils/analysis/energy.py) takes their firing rates as the input rates of the next layer. A new
neuron subclasses it, sets ``backend`` through ``__init__`` and implements ``forward`` and
``membrane_potential``.
"""
from __future__ import annotations

import torch
from torch import nn

from ..fused import check_backend


class SpikingNeuron(nn.Module):
    """Base of every multi-step spiking layer (module doc).

    ``backend``: "fused" (the default, models/fused/) or "eager" (the definition stepped one time
    step at a time under autograd); both give the same spikes.
    """

    def __init__(self, backend: str = "fused"):
        super().__init__()
        self.backend = check_backend(backend)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def membrane_potential(self, x: torch.Tensor) -> tuple[torch.Tensor, float]:
        """(the membrane potential ``[N, T, ...]`` each spike decision compares, the threshold)
        for input ``x``: the spike at (n, t, ...) is 1 exactly where the potential is >= the
        threshold."""
        raise NotImplementedError


def spiking_layers(net: nn.Module) -> list[tuple[str, SpikingNeuron]]:
    """(name, module) of every spiking layer of ``net``, in registration (= forward) order."""
    return [(n, m) for n, m in net.named_modules() if isinstance(m, SpikingNeuron)]
