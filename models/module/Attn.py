r"""ASA: Advance Spatial Attention on the membrane-potential input of a spiking layer.

ASA re-weights the input current ``x`` of shape ``[N, T, C, H, W]`` (output of conv + BN [+ pool])
before it reaches the LIF neurons, so that redundant spikes are suppressed.

Equations (``lam`` = λ, ``k_c = int(C*λ)``, ``k_t = int(T*λ)``)::

    avg[n,t,c] = mean_{h,w} x[n,t,c,h,w]          mx[n,t,c] = max_{h,w} x[n,t,c,h,w]
    score      = 0.5*(avg + mx) + alpha*avg + beta*mx                       # [N, T, C]
    score      = fc(score) along T                 # Linear(T,T) or Linear(T,T/r)-ReLU-Linear(T/r,T)
    Mc[n,t,c]  = 1 if c is among the top-k_c of score[n,t,:]               # channel mask
    Mt[n,t,c]  = 1 if t is among the top-k_t of score[n,:,c]               # time mask
    M          = Mc XOR Mt                          # "important" positions; 1-M "sub-important"
    xi = M*x,  xs = (1-M)*x        (T and C flattened T-major into one axis of length T*C)
    Ai = [mean_TC(xi)/λ,     max_TC(xi)]            # [N, 2, H, W]
    As = [mean_TC(xs)/(1-λ), max_TC(xs)]
    y  = sigmoid(conv1(Ai)) * xi + sigmoid(conv2(As)) * xs   # spatial maps broadcast over T, C

Quirks of the authors' implementation, reproduced by ``mask="reference"``:

* Batch coupling: every sample's top-k indices are written into every sample's mask, so Mc and Mt
  are the UNION (logical OR) over the batch of the per-sample top-k masks. A sample's output then
  depends on the rest of its batch and on the batch size (at test time: on how clips are grouped).
  ``mask="per_sample"`` gives each sample its own masks, as the paper describes.
* XOR: the authors average the two masks and keep the positions equal to 0.5, i.e. exactly one of
  Mc, Mt set -- an exclusive or, not an AND.
* Dead parameters: ``alpha``, ``beta`` and ``fc`` only decide which positions win the top-k; top-k
  is not differentiable, so they never receive a gradient and stay at their initial values. They
  are kept so that the authors' checkpoints load.
* Batch size 1 crashes in the reference (a ``squeeze()`` drops the batch axis); here both modes
  work for N = 1 (for N = 1 the two modes coincide).
* ``max_TC`` routes its gradient to a single element (``torch.max(dim)``), not split among ties.
* Ties in the top-k: ``torch.topk`` orders equal scores one way on CPU and another on CUDA. With
  ``reduction`` > 1 the fc's ReLU can zero a whole column, and the channels concerned then share
  one score, so the masks (and the spikes after them) can differ between devices, as they do for
  the authors' code. tests/test_cuda.py checks CUDA's choices are valid top-k sets.

``backend="eager"`` computes the re-weighting with plain autograd ops (:meth:`ASA.reweight_eager`,
the definition); the default ``backend="fused"`` runs models/fused/attn.py, the same output as one
autograd node that keeps only ``x`` for backward.
"""
import torch
from torch import nn

from ..fused import check_backend
from ..fused.attn import ASAFunction

MASK_MODES = ("reference", "per_sample")


def topk_mask(score: torch.Tensor, k: int, dim: int) -> torch.Tensor:
    """0/1 mask (dtype of ``score``) marking the ``k`` largest entries of ``score`` along ``dim``."""
    idx = score.topk(k, dim=dim).indices
    return torch.zeros_like(score).scatter_(dim, idx, 1.0)


def pool_tc(x: torch.Tensor, mean_scale: float) -> torch.Tensor:
    """[mean_TC(x)*scale, max_TC(x)] as [N, 2, H, W] (T and C flattened T-major)."""
    flat = x.flatten(1, 2)
    return torch.stack((flat.mean(1) * mean_scale, flat.max(1).values), dim=1)


class ASA(nn.Module):
    """Advance Spatial Attention over ``x: [N, T, C, H, W]`` (see the module docstring).

    Args:
        T: number of time steps (the fc acts along T, so T is fixed at construction).
        channels: number of channels C (only validated against the input; no per-channel weights).
        reduction: fc bottleneck ratio r; 1 gives a single Linear(T, T).
        lam: split ratio λ in (0, 1); top-k sizes are int(C*λ) and int(T*λ).
        mask: "reference" (batch-union masks, the authors' behaviour) or "per_sample".
        backend: "fused" (default) or "eager" (the definition); the same output.
    """

    def __init__(self, T: int, channels: int, reduction: int = 1, lam: float = 0.5,
                 mask: str = "reference", backend: str = "fused"):
        super().__init__()
        if not (isinstance(T, int) and T >= 1):
            raise ValueError(f"ASA: T must be a positive int, got {T!r}")
        if not (isinstance(channels, int) and channels >= 1):
            raise ValueError(f"ASA: channels must be a positive int, got {channels!r}")
        if not (isinstance(reduction, int) and reduction >= 1):
            raise ValueError(f"ASA: reduction must be a positive int, got {reduction!r}")
        if T // reduction < 1:
            raise ValueError(f"ASA: reduction ({reduction}) must not exceed T ({T}) so that "
                             f"the fc bottleneck T//reduction is at least 1")
        if not 0.0 < lam < 1.0:
            raise ValueError(f"ASA: lam must be in (0, 1), got {lam!r}")
        if mask not in MASK_MODES:
            raise ValueError(f"ASA: mask must be one of {MASK_MODES}, got {mask!r}")
        self.T, self.channels, self.lam, self.mask = T, channels, float(lam), mask
        self.backend = check_backend(backend)
        self.k_c, self.k_t = int(channels * lam), int(T * lam)
        if self.k_c < 1 or self.k_t < 1:
            raise ValueError(f"ASA: lam={lam} selects no channel (int(C*lam)={self.k_c}) or no "
                             f"time step (int(T*lam)={self.k_t}) for C={channels}, T={T}")
        self.alpha = nn.Parameter(torch.full((1,), 0.5))
        self.beta = nn.Parameter(torch.full((1,), 0.5))
        if reduction == 1:
            self.fc = nn.Linear(T, T, bias=False)
        else:
            hidden = T // reduction
            self.fc = nn.Sequential(nn.Linear(T, hidden, bias=False), nn.ReLU(inplace=True),
                                    nn.Linear(hidden, T, bias=False))
        self.conv1 = nn.Conv2d(2, 1, kernel_size=3, padding=1, bias=False)
        self.conv2 = nn.Conv2d(2, 1, kernel_size=3, padding=1, bias=False)

    def extra_repr(self) -> str:
        return (f"T={self.T}, channels={self.channels}, lam={self.lam}, mask={self.mask!r}, "
                f"backend={self.backend!r}")

    @torch.no_grad()
    def important_mask(self, x: torch.Tensor) -> torch.Tensor:
        """The XOR mask M [N or 1, T, C, 1, 1]; no gradient flows through the top-k choice."""
        avg, mx = x.mean(dim=(3, 4)), x.amax(dim=(3, 4))                       # [N, T, C]
        score = 0.5 * (avg + mx) + self.alpha * avg + self.beta * mx
        score = self.fc(score.transpose(1, 2)).transpose(1, 2)                # fc along T
        m_c, m_t = topk_mask(score, self.k_c, 2), topk_mask(score, self.k_t, 1)
        if self.mask == "reference":                                          # batch union
            m_c, m_t = m_c.amax(0, keepdim=True), m_t.amax(0, keepdim=True)
        return (m_c != m_t).to(x.dtype)[..., None, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 5 or x.shape[1] != self.T or x.shape[2] != self.channels:
            raise ValueError(f"ASA expects [N, {self.T}, {self.channels}, H, W], "
                             f"got {tuple(x.shape)}")
        if torch.is_autocast_enabled(x.device.type):
            # mixed precision: top-k choices and the T*C pooling are precision-sensitive
            with torch.autocast(device_type=x.device.type, enabled=False):
                return self.forward(x.float())
        m = self.important_mask(x)
        if self.backend == "eager":
            return self.reweight_eager(x, m)
        return ASAFunction.apply(x.contiguous(), m, self.conv1.weight, self.conv2.weight, self.lam)

    def reweight_eager(self, x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        """The definition: g_i * (M*x) + g_s * ((1-M)*x) by plain autograd ops."""
        xi, xs = m * x, (1.0 - m) * x
        g_i = torch.sigmoid(self.conv1(pool_tc(xi, 1.0 / self.lam))).unsqueeze(1)   # [N,1,1,H,W]
        g_s = torch.sigmoid(self.conv2(pool_tc(xs, 1.0 / (1.0 - self.lam)))).unsqueeze(1)
        return g_i * xi + g_s * xs


def make_attention(attention: str, T: int, channels: int, reduction: int = 1, lam: float = 0.5,
                   mask: str = "reference", backend: str = "fused") -> nn.Module:
    """The attention slot of a spiking conv layer: ASA for ``attention == 'ASA'``, the identity
    (no parameters) for ``'no'``. A new network gets ASA by calling this before each neuron."""
    if attention == "ASA":
        return ASA(T, channels, reduction=reduction, lam=lam, mask=mask, backend=backend)
    if attention == "no":
        return nn.Identity()
    raise ValueError(f"attention must be 'ASA' or 'no', got {attention!r}")
