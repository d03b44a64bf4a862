r"""Fused multi-step LIF of arch A/D: the same spikes and gradients as ``models.module.lif.lif_eager``.

Forward, without an autograd graph. On CPU ``torch.where``/``masked_fill`` and bool-producing
comparisons are scalar loops, 5-30x slower than vectorised arithmetic, so the loop carries the
negated state ``q = -h``; the hard reset is then one ``torch.threshold`` ("keep if greater, else
value")::

    -u[t] = q - I[t]                                   (= -(h + I); rounding is sign-symmetric)
    -r[t] = threshold(-u[t], -Vth, -Vreset)            (-u if u < Vth, else -Vreset)
    q     = -r[t] * decay - beta                       (= -(r*decay + beta) exactly)

Three vectorised ops per step into preallocated buffers; the spikes (-u <= -Vth) are one pass
after the loop. All of it is exact: ``u - Vth >= 0`` equals ``u >= Vth`` for IEEE floats without
flush-to-zero, and for s in {0, 1} ``s*Vreset + (1-s)*u`` is exactly ``Vreset`` or ``u``. Only the
sign of a zero or an infinite ``u`` could differ, neither of which changes a spike.

Only ``-u`` is saved. Backward is the reverse-time recursion written as a linear recurrence, so
everything except one multiply-add per step runs for a block of steps at once::

    g_u[t] = A[t] + B[t] * g_u[t+1]          (g_u[T] = 0),   g_I[t] = g_u[t]
    A[t]   = g_s[t] * sur(u[t])
    B[t]   = decay * ((Vreset - u[t]) * sur(u[t]) + 1 - s[t])

(from g_r = decay*g_h[t], g_u[t] = (g_s[t] + g_r*(Vreset - u[t]))*sur(u[t]) + g_r*(1 - s[t]) and
g_h[t] = g_u[t+1]; the reset is not detached).
"""
import torch

from .blocks import reverse_blocks, steps_per_block


def negated_membrane(x: torch.Tensor, vth: float, decay: float, beta: float,
                     vreset: float) -> torch.Tensor:
    """-u[t] for every step of ``x: [N, T, ...]``, contiguous."""
    nu_seq = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    q = torch.empty_like(nu_seq[:, 0])                                    # -h
    for t in range(x.shape[1]):
        nu = nu_seq[:, t]
        if t == 0:
            torch.neg(x[:, 0], out=nu)                            # h[-1] = 0
        else:
            torch.sub(q, x[:, t], out=nu)
        torch.threshold(nu, -vth, -vreset, out=q)                 # hard reset
        q.mul_(decay)                                             # leak
        if beta != 0.0:                                           # - 0.0 would be a no-op pass
            q.sub_(beta)
    return nu_seq


class LIFFunction(torch.autograd.Function):
    """``LIFFunction.apply(x, vth, decay, beta, vreset, lens)`` -> spikes, x: [N, T, ...]."""

    @staticmethod
    def forward(ctx, x, vth: float, decay: float, beta: float, vreset: float, lens: float):
        nu_seq = negated_membrane(x, vth, decay, beta, vreset)
        spikes = torch.le(nu_seq, -vth, out=torch.empty_like(nu_seq))      # u >= Vth as 0/1
        ctx.save_for_backward(nu_seq)
        ctx.consts = (vth, decay, vreset, lens)
        return spikes

    @staticmethod
    def backward(ctx, grad_s):
        (nu_seq,) = ctx.saved_tensors
        vth, decay, vreset, lens = ctx.consts
        grad_x = torch.empty_like(nu_seq)                         # holds A, then g_u, in place
        carry = None                                              # g_u[t+1]
        for t0, t1 in reverse_blocks(nu_seq.shape[1], steps_per_block(nu_seq)):
            nu = nu_seq[:, t0:t1]
            # sur = 1/(2 lens) on |u - Vth| < lens; |(-u) + Vth| == |u - Vth| exactly
            sur = torch.add(nu, vth).abs_()
            torch.lt(sur, lens, out=sur).div_(2.0 * lens)
            torch.mul(grad_s[:, t0:t1], sur, out=grad_x[:, t0:t1])           # A
            coef = torch.add(nu, vreset).mul_(sur)                           # (Vreset - u)*sur
            coef.add_(torch.gt(nu, -vth, out=sur)).mul_(decay)               # + (u < Vth); B
            del sur
            for t in reversed(range(t0, t1)):
                g = grad_x[:, t]
                if carry is not None:
                    torch.addcmul(g, coef[:, t - t0], carry, out=g)
                carry = g
        return grad_x, None, None, None, None, None
