"""The training step the benchmarks time, in two variants built from the same modules.

* ``fused``     -- what train_test.py runs: fused LIF/PLIF autograd functions, the one-node ASA,
                   the lean pools (models/ as shipped).
* ``reference`` -- the reference-style step: the neurons stepped one time step at a time under
                   autograd (``fused=False``), ASA as plain autograd ops (``ASA.forward_eager``),
                   nn.AvgPool2d / nn.MaxPool2d. Same parameters, same spikes; it is the authors'
                   way of computing, used as the speed and memory baseline.

One step = forward, MSE loss against the one-hot label, backward, Adam update (utils/engine.py).
"""
from __future__ import annotations

import os
import sys
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch import nn

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from models import create_net                      # noqa: E402
from models.lif_snn import LeanAvgPool2d, LeanMaxPool2d  # noqa: E402
from models.module.Attn import ASA                 # noqa: E402

# The paper's settings (SPEC section 7): gesture (arch A) and gesture_sj (arch B)
CONFIGS = {
    "A": dict(arch="A", T=60, frame_size=(32, 32), ps="00111", reduction=4),
    "B": dict(arch="B", T=20, frame_size=(128, 128), ps="00000", reduction=4),
}


def build_net(arch: str, variant: str, T: int | None = None, size: int | None = None) -> nn.Module:
    cfg = dict(CONFIGS[arch])
    if T is not None:
        cfg["T"] = T
    if size is not None:
        cfg["frame_size"] = (size, size)
    args = SimpleNamespace(attention="ASA", asa_mask="reference", lam=0.5, num_classes=11, **cfg)
    net = create_net(args)
    if variant == "reference":
        to_reference(net)
    elif variant != "fused":
        raise ValueError(f"variant must be 'fused' or 'reference', got {variant!r}")
    return net


def to_reference(net: nn.Module) -> nn.Module:
    """Switch ``net`` in place to the eager, reference-style computation (same parameters)."""
    for name, mod in list(net.named_modules()):
        if hasattr(mod, "fused"):
            mod.fused = False
        if hasattr(mod, "compact_input"):
            mod.compact_input = False
        if hasattr(mod, "lean"):
            mod.lean = False
        if isinstance(mod, ASA):
            mod.forward = mod.forward_eager
        for child_name, child in list(mod.named_children()):
            if isinstance(child, LeanAvgPool2d):
                setattr(mod, child_name, nn.AvgPool2d(child.kernel_size))
            elif isinstance(child, LeanMaxPool2d):
                setattr(mod, child_name, nn.MaxPool2d(child.kernel_size))
    return net


def make_batch(net_T: int, frame_size, batch: int, seed: int = 0):
    """Sparse event-count frames like DVS data (about 10% of pixels active) and labels."""
    g = torch.Generator().manual_seed(seed)
    shape = (batch, net_T, 2, *frame_size)
    x = (torch.rand(shape, generator=g) < 0.1).float() * torch.randint(1, 4, shape, generator=g).float()
    return x, torch.randint(0, 11, (batch,), generator=g)


def make_step(net: nn.Module, x: torch.Tensor, y: torch.Tensor, num_classes: int = 11):
    net.train()
    opt = torch.optim.Adam(net.parameters(), lr=1e-4, weight_decay=1e-4)
    target = F.one_hot(y, num_classes).float()

    def step():
        loss = F.mse_loss(net(x), target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.detach()
    return step
