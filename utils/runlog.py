"""The run folder: resolved config, one metrics.csv row per epoch, eval.json.

Every row is appended and flushed to disk as soon as the epoch ends, so a crash loses nothing.
A folder that already exists is never reused unless the caller says so (resume)."""
from __future__ import annotations

import csv
import datetime
import json
import os

from utils.errors import UserError


def default_run_name(args) -> str:
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    return f"{args.dataset}_{args.arch}_{args.attention}_T{args.T}_seed{args.seed}_{stamp}"


def create_run_dir(parent: str, name: str | None, default_name: str, exist_ok: bool = False) -> str:
    """Make <parent>/<name>; an explicit name that exists is an error, an automatic one gets _2, _3..."""
    try:
        os.makedirs(parent, exist_ok=True)
    except OSError as e:
        raise UserError(f"-modelPath {parent}: cannot create folder ({e.strerror})") from None
    if not os.access(parent, os.W_OK):
        raise UserError(f"-modelPath {parent}: folder is not writable")
    path = os.path.join(parent, name or default_name)
    if name and os.path.exists(path) and not exist_ok:
        raise UserError(f"run folder {path} already exists; choose another -name "
                        f"(nothing in it is overwritten)")
    k = 2
    while not name and os.path.exists(path):
        path = os.path.join(parent, f"{default_name}_{k}")
        k += 1
    os.makedirs(path, exist_ok=exist_ok)
    return path


def write_json(path: str, obj) -> None:
    """Write atomically: a temporary file renamed over the target."""
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True, default=str)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def config_dict(args) -> dict:
    return {k: v for k, v in vars(args).items()}


class MetricsCSV:
    """metrics.csv with a fixed header; ``append(row)`` writes and fsyncs one row."""

    def __init__(self, path: str, fields: list[str]):
        self.path, self.fields = path, fields
        if not os.path.exists(path) or os.path.getsize(path) == 0:
            with open(path, "w", newline="") as f:
                csv.writer(f).writerow(fields)

    def append(self, row: dict) -> None:
        with open(self.path, "a", newline="") as f:
            csv.writer(f).writerow([_fmt(row.get(k, "")) for k in self.fields])
            f.flush()
            os.fsync(f.fileno())


def _fmt(v):
    return repr(v) if isinstance(v, float) else v
