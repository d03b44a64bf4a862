"""The architecture registry: ``@register(name, help)`` and ``create_net(args)``.

An architecture module registers its builders itself (timm style)::

    @register("A", "3-layer LIF-SNN (64-128-128)")
    def arch_a(args):
        return LIFSNN(...)

``models/__init__.py`` imports every module of the package, so a new file that registers itself
is all a new architecture needs: ``-arch`` offers it, train_test.py builds it, and what the rest of
the project needs to know about it (its memory, its energy, its spiking layers) is read from the
network it builds. A builder receives the resolved run configuration (config.py): ``arch, T,
attention, asa_mask, reduction, lam, ps, num_classes, frame_size, backend``.

The one fact a network cannot tell is which flags it ignores: an architecture that builds its ASA
with fixed settings (B and C: reduction 1, λ 0.5, as the reference) says so with ``fixed_asa``,
and resume checks and flag validation skip those flags for it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Mapping

import torch
from torch import nn

Builder = Callable[[Any], nn.Module]


@dataclass(frozen=True)
class Architecture:
    """A registered architecture: its builder, its one-line description for ``-arch``'s help, and
    the ASA settings it fixes whatever the command line says (``{"reduction": 1, "lam": 0.5}``)."""
    build: Builder
    help: str
    fixed_asa: Mapping[str, Any] = field(default_factory=dict)


ARCHITECTURES: Dict[str, Architecture] = {}


def register(name: str, help: str, fixed_asa: Mapping[str, Any] | None = None) -> Callable[[Builder], Builder]:
    """Decorator registering ``builder(args) -> nn.Module`` under ``name``, described by ``help``;
    ``fixed_asa``: the ASA flags the builder does not read, with the values it uses instead."""
    def wrap(builder: Builder) -> Builder:
        if name in ARCHITECTURES:
            raise ValueError(f"architecture {name!r} is already registered")
        ARCHITECTURES[name] = Architecture(builder, help, dict(fixed_asa or {}))
        return builder
    return wrap


def architecture(name: str) -> Architecture:
    """The registration of ``name``; ValueError naming the registered ones when there is none."""
    try:
        return ARCHITECTURES[name]
    except KeyError:
        raise ValueError(f"unknown arch {name!r}; registered: {sorted(ARCHITECTURES)}") from None


def create_net(args: Any) -> nn.Module:
    """Build ``args.arch`` (one of :data:`ARCHITECTURES`) from the run configuration ``args``."""
    return architecture(args.arch).build(args)


def create_meta_net(args: Any) -> nn.Module:
    """``args.arch`` built on the meta device: its shapes, parameters and forward pass without any
    memory, whatever T or channel count ``args`` claims (the memory estimate, the checks of a
    checkpoint's stored settings)."""
    with torch.device("meta"):
        return create_net(args)
