"""SEW-ResNet-18 (Fang et al., NeurIPS 2021, "Deep Residual Learning in Spiking Neural Networks")
with ASA before every spiking neuron of the conv blocks; the network of the HAR-DVS row
(docs/reference.md). The authors' code has no such network: this project defines it.

Layout (tensors ``[N, T, C, H, W]``; conv, BN and pooling see ``N*T`` frames; SN = spiking neuron)::

    stem    conv 7x7/2 (2 -> 64, no bias) -> BN -> ASA -> SN -> max pool 3x3/2
    layer1  2 x SEW basic block, 64 channels
    layer2  2 x SEW basic block, 128 channels (the first one strides 2)
    layer3  2 x SEW basic block, 256 channels (stride 2)
    layer4  2 x SEW basic block, 512 channels (stride 2)
    head    adaptive average pool to 1x1 -> flatten -> Linear(512, classes) -> mean over T

SEW basic block (spike-element-wise, connect function ADD)::

    r   = SN(ASA(BN(conv3x3/s(x))))
    r   = SN(ASA(BN(conv3x3(r))))
    id  = x                      or, when the shape changes, SN(ASA(BN(conv1x1/s(x))))
    out = r + id                 (ADD: a sum of spike tensors, values 0, 1, 2, ...)

The adaptive pooling makes any frame size work: DAVIS346 frames at ds 2 ([T, 2, 173, 130]) give
87x65 -> 44x33 after the stem, then 44x33, 22x17, 11x9, 6x5; at ds 4 (87x65) 44x33 -> 22x17 ...
The output layer is a plain Linear (no neuron), as in Fang et al.; its outputs averaged over T are
the logits. Neurons are this project's fused PLIF (spikingjelly ``ParametricLIFNode`` defaults:
init_tau 2, v_threshold 1, hard reset to 0, ATan surrogate), as Fang et al. use for DVS data;
``neuron='lif'`` selects the plain LIF node (tau 2).

Each ASA is ``ASA(T, channels, reduction, lam, mask)`` from the command line (``-reduction``, ``-lam``,
``-asa_mask``); ``attention='no'`` puts the identity there.

``synaptic_sources()`` tells the energy count (utils/analysis/energy.py) which spiking layers' spikes add up to the input of each
conv / linear layer (needed because the ADD connection feeds sums of spike tensors to the next block).
"""
from typing import Dict, List, Sequence

import torch
from torch import nn

from .module.Attn import make_attention
from .module.decay_input import NEURONS
from .registry import register


def _frames(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Apply a 2-D ``module`` to every frame of ``x: [N, T, ...]``."""
    return module(x.flatten(0, 1)).unflatten(0, x.shape[:2])


class ConvBNAttSN(nn.Module):
    """conv (no bias) -> BN -> ASA (or identity) -> spiking neuron, on ``[N, T, C, H, W]``."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int, attn: nn.Module,
                 neuron: nn.Module):
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, kernel, stride=stride, padding=kernel // 2, bias=False)
        self.bn = nn.BatchNorm2d(out_ch)
        self.attn = attn
        self.sn = neuron

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.sn(self.attn(_frames(lambda f: self.bn(self.conv(f)), x)))


class SEWBasicBlock(nn.Module):
    """Spike-element-wise basic block with the ADD connect function."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, make_attn, make_neuron):
        super().__init__()
        self.conv1 = ConvBNAttSN(in_ch, out_ch, 3, stride, make_attn(out_ch), make_neuron())
        self.conv2 = ConvBNAttSN(out_ch, out_ch, 3, 1, make_attn(out_ch), make_neuron())
        self.downsample = None
        if stride != 1 or in_ch != out_ch:
            self.downsample = ConvBNAttSN(in_ch, out_ch, 1, stride, make_attn(out_ch), make_neuron())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        return self.conv2(self.conv1(x)) + identity


class SEWResNet18(nn.Module):
    """SEW-ResNet-18 for event frames ``[N, T, in_channels, H, W]`` -> logits ``[N, num_classes]``.

    Args:
        T: time steps (ASA's fc acts along T, so T is fixed).
        num_classes: output classes (300 for HAR-DVS).
        attention: 'ASA' or 'no'. reduction, lam, asa_mask: the ASA settings.
        neuron: 'plif' (default) or 'lif'.
        widths: channels of the stem/layer1 and layers 2..4.
        in_channels: input channels (2 polarities).
    """

    blocks = (2, 2, 2, 2)

    def __init__(self, T: int, num_classes: int, attention: str = "ASA", reduction: int = 1,
                 lam: float = 0.5, asa_mask: str = "reference", neuron: str = "plif",
                 widths: Sequence[int] = (64, 128, 256, 512), in_channels: int = 2,
                 backend: str = "fused"):
        super().__init__()
        if neuron not in NEURONS:
            raise ValueError(f"neuron must be one of {sorted(NEURONS)}, got {neuron!r}")
        if len(widths) != 4:
            raise ValueError(f"SEWResNet18 needs 4 widths, got {tuple(widths)}")

        def make_attn(ch):
            return make_attention(attention, T, ch, reduction, lam, asa_mask, backend)

        def make_neuron():
            return NEURONS[neuron](backend=backend)

        self.stem = ConvBNAttSN(in_channels, widths[0], 7, 2, make_attn(widths[0]), make_neuron())
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        layers, ch = [], widths[0]
        for i, (n, w) in enumerate(zip(self.blocks, widths)):
            stride = 1 if i == 0 else 2
            blocks = [SEWBasicBlock(ch, w, stride, make_attn, make_neuron)]
            blocks += [SEWBasicBlock(w, w, 1, make_attn, make_neuron) for _ in range(n - 1)]
            layers.append(nn.Sequential(*blocks))
            ch = w
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(ch, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 5:
            raise ValueError(f"SEWResNet18 expects [N, T, C, H, W] frames, got {tuple(x.shape)}")
        x = _frames(self.maxpool, self.stem(x))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = _frames(self.avgpool, x).flatten(2)                               # [N, T, C]
        return self.fc(x).mean(dim=1)

    def synaptic_sources(self) -> Dict[str, List[str]]:
        """{conv/linear name: names of the spiking layers whose spikes sum to its input}.

        The stem conv sees the input frames (empty list). Max pooling is ignored (the rate of the
        pooled spikes is taken as the rate of the spikes), as is the average pooling before fc."""
        out: Dict[str, List[str]] = {"stem.conv": []}
        current = ["stem.sn"]                        # what the next block receives (after max pool)
        for li in range(1, 5):
            layer = getattr(self, f"layer{li}")
            for bi, block in enumerate(layer):
                p = f"layer{li}.{bi}"
                out[f"{p}.conv1.conv"] = list(current)
                out[f"{p}.conv2.conv"] = [f"{p}.conv1.sn"]
                if block.downsample is not None:
                    out[f"{p}.downsample.conv"] = list(current)
                    identity = [f"{p}.downsample.sn"]
                else:
                    identity = list(current)
                current = [f"{p}.conv2.sn"] + identity
        out["fc"] = list(current)
        return out


@register("sew18", "SEW-ResNet-18 with ASA before every spiking neuron (the HAR-DVS row)")
def arch_sew18(args) -> SEWResNet18:
    return SEWResNet18(args.T, args.num_classes, attention=args.attention, reduction=args.reduction,
                       lam=args.lam, asa_mask=args.asa_mask, backend=args.backend)
