r"""The decay-input LIF neurons of arch B/C and SEW-ResNet-18: spikingjelly 0.0.0.0.12's
``ParametricLIFNode`` (PLIF) and ``LIFNode``, multi-step (docs/reference.md, "Architectures").

They use spikingjelly's defaults: v_threshold = 1, v_reset = 0 (hard reset), decay_input = True,
detach_reset = False, surrogate ATan(alpha = 2). Per time step, with k = sigmoid(w) (PLIF, learnable
scalar w, init w = -log(init_tau - 1) = 0 for init_tau = 2) or k = 1/tau (LIF)::

    H[t] = V[t-1] + (X[t] - V[t-1]) * k        charge (V[-1] = 0: reset for every forward)
    S[t] = Θ(H[t] - Vth)                        spike
    V[t] = (1 - S[t]) * H[t]                    hard reset to 0, not detached

Backward uses the ATan surrogate dΘ/dz = alpha / (2 * (1 + (pi/2 * alpha * z)^2)).
:func:`decay_input_eager` is the definition (``backend="eager"``); the default ``backend="fused"``
runs models/fused/decay_input.py, the same spikes and gradients as one autograd node. Both equal
spikingjelly's nodes stepped one step at a time (tests/test_lif.py).
"""
import math

import torch
from torch import nn

from utils.compat import import_spikingjelly

from ..fused.decay_input import DecayInputLIFFunction
from .neuron import SpikingNeuron

surrogate = import_spikingjelly("clock_driven.surrogate")


def decay_input_eager(x: torch.Tensor, k: torch.Tensor, vth: float = 1.0, alpha: float = 2.0,
                      membrane: list | None = None) -> torch.Tensor:
    """The neuron over ``x: [N, T, ...]`` with charge factor ``k``, one step at a time under
    autograd; returns the spikes. ``membrane``: a list that receives H[t] of every step."""
    spike_fn = surrogate.ATan(alpha=alpha)
    v, spikes = torch.zeros_like(x[:, 0]), []
    for x_t in x.unbind(1):
        h = v + (x_t - v) * k
        s = spike_fn(h - vth)
        v = (1.0 - s) * h
        spikes.append(s)
        if membrane is not None:
            membrane.append(h)
    return torch.stack(spikes, dim=1)


class DecayInputNode(SpikingNeuron):
    """Multi-step layer: ``[N, T, ...]`` input -> ``[N, T, ...]`` spikes, stateless per call.
    Subclasses define the charge factor k."""

    def __init__(self, v_threshold: float = 1.0, alpha: float = 2.0, backend: str = "fused"):
        super().__init__(backend)
        self.v_threshold, self.alpha = v_threshold, alpha

    def charge_factor(self, like: torch.Tensor) -> torch.Tensor:
        """The 0-dim charge factor k on ``like``'s device and dtype."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = self.charge_factor(x)
        if self.backend == "eager":
            return decay_input_eager(x, k, self.v_threshold, self.alpha)
        return DecayInputLIFFunction.apply(x, k, self.v_threshold, self.alpha)

    @torch.no_grad()
    def membrane_potential(self, x: torch.Tensor) -> tuple[torch.Tensor, float]:
        """(H [N, T, ...] before each spike decision, the threshold) for input ``x``."""
        x, h = x.float(), []
        decay_input_eager(x, self.charge_factor(x), self.v_threshold, self.alpha, membrane=h)
        return torch.stack(h, dim=1), float(self.v_threshold)

    def extra_repr(self) -> str:
        return f"v_threshold={self.v_threshold}, alpha={self.alpha}, backend={self.backend!r}"


class PLIF(DecayInputNode):
    """Parametric LIF (spikingjelly ``ParametricLIFNode``): k = sigmoid(w), w learnable scalar."""

    def __init__(self, init_tau: float = 2.0, v_threshold: float = 1.0, alpha: float = 2.0,
                 backend: str = "fused"):
        super().__init__(v_threshold, alpha, backend)
        if init_tau <= 1:
            raise ValueError(f"PLIF: init_tau must be > 1, got {init_tau}")
        self.w = nn.Parameter(torch.as_tensor(-math.log(init_tau - 1.0)))

    def charge_factor(self, like: torch.Tensor) -> torch.Tensor:
        return self.w.sigmoid().to(like.dtype)


class LIFNode(DecayInputNode):
    """Plain LIF (spikingjelly ``LIFNode``): k = 1/tau, fixed.

    spikingjelly divides by tau where this multiplies by 1/tau: bit-identical for tau = 2 (the only
    value the architectures use), within an ulp otherwise.
    """

    def __init__(self, tau: float = 2.0, v_threshold: float = 1.0, alpha: float = 2.0,
                 backend: str = "fused"):
        super().__init__(v_threshold, alpha, backend)
        if tau <= 1:
            raise ValueError(f"LIFNode: tau must be > 1, got {tau}")
        self.tau = tau

    def charge_factor(self, like: torch.Tensor) -> torch.Tensor:
        return torch.tensor(1.0 / self.tau, dtype=like.dtype, device=like.device)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", tau={self.tau}"


NEURONS = {"plif": PLIF, "lif": LIFNode}
