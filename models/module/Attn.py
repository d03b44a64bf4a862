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
"""
import torch
import torch.nn.functional as F
from torch import nn

from .LIF import BLOCK_ELEMENTS

MASK_MODES = ("reference", "per_sample")


def topk_mask(score: torch.Tensor, k: int, dim: int) -> torch.Tensor:
    """0/1 mask (dtype of ``score``) marking the ``k`` largest entries of ``score`` along ``dim``."""
    idx = score.topk(k, dim=dim).indices
    return torch.zeros_like(score).scatter_(dim, idx, 1.0)


class ASA(nn.Module):
    """Advance Spatial Attention over ``x: [N, T, C, H, W]`` (see the module docstring).

    Args:
        T: number of time steps (the fc acts along T, so T is fixed at construction).
        channels: number of channels C (only validated against the input; no per-channel weights).
        reduction: fc bottleneck ratio r; 1 gives a single Linear(T, T).
        lam: split ratio λ in (0, 1); top-k sizes are int(C*λ) and int(T*λ).
        mask: "reference" (batch-union masks, the authors' behaviour) or "per_sample".
    """

    def __init__(self, T: int, channels: int, reduction: int = 1, lam: float = 0.5,
                 mask: str = "reference"):
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
        return f"T={self.T}, channels={self.channels}, lam={self.lam}, mask={self.mask!r}"

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

    def forward(self, x: torch.Tensor, rebuild_input=None) -> torch.Tensor:
        """``rebuild_input``: optional zero-argument function that returns a tensor bit-identical
        to ``x`` when called during backward; then ``x`` is not kept for backward (the caller can
        recompute it cheaply; ConvAttLIF's lean path rebuilds it from BN's normalised buffer)."""
        if x.dim() != 5 or x.shape[1] != self.T or x.shape[2] != self.channels:
            raise ValueError(f"ASA expects [N, {self.T}, {self.channels}, H, W], "
                             f"got {tuple(x.shape)}")
        if torch.is_autocast_enabled(x.device.type):
            # AMP: top-k choices and the T*C pooling are precision-sensitive; run ASA in float32.
            with torch.autocast(device_type=x.device.type, enabled=False):
                return self.forward(x.float())
        m = self.important_mask(x)
        return _ASAApply.apply(x.contiguous(), m, self.conv1.weight, self.conv2.weight, self.lam,
                               rebuild_input)

    def forward_eager(self, x: torch.Tensor) -> torch.Tensor:
        """The same output by plain autograd ops (the definition; tests compare against it)."""
        m = self.important_mask(x)
        xi, xs = m * x, (1.0 - m) * x
        a_i = _pool_tc(xi, 1.0 / self.lam)[0]
        a_s = _pool_tc(xs, 1.0 / (1.0 - self.lam))[0]
        g_i = torch.sigmoid(self.conv1(a_i)).unsqueeze(1)                     # [N, 1, 1, H, W]
        g_s = torch.sigmoid(self.conv2(a_s)).unsqueeze(1)
        return g_i * xi + g_s * xs


def _pool_tc(x: torch.Tensor, mean_scale: float):
    """([mean_TC(x)*scale, max_TC(x)] as [N, 2, H, W], argmax over T*C [N, H, W]); T-major."""
    flat = x.flatten(1, 2)
    mx = flat.max(1)
    return torch.stack((flat.mean(1) * mean_scale, mx.values), dim=1), mx.indices


def _pool_tc_values(x: torch.Tensor, mean_scale: float) -> torch.Tensor:
    """[mean_TC(x)*scale, max_TC(x)] as :func:`_pool_tc`, without the argmax.

    max-with-indices over a non-innermost axis is a scalar loop on CPU (it was the largest
    non-convolution cost of a step); amax is vectorised, and the argmax is only needed in
    backward, where :func:`_first_argmax_tc` recovers it."""
    flat = x.flatten(1, 2)
    return torch.stack((flat.mean(1) * mean_scale, flat.amax(1)), dim=1)


def _first_argmax_tc(x, sel, vals, step):
    """Index over T*C of the FIRST element of (sel*x) equal to ``vals`` [N, H, W], per (n, h, w).

    The same index torch.max(dim) returns (ties resolve to the first occurrence, T-major), found
    with vectorised ops, block by block: weight each hit by (T*C - position) and take the max."""
    N, T, C, H, W = x.shape
    best = torch.zeros((N, H * W), dtype=x.dtype, device=x.device)     # T*C - first index; 0 = none
    v = vals.reshape(N, 1, H * W)
    for t0 in range(0, T, step):
        t1 = min(T, t0 + step)
        blk = (sel[:, t0:t1] * x[:, t0:t1]).reshape(N, (t1 - t0) * C, H * W)
        hit = torch.eq(blk, v, out=blk)
        pos = torch.arange(T * C - t0 * C, T * C - t1 * C, -1, dtype=x.dtype, device=x.device)
        torch.maximum(best, hit.mul_(pos.view(1, -1, 1)).amax(1), out=best)
    return (T * C - best).long().clamp_(max=T * C - 1)


def _gated(x, m, gate_i, gate_s):
    """g_i * (M*x) + g_s * ((1-M)*x) computed exactly as _ASAApply.forward does."""
    y = (m * x).mul_(gate_i)
    return y.addcmul_((1.0 - m) * x, gate_s)


def _conv_backward(grad_out, inp, weight):
    """(grad wrt inp, grad wrt weight) of conv2d(inp, weight, padding=1, no bias)."""
    gi, gw, _ = torch.ops.aten.convolution_backward(
        grad_out, inp, weight, None, [1, 1], [1, 1], [1, 1], False, [0, 0], 1, [True, True, False])
    return gi, gw


class _ASAApply(torch.autograd.Function):
    """y = sigmoid(conv1(Ai)) * (M*x) + sigmoid(conv2(As)) * ((1-M)*x) as one autograd node.

    Forward makes the same operations as :meth:`ASA.forward_eager` (so y is bit-identical), but
    the masked copies xi, xs are temporaries: only ``x`` (plus [N, 2, H, W]-sized maps) is saved,
    where autograd would keep xi and xs. Backward works in blocks of time steps, so its
    temporaries are a block, not a copy of x. Masks are applied by multiplying with 0/1 (exact
    selection, and vectorised where torch.where is a scalar loop on CPU)::

        g_gate_i[n,h,w] = sum_{t,c} M * g_y * x        (a matmul over T*C; same for s with 1-M)
        g_x = M * (g_y*gate_i + c_i) + (1-M) * (g_y*gate_s + c_s) + max-pool terms at the argmax
        c_i = d(mean part)/dx = g_Ai[:, 0] / (lam * T*C),   c_s likewise with 1 - lam
    """

    @staticmethod
    def forward(ctx, x, m, w1, w2, lam: float, rebuild_input=None):
        w1, w2 = w1.to(x.dtype), w2.to(x.dtype)
        xi = m * x
        a_i = _pool_tc_values(xi, 1.0 / lam)
        gate_i = torch.sigmoid(F.conv2d(a_i, w1, padding=1)).unsqueeze(1)   # [N, 1, 1, H, W]
        y = xi.mul_(gate_i)                                                 # g_i * xi, in place
        del xi
        xs = (1.0 - m) * x
        a_s = _pool_tc_values(xs, 1.0 / (1.0 - lam))
        gate_s = torch.sigmoid(F.conv2d(a_s, w2, padding=1)).unsqueeze(1)
        y.addcmul_(xs, gate_s)                                              # + g_s * xs
        del xs                                                  # (== _gated(x, m, gate_i, gate_s))
        ctx.rebuild_input = rebuild_input
        ctx.rebuild_output = ctx.rebuilt = None
        if rebuild_input is not None:
            x = x.new_empty(0)                                              # not kept
            # y again, bit for bit: the same operations in the same order on the same values;
            # the input rebuilt for it is kept for this node's own backward, which comes next
            held = ctx.rebuilt = []

            def rebuild_output():
                held.append(rebuild_input().contiguous())
                return _gated(held[-1], m, gate_i, gate_s)
            ctx.rebuild_output = rebuild_output
        ctx.save_for_backward(x, m, a_i, a_s, gate_i, gate_s, w1, w2)
        ctx.lam = lam
        return y

    @staticmethod
    def backward(ctx, grad_y):
        x, m, a_i, a_s, gate_i, gate_s, w1, w2 = ctx.saved_tensors
        if ctx.rebuild_input is not None:
            held = ctx.rebuilt
            x = held.pop() if held else ctx.rebuild_input().contiguous()
            held.clear()
        ctx.rebuild_input = ctx.rebuild_output = ctx.rebuilt = None
        lam = ctx.lam
        N, T, C, H, W = x.shape
        nm = m.shape[0]                                       # 1 (batch-union masks) or N
        m_rows = torch.stack((m, 1.0 - m), dim=1).reshape(nm, 2, T, C)
        # 1. gradient reaching the two gates: masked sums of g_y * x over T*C
        gg = x.new_zeros((N, 2, H * W))
        step = max(1, min(T, BLOCK_ELEMENTS // max(1, x[:, 0].numel())))
        for t0 in range(0, T, step):
            t1 = min(T, t0 + step)
            p = (grad_y[:, t0:t1] * x[:, t0:t1]).reshape(N, (t1 - t0) * C, H * W)
            gg += torch.matmul(m_rows[:, :, t0:t1].reshape(nm, 2, -1), p)
            del p
        gg = gg.view(N, 2, 1, H, W)
        # 2. back through sigmoid and the 3x3 convs to the pooled maps and the weights
        gz_i = gg[:, 0] * gate_i[:, 0] * (1.0 - gate_i[:, 0])
        gz_s = gg[:, 1] * gate_s[:, 0] * (1.0 - gate_s[:, 0])
        ga_i, gw1 = _conv_backward(gz_i, a_i, w1)
        ga_s, gw2 = _conv_backward(gz_s, a_s, w2)
        c_i = (ga_i[:, 0] * (1.0 / lam) / (T * C)).unsqueeze(1).unsqueeze(1)   # [N, 1, 1, H, W]
        c_s = (ga_s[:, 0] * (1.0 / (1.0 - lam)) / (T * C)).unsqueeze(1).unsqueeze(1)
        # 3. input gradient, block by block: M*(g_y*gate_i + c_i) + (1-M)*(g_y*gate_s + c_s)
        grad_x = torch.empty_like(x)
        for t0 in range(0, T, step):
            t1 = min(T, t0 + step)
            gy = grad_y[:, t0:t1]
            out = torch.addcmul(c_i, gy, gate_i).mul_(m[:, t0:t1])
            out.add_(torch.addcmul(c_s, gy, gate_s).mul_(1.0 - m[:, t0:t1]))
            grad_x[:, t0:t1] = out
            del out
        # 4. the max-pool terms: g_Ai[:, 1] to the argmax over T*C, times the mask there
        idx_i = _first_argmax_tc(x, m, a_i[:, 1], step)
        idx_s = _first_argmax_tc(x, 1.0 - m, a_s[:, 1], step)
        flat_g = grad_x.view(N, T * C, H * W)
        m_flat = m.reshape(nm, T * C).expand(N, T * C)
        for idx, ga, sel in ((idx_i, ga_i, m_flat), (idx_s, ga_s, 1.0 - m_flat)):
            idx = idx.reshape(N, 1, H * W)
            vals = ga[:, 1].reshape(N, 1, H * W) * sel.gather(1, idx[:, 0]).unsqueeze(1)
            flat_g.scatter_add_(1, idx, vals)
        return grad_x, None, gw1, gw2, None, None
