"""Loading weights into a network: this project's checkpoints and the authors' state dicts.

Files are read elsewhere (utils/run/checkpoint.py, the one place that calls torch.load); this
module only matches a state dict's keys and shapes to a network.
"""
from __future__ import annotations

from typing import Mapping

from torch import Tensor, nn

# Per-cell ASA blocks the authors' arch A/D code builds but never calls; their checkpoints carry them.
UNUSED_AUTHOR_KEY = ".spike.0.attn."


def state_dict_of(obj: Mapping) -> Mapping:
    """The state dict inside a raw state dict or a project checkpoint ``{'model': ...}``."""
    if not isinstance(obj, Mapping):
        raise ValueError(f"expected a state dict or a checkpoint dict, got {type(obj).__name__}")
    model = obj.get("model")
    return model if isinstance(model, Mapping) else obj


def match_state(own: Mapping, obj: Mapping) -> tuple[dict, list[str]]:
    """(the entries of ``obj``'s state dict to load, the problems) against ``own``, a network's
    state dict (also one built on the meta device, which holds shapes and no memory): a
    ``module.`` prefix (DataParallel / DDP) is stripped and the authors' unused per-cell ASA keys
    (``*.spike.0.attn.*``) are ignored; the problems name missing, unexpected and shape-mismatched
    keys, and values that are not tensors."""
    state = {}
    for key, value in state_dict_of(obj).items():
        key = key[len("module."):] if isinstance(key, str) and key.startswith("module.") else key
        if isinstance(key, str) and UNUSED_AUTHOR_KEY in key and key not in own:
            continue
        state[key] = value
    missing = sorted(set(own) - set(state))
    unexpected = sorted(map(str, set(state) - set(own)))
    common = sorted(set(own) & set(state))
    not_tensors = [k for k in common if not isinstance(state[k], Tensor)]
    mismatched = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
                  for k in common if k not in not_tensors and state[k].shape != own[k].shape]
    problems = [f"missing keys: {missing}" if missing else "",
                f"unexpected keys: {unexpected}" if unexpected else "",
                f"not tensors: {not_tensors}" if not_tensors else "",
                f"shape mismatches: {mismatched}" if mismatched else ""]
    return state, [p for p in problems if p]


def load_pretrained(net: nn.Module, obj: Mapping) -> nn.Module:
    """Load weights into ``net`` strictly and return it.

    ``obj``: a raw state dict (the authors' key names; fp16 values are cast to the dtype of the
    net's tensors) or this project's checkpoint dict with the key ``'model'``, matched by
    :func:`match_state`; any problem raises a ValueError naming the keys.
    """
    own = net.state_dict()
    state, problems = match_state(own, obj)
    if problems:
        raise ValueError(f"cannot load weights into {type(net).__name__}: " + "; ".join(problems))
    net.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()}, strict=True)
    return net
