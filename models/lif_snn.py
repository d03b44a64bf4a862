"""Arch A and D (docs/reference.md, "Architectures"): the three-conv-layer LIF-SNN with ASA.

    3 x [dropout -> Conv2d(3x3, pad 1, bias) -> BatchNorm2d -> AvgPool(1, 2, 2) -> ASA -> LIF]
    -> flatten -> [dropout -> Linear(.., 256) -> LIF] -> [dropout -> Linear(256, classes) -> LIF]
    logits = mean over T of the output layer's spikes

A: widths 64/128/128, dropout p = 0.1; D: widths 32/32/32, dropout p = 0.5. Tensors are
``[N, T, C, H, W]``; conv, BN and pooling see ``N*T`` frames. Module and parameter names follow the
authors' (``ConvAttLIFs.<i>.conv.0``, ``.bn.0``, ``.attn``, ``FCs.<i>.linear.0``) so that their
checkpoints load directly; the one-element Sequentials exist only for those names.

Dropout quirk of the reference: a layer whose ``ps`` digit is 1 drops its INPUT with an independent
mask for every element and time step, and its OUTPUT spikes with one mask per sample held over all
time steps. Both are active only in training; the neuron dynamics use the undropped spikes.
"""
from typing import Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .module.Attn import make_attention
from .module.lif import LIF
from .registry import register


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


def dropout_pair(p: float, active: bool) -> Tuple[nn.Module, nn.Module]:
    """(input dropout with a mask per time step, output dropout held over time) or identities."""
    if not active:
        return nn.Identity(), nn.Identity()
    return nn.Dropout(p), HeldDropout(p)


class ConvAttLIF(nn.Module):
    """[dropout -> conv -> BN -> avg pool -> attention -> LIF (-> held output dropout)]."""

    def __init__(self, in_ch: int, out_ch: int, pool: int, attn: nn.Module, p: float,
                 dropout: bool, backend: str):
        super().__init__()
        self.drop_in, self.drop_out = dropout_pair(p, dropout)
        self.conv = nn.Sequential(nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=True))
        self.bn = nn.Sequential(nn.BatchNorm2d(out_ch))
        self.pool = nn.AvgPool2d(pool) if pool > 1 else nn.Identity()
        self.attn = attn
        self.spike = nn.Sequential(LIF(backend=backend))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, t = x.shape[:2]
        y = self.pool(self.bn(self.conv(self.drop_in(x).flatten(0, 1))))
        return self.drop_out(self.spike(self.attn(y.unflatten(0, (n, t)))))


class FCLIF(nn.Module):
    """[dropout -> Linear -> LIF (-> held output dropout)] on ``[N, T, features]``."""

    def __init__(self, in_features: int, out_features: int, p: float, dropout: bool, backend: str):
        super().__init__()
        self.drop_in, self.drop_out = dropout_pair(p, dropout)
        self.linear = nn.Sequential(nn.Linear(in_features, out_features))
        self.spike = nn.Sequential(LIF(backend=backend))

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
        backend: "fused" or "eager" for every LIF and ASA (the same values; models/fused).
    """

    pools = (1, 2, 2)
    hidden = 256

    def __init__(self, T: int, num_classes: int, frame_size: Sequence[int],
                 widths: Sequence[int] = (64, 128, 128), p: float = 0.1, ps: str = "00000",
                 attention: str = "ASA", reduction: int = 1, lam: float = 0.5,
                 asa_mask: str = "reference", backend: str = "fused"):
        super().__init__()
        drops = parse_ps(ps)
        x_size, y_size = frame_size
        chans = (2, *widths)
        self.ConvAttLIFs = nn.ModuleList()
        for i, pool in enumerate(self.pools):
            attn = make_attention(attention, T, chans[i + 1], reduction, lam, asa_mask, backend)
            self.ConvAttLIFs.append(ConvAttLIF(chans[i], chans[i + 1], pool, attn, p, drops[i], backend))
            x_size, y_size = x_size // pool, y_size // pool
        if x_size < 1 or y_size < 1:
            raise ValueError(f"frame_size {tuple(frame_size)} is too small for the pooling")
        flat = chans[-1] * x_size * y_size
        self.FCs = nn.ModuleList([FCLIF(flat, self.hidden, p, drops[3], backend),
                                  FCLIF(self.hidden, num_classes, p, drops[4], backend)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.ConvAttLIFs:
            x = layer(x)
        x = x.flatten(2)
        for layer in self.FCs:
            x = layer(x)
        return x.mean(dim=1)


def _lif_snn(args, widths, p: float) -> LIFSNN:
    return LIFSNN(args.T, args.num_classes, args.frame_size, widths=widths, p=p, ps=args.ps,
                  attention=args.attention, reduction=args.reduction, lam=args.lam,
                  asa_mask=args.asa_mask, backend=args.backend)


@register("A", "3-layer LIF-SNN (64-128-128), the paper's LIF-SNN")
def arch_a(args) -> LIFSNN:
    return _lif_snn(args, widths=(64, 128, 128), p=0.1)


@register("D", "A with 32 channels and dropout 0.5")
def arch_d(args) -> LIFSNN:
    return _lif_snn(args, widths=(32, 32, 32), p=0.5)
