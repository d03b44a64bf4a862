r"""Multi-step LIF neuron of arch A and D (SPEC section 1), hard reset, rectangular surrogate.

Update equations for one neuron, per time step t (snntorch-style; ``h`` starts at 0 for every
forward call, i.e. the state is reset for every batch)::

    u[t] = h[t-1] + I[t]                       membrane potential after charging (h[-1] = 0)
    s[t] = Θ(u[t] - Vth)                       Heaviside spike, Θ(z) = 1 if z >= 0 else 0
    r[t] = s[t]*Vreset + (1 - s[t])*u[t]       hard reset
    h[t] = decay*r[t] + beta                   leak (decay is the SPEC's "alpha")

Defaults: Vth = 0.3, decay = 0.3, beta = 0, Vreset = 0. Backward replaces dΘ/du by the
rectangular surrogate ``1/(2*lens)`` on ``|u - Vth| < lens`` (0 elsewhere), lens = 0.25. The reset
is not detached, so the gradient also flows through ``s[t]`` inside ``r[t]``.

Two implementations give identical spikes and gradients:

* :func:`lif_eager` -- the definition: a Python loop under autograd (several saved tensors per step).
* :class:`LIFFunction` (default) -- one autograd node; the forward loop runs without a graph and
  saves only ``-u`` (one tensor per step). Backward is the reverse-time recursion written as a linear
  recurrence, so everything except one multiply-add per step is computed for many steps at once::

      g_u[t] = A[t] + B[t] * g_u[t+1]          (g_u[T] = 0),   g_I[t] = g_u[t]
      A[t]   = g_s[t] * sur(u[t])
      B[t]   = decay * ((Vreset - u[t]) * sur(u[t]) + 1 - s[t])

  (from g_r = decay*g_h[t], g_u[t] = (g_s[t] + g_r*(Vreset - u[t]))*sur(u[t]) + g_r*(1 - s[t]) and
  g_h[t] = g_u[t+1]).

Why the forward is bit-identical to the eager loop: ``u - Vth >= 0`` equals ``u >= Vth`` for IEEE
floats without flush-to-zero (a difference of two distinct floats never rounds to 0), and for
s in {0, 1} ``s*Vreset + (1-s)*u`` is exactly ``Vreset`` or ``u`` (adding a zero product is exact).
Only the sign of a zero or an infinite ``u`` could differ, neither of which changes a spike.
"""
import torch
from torch import nn

# Work is done in blocks of time steps holding about this many elements: big enough that each
# vectorised op amortises its dispatch cost, small enough that the block temporaries stay a small
# fraction of the layer's activations (arch B at 128x128 has 16.7M elements per time step).
BLOCK_ELEMENTS = 1 << 22


def steps_per_block(x: torch.Tensor) -> int:
    """How many time steps of ``x: [N, T, ...]`` one block holds (at least 1)."""
    per_step = max(1, x[:, 0].numel())
    return max(1, min(x.shape[1], BLOCK_ELEMENTS // per_step))


def reverse_blocks(T: int, size: int):
    """(t0, t1) ranges covering [0, T) in blocks of ``size`` steps, last block first."""
    t1 = T
    while t1 > 0:
        t0 = max(0, t1 - size)
        yield t0, t1
        t1 = t0


def state_dtype(x: torch.Tensor) -> torch.dtype:
    """Membrane potentials are integrated in float32 when the input is half/bfloat16 (AMP):
    a 10-bit mantissa would move spikes at the threshold. Other dtypes are kept."""
    return torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype


class RectSpike(torch.autograd.Function):
    """Heaviside of ``u - vth`` with the rectangular surrogate gradient 1/(2*lens) on |u-vth|<lens."""

    @staticmethod
    def forward(ctx, u, vth: float, lens: float):
        ctx.save_for_backward(u)
        ctx.vth, ctx.lens = vth, lens
        return (u - vth >= 0).to(u.dtype)

    @staticmethod
    def backward(ctx, grad_s):
        (u,) = ctx.saved_tensors
        return grad_s * rect_surrogate(u, ctx.vth, ctx.lens), None, None


def rect_surrogate(u: torch.Tensor, vth: float, lens: float) -> torch.Tensor:
    """ds/du of the rectangular surrogate: 1/(2*lens) where |u - vth| < lens, else 0."""
    return ((u - vth).abs() < lens).to(u.dtype) / (2.0 * lens)


def lif_eager(x: torch.Tensor, vth: float = 0.3, decay: float = 0.3, beta: float = 0.0,
              vreset: float = 0.0, lens: float = 0.25) -> torch.Tensor:
    """Reference LIF over ``x: [N, T, ...]`` stepped one time step at a time under autograd."""
    h, spikes = torch.zeros_like(x[:, 0]), []
    for i_t in x.unbind(1):
        u = h + i_t
        s = RectSpike.apply(u, vth, lens)
        h = (s * vreset + (1.0 - s) * u) * decay + beta
        spikes.append(s)
    return torch.stack(spikes, dim=1)


def _negated_membrane(x: torch.Tensor, vth: float, decay: float, beta: float,
                      vreset: float) -> torch.Tensor:
    """-u[t] for every step of ``x: [N, T, ...]`` (see :class:`LIFFunction`), contiguous."""
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
    """Fused multi-step LIF (same equations as :func:`lif_eager`), saving only ``-u`` for backward.

    Why it looks unusual: on CPU ``torch.where``/``masked_fill`` and bool-producing comparisons
    are scalar loops, 5-30x slower than vectorised arithmetic. The loop therefore carries the
    negated state ``q = -h`` so that the hard reset is one ``torch.threshold`` (a vectorised
    "keep if greater, else value")::

        -u[t] = q - I[t]                                   (= -(h + I), rounding is sign-symmetric)
        -r[t] = threshold(-u[t], -Vth, -Vreset)            (-u if -u > -Vth, i.e. u < Vth; else -Vreset)
        q     = -r[t] * decay - beta                       (= -(r*decay + beta) exactly)

    Every step is 3 vectorised ops into preallocated buffers, and the spikes (-u <= -Vth) are
    one pass after the loop. All of it is exact, so spikes equal the eager loop's bit for bit.
    """

    @staticmethod
    def forward(ctx, x, vth: float, decay: float, beta: float, vreset: float, lens: float,
                rebuild_input=None):
        nu_seq = _negated_membrane(x, vth, decay, beta, vreset)
        spikes = torch.le(nu_seq, -vth, out=torch.empty_like(nu_seq))      # u >= Vth as 0/1
        ctx.rebuild_input = rebuild_input
        if rebuild_input is not None:      # -u is recomputed in backward from the rebuilt input
            nu_seq = nu_seq.new_empty(0)
        ctx.save_for_backward(nu_seq)
        ctx.consts = (vth, decay, beta, vreset, lens)
        return spikes

    @staticmethod
    def backward(ctx, grad_s):
        (nu_seq,) = ctx.saved_tensors
        vth, decay, beta, vreset, lens = ctx.consts
        if ctx.rebuild_input is not None:
            nu_seq = _negated_membrane(ctx.rebuild_input(), vth, decay, beta, vreset)
            ctx.rebuild_input = None
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
        return grad_x, None, None, None, None, None, None


class LIF(nn.Module):
    """Multi-step LIF layer: ``[N, T, ...]`` input current -> ``[N, T, ...]`` spikes.

    Stateless across calls (the membrane starts at 0 on every forward). ``fused=False`` selects the
    eager reference path (tests, benchmarks); both give the same spikes and gradients. Half and
    bfloat16 inputs (AMP) are integrated in float32; spikes come back in the input dtype.
    """

    spiking = True

    def __init__(self, vth: float = 0.3, decay: float = 0.3, beta: float = 0.0,
                 vreset: float = 0.0, lens: float = 0.25, fused: bool = True):
        super().__init__()
        if lens <= 0:
            raise ValueError(f"LIF: lens must be > 0, got {lens}")
        self.vth, self.decay, self.beta, self.vreset, self.lens = vth, decay, beta, vreset, lens
        self.fused = fused

    def extra_repr(self) -> str:
        return (f"vth={self.vth}, decay={self.decay}, beta={self.beta}, vreset={self.vreset}, "
                f"lens={self.lens}, fused={self.fused}")

    def forward(self, x: torch.Tensor, rebuild_input=None) -> torch.Tensor:
        """``rebuild_input``: optional zero-argument function returning a tensor bit-identical
        to ``x`` during backward; the fused path then recomputes the membrane potentials in
        backward instead of keeping them (ConvAttLIF's lean path)."""
        args = (self.vth, self.decay, self.beta, self.vreset, self.lens)
        if not self.fused:
            return lif_eager(x, *args)
        dtype, sdt = x.dtype, state_dtype(x)
        if rebuild_input is not None and sdt != dtype:
            rebuild_input = None
        spikes = LIFFunction.apply(x.to(sdt), *args, rebuild_input)
        return spikes.to(dtype)
