r"""Fused multi-step versions of spikingjelly 0.0.0.0.12's ``ParametricLIFNode`` and ``LIFNode``.

Arch B and C use these neurons with spikingjelly's defaults: v_threshold = 1, v_reset = 0 (hard
reset), decay_input = True, detach_reset = False, surrogate ATan(alpha = 2). Per time step, with
k = sigmoid(w) (PLIF, learnable scalar w, init w = -log(init_tau - 1) = 0 for init_tau = 2) or
k = 1/tau (LIF)::

    H[t] = V[t-1] + (X[t] - V[t-1]) * k        charge (V[-1] = 0: reset for every forward)
    S[t] = Θ(H[t] - Vth)                        spike
    V[t] = (1 - S[t]) * H[t]                    hard reset to 0, not detached

Backward uses the ATan surrogate dΘ/dz ≈ alpha / (2 * (1 + (pi/2 * alpha * z)^2)). The fused
autograd function runs the forward loop under no_grad, saves ``H`` only, and in backward runs::

    g_H[t]     = g_V[t]*(1 - S[t]) + (g_S[t] - g_V[t]*H[t]) * atan'(H[t] - Vth)
    g_X[t]     = g_H[t] * k;        g_V[t-1] = g_H[t] * (1 - k)
    g_k        = sum_t sum(g_H[t] * (X[t] - V[t-1]));   g_w = g_k * k * (1 - k)   (PLIF)

This matches spikingjelly's nodes stepped one step at a time (tests check it against spikingjelly).
"""
import math

import torch
from spikingjelly.clock_driven import surrogate
from torch import nn


def atan_surrogate(z: torch.Tensor, alpha: float) -> torch.Tensor:
    """spikingjelly's ATan surrogate derivative alpha / 2 / (1 + (pi/2*alpha*z)^2)."""
    return alpha / 2 / (1 + (math.pi / 2 * alpha * z) ** 2)


class DecayInputLIFFunction(torch.autograd.Function):
    """Fused multi-step decay-input LIF with hard reset to 0 over ``x: [N, T, ...]``.

    ``k`` is a 0-dim tensor (the charge factor); its gradient is returned so that PLIF can chain
    it to ``w`` through ``k = sigmoid(w)`` with ordinary autograd.
    """

    @staticmethod
    def forward(ctx, x, k, vth: float, alpha: float):
        h_seq = torch.empty_like(x)
        v = torch.zeros_like(x[:, 0])
        for t in range(x.shape[1]):
            h = v + (x[:, t] - v) * k
            v = (1.0 - (h - vth >= 0).to(x.dtype)) * h
            h_seq[:, t] = h
        ctx.save_for_backward(x, k, h_seq)
        ctx.vth, ctx.alpha = vth, alpha
        return (h_seq - vth >= 0).to(x.dtype)

    @staticmethod
    def backward(ctx, grad_s):
        x, k, h_seq = ctx.saved_tensors
        vth, alpha = ctx.vth, ctx.alpha
        spikes = (h_seq - vth >= 0).to(h_seq.dtype)
        v_prev = torch.zeros_like(h_seq)                      # V[t-1], V[-1] = 0
        v_prev[:, 1:] = (1.0 - spikes[:, :-1]) * h_seq[:, :-1]
        grad_x = torch.empty_like(h_seq)
        grad_v = torch.zeros_like(h_seq[:, 0])
        for t in reversed(range(h_seq.shape[1])):
            h = h_seq[:, t]
            grad_h = grad_v * (1.0 - spikes[:, t]) \
                + (grad_s[:, t] - grad_v * h) * atan_surrogate(h - vth, alpha)
            grad_x[:, t] = grad_h
            grad_v = grad_h * (1.0 - k)
        grad_k = None
        if ctx.needs_input_grad[1]:
            grad_k = (grad_x * (x - v_prev)).sum().reshape(k.shape)
        return grad_x * k, grad_k, None, None


class _DecayInputNode(nn.Module):
    """Shared multi-step layer: ``[N, T, ...]`` input -> ``[N, T, ...]`` spikes, stateless per call."""

    spiking = True

    def __init__(self, v_threshold: float = 1.0, alpha: float = 2.0, fused: bool = True):
        super().__init__()
        self.v_threshold, self.alpha, self.fused = v_threshold, alpha, fused

    def charge_factor(self, like: torch.Tensor) -> torch.Tensor:
        """The 0-dim charge factor k on ``like``'s device and dtype."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = self.charge_factor(x)
        if self.fused:
            return DecayInputLIFFunction.apply(x, k, self.v_threshold, self.alpha)
        return self._eager(x, k)

    def _eager(self, x: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """The same dynamics stepped under autograd (reference for tests and benchmarks)."""
        spike_fn = surrogate.ATan(alpha=self.alpha)
        v, spikes = torch.zeros_like(x[:, 0]), []
        for x_t in x.unbind(1):
            h = v + (x_t - v) * k
            s = spike_fn(h - self.v_threshold)
            v = (1.0 - s) * h
            spikes.append(s)
        return torch.stack(spikes, dim=1)

    def extra_repr(self) -> str:
        return f"v_threshold={self.v_threshold}, alpha={self.alpha}, fused={self.fused}"


class PLIF(_DecayInputNode):
    """Parametric LIF (spikingjelly ``ParametricLIFNode``): k = sigmoid(w), w learnable scalar."""

    def __init__(self, init_tau: float = 2.0, v_threshold: float = 1.0, alpha: float = 2.0,
                 fused: bool = True):
        super().__init__(v_threshold, alpha, fused)
        if init_tau <= 1:
            raise ValueError(f"PLIF: init_tau must be > 1, got {init_tau}")
        self.w = nn.Parameter(torch.as_tensor(-math.log(init_tau - 1.0)))

    def charge_factor(self, like: torch.Tensor) -> torch.Tensor:
        return self.w.sigmoid().to(like.dtype)


class LIFNode(_DecayInputNode):
    """Plain LIF (spikingjelly ``LIFNode``): k = 1/tau, fixed.

    spikingjelly divides by tau where this multiplies by 1/tau: bit-identical for tau = 2 (the only
    value the architectures use), within an ulp otherwise.
    """

    def __init__(self, tau: float = 2.0, v_threshold: float = 1.0, alpha: float = 2.0,
                 fused: bool = True):
        super().__init__(v_threshold, alpha, fused)
        if tau <= 1:
            raise ValueError(f"LIFNode: tau must be > 1, got {tau}")
        self.tau = tau

    def charge_factor(self, like: torch.Tensor) -> torch.Tensor:
        return torch.tensor(1.0 / self.tau, dtype=like.dtype, device=like.device)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", tau={self.tau}"
