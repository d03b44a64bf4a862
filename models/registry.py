"""The architecture registry: ``@register(name, help)`` and ``create_net(args)``.

An architecture module registers its builders itself (timm style)::

    @register("A", "3-layer LIF-SNN (64-128-128)")
    def arch_a(args):
        return LIFSNN(...)

``models/__init__.py`` imports every module of the package, so a new file that registers itself
is all a new architecture needs: ``-arch`` offers it and train_test.py builds it.
A builder receives the resolved run configuration (config.py): ``arch, T, attention, asa_mask,
reduction, lam, ps, num_classes, frame_size, backend``.
"""
from __future__ import annotations

from typing import Any, Callable, Dict

from torch import nn

Builder = Callable[[Any], nn.Module]
ARCHITECTURES: Dict[str, Builder] = {}
DESCRIPTIONS: Dict[str, str] = {}


def register(name: str, help: str) -> Callable[[Builder], Builder]:
    """Decorator registering ``builder(args) -> nn.Module`` under ``name``, described by ``help``."""
    def wrap(builder: Builder) -> Builder:
        if name in ARCHITECTURES:
            raise ValueError(f"architecture {name!r} is already registered")
        ARCHITECTURES[name] = builder
        DESCRIPTIONS[name] = help
        return builder
    return wrap


def create_net(args: Any) -> nn.Module:
    """Build ``args.arch`` (one of :data:`ARCHITECTURES`) from the run configuration ``args``."""
    try:
        builder = ARCHITECTURES[args.arch]
    except KeyError:
        raise ValueError(f"unknown arch {args.arch!r}; registered: {sorted(ARCHITECTURES)}") from None
    return builder(args)
