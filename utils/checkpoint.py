"""Checkpoints: atomic saves (temporary file, then rename) so a kill mid-save keeps the old one."""
from __future__ import annotations

import os

import torch

from utils.errors import UserError


def atomic_save(obj, path: str) -> None:
    tmp = path + ".tmp"
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        try:
            os.remove(tmp)
        except OSError:
            pass
        raise UserError(f"cannot write checkpoint {path}: {e.strerror or e}") from None


def make_checkpoint(net, optimizer, epoch: int, best_acc: float, best_epoch: int, args) -> dict:
    """A full checkpoint: enough to evaluate (model + config) or continue (optimizer, epoch)."""
    model = net.module if hasattr(net, "module") else net
    return {
        "format": "asa-snn-checkpoint/1",
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "epoch": epoch,
        "best_acc": best_acc,
        "best_epoch": best_epoch,
        "config": {k: v for k, v in vars(args).items() if isinstance(v, (int, float, str, bool, list, tuple, type(None)))},
    }
