"""Checkpoints: atomic saves, safe loads, the training state needed for an exact resume.

- Saving writes ``<path>.tmp``, fsyncs it and renames it over ``<path>`` (os.replace is atomic on
  POSIX): a process killed at any moment leaves either the previous checkpoint or the new one, never
  a torn file. A failed write (disk full, file too large, permission) removes the temporary file,
  keeps the previous checkpoint and raises a UserError naming the file and the reason.
- Loading always uses ``torch.load(weights_only=True)``: tensors, numbers, strings and containers
  only, so nothing in a file can execute code. A file that needs more (an arbitrary pickle) is
  refused with one line.
- Every checkpoint of this project carries its run configuration; ``check_compatible`` refuses a
  checkpoint of another architecture, T, class count, attention, reduction, lambda or frame size and
  names the flag ("checkpoint has -T 8, this run -T 60").
- ``last.pth`` also holds what an exact resume needs: optimizer (Adam moments and step), GradScaler,
  epoch, best accuracy and epoch, the metrics.csv rows so far, and the random-number-generator states
  of every process (python, numpy, torch CPU, torch CUDA). The learning rate is a function of the
  epoch (utils/engine.reference_lr), the sample order and the random training windows are functions
  of (seed, epoch[, index]), so these states are all the randomness there is. A last.pth written
  when a signal stopped the run inside an epoch also holds its ``position`` there (sample order,
  next step, metric sums; utils/run/fit.py), its "epoch" being the last finished one.
"""
from __future__ import annotations

import io
import os
import pickle
import random
import re

import numpy as np
import torch

from models import load_pretrained
from utils.errors import UserError
from utils.files import atomic_write, check_regular_file

FORMAT = "asa-snn-checkpoint/2"

# Flags whose values make a checkpoint's weights mean something else: a mismatch is refused.
ARCH_KEYS = ("arch", "T", "num_classes", "attention", "reduction", "lam")


def atomic_save(obj, path: str) -> None:
    """torch.save ``obj`` into memory, then write it atomically (utils/files.py). Serialising first
    makes a write error an OSError with its errno (disk full, file size limit), not a torch error."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write(path, buf.getvalue(), what="checkpoint", then="and continue with -resume")


def _numpy_state() -> tuple:
    """numpy's legacy global state with plain Python values (weights_only loading has no ndarray)."""
    name, keys, pos, has_gauss, gauss = np.random.get_state(legacy=True)
    return (str(name), [int(k) for k in keys], int(pos), int(has_gauss), float(gauss))


def rng_state() -> dict:
    """This process's random generator states (python, numpy, torch CPU and CUDA)."""
    return {
        "python": random.getstate(),
        "numpy": _numpy_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else [],
    }


def set_rng_state(state: dict) -> None:
    v, internal, gauss = state["python"]
    random.setstate((v, tuple(internal), gauss))
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available():
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
        else:
            torch.cuda.set_rng_state(cuda[0])


def make_checkpoint(net, optimizer, epoch: int, best_acc: float, best_epoch: int, args, *,
                    scaler=None, rng=None, metrics=None, world_size: int = 1) -> dict:
    """A full checkpoint: enough to evaluate (model + config) or continue (the rest).

    ``rng``: list of rng_state() of every rank; ``metrics``: {'fields': [...], 'rows': [[str]]},
    the metrics.csv rows up to and including ``epoch`` exactly as written."""
    model = net.module if hasattr(net, "module") else net
    return {
        "format": FORMAT,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scaler": scaler.state_dict() if scaler is not None else None,
        "epoch": epoch,
        "best_acc": best_acc,
        "best_epoch": best_epoch,
        "rng": rng,
        "metrics": metrics,
        "world_size": world_size,
        "config": {k: v for k, v in vars(args).items() if isinstance(v, (int, float, str, bool, list, tuple, type(None)))},
    }


def load_checkpoint(path: str, flag: str = "checkpoint") -> object:
    """``torch.load(path, weights_only=True)`` on CPU with one-line UserErrors for every failure."""
    if os.path.exists(path):
        check_regular_file(path, "a checkpoint file", flag)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise UserError(f"{flag} {path}: no such file") from None
    except IsADirectoryError:
        raise UserError(f"{flag} {path}: is a folder, expected a checkpoint file") from None
    except PermissionError:
        raise UserError(f"{flag} {path}: permission denied") from None
    except pickle.UnpicklingError as e:
        text = str(e)
        if "weights_only" in text.lower() or "Unsupported" in text:
            found = re.search(r"GLOBAL ([\w.]+)", text)
            raise UserError(f"{flag} {path}: refused: the file needs code execution to load (it is not a "
                            f"weights-only checkpoint; nothing in it was run)" +
                            (f"; it calls {found.group(1)}" if found else "")) from None
        first = text.strip().splitlines()[0] if text.strip() else type(e).__name__
        raise UserError(f"{flag} {path}: not a readable checkpoint ({first[:160]})") from None
    except Exception as e:       # truncated zip, random bytes, old formats...
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise UserError(f"{flag} {path}: not a readable checkpoint ({type(e).__name__}: {first[:160]})") from None


def load_weights(net, path: str, args, flag: str = "-pretrained_path") -> dict | None:
    """Load the weights of checkpoint ``path`` into ``net`` (weights-only loading). A checkpoint of
    this project whose architecture differs from ``args`` is refused naming the flag; the authors'
    raw state dicts load by key. Returns the checkpoint dict (None for a raw state dict)."""
    obj = load_checkpoint(path, flag)
    if isinstance(obj, dict) and isinstance(obj.get("config"), dict) and "model" in obj:
        check_compatible(obj["config"], args, flag, path)
    try:
        load_pretrained(net, obj)
    except (ValueError, RuntimeError, KeyError, TypeError, AttributeError) as e:
        raise UserError(f"{flag} {path}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    return obj if isinstance(obj, dict) and "model" in obj else None


def _show(key: str, v) -> str:
    if key == "frame_size" and isinstance(v, (list, tuple)):
        return "x".join(str(int(s)) for s in v)
    return str(v)


def check_compatible(ckpt_config: dict, args, flag: str, path: str) -> None:
    """Refuse a checkpoint whose architecture-defining settings differ from this run's."""
    for key in ARCH_KEYS + ("frame_size",):
        if key not in ckpt_config:
            continue
        have, want = ckpt_config[key], getattr(args, key, None)
        if key == "frame_size":
            have = tuple(have) if have is not None else None
            want = tuple(want) if want is not None else None
        if key == "reduction" and getattr(args, "arch", None) in ("B", "C"):
            continue                                   # B/C always build ASA with reduction 1
        if have != want and not (isinstance(have, float) and isinstance(want, float) and abs(have - want) < 1e-12):
            if key == "frame_size":
                raise UserError(f"{flag} {path}: checkpoint has frames {_show(key, have)}, this run "
                                f"{_show(key, want)} (set by -dataset and -ds); the weights do not fit")
            raise UserError(f"{flag} {path}: checkpoint has -{key} {_show(key, have)}, this run "
                            f"-{key} {_show(key, want)}")


def state_bytes(net, optimizer_slots: int = 2) -> int:
    """Rough size of a checkpoint: parameters and buffers plus Adam's two moments per parameter."""
    params = sum(p.numel() * p.element_size() for p in net.parameters())
    buffers = sum(b.numel() * b.element_size() for b in net.buffers())
    return params * (1 + optimizer_slots) + buffers + 64 * 1024
