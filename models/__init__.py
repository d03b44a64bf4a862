"""Network registry and checkpoint loading.

``create_net(args)`` builds the architecture named by ``args.arch`` from a config namespace with
attributes ``arch, T, attention, asa_mask, reduction, lam, ps, num_classes, frame_size``.
More architectures are added with the decorator::

    @register("sew18")
    def _sew18(args):
        return SEWResNet18(...)

``load_pretrained(net, path_or_state_dict)`` loads the authors' checkpoints (their key names, fp16
values) as well as this project's checkpoint dicts (``{'model': state_dict, ...}``).
"""
import os
from typing import Any, Callable, Dict, Mapping, Union

import torch
from torch import nn

from .lif_snn import LIFSNN
from .plif_snn import PLIFSNN

__all__ = ["ARCHITECTURES", "register", "create_net", "load_pretrained", "LIFSNN", "PLIFSNN"]

ARCHITECTURES: Dict[str, Callable[[Any], nn.Module]] = {}

# Per-cell ASA blocks the authors' A/D code builds but never calls; their checkpoints carry them.
UNUSED_AUTHOR_KEY = ".spike.0.attn."


def register(name: str) -> Callable[[Callable[[Any], nn.Module]], Callable[[Any], nn.Module]]:
    """Decorator registering ``builder(args) -> nn.Module`` under ``name``."""
    def wrap(builder: Callable[[Any], nn.Module]) -> Callable[[Any], nn.Module]:
        if name in ARCHITECTURES:
            raise ValueError(f"architecture {name!r} is already registered")
        ARCHITECTURES[name] = builder
        return builder
    return wrap


def create_net(args: Any) -> nn.Module:
    """Build ``args.arch`` (one of :data:`ARCHITECTURES`) from the config namespace ``args``."""
    try:
        builder = ARCHITECTURES[args.arch]
    except KeyError:
        raise ValueError(f"unknown arch {args.arch!r}; registered: {sorted(ARCHITECTURES)}") from None
    return builder(args)


def backend_of(args: Any) -> str:
    """``args.backend`` ("fused" when a namespace built outside config.py has none)."""
    return getattr(args, "backend", "fused")


def _lif_snn(args: Any, widths, p: float) -> LIFSNN:
    return LIFSNN(args.T, args.num_classes, args.frame_size, widths=widths, p=p, ps=args.ps,
                  attention=args.attention, reduction=args.reduction, lam=args.lam,
                  asa_mask=args.asa_mask, backend=backend_of(args))


@register("A")
def _arch_a(args: Any) -> nn.Module:
    return _lif_snn(args, widths=(64, 128, 128), p=0.1)


@register("D")
def _arch_d(args: Any) -> nn.Module:
    return _lif_snn(args, widths=(32, 32, 32), p=0.5)


@register("B")
def _arch_b(args: Any) -> nn.Module:
    return PLIFSNN(args.T, args.num_classes, args.frame_size, neuron="plif", widths=(128,) * 5,
                   pool="max", attention=args.attention, asa_mask=args.asa_mask,
                   backend=backend_of(args))


@register("C")
def _arch_c(args: Any) -> nn.Module:
    return PLIFSNN(args.T, args.num_classes, args.frame_size, neuron="lif",
                   widths=(64, 128, 128, 128, 128), pool="avg", attention=args.attention,
                   asa_mask=args.asa_mask, backend=backend_of(args))


def _extract_state_dict(obj: Union[str, os.PathLike, Mapping]) -> Mapping[str, torch.Tensor]:
    """The state dict inside a path, a raw state dict or a project checkpoint ``{'model': ...}``."""
    if isinstance(obj, (str, os.PathLike)):
        obj = torch.load(obj, map_location="cpu", weights_only=True)
    if not isinstance(obj, Mapping):
        raise ValueError(f"expected a state dict or a checkpoint dict, got {type(obj).__name__}")
    if isinstance(obj.get("model"), Mapping):
        obj = obj["model"]
    return obj


def load_pretrained(net: nn.Module, path_or_state_dict: Union[str, os.PathLike, Mapping]) -> nn.Module:
    """Load weights into ``net`` strictly and return it.

    Accepts a file path, a raw state dict (the authors' key names; fp16 values are cast to the
    dtype of the net's tensors) or this project's checkpoint dict with the key ``'model'``. A
    ``module.`` prefix (DataParallel / DDP) is stripped and the authors' unused per-cell ASA keys
    (``*.spike.0.attn.*``) are ignored. Any other missing, unexpected or shape-mismatched key raises
    a ValueError naming the keys.
    """
    own = net.state_dict()
    state = {}
    for key, value in _extract_state_dict(path_or_state_dict).items():
        key = key[len("module."):] if key.startswith("module.") else key
        if UNUSED_AUTHOR_KEY in key and key not in own:
            continue
        state[key] = value
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    mismatched = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
                  for k in sorted(set(own) & set(state)) if state[k].shape != own[k].shape]
    if missing or unexpected or mismatched:
        problems = [f"missing keys: {missing}" if missing else "",
                    f"unexpected keys: {unexpected}" if unexpected else "",
                    f"shape mismatches: {mismatched}" if mismatched else ""]
        raise ValueError(f"cannot load weights into {type(net).__name__}: "
                         + "; ".join(p for p in problems if p))
    net.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()}, strict=True)
    return net
from . import sew_resnet  # noqa: E402,F401  registers "sew18" (must stay last: it uses register)
