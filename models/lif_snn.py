"""Arch A and D (SPEC section 3): the three-conv-layer LIF-SNN with ASA, one class for both.

    3 x [dropout -> Conv2d(3x3, pad 1, bias) -> BatchNorm2d -> AvgPool(1, 2, 2) -> ASA -> LIF]
    -> flatten -> [dropout -> Linear(.., 256) -> LIF] -> [dropout -> Linear(256, classes) -> LIF]
    logits = mean over T of the output layer's spikes

A: widths 64/128/128, dropout p = 0.1; D: widths 32/32/32, dropout p = 0.5. Tensors are
``[N, T, C, H, W]``; conv, BN and pooling see ``N*T`` frames. Module and parameter names follow the
authors' (``ConvAttLIFs.<i>.conv.0``, ``.bn.0``, ``.attn``, ``FCs.<i>.linear.0``) so that their
checkpoints load directly; the one-element Sequentials exist only for those names.

Dropout quirk (SPEC section 8): a layer whose ``ps`` digit is 1 drops its INPUT with an independent
mask for every element and time step, and its OUTPUT spikes with one mask per sample held over all
time steps. Both are active only in training; the neuron dynamics use the undropped spikes.
"""
from typing import Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .module.Attn import ASA
from .module.LIF import LIF


def parse_ps(ps: str) -> Tuple[bool, ...]:
    """The 5-digit dropout switch string (conv1..3, fc1, fc2) as booleans."""
    if not (isinstance(ps, str) and len(ps) == 5 and set(ps) <= {"0", "1"}):
        raise ValueError(f"ps must be a string of 5 '0'/'1' digits (conv1..3, fc1, fc2), got {ps!r}")
    return tuple(d == "1" for d in ps)


class HeldDropout(nn.Module):
    """Dropout of ``[N, T, ...]`` with one mask per sample, the same for every time step."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return x
        return x * F.dropout(torch.ones_like(x[:, :1]), self.p, training=True)


class _LeanAvgPool(torch.autograd.Function):
    """k x k average pool (stride k, no padding, floor mode) of [B, C, H, W] that saves nothing.

    nn.AvgPool2d keeps its full-size input alive for backward only to read its shape; here the
    backward spreads grad/(k*k) over each window directly (the same value PyTorch computes),
    which frees the block's largest activation early."""

    @staticmethod
    def forward(ctx, x, k: int):
        ctx.k, ctx.shape = k, x.shape
        return F.avg_pool2d(x, k)

    @staticmethod
    def backward(ctx, g):
        k, (B, C, H, W) = ctx.k, ctx.shape
        ho, wo = g.shape[2], g.shape[3]
        g = (g / (k * k))[:, :, :, None, :, None].expand(B, C, ho, k, wo, k).reshape(B, C, ho * k, wo * k)
        if ho * k != H or wo * k != W:                        # rows/cols the floor mode dropped
            g = F.pad(g, (0, W - wo * k, 0, H - ho * k))
        return g, None


class _LeanMaxPool(torch.autograd.Function):
    """k x k max pool (stride k, floor mode) of [B, C, H, W] saving a 1-byte window offset.

    nn.MaxPool2d saves its input and int64 indices (1.5x the input's size); this saves, per
    output, which of the k*k window cells won (uint8), and rebuilds the same indices in backward,
    so gradients are identical (windows do not overlap, so routing = scatter)."""

    @staticmethod
    def forward(ctx, x, k: int):
        out, idx = F.max_pool2d(x, k, return_indices=True)
        W = x.shape[3]
        offset = ((idx // W) % k) * k + (idx % W) % k
        ctx.save_for_backward(offset.to(torch.uint8))
        ctx.k, ctx.shape = k, x.shape
        return out

    @staticmethod
    def backward(ctx, g):
        (offset,) = ctx.saved_tensors
        k, (B, C, H, W) = ctx.k, ctx.shape
        ho, wo = g.shape[2], g.shape[3]
        dev = g.device
        base = (torch.arange(ho, device=dev)[:, None] * (k * W) + torch.arange(wo, device=dev) * k)
        offset = offset.long()
        idx = base + (offset // k) * W + offset % k                            # [B, C, ho, wo]
        grad = torch.zeros((B, C, H * W), dtype=g.dtype, device=dev)
        grad.scatter_(2, idx.view(B, C, -1), g.reshape(B, C, -1))
        return grad.view(B, C, H, W), None


class LeanAvgPool2d(nn.AvgPool2d):
    """nn.AvgPool2d(k) (stride k) whose backward does not keep the input alive."""

    def __init__(self, k: int):
        super().__init__(k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _LeanAvgPool.apply(x, self.kernel_size)


class LeanMaxPool2d(nn.MaxPool2d):
    """nn.MaxPool2d(k) (stride k) saving 1 byte per output for backward instead of 12+ bytes."""

    def __init__(self, k: int):
        super().__init__(k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _LeanMaxPool.apply(x, self.kernel_size)


class _TwoValuedInputConv2d(torch.autograd.Function):
    """``conv(x)`` for an input holding only 0 and one other value v (spikes: v = 1; spikes after
    dropout: v = 1/(1-p), or its product with a held-dropout scale), saving ``x`` for the weight
    gradient as a bool map and v: 1 byte per element instead of 4.

    Backward rebuilds ``x`` as map * v, which is exact (1*v = v, 0*v = 0), and calls the same
    aten.convolution_backward as autograd's ConvolutionBackward0, so gradients are bit-identical.
    The caller guarantees the two values (ConvAttLIF / ConvAttNeuron know their input is spikes)."""

    @staticmethod
    def forward(ctx, x, weight, bias, conv: nn.Conv2d):
        y = conv._conv_forward(x, weight, bias)
        v = x.amax() if x.numel() else x.new_zeros(())
        ctx.save_for_backward(x.ne(0), v, weight)
        ctx.conv, ctx.has_bias = conv, bias is not None
        return y

    @staticmethod
    def backward(ctx, g):
        nz, v, weight = ctx.saved_tensors
        conv = ctx.conv
        x = nz.to(v.dtype).mul_(v)
        gi, gw, gb = torch.ops.aten.convolution_backward(
            g, x, weight, [weight.shape[0]] if ctx.has_bias else None, list(conv.stride),
            list(conv.padding), list(conv.dilation), False, [0, 0], conv.groups,
            list(ctx.needs_input_grad[:3]))
        return gi, gw, gb, None


def _has_hooks(*mods: nn.Module) -> bool:
    from torch.nn.modules import module as _m
    return bool(_m._global_forward_hooks or _m._global_forward_pre_hooks) or any(
        m._forward_hooks or m._forward_pre_hooks for m in mods)


def two_valued_input_conv(conv_seq: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    """``conv_seq(x)`` (a one-Conv2d Sequential) where ``x`` holds only 0 and one other value;
    saves ``x`` compactly for backward (see :class:`_TwoValuedInputConv2d`). Falls back to
    ``conv_seq(x)`` where the saving would not apply or would bypass something: no gradient
    recorded, autocast, dtype mismatch, non-zeros padding, forward hooks on the modules."""
    conv = conv_seq[0]
    if (not torch.is_grad_enabled() or not conv.weight.requires_grad or conv.padding_mode != "zeros"
            or isinstance(conv.padding, str) or torch.is_autocast_enabled(x.device.type)
            or x.dtype != conv.weight.dtype or _has_hooks(conv_seq, conv)):
        return conv_seq(x)
    return _TwoValuedInputConv2d.apply(x, conv.weight, conv.bias, conv)


def _bn_train_args(bn: nn.BatchNorm2d):
    """(running_mean, running_var, momentum) for a training-mode batch norm call, advancing
    ``num_batches_tracked`` as nn.BatchNorm2d does; (None, None, 0.0) without running stats."""
    if not (bn.track_running_stats and bn.running_mean is not None):
        return None, None, 0.0
    momentum = 0.0 if bn.momentum is None else bn.momentum
    if bn.num_batches_tracked is not None:
        bn.num_batches_tracked.add_(1)
        if bn.momentum is None:                                   # cumulative moving average
            momentum = 1.0 / float(bn.num_batches_tracked)
    return bn.running_mean, bn.running_var, momentum


def _memory_format(x: torch.Tensor) -> torch.memory_format:
    return torch.contiguous_format if x.is_contiguous() else torch.channels_last


def _normalised_output(xh: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor, k: int):
    """avgpool(x_hat) * gamma + beta as a contiguous [B, C, h, w] tensor. The same ops on the
    same values give the same bits, so this is also how the output is rebuilt in backward."""
    C = xh.shape[1]
    pooled = F.avg_pool2d(xh, k) if k > 1 else xh
    if pooled.is_contiguous():
        return torch.addcmul(beta.view(1, C, 1, 1), pooled, gamma.view(1, C, 1, 1))
    out = torch.empty(pooled.shape, dtype=xh.dtype, device=xh.device)  # channels-last in
    return torch.mul(pooled, gamma.view(1, C, 1, 1), out=out).add_(beta.view(1, C, 1, 1))


class _BatchNormAvgPool(torch.autograd.Function):
    """``avg_pool2d(batch_norm(y), k)`` in training mode (k = 1: no pool), memory-lean. Math of
    nn.BatchNorm2d (training)::

        x_hat  = (y - mean) / sqrt(var + eps)              native kernel, written over y
        out    = avgpool(x_hat) * gamma + beta             (pooling first: pooling commutes
                                                            with the per-channel affine)
        running_mean/var updated as nn.BatchNorm2d does (unbiased var)

    Backward, from the pooled gradient directly, into x_hat's buffer::

        g      = upsample(g_pool) / k^2                    (never materialised)
        dgamma = sum(g * x_hat) = sum(g_pool * avgpool(x_hat)),   dbeta = sum(g_pool)
        dy     = gamma / sqrt(var + eps) * (g - dbeta/M - x_hat * dgamma/M),   M = N*H*W

    So the block's largest tensor (the conv output) is the only full-size tensor from the
    conv to the pool, in forward and backward: nn.BatchNorm2d + nn.AvgPool2d keep the conv
    output and also allocate the normalised output, the upsampled gradient and the input
    gradient. Full-size work follows y's memory order (channels-last or contiguous). Results equal
    nn.BatchNorm2d + nn.AvgPool2d to float rounding (~1e-6 relative), not bit for bit. The conv
    output is overwritten by x_hat (nothing else reads it), so the graph cannot be
    backpropagated twice (retain_graph is refused).
    """

    @staticmethod
    def forward(ctx, y, weight, bias, bn: nn.BatchNorm2d, k: int):
        xh = y.detach()                                             # becomes x_hat in place
        if not (xh.is_contiguous() or xh.is_contiguous(memory_format=torch.channels_last)):
            xh = xh.contiguous()
        C = xh.shape[1]
        mean, invstd = xh.new_empty(C), xh.new_empty(C)
        rm, rv, momentum = _bn_train_args(bn)
        # native BatchNorm without affine, written over its own input (elementwise after the
        # statistics, so in place is exact: tests/test_lean.py); it also updates the running stats
        torch.ops.aten.native_batch_norm.out(xh, None, None, rm, rv, True, momentum, bn.eps,
                                             out=xh, save_mean=mean, save_invstd=invstd)
        gamma = torch.ones_like(mean) if weight is None else weight.detach().clone()
        beta = torch.zeros_like(mean) if bias is None else bias.detach().clone()
        out = _normalised_output(xh, gamma, beta, k)
        ctx.save_for_backward(xh, gamma, invstd)
        ctx.k, ctx.consumed = k, False
        ctx.rebuild = lambda: _normalised_output(xh, gamma, beta, k)    # while x_hat is intact
        return out

    @staticmethod
    def backward(ctx, g_pool):
        ctx.rebuild = None
        if ctx.consumed:
            raise RuntimeError("the lean BatchNorm of ConvAttLIF reuses its saved buffer in "
                               "backward, so the graph cannot be backpropagated twice "
                               "(retain_graph); set the block's .lean = False for that")
        ctx.consumed = True
        xh, gamma, invstd = ctx.saved_tensors
        k = ctx.k
        B, C, H, W = xh.shape
        ho, wo = H // k, W // k
        M = B * H * W
        v = xh.movedim(1, -1)                                       # [B, H, W, C] view
        gv = g_pool.movedim(1, -1)                                  # [B, ho, wo, C] view
        x_avg = F.avg_pool2d(xh, k).movedim(1, -1) if k > 1 else v
        dgamma = (gv * x_avg).sum((0, 1, 2))
        del x_avg
        dbeta = gv.sum((0, 1, 2))
        scale = invstd * gamma
        # the per-pooled-cell term, in x_hat's memory order so that the update below is dense
        g_term = torch.empty((B, C, ho, wo), dtype=xh.dtype, device=xh.device,
                             memory_format=_memory_format(xh)).movedim(1, -1)
        torch.div(gv, k * k, out=g_term).sub_(dbeta / M).mul_(scale)
        if k > 1:
            v.view(B, ho, k, wo, k, C).mul_(-scale * dgamma / M).add_(g_term[:, :, None, :, None, :])
        else:
            v.mul_(-scale * dgamma / M).add_(g_term)
        return (xh, dgamma if ctx.needs_input_grad[1] else None,
                dbeta if ctx.needs_input_grad[2] else None, None, None)


def _rebuild_from(node, attr: str) -> torch.Tensor:
    """A forward output recomputed bit for bit by the autograd node ``node`` (its ``attr``
    function); valid until that node's own backward has run (consumers' backwards run first)."""
    rebuild = getattr(node, attr, None)
    if rebuild is None:
        raise RuntimeError(f"{type(node).__name__}: its output can no longer be rebuilt "
                           f"(its backward already ran)")
    return rebuild()


def dropout_pair(p: float, active: bool) -> Tuple[nn.Module, nn.Module]:
    """(input dropout with a mask per time step, output dropout held over time) or identities."""
    if not active:
        return nn.Identity(), nn.Identity()
    return nn.Dropout(p), HeldDropout(p)


def make_attention(attention: str, T: int, channels: int, reduction: int, lam: float,
                   mask: str) -> nn.Module:
    """ASA for ``attention == 'ASA'``, the identity (no parameters) for ``'no'``."""
    if attention == "ASA":
        return ASA(T, channels, reduction=reduction, lam=lam, mask=mask)
    if attention == "no":
        return nn.Identity()
    raise ValueError(f"attention must be 'ASA' or 'no', got {attention!r}")


class ConvAttLIF(nn.Module):
    """[dropout -> conv -> BN -> avg pool -> attention -> LIF (-> held output dropout)]."""

    def __init__(self, in_ch: int, out_ch: int, pool: int, attn: nn.Module, p: float,
                 dropout: bool, fused: bool, spike_input: bool = False):
        super().__init__()
        # input is spikes (possibly dropped out): two-valued, saved compactly for the conv's
        # backward (not a parameter or buffer; bench/reference_step.py switches it off)
        self.compact_input = spike_input
        # training: the memory-lean path of _lean_forward (bench/reference_step.py switches it off)
        self.lean = True
        self.drop_in, self.drop_out = dropout_pair(p, dropout)
        self.conv = nn.Sequential(nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=True))
        self.bn = nn.Sequential(nn.BatchNorm2d(out_ch))
        self.pool = LeanAvgPool2d(pool) if pool > 1 else nn.Identity()
        self.attn = attn
        self.spike = nn.Sequential(LIF(fused=fused))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, t = x.shape[:2]
        x = self.drop_in(x).flatten(0, 1)
        if self.lean and self._can_be_lean(x):
            return self.drop_out(self._lean_forward(x, n, t))
        y = two_valued_input_conv(self.conv, x) if self.compact_input else self.conv(x)
        y = self.pool(self.bn(y))
        return self.drop_out(self.spike(self.attn(y.unflatten(0, (n, t)))))

    def _pool_k(self) -> int:
        return self.pool.kernel_size if isinstance(self.pool, nn.AvgPool2d) else 1

    def _can_be_lean(self, x: torch.Tensor) -> bool:
        conv, bn, k = self.conv[0], self.bn[0], self._pool_k()
        return (self.training and torch.is_grad_enabled() and conv.weight.requires_grad
                and x.dtype in (torch.float32, torch.float64) and x.dtype == conv.weight.dtype
                and x.device.type == "cpu"          # CUDA: the plain path (not measured there)
                and not torch.is_autocast_enabled(x.device.type)
                and conv.padding_mode == "zeros" and not isinstance(conv.padding, str)
                and x.shape[2] % k == 0 and x.shape[3] % k == 0 and bn.affine
                and not _has_hooks(self.conv, conv, self.bn, bn, self.pool, self.attn, self.spike,
                                   *self.spike))

    def _lean_forward(self, x: torch.Tensor, n: int, t: int) -> torch.Tensor:
        """The training step's memory-lean computation of the block (same math; float results
        equal the plain path's up to rounding, ~1e-6 relative; ``lean = False`` selects the
        plain path):

        * a conv of spikes runs in channels-last layout: oneDNN then makes no reordered copies
          (the NCHW backward of arch A's conv 2 made 360 MiB of them, at the step's memory
          peak) and runs ~5% faster;
        * BN and pool are one function that normalises the conv output in its own buffer and
          later writes BN's input gradient into it (_BatchNormAvgPool);
        * neither ASA's input nor the LIF's membrane potentials are kept for backward: ASA's
          input is rebuilt from that normalised buffer (an affine map, after the pool), and
          the membrane potentials by running the LIF again on ASA's output, itself rebuilt
          from ASA's input and its saved gates. Both rebuilds are bit for bit."""
        bn, k, conv = self.bn[0], self._pool_k(), self.conv[0]
        if self.compact_input:     # conv of spikes, channels-last; it keeps a bool map of x
            x = x.contiguous(memory_format=torch.channels_last)
            y = _TwoValuedInputConv2d.apply(x, conv.weight, conv.bias, conv)
        else:                      # first layer: few input channels, little to gain; as is
            y = conv(x)
        del x
        p = _BatchNormAvgPool.apply(y, bn.weight, bn.bias, bn, k)
        del y                      # overwritten by BN (x_hat), which keeps it
        if not isinstance(self.attn, ASA):
            return self.spike(self.attn(p.unflatten(0, (n, t))))
        bn_node = p.grad_fn
        a = self.attn(p.unflatten(0, (n, t)),
                      rebuild_input=lambda: _rebuild_from(bn_node, "rebuild").unflatten(0, (n, t)))
        del p
        lif, asa_node = self.spike[0], a.grad_fn
        if isinstance(lif, LIF) and lif.fused:
            # the LIF's membrane potentials are recomputed in backward from ASA's output,
            # itself rebuilt from BN's buffer and ASA's saved gates
            return lif(a, rebuild_input=lambda: _rebuild_from(asa_node, "rebuild_output"))
        return self.spike(a)


class FCLIF(nn.Module):
    """[dropout -> Linear -> LIF (-> held output dropout)] on ``[N, T, features]``."""

    def __init__(self, in_features: int, out_features: int, p: float, dropout: bool, fused: bool):
        super().__init__()
        self.drop_in, self.drop_out = dropout_pair(p, dropout)
        self.linear = nn.Sequential(nn.Linear(in_features, out_features))
        self.spike = nn.Sequential(LIF(fused=fused))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop_out(self.spike(self.linear(self.drop_in(x))))


class LIFSNN(nn.Module):
    """Arch A / D. Input ``[N, T, 2, X, Y]`` frames, output logits ``[N, num_classes]``.

    Args:
        T: time steps (fixed, the ASA fc acts along T).
        num_classes: output neurons.
        frame_size: (X, Y) of the input frames; the head's input size follows from the pools.
        widths: conv channels (A: 64, 128, 128; D: 32, 32, 32).
        p: dropout probability for the layers switched on by ``ps`` (A: 0.1, D: 0.5).
        ps: 5 digits '0'/'1' switching dropout for conv1..3, fc1, fc2.
        attention, reduction, lam, asa_mask: the ASA of every conv layer ('no' = identity).
        fused: use the fused LIF autograd function (False = eager reference loop).
        lean: training on CPU takes the memory-lean path of each conv block
            (ConvAttLIF._lean_forward); False = the plain computation.
    """

    pools = (1, 2, 2)
    hidden = 256

    def __init__(self, T: int, num_classes: int, frame_size: Sequence[int],
                 widths: Sequence[int] = (64, 128, 128), p: float = 0.1, ps: str = "00000",
                 attention: str = "ASA", reduction: int = 1, lam: float = 0.5,
                 asa_mask: str = "reference", fused: bool = True, lean: bool = True):
        super().__init__()
        drops = parse_ps(ps)
        x_size, y_size = frame_size
        chans = (2, *widths)
        self.ConvAttLIFs = nn.ModuleList()
        for i, pool in enumerate(self.pools):
            attn = make_attention(attention, T, chans[i + 1], reduction, lam, asa_mask)
            self.ConvAttLIFs.append(ConvAttLIF(chans[i], chans[i + 1], pool, attn, p, drops[i], fused,
                                              spike_input=i > 0))
            self.ConvAttLIFs[-1].lean = lean
            x_size, y_size = x_size // pool, y_size // pool
        if x_size < 1 or y_size < 1:
            raise ValueError(f"frame_size {tuple(frame_size)} is too small for the pooling")
        flat = chans[-1] * x_size * y_size
        self.FCs = nn.ModuleList([FCLIF(flat, self.hidden, p, drops[3], fused),
                                  FCLIF(self.hidden, num_classes, p, drops[4], fused)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.ConvAttLIFs:
            x = layer(x)
        x = x.flatten(2)
        for layer in self.FCs:
            x = layer(x)
        return x.mean(dim=1)
