"""Arch B and C (docs/reference.md, "Architectures"): the five-conv-layer spikingjelly-style net of Fang et al. 2021.

    5 x [Conv2d(3x3, pad 1, no bias) -> BatchNorm2d -> ASA -> neuron -> pool]
    -> flatten -> Linear(.., 512) -> neuron -> Linear(512, classes*10) -> neuron
    -> voting (mean of each group of 10 outputs) -> mean over T

B: 128 channels, PLIF neurons, max pools. C: channels 64/128/128/128/128, plain LIF neurons, average
pools after blocks 1..4. The pool after the fifth block is a MaxPool2 in both (it is the
"MaxPool2 -> flatten" of docs/reference.md; pooling after block i equals pooling before block i+1).

Module names follow the authors' (``ConvAttLIFs.<i>.0.conv.0``, ``.bn.0``, ``.attn``, ``.spike.0.w``,
``FCs.<i>.1.fc``) so that their checkpoints load directly. Every ASA is built with reduction 1 and
λ = 0.5 as in the reference (``FIXED_ASA``), whatever the command line asks for.
"""
from typing import Sequence

import torch
from torch import nn

from .module.Attn import make_attention
from .module.decay_input import NEURONS
from .registry import register

FIXED_ASA = {"reduction": 1, "lam": 0.5}      # the reference's, for every ASA of B and C


class ConvAttNeuron(nn.Module):
    """[conv (no bias) -> BN -> attention -> neuron] on ``[N, T, C, H, W]``."""

    def __init__(self, in_ch: int, out_ch: int, attn: nn.Module, neuron: nn.Module):
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=False))
        self.bn = nn.Sequential(nn.BatchNorm2d(out_ch))
        self.attn = attn
        self.spike = nn.Sequential(neuron)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, t = x.shape[:2]
        y = self.bn(self.conv(x.flatten(0, 1)))
        return self.spike(self.attn(y.unflatten(0, (n, t))))


class FCNeuron(nn.Module):
    """[Linear -> neuron] on ``[N, T, features]``."""

    def __init__(self, in_features: int, out_features: int, neuron: nn.Module):
        super().__init__()
        self.fc = nn.Linear(in_features, out_features)
        self.spike = nn.Sequential(neuron)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.spike(self.fc(x))


class FramePool(nn.Module):
    """A 2x2 pooling of ``[N, T, C, H, W]`` applied frame by frame."""

    def __init__(self, kind: str):
        super().__init__()
        self.pool = nn.MaxPool2d(2) if kind == "max" else nn.AvgPool2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(x.flatten(0, 1)).unflatten(0, x.shape[:2])


class PLIFSNN(nn.Module):
    """Arch B / C. Input ``[N, T, 2, X, Y]`` frames, output logits ``[N, num_classes]``.

    Args:
        T: time steps (fixed, the ASA fc acts along T).
        num_classes: classes; the output layer has ``num_classes * voting`` neurons.
        frame_size: (X, Y) of the input frames; e.g. 128x128 -> head Linear(128*4*4, 512),
            DAVIS346 173x130 (ds 2) -> 128*5*4, 87x65 (ds 4) -> 128*2*2.
        neuron: 'plif' (B) or 'lif' (C).
        widths: the five conv widths (B: 128 x 5; C: 64, 128, 128, 128, 128).
        pool: 'max' (B) or 'avg' (C) for the pools after blocks 1..4.
        attention, asa_mask: the ASA of every conv layer ('no' = identity); reduction 1, λ 0.5.
        backend: "fused" or "eager" for every neuron and ASA (the same values; models/fused).
    """

    hidden = 512
    voting = 10

    def __init__(self, T: int, num_classes: int, frame_size: Sequence[int], neuron: str = "plif",
                 widths: Sequence[int] = (128,) * 5, pool: str = "max", attention: str = "ASA",
                 asa_mask: str = "reference", backend: str = "fused"):
        super().__init__()
        if neuron not in NEURONS:
            raise ValueError(f"neuron must be one of {sorted(NEURONS)}, got {neuron!r}")
        if pool not in ("max", "avg"):
            raise ValueError(f"pool must be 'max' or 'avg', got {pool!r}")
        if len(widths) != 5:
            raise ValueError(f"PLIFSNN needs 5 conv widths, got {tuple(widths)}")
        make_neuron = NEURONS[neuron]
        chans = (2, *widths)
        pools = (pool,) * 4 + ("max",)
        self.ConvAttLIFs = nn.ModuleList()
        for i in range(5):
            attn = make_attention(attention, T, chans[i + 1], mask=asa_mask, backend=backend, **FIXED_ASA)
            block = ConvAttNeuron(chans[i], chans[i + 1], attn, make_neuron(backend=backend))
            self.ConvAttLIFs.append(nn.Sequential(block, FramePool(pools[i])))
        x_size, y_size = (s // 2 ** 5 for s in frame_size)
        if x_size < 1 or y_size < 1:
            raise ValueError(f"frame_size {tuple(frame_size)} is too small for five 2x2 pools")
        # Index 0 of each FCs entry is parameter-free; it keeps the authors' key layout (FCs.<i>.1).
        self.FCs = nn.ModuleList([
            nn.Sequential(nn.Flatten(2), FCNeuron(chans[-1] * x_size * y_size, self.hidden,
                                                  make_neuron(backend=backend))),
            nn.Sequential(nn.Identity(), FCNeuron(self.hidden, num_classes * self.voting,
                                                  make_neuron(backend=backend))),
        ])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.ConvAttLIFs:
            x = layer(x)
        for layer in self.FCs:
            x = layer(x)
        votes = x.unflatten(2, (-1, self.voting)).mean(dim=3)                 # [N, T, classes]
        return votes.mean(dim=1)


@register("B", "5-layer PLIF net of Fang et al. 2021 (128 channels, max pools)", fixed_asa=FIXED_ASA)
def arch_b(args) -> PLIFSNN:
    return PLIFSNN(args.T, args.num_classes, args.frame_size, neuron="plif", widths=(128,) * 5,
                   pool="max", attention=args.attention, asa_mask=args.asa_mask, backend=args.backend)


@register("C", "B with plain LIF neurons, 64-128-128-128-128 channels, average pools",
          fixed_asa=FIXED_ASA)
def arch_c(args) -> PLIFSNN:
    return PLIFSNN(args.T, args.num_classes, args.frame_size, neuron="lif",
                   widths=(64, 128, 128, 128, 128), pool="avg", attention=args.attention,
                   asa_mask=args.asa_mask, backend=args.backend)
