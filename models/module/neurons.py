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
from torch import nn

from utils.compat import import_spikingjelly

from .LIF import reverse_blocks, state_dtype, steps_per_block

surrogate = import_spikingjelly("clock_driven.surrogate")


def atan_surrogate(z: torch.Tensor, alpha: float) -> torch.Tensor:
    """spikingjelly's ATan surrogate derivative alpha / 2 / (1 + (pi/2*alpha*z)^2)."""
    return alpha / 2 / (1 + (math.pi / 2 * alpha * z) ** 2)


def _charge(x_t: torch.Tensor, v: torch.Tensor, k: torch.Tensor, out: torch.Tensor, first: bool):
    """H[t] = V[t-1] + (X[t] - V[t-1]) * k into ``out``, in spikingjelly's operation order."""
    if first:                                                   # V[-1] = 0: H = X*k exactly
        return torch.mul(x_t, k, out=out)
    return torch.sub(x_t, v, out=out).mul_(k).add_(v)


def _reset(h: torch.Tensor, s: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """V = (1 - S) * H for S in {0, 1}, as H - H*S (exact; avoids the slow scalar torch.where)."""
    return torch.addcmul(h, h, s, value=-1.0, out=out)


class DecayInputLIFFunction(torch.autograd.Function):
    """Fused multi-step decay-input LIF with hard reset to 0 over ``x: [N, T, ...]``.

    ``k`` is a 0-dim tensor (the charge factor); its gradient is returned so that PLIF can chain
    it to ``w`` through ``k = sigmoid(w)`` with ordinary autograd.

    Memory: only the input ``x`` is saved. Backward first re-runs the forward recursion (the same
    exact operations, so the same ``H`` bit for bit) into the buffer that then receives the input
    gradient, and walks back over it in blocks of time steps: one full-size buffer instead of
    the eager graph's several per step. Every operation is vectorised arithmetic (no bool masks,
    no torch.where: both are scalar loops on CPU).
    """

    @staticmethod
    def forward(ctx, x, k, vth: float, alpha: float):
        spikes = torch.empty(x.shape, dtype=x.dtype, device=x.device)
        h, v = torch.empty_like(spikes[:, 0]), torch.empty_like(spikes[:, 0])
        for t in range(x.shape[1]):
            _charge(x[:, t], v, k, h, t == 0)
            s = torch.ge(h, vth, out=spikes[:, t])
            _reset(h, s, v)
        ctx.save_for_backward(x, k)
        ctx.vth, ctx.alpha = vth, alpha
        return spikes

    @staticmethod
    def backward(ctx, grad_s):
        x, k = ctx.saved_tensors
        vth, alpha = ctx.vth, ctx.alpha
        T = x.shape[1]
        # 1. H[t] for every t, recomputed into the gradient buffer
        grad_x = torch.empty(x.shape, dtype=x.dtype, device=x.device)
        v, s = torch.empty_like(grad_x[:, 0]), torch.empty_like(grad_x[:, 0])
        for t in range(T):
            h = _charge(x[:, t], v, k, grad_x[:, t], t == 0)
            _reset(h, torch.ge(h, vth, out=s), v)
        del v, s
        # 2. reverse recurrence g_H[t] = A[t] + B[t]*g_H[t+1] with
        #    A = g_S*sg(H),  B = (1 - k)*((1 - S) - H*sg(H)),  sg = ATan surrogate at H - Vth
        need_k = ctx.needs_input_grad[1]
        grad_k = torch.zeros((), dtype=x.dtype, device=x.device) if need_k else None
        one_minus_k = 1.0 - k
        carry = None
        for t0, t1 in reverse_blocks(T, steps_per_block(x)):
            h = grad_x[:, t0:t1]
            sg = atan_surrogate(h - vth, alpha)
            coef = torch.ge(h, vth, out=torch.empty_like(h)).neg_().add_(1.0)      # 1 - S
            coef.addcmul_(h, sg, value=-1.0).mul_(one_minus_k)                      # B
            a = sg.mul_(grad_s[:, t0:t1])                                          # A
            if need_k:                       # X[t] - V[t-1], V[t-1] = H - H*S of step t-1
                d = x[:, t0:t1].clone()
                if t0 > 0 or t1 - t0 > 1:
                    lo = max(t0 - 1, 0)
                    hp = grad_x[:, lo:t1 - 1]
                    vp = _reset(hp, torch.ge(hp, vth, out=torch.empty_like(hp)), torch.empty_like(hp))
                    d[:, (1 if t0 == 0 else 0):].sub_(vp)
            for t in reversed(range(t0, t1)):
                g = a[:, t - t0]
                if carry is not None:
                    torch.addcmul(g, coef[:, t - t0], carry, out=g)
                carry = g
            if need_k:
                grad_k += torch.mul(a, d, out=d).sum()
            torch.mul(a, k, out=h)                                                  # g_X = g_H*k
        if need_k:
            grad_k = grad_k.reshape(k.shape)
        return grad_x, grad_k, None, None


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
