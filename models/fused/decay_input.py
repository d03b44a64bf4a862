r"""Fused multi-step decay-input LIF (spikingjelly's ParametricLIFNode / LIFNode of arch B/C): the
same spikes and gradients as ``models.module.decay_input.decay_input_eager``.

Forward without an autograd graph, saving only the input ``x`` and the 0-dim charge factor ``k``.
Backward first re-runs the forward recursion (the same exact operations, so the same ``H`` bit for
bit) into the buffer that then receives the input gradient, and walks back over it in blocks of
time steps: one full-size buffer instead of the eager graph's several per step::

    g_H[t]     = g_V[t]*(1 - S[t]) + (g_S[t] - g_V[t]*H[t]) * atan'(H[t] - Vth)
    g_X[t]     = g_H[t] * k;        g_V[t-1] = g_H[t] * (1 - k)
    g_k        = sum_t sum(g_H[t] * (X[t] - V[t-1]))

as the recurrence g_H[t] = A[t] + B[t]*g_H[t+1] with A = g_S*sg(H), B = (1 - k)*((1 - S) - H*sg(H)).
Every operation is vectorised arithmetic (no bool masks, no torch.where: both are scalar loops on
CPU). The gradient of ``k`` is returned, so PLIF chains it to ``w`` through ``k = sigmoid(w)``.
"""
import math

import torch

from .blocks import reverse_blocks, steps_per_block


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
    """``DecayInputLIFFunction.apply(x, k, vth, alpha)`` -> spikes, x: [N, T, ...], k: 0-dim."""

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
        # 2. the reverse recurrence, block by block
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
