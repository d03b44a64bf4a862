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
        raise UserError(f"run folder {path} already exists; choose another -name, or continue that "
                        f"run with -resume {path} (nothing in it is overwritten)")
    k = 2
    while not name and os.path.exists(path):
        path = os.path.join(parent, f"{default_name}_{k}")
        k += 1
    try:
        os.makedirs(path, exist_ok=exist_ok)
    except OSError as e:
        raise UserError(f"-modelPath {parent}: cannot create run folder {path} ({e.strerror})") from None
    return path


def write_json(path: str, obj) -> None:
    """Write atomically: a temporary file renamed over the target."""
    tmp = path + ".tmp"
    try:
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=2, sort_keys=True, default=str)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        _discard(tmp)
        raise UserError(f"cannot write {path}: {e.strerror or e}") from None


def config_dict(args) -> dict:
    return {k: v for k, v in vars(args).items()}


class MetricsCSV:
    """metrics.csv with a fixed header; ``append(row)`` writes and fsyncs one row.

    ``rows`` keeps every data row as the strings written, so a checkpoint can carry the metrics so
    far and ``rewrite(rows)`` can restore the file exactly (resume: rows newer than the checkpoint
    are dropped, a torn last line is repaired) with an atomic rename."""

    def __init__(self, path: str, fields: list[str], rows: list[list[str]] | None = None):
        self.path, self.fields = path, list(fields)
        self.rows: list[list[str]] = []
        if rows is not None:
            self.rewrite(rows)
        elif not os.path.exists(path) or os.path.getsize(path) == 0:
            self.rewrite([])

    def format(self, row: dict) -> list[str]:
        return [str(_fmt(row.get(k, ""))) for k in self.fields]

    def append(self, row: dict) -> None:
        line = self.format(row)
        try:
            with open(self.path, "a", newline="") as f:
                csv.writer(f).writerow(line)
                f.flush()
                os.fsync(f.fileno())
        except OSError as e:
            raise UserError(f"cannot append to {self.path}: {e.strerror or e}") from None
        self.rows.append(line)

    def rewrite(self, rows: list[list[str]]) -> None:
        tmp = self.path + ".tmp"
        try:
            with open(tmp, "w", newline="") as f:
                w = csv.writer(f)
                w.writerow(self.fields)
                w.writerows(rows)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except OSError as e:
            _discard(tmp)
            raise UserError(f"cannot write {self.path}: {e.strerror or e}") from None
        self.rows = [list(r) for r in rows]


def read_rows(path: str) -> tuple[list[str], list[list[str]]]:
    """(header, data rows) of a metrics.csv; ([], []) when it is missing or empty."""
    try:
        with open(path, newline="") as f:
            rows = list(csv.reader(f))
    except OSError:
        return [], []
    return (rows[0], rows[1:]) if rows else ([], [])


def _discard(path: str) -> None:
    try:
        os.remove(path)
    except OSError:
        pass


def _fmt(v):
    return repr(v) if isinstance(v, float) else v
