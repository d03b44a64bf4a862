"""The run folder: resolved config, one metrics.csv row per epoch, eval.json.

Every row is appended and flushed to disk as soon as the epoch ends, so a crash loses nothing.
A folder that already exists is never reused unless the caller says so (resume)."""
from __future__ import annotations

import csv
import datetime
import fcntl
import io
import json
import math
import os

from utils.errors import UserError
from utils.files import atomic_write, inside_folder, open_in_run_folder, probe_writable


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
    inside_folder(parent, path, "-modelPath")
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


# open lock files of the run folders this process holds (released when the process ends)
_LOCKS: dict[str, object] = {}
LOCK_NAME = ".lock"


def lock_run_folder(run_dir: str) -> None:
    """Hold an advisory lock (fcntl.flock) on <run_dir>/.lock for the life of this process, so that
    a second run or -resume of the same folder is refused while this one works in it. The kernel
    releases the lock when the process ends, however it ends: a stale lock cannot block."""
    key = os.path.realpath(run_dir)
    if key in _LOCKS:
        return
    path = os.path.join(run_dir, LOCK_NAME)
    f = os.fdopen(open_in_run_folder(path, os.O_RDWR | os.O_CREAT, f"run folder {run_dir}: its lock file"), "r+")
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.seek(0)
        holder = f.read().strip()
        f.close()
        raise UserError(f"run folder {run_dir} is in use by another process{' (pid ' + holder + ')' if holder else ''}; "
                        f"wait for it to end or stop it (a killed process leaves no lock behind)") from None
    f.seek(0)
    f.truncate()
    f.write(str(os.getpid()))
    f.flush()
    _LOCKS[key] = f


def release_run_folder(run_dir: str) -> None:
    """Release this process's lock of ``run_dir`` (tests; a finished process releases it anyway)."""
    f = _LOCKS.pop(os.path.realpath(run_dir), None)
    if f is not None:
        f.close()


def checkpoint_space(run_dir: str, ckpt_bytes: int) -> int:
    """Free bytes the checkpoints of a run need in ``run_dir``: one temporary copy while a file is
    replaced, plus one for each of best.pth and last.pth that does not exist yet (an existing one
    is replaced in place, its space is already taken)."""
    missing = sum(not os.path.exists(os.path.join(run_dir, f)) for f in ("best.pth", "last.pth"))
    return ckpt_bytes * (1 + missing)


def write_json(path: str, obj) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    atomic_write(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def config_dict(args) -> dict:
    return {k: v for k, v in vars(args).items()}


def check_model_path(parent: str) -> None:
    """-modelPath must be creatable and writable before any data is read."""
    try:
        os.makedirs(parent, exist_ok=True)
    except OSError as e:
        raise UserError(f"-modelPath {parent}: cannot create folder ({e.strerror or e})") from None
    if not os.path.isdir(parent):
        raise UserError(f"-modelPath {parent}: not a folder")
    probe_writable(parent)


def open_run_folder(args, dist) -> str:
    """The run folder: a resumed run's own, or a new one under -modelPath holding config.json
    (made by rank 0, its name shared with every process). Sets ``args.run_dir``."""
    if args.resume is None:
        args.run_dir = dist.from_main(create_run_dir, args.modelPath, args.name, default_run_name(args))
        dist.on_main(lock_run_folder, args.run_dir)
        dist.on_main(write_json, os.path.join(args.run_dir, "config.json"), config_dict(args))
    else:
        dist.on_main(lock_run_folder, args.run_dir)
    return args.run_dir


def start_report(args, dist, device, net, n_train: int, n_test: int, notes: list[str]) -> None:
    """What the run is about to do, printed once (rank 0): data, device, allocator, batches,
    the precision of each part (-amp: planned, and observed on one sample), determinism notes and
    the network's summary."""
    import torch
    from utils.run import allocator, precision
    from utils.run.loaders import batch_plan_text
    say = dist.say
    say(f"device {device}; dataset {args.dataset}: {n_train} train / {n_test} test "
        f"samples, frames {args.T}x2x{args.frame_size[0]}x{args.frame_size[1]}, {args.num_classes} classes")
    if dist.active:
        say(f"distributed: {dist.world_size} processes, backend {dist.backend}")
    if device.type == "cpu":
        say(f"CPU allocator: {allocator.describe()}")
    say(batch_plan_text(args, dist.world_size))
    for line in precision.describe(net, device, args.amp):
        say(line)
    if precision.amp_dtype(device, args.amp) == torch.bfloat16 and dist.is_main:
        say(precision.observed_line(net, torch.zeros(1, args.T, 2, *args.frame_size, device=device),
                                    device, args.amp))
    for note in notes:
        say(f"deterministic: {note}")
    if dist.world_size > 1 and args.attention == "ASA" and args.asa_mask == "reference" and not args.eval_only:
        say("note: reference ASA masks pool over each process's part of the training batch (test "
            "batches are whole, as in one process)")
    if dist.is_main:
        print_summary(net, args, device)


def print_summary(net, args, device) -> None:
    try:
        import torch
        from torchinfo import summary
        x = torch.zeros(1, args.T, 2, *args.frame_size, device=device)
        print(summary(net, input_data=[x], depth=3, verbose=0, col_names=("output_size", "num_params")))
    except Exception as e:       # the summary is informative only; never fail a run over it
        print(f"(model summary unavailable: {e})")


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
        elif not os.path.lexists(path) or not os.path.islink(path) and os.path.getsize(path) == 0:
            self.rewrite([])
        else:                        # a file planted under this name is refused before any epoch
            os.close(open_in_run_folder(path, os.O_RDONLY, "metrics file"))

    def format(self, row: dict) -> list[str]:
        return [str(_fmt(row.get(k, ""))) for k in self.fields]

    def append(self, row: dict) -> None:
        line = self.format(row)
        fd = open_in_run_folder(self.path, os.O_WRONLY | os.O_APPEND, "metrics file")
        try:
            with open(fd, "a", newline="") as f:
                csv.writer(f).writerow(line)
                f.flush()
                os.fsync(f.fileno())
        except OSError as e:
            raise UserError(f"cannot append to {self.path}: {e.strerror or e}") from None
        self.rows.append(line)

    def rewrite(self, rows: list[list[str]]) -> None:
        text = io.StringIO(newline="")
        w = csv.writer(text)
        w.writerow(self.fields)
        w.writerows(rows)
        atomic_write(self.path, text.getvalue())
        self.rows = [list(r) for r in rows]


def read_metrics_csv(path: str, needed: tuple = (), checked: bool = True,
                     unreadable: str = "") -> tuple[list[str], list[dict]]:
    """The one reader of a metrics.csv: (its header, its rows as dicts of strings); ([], []) when
    it is missing or empty. A file that is not readable text is one UserError naming it
    (``unreadable``: what to do about it). ``checked`` makes sure every value a reader uses is a
    number: a UserError naming the file (and the line) when it lacks a column of ``needed``, has a
    row of another length than its header (a torn or binary file), an epoch that is not a whole
    number, or a value that is not a finite number (NaN is never reported as a result)."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            rows = list(reader)
            fields = list(reader.fieldnames or [])
    except FileNotFoundError:
        return [], []
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise UserError(f"{path}: not a readable metrics.csv ({type(e).__name__}: {str(e)[:120]})"
                        f"{unreadable}") from None
    if checked:
        check_metrics_rows(path, fields, rows, needed)
    return fields, rows


def check_metrics_rows(path: str, fields: list[str], rows: list[dict], needed: tuple) -> None:
    """:func:`read_metrics_csv`'s checks of a metrics.csv's rows."""
    missing = [c for c in needed if c not in fields]
    if fields and missing:
        raise UserError(f"{path}: no column {', '.join(missing)} (its header: {','.join(fields)[:120]}); "
                        f"not a metrics.csv of this project, or a torn one")
    for line, row in enumerate(rows, start=2):
        if None in row or None in row.values():
            raise UserError(f"{path}: line {line} does not have the {len(fields)} values of its header; "
                            f"a torn or damaged file")
        for k, v in row.items():
            if v == "" and k not in needed:
                continue
            try:
                x = int(v) if k == "epoch" else float(v)
            except ValueError:
                x = None
            if x is None or not math.isfinite(x) or x < 0 and k == "epoch":
                raise UserError(f"{path}: line {line}: {k} is {v[:40]!r}, expected "
                                f"{'a whole epoch number >= 0' if k == 'epoch' else 'a finite number'}")


def _fmt(v):
    return repr(v) if isinstance(v, float) else v
