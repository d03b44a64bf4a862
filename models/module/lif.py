r"""Multi-step LIF neuron of arch A and D (docs/reference.md, "LIF"), hard reset, rectangular surrogate.

Update equations for one neuron, per time step t (``h`` starts at 0 for every forward call, i.e.
the state is reset for every batch)::

    u[t] = h[t-1] + I[t]                       membrane potential after charging (h[-1] = 0)
    s[t] = Θ(u[t] - Vth)                       Heaviside spike, Θ(z) = 1 if z >= 0 else 0
    r[t] = s[t]*Vreset + (1 - s[t])*u[t]       hard reset
    h[t] = decay*r[t] + beta                   leak (decay is the authors' "alpha")

Defaults: Vth = 0.3, decay = 0.3, beta = 0, Vreset = 0. Backward replaces dΘ/du by the
rectangular surrogate ``1/(2*lens)`` on ``|u - Vth| < lens`` (0 elsewhere), lens = 0.25. The reset
is not detached, so the gradient also flows through ``s[t]`` inside ``r[t]``.

:func:`lif_eager` is the definition (``backend="eager"``). The default ``backend="fused"`` runs
models/fused/lif.py: the same spikes and gradients as one autograd node.
"""
import torch

from ..fused.lif import LIFFunction
from .neuron import SpikingNeuron


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
              vreset: float = 0.0, lens: float = 0.25, membrane: list | None = None) -> torch.Tensor:
    """The LIF over ``x: [N, T, ...]``, one time step at a time under autograd; returns the spikes.
    ``membrane``: a list that receives u[t] of every step (figures of membrane potentials)."""
    h, spikes = torch.zeros_like(x[:, 0]), []
    for i_t in x.unbind(1):
        u = h + i_t
        s = RectSpike.apply(u, vth, lens)
        h = (s * vreset + (1.0 - s) * u) * decay + beta
        spikes.append(s)
        if membrane is not None:
            membrane.append(u)
    return torch.stack(spikes, dim=1)


def state_dtype(x: torch.Tensor) -> torch.dtype:
    """Membrane potentials are integrated in float32 when the input is half/bfloat16 (mixed
    precision): a 7- or 10-bit mantissa would move spikes at the threshold."""
    return torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype


class LIF(SpikingNeuron):
    """Multi-step LIF layer: ``[N, T, ...]`` input current -> ``[N, T, ...]`` spikes.

    Stateless across calls (the membrane starts at 0 on every forward). ``backend``: "fused"
    (default) or "eager" (the definition); both give the same spikes and gradients. Half and
    bfloat16 inputs are integrated in float32; spikes come back in the input dtype.
    """

    def __init__(self, vth: float = 0.3, decay: float = 0.3, beta: float = 0.0,
                 vreset: float = 0.0, lens: float = 0.25, backend: str = "fused"):
        super().__init__(backend)
        if lens <= 0:
            raise ValueError(f"LIF: lens must be > 0, got {lens}")
        self.vth, self.decay, self.beta, self.vreset, self.lens = vth, decay, beta, vreset, lens

    def extra_repr(self) -> str:
        return (f"vth={self.vth}, decay={self.decay}, beta={self.beta}, vreset={self.vreset}, "
                f"lens={self.lens}, backend={self.backend!r}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        args = (self.vth, self.decay, self.beta, self.vreset, self.lens)
        dtype = x.dtype
        x = x.to(state_dtype(x))
        spikes = lif_eager(x, *args) if self.backend == "eager" else LIFFunction.apply(x, *args)
        return spikes.to(dtype)

    @torch.no_grad()
    def membrane_potential(self, x: torch.Tensor) -> tuple[torch.Tensor, float]:
        """(u [N, T, ...] before each spike decision, the threshold) for input current ``x``."""
        u = []
        lif_eager(x.float(), self.vth, self.decay, self.beta, self.vreset, self.lens, membrane=u)
        return torch.stack(u, dim=1), float(self.vth)
