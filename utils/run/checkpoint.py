"""Checkpoints: atomic saves, safe loads, the training state needed for an exact resume.

- Saving writes a temporary file with an unpredictable name beside ``<path>``, fsyncs it and
  renames it over ``<path>`` (utils/files.atomic_write; os.replace is atomic on POSIX): a process
  killed at any moment leaves either the previous checkpoint or the new one, never a torn file. A failed write (disk full, file too large, permission) removes the temporary file,
  keeps the previous checkpoint and raises a UserError naming the file and the reason.
- Loading always uses ``torch.load(weights_only=True)``: tensors, numbers, strings and containers
  only, so nothing in a file can execute code. A file that needs more (an arbitrary pickle) is
  refused with one line.
- What a checkpoint holds is checked before it is used (the second half of this module): every
  field an exact resume reads, finite weights and moments, the optimizer against the network, the
  stored settings against the shapes of the weights and against the run folder's config.json.
- Every checkpoint of this project carries its run configuration; ``check_compatible`` refuses a
  checkpoint of another architecture, T, class count, attention, reduction, lambda or frame size and
  names the flag ("checkpoint has -T 8, this run -T 60").
- ``last.pth`` also holds what an exact resume needs: optimizer (Adam moments and step), GradScaler,
  epoch, best accuracy and epoch, the metrics.csv rows so far, and the random-number-generator states
  of every process (python, numpy, torch CPU, torch CUDA). The learning rate is a function of the
  epoch (utils/run/engine.reference_lr), the sample order and the random training windows are functions
  of (seed, epoch[, index]), so these states are all the randomness there is. A last.pth written
  when a signal stopped the run inside an epoch also holds its ``position`` there (sample order,
  next step, metric sums; utils/run/fit.py), its "epoch" being the last finished one.
"""
from __future__ import annotations

import io
import json
import math
import os
import pickle
import random
import re
from types import SimpleNamespace
from typing import Mapping

import numpy as np
import torch

from models import ARCHITECTURES, architecture, load_pretrained
from models.weights import state_dict_of
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
    if isinstance(obj, Mapping):
        check_finite(state_dict_of(obj), path, flag)
    if flag == "-resume":
        check_optimizer_fits(obj["optimizer"], net, path, flag)
    try:
        load_pretrained(net, obj)
    except (ValueError, RuntimeError, KeyError, TypeError, AttributeError) as e:
        raise UserError(f"{flag} {path}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    return obj if isinstance(obj, dict) and "model" in obj else None


def _show(key: str, v) -> str:
    if key == "frame_size" and isinstance(v, (list, tuple)):
        return "x".join(str(int(s)) for s in v)
    return str(v)


def check_compatible(ckpt_config: dict, args, flag: str, path: str, this: str = "this run") -> None:
    """Refuse a checkpoint whose architecture-defining settings differ from ``args`` (this run's,
    or ``this``: e.g. the run folder's config.json)."""
    fixed = architecture(args.arch).fixed_asa if getattr(args, "arch", None) in ARCHITECTURES else {}
    for key in ARCH_KEYS + ("frame_size",):
        if key not in ckpt_config:
            continue
        have, want = ckpt_config[key], getattr(args, key, None)
        if key == "frame_size":
            have = tuple(have) if have is not None else None
            want = tuple(want) if want is not None else None
        if key in fixed:
            continue                                   # the network never reads this flag
        if have != want and not (isinstance(have, float) and isinstance(want, float) and abs(have - want) < 1e-12):
            if key == "frame_size":
                raise UserError(f"{flag} {path}: checkpoint has frames {_show(key, have)}, {this} "
                                f"{_show(key, want)} (set by -dataset and -ds); the weights do not fit")
            raise UserError(f"{flag} {path}: checkpoint has -{key} {_show(key, have)}, {this} "
                            f"-{key} {_show(key, want)}")


def state_bytes(net, optimizer_slots: int = 2) -> int:
    """Rough size of a checkpoint: parameters and buffers plus Adam's two moments per parameter."""
    params = sum(p.numel() * p.element_size() for p in net.parameters())
    buffers = sum(b.numel() * b.element_size() for b in net.buffers())
    return params * (1 + optimizer_slots) + buffers + 64 * 1024


# ---- checking what a checkpoint holds before anything uses it ----------------------------------

def damaged(path: str, flag: str, what: str) -> UserError:
    return UserError(f"{flag} {path}: {what}; the checkpoint is damaged or not one of this project's "
                     f"(restore an earlier copy, or start the run again)")


def check_finite(state, path: str, flag: str, field: str = "model") -> None:
    """UserError naming the file and the tensor when a floating-point tensor of ``state`` (a state
    dict, or any nesting of dicts and lists, e.g. an optimizer's) holds inf or NaN: such weights
    would train to NaN and be blamed on the learning rate an epoch later."""
    stack = [(field, state)]
    while stack:
        name, v = stack.pop()
        if isinstance(v, torch.Tensor):
            if v.is_floating_point() and not bool(torch.isfinite(v).all()):
                raise damaged(path, flag, f"non-finite values (inf or NaN) in {name}")
        elif isinstance(v, float) and not math.isfinite(v):
            raise damaged(path, flag, f"non-finite value {v} in {name}")
        elif isinstance(v, Mapping):
            stack += [(f"{name}.{k}" if name else str(k), x) for k, x in v.items()]
        elif isinstance(v, (list, tuple)):
            stack += [(f"{name}[{i}]", x) for i, x in enumerate(v)]


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _kind(v) -> str:
    return f"{type(v).__name__} {v!r}"[:80] if isinstance(v, (int, float, str, bool)) else type(v).__name__


def check_resume_fields(ckpt: dict, path: str, flag: str = "-resume") -> None:
    """UserError naming the file and the field when a last.pth lacks a field an exact resume reads,
    or holds it with another type or an impossible value (epoch counters, the optimizer's layout,
    the metrics rows, every process's random-generator states, non-finite weights or moments)."""
    def need(field, ok, expected):
        if field not in ckpt:
            raise damaged(path, flag, f"field '{field}' is missing (expected {expected})")
        if not ok(ckpt[field]):
            raise damaged(path, flag, f"field '{field}' is {_kind(ckpt[field])}, expected {expected}")
    need("model", lambda v: isinstance(v, Mapping) and all(isinstance(t, torch.Tensor) for t in v.values()),
         "a state dict of tensors")
    # a run stopped by a signal inside its first epoch has finished none: epoch -1 and a position
    first = -1 if "position" in ckpt else 0
    need("epoch", lambda v: _is_int(v) and v >= first, f"an epoch number >= {first}")
    need("best_epoch", lambda v: _is_int(v) and -1 <= v <= ckpt["epoch"], f"-1..{ckpt['epoch']}")
    need("best_acc", lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v),
         "a finite number")
    need("world_size", lambda v: _is_int(v) and v >= 1, "a process count >= 1")
    need("optimizer", lambda v: isinstance(v, Mapping) and isinstance(v.get("state"), Mapping)
         and isinstance(v.get("param_groups"), list) and len(v["param_groups"]) > 0
         and all(isinstance(g, Mapping) and isinstance(g.get("params"), list)
                 and all(_is_int(i) for i in g["params"]) for g in v["param_groups"]),
         "Adam's state dict (state, param_groups with params)")
    need("scaler", lambda v: v is None or isinstance(v, Mapping), "None or a GradScaler state")
    need("metrics", lambda v: isinstance(v, Mapping) and isinstance(v.get("fields"), list)
         and all(isinstance(f, str) for f in v["fields"]) and isinstance(v.get("rows"), list)
         and all(isinstance(r, list) and all(isinstance(x, str) for x in r) for r in v["rows"]),
         "{'fields': [str], 'rows': [[str]]}")
    need("rng", lambda v: isinstance(v, list) and len(v) > 0 and all(isinstance(s, Mapping) for s in v),
         "one random-generator state per process")
    for i, state in enumerate(ckpt["rng"]):
        try:
            check_rng_state(state)
        except (TypeError, ValueError, KeyError, IndexError, RuntimeError, OverflowError) as e:
            raise damaged(path, flag, f"field 'rng[{i}]' is not a random-generator state "
                                      f"({type(e).__name__}: {str(e)[:100]})") from None
    check_finite(ckpt["model"], path, flag, "model")
    check_finite(ckpt["optimizer"]["state"], path, flag, "optimizer.state")


def check_rng_state(state) -> None:
    """Apply ``state`` (an rng_state()) to throw-away generators: what set_rng_state would do to
    this process's own, so that a malformed state fails here with its field named."""
    v, internal, gauss = state["python"]
    random.Random().setstate((v, tuple(internal), gauss))
    name, keys, pos, has_gauss, gauss = state["numpy"]
    if not isinstance(keys, (list, tuple)) or len(keys) != 624:
        raise ValueError("numpy: expected 624 key words")
    np.random.RandomState().set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
    torch.Generator().set_state(state["torch"])
    for t in state.get("cuda") or []:
        if not (isinstance(t, torch.Tensor) and t.dtype == torch.uint8):
            raise TypeError("cuda: expected byte tensors")


def check_optimizer_fits(opt_state: Mapping, net, path: str, flag: str = "-resume") -> None:
    """UserError naming the file when the optimizer state of a last.pth does not belong to ``net``:
    another parameter count, or Adam moments of another shape than their parameter (torch would
    accept either at load and fail, or train wrongly, at the first step)."""
    params = list(net.parameters())
    ids = [i for g in opt_state["param_groups"] for i in g["params"]]
    if len(ids) != len(params) or sorted(ids) != sorted(set(ids)):
        raise damaged(path, flag, f"field 'optimizer' holds {len(ids)} parameters, the network {len(params)}")
    where = dict(zip(ids, params))
    for i, moments in opt_state["state"].items():
        if i not in where or not isinstance(moments, Mapping):
            raise damaged(path, flag, f"field 'optimizer.state' has an entry {i!r} for no parameter")
        for k, t in moments.items():
            if k == "step":
                continue
            if not isinstance(t, torch.Tensor) or t.shape != where[i].shape:
                raise damaged(path, flag, f"field 'optimizer.state.{i}.{k}' is "
                                          f"{tuple(t.shape) if isinstance(t, torch.Tensor) else _kind(t)}, "
                                          f"its parameter {tuple(where[i].shape)}")


def load_resume_checkpoint(path: str) -> dict:
    """A run folder's last.pth for -resume, loaded weights-only and checked before anything is
    built from it: the format and every field (:func:`check_resume_fields`)."""
    ckpt = load_checkpoint(path, "-resume")
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT or not isinstance(ckpt.get("config"), dict):
        raise UserError(f"-resume {path}: not a resumable checkpoint of this version (expected format "
                        f"{FORMAT} with optimizer and random-generator states)")
    check_resume_fields(ckpt, path)
    return ckpt


def check_same_run(ckpt: dict, path: str, run_dir: str) -> None:
    """UserError naming both files when a last.pth's architecture settings differ from its run
    folder's config.json: another run's checkpoint copied in is refused, not trained on."""
    cfg_path = os.path.join(run_dir, "config.json")
    try:
        with open(cfg_path, encoding="utf-8") as f:
            folder_cfg = json.load(f)
    except (OSError, ValueError):
        folder_cfg = None                  # no readable config.json: nothing to compare with
    if isinstance(folder_cfg, dict):
        check_compatible(ckpt["config"], SimpleNamespace(**folder_cfg), "-resume", path,
                         this=f"the run folder's {cfg_path}")


def check_weights_fit(ckpt: dict, args, path: str, flag: str = "-resume") -> None:
    """UserError naming the file when the network its stored settings describe (built on the meta
    device: shapes only, no memory, whatever T or channel count they claim) does not match the
    shapes of its weights: settings edited or forged apart from the tensors they describe."""
    from models import create_meta_net, match_state
    if not isinstance(ckpt, Mapping):
        return                      # not a state dict: loading it names the file
    try:
        net = create_meta_net(args)
    except Exception:               # settings the network cannot take: validation names the flag
        return
    _, problems = match_state(net.state_dict(), ckpt)
    if problems:
        raise damaged(path, flag, "its stored settings (-arch " + str(args.arch) + ", -T " + str(args.T) +
                      ", ...) describe another network than its weights: " + "; ".join(problems)[:300])
