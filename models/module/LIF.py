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
* :class:`LIFFunction` (default) -- one autograd node; the forward loop runs under no_grad and
  saves only ``u`` (one tensor per step); backward runs the explicit reverse-time recursion::

      g_r      = decay * g_h[t]
      g_u[t]   = (g_s[t] + g_r*(Vreset - u[t])) * surrogate(u[t]) + g_r*(1 - s[t])
      g_I[t]   = g_u[t];   g_h[t-1] = g_u[t]
"""
import torch
from torch import nn


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


class LIFFunction(torch.autograd.Function):
    """Fused multi-step LIF (same equations as :func:`lif_eager`), saving only ``u`` for backward."""

    @staticmethod
    def forward(ctx, x, vth: float, decay: float, beta: float, vreset: float, lens: float):
        u_seq = torch.empty_like(x)
        h = torch.zeros_like(x[:, 0])
        for t in range(x.shape[1]):
            u = h + x[:, t]
            s = (u - vth >= 0).to(x.dtype)
            h = (s * vreset + (1.0 - s) * u) * decay + beta
            u_seq[:, t] = u
        ctx.save_for_backward(u_seq)
        ctx.consts = (vth, decay, vreset, lens)
        return (u_seq - vth >= 0).to(x.dtype)

    @staticmethod
    def backward(ctx, grad_s):
        (u_seq,) = ctx.saved_tensors
        vth, decay, vreset, lens = ctx.consts
        grad_x = torch.empty_like(u_seq)
        grad_h = torch.zeros_like(u_seq[:, 0])
        for t in reversed(range(u_seq.shape[1])):
            u = u_seq[:, t]
            s = (u - vth >= 0).to(u.dtype)
            grad_r = grad_h * decay
            grad_u = (grad_s[:, t] + grad_r * (vreset - u)) * rect_surrogate(u, vth, lens) \
                + grad_r * (1.0 - s)
            grad_x[:, t] = grad_u
            grad_h = grad_u
        return grad_x, None, None, None, None, None


class LIF(nn.Module):
    """Multi-step LIF layer: ``[N, T, ...]`` input current -> ``[N, T, ...]`` spikes.

    Stateless across calls (the membrane starts at 0 on every forward). ``fused=False`` selects the
    eager reference path (tests, benchmarks); both give the same spikes and gradients.
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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        args = (self.vth, self.decay, self.beta, self.vreset, self.lens)
        return LIFFunction.apply(x, *args) if self.fused else lif_eager(x, *args)
