"""final.sh's rows: the paper's table (the one place its rows are written down), run folder names
per seed, and what final.sh does with each run (new, continue, done, left alone).

    python3 -m utils.analysis.rows --list                      # the rows and their flags
    python3 -m utils.analysis.rows --plan [--demo] [ROW ...]   # what final.sh would do now

(``python3 -m utils.analysis.table --list / --plan`` are the same commands.)

final.sh's plan file, made from :func:`plan`, is utils/analysis/launch.py's.

Each row of the paper's table (docs/reference.md) runs twice per seed, as run folders
``<RUNS_DIR>/<row>_no`` (LIF-SNN) and ``<RUNS_DIR>/<row>_ASA`` for the row's own seed (the authors'
0), ``<row>_no_s<seed>`` and ``<row>_ASA_s<seed>`` for any other seed: one seed keeps the names it
always had, and adding seeds reuses the runs of the row's own seed. A row's flags are the dataset's
preset (datasets/__init__.py: the authors' run settings) plus the row's overrides.

Environment read by the plan: DATA_ROOT (each row's data is DATA_ROOT/<folder>), RUNS_DIR (default
results/runs), NMNIST_PATH (the demo's optional N-MNIST row), SEEDS (space-separated seeds; default:
the row's own); EXTRA_FLAGS comes parsed (:func:`extra_argv`).
"""
from __future__ import annotations

import math
import os
import re
import shlex
from dataclasses import dataclass

from utils.analysis.runs import read_config, read_metrics
from utils.errors import UserError
from utils.files import shown

ATTENTIONS = ("no", "ASA")


# Every row of the paper's table also passes these (the authors' final.sh).
COMMON = {"seed": 0, "lam": 0.5}


@dataclass(frozen=True)
class Row:
    name: str                 # row id; run folders are <name>_no and <name>_ASA
    label: str                # what the table calls it
    dataset: str              # -dataset; its preset (datasets/__init__.py) holds the authors' settings
    folder: str               # data: DATASETS_ROOT/<folder>; "" = built-in data; "$VAR" = that variable
    prepare: str              # how to get the data there
    overrides: tuple = ()     # (flag, value) pairs that differ from the preset
    demo: bool = False

    @property
    def settings(self) -> dict:
        from datasets import DATASETS        # torch comes with it: not needed to launch a planned run
        return {**DATASETS[self.dataset].defaults, **COMMON, **dict(self.overrides)}

    @property
    def flags(self) -> str:
        """train_test.py flags, every setting spelled out: the dataset's preset, the common flags,
        the row's overrides. -attention, -data_path, -name and -modelPath are added per run."""
        return self.flags_for(self.seed)

    @property
    def seed(self) -> int:
        """The row's own seed (the authors' 0)."""
        return int(self.settings["seed"])

    def flags_for(self, seed: int) -> str:
        """The row's flags with -seed ``seed``."""
        return " ".join(self.argv_for(seed))

    def argv_for(self, seed: int) -> list[str]:
        """The row's flags with -seed ``seed``, one argument per word."""
        settings = {**self.settings, "seed": seed}
        return ["-dataset", self.dataset] + [w for k, v in settings.items() for w in (f"-{k}", str(v))]


ROWS = (
    Row("gesture", "DVS128 Gesture", "gesture", "gesture",
        "python3 -m datasets.prepare gesture --raw DvsGesture/ --out $DATA_ROOT/gesture"),
    Row("gesture_sj", "DVS128 Gesture (spikingjelly frames)", "gesture_sj", "gesture_sj",
        "python3 -m datasets.prepare gesture_sj --raw DvsGesture/ --out $DATA_ROOT/gesture_sj"),
    Row("gait_day", "DVS128 Gait-day", "gait_day", "gait_day",
        "python3 -m datasets.prepare gait --raw DVS128-Gait-Day/ --out $DATA_ROOT/gait_day"),
    Row("gait_night", "DVS128 Gait-night", "gait_night", "gait_night",
        "python3 -m datasets.prepare gait --raw DVS128-Gait-Night/ --out $DATA_ROOT/gait_night"),
    Row("action", "DailyAction-DVS", "action", "action",
        "put the DailyAction-DVS class folders (*.aedat) there; check: "
        "python3 -m datasets.prepare action --raw $DATA_ROOT/action"),
    # HAR-DVS is not in the authors' script: its preset is this project's; 100 epochs and
    # -reduction 4 are this project's choice for the row.
    Row("har_dvs", "HAR-DVS (SEW-ResNet-18)", "har_dvs", "har_dvs",
        "python3 -m datasets.prepare har_dvs --raw HARDVS/ --out $DATA_ROOT/har_dvs",
        overrides=(("num_epochs", 100), ("reduction", 4))),
    Row("recognition", "DVS action recognition (extra row)", "recognition", "recognition",
        "python3 -m datasets.prepare recognition --raw PAF/ --out $DATA_ROOT/recognition"),
    # `sh final.sh demo`: the same pipeline, sized for about 10 minutes on 2 CPU cores.
    # Three seeds by default (final.sh), each smaller than the former single-seed demo (400 / 100
    # recordings, 12 epochs), so that the six runs take about 8 minutes on a quiet 2-core CPU.
    Row("demo_synthetic", "synthetic DVS gestures (demo)", "synthetic", "", "built in",
        overrides=(("synthetic_train", 320), ("synthetic_test", 100), ("num_epochs", 10), ("arch", "A"),
                   ("weight_decay", 1e-4)), demo=True),
    Row("demo_nmnist", "N-MNIST (demo: 3000/1000 samples, 2 epochs)", "nmnist", "$NMNIST_PATH",
        "set NMNIST_PATH to the N-MNIST folder (Train/ and Test/; "
        "check: python3 -m datasets.prepare nmnist --raw DIR)",
        overrides=(("T", 6), ("dt", 50), ("ds", 2), ("num_epochs", 2), ("train_samples", 3000),
                   ("test_samples", 1000)), demo=True),
)
ROW_BY_NAME = {r.name: r for r in ROWS}


def select_rows(names=None, demo: bool = False) -> list[Row]:
    """The rows named (in table order), else all paper rows, or all demo rows for ``demo``."""
    if names:
        unknown = [n for n in names if n not in ROW_BY_NAME]
        if unknown:
            raise ValueError(f"unknown row(s) {unknown}; rows: {', '.join(ROW_BY_NAME)}")
        return [r for r in ROWS if r.name in names]
    return [r for r in ROWS if r.demo == demo]


def run_name(row: Row, attention: str, seed: int | None = None) -> str:
    """<row>_<attention> for the row's own seed, <row>_<attention>_s<seed> for another."""
    return f"{row.name}_{attention}" + ("" if seed is None or seed == row.seed else f"_s{seed}")


def parse_seeds(text: str | None) -> list[int] | None:
    """The seeds of SEEDS ("0 1 2", commas allowed); None when unset or empty."""
    words = (text or "").replace(",", " ").split()
    if not words:
        return None
    if not all(w.isdigit() for w in words):
        raise ValueError(f"SEEDS={text!r}: expected seeds as non-negative integers, e.g. SEEDS=\"0 1 2\"")
    seeds = [int(w) for w in words]
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"SEEDS={text!r}: a seed is listed twice")
    return seeds


def seed_runs(runs_dir: str, row: Row, attention: str, seeds: list[int] | None = None) -> dict:
    """{seed: run folder} of the row's runs with ``attention`` that exist: those of ``seeds``, or
    every one found (<row>_<att> and <row>_<att>_s<seed>), in seed order."""
    if seeds is None:
        pat = re.compile(re.escape(f"{row.name}_{attention}") + r"(?:_s(\d+))?")
        names = os.listdir(runs_dir) if os.path.isdir(runs_dir) else []
        found = {}
        for n in names:
            m = pat.fullmatch(n)
            if m and os.path.isdir(os.path.join(runs_dir, n)):
                found[int(m.group(1)) if m.group(1) else row.seed] = os.path.join(runs_dir, n)
        return dict(sorted(found.items()))
    folders = {s: os.path.join(runs_dir, run_name(row, attention, s)) for s in seeds}
    return {s: f for s, f in folders.items() if os.path.isdir(f)}


# ------------------------------------------------------------------------------------------------
# run folder status and final.sh's plan
# ------------------------------------------------------------------------------------------------

# Flags final.sh sets per run, or that would turn every run into another one: never in EXTRA_FLAGS.
RESERVED = {"attention": "final.sh sets it per run", "name": "final.sh names each run",
            "modelPath": "use RUNS_DIR", "resume": "final.sh continues unfinished runs itself",
            "seed": "use SEEDS", "dataset": "each row has its own", "data_path": "use DATA_ROOT",
            "eval_only": "final.sh trains", "pretrained_path": "each run starts from scratch"}
RUNNABLE = ("new", "resume", "restart")


def rows_with_runs(runs_dir: str, rows, seeds: list[int] | None = None) -> list[Row]:
    """The rows among ``rows`` with at least one run folder in ``runs_dir``."""
    return [r for r in rows if any(seed_runs(runs_dir, r, a, seeds) for a in ATTENTIONS)]


def run_status(folder: str) -> str:
    """'absent', 'done' (every epoch logged and best.pth written) or 'partial'."""
    if not os.path.isdir(folder):
        return "absent"
    rows, cfg = read_metrics(folder), read_config(folder)
    epochs = cfg.get("num_epochs")
    done_epochs = {int(r["epoch"]) for r in rows}
    if epochs and len(done_epochs) >= int(epochs) and os.path.isfile(os.path.join(folder, "best.pth")):
        return "done"
    return "partial"


def lock_holder(folder: str) -> str | None:
    """Who holds the run folder's lock (train_test.py's, utils/run/runlog.py): its pid as written
    there ('?' when unreadable), or None when no live process holds it."""
    fd = hold_lock(folder, create=False)
    if isinstance(fd, int):
        os.close(fd)
        return None
    return fd


def hold_lock(folder: str, create: bool = True):
    """Take the run folder's lock: the open descriptor (close it to release), None when there is
    no lock file (``create`` False), or the holder's pid text when another process holds it."""
    import fcntl
    from utils.run.runlog import LOCK_NAME
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | (os.O_CREAT if create else 0)
    try:
        fd = os.open(os.path.join(folder, LOCK_NAME), flags, 0o644)
    except OSError:                     # no lock file (or a planted link): nobody holds it
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = os.read(fd, 32).decode("ascii", "replace").strip()
        os.close(fd)
        return holder if holder.isdigit() else "?"
    return fd


def extra_argv(text: str, devices: bool = False) -> list[str]:
    """EXTRA_FLAGS as train_test.py arguments (quotes as in the shell: -data_path '/my data'),
    checked against train_test.py's parser; the flags final.sh sets itself are refused."""
    import argparse
    import config
    try:
        argv = shlex.split(text or "")
    except ValueError as e:
        raise ValueError(f"EXTRA_FLAGS={text!r}: {e} (quote as in the shell)") from None
    parser = config.build_parser()
    parser.exit_on_error = False
    try:
        _, rest = parser.parse_known_args(argv)
    except argparse.ArgumentError as e:
        raise ValueError(f"EXTRA_FLAGS={text!r}: {e}") from None
    if rest:
        raise ValueError(f"EXTRA_FLAGS={text!r}: not train_test.py flags: {' '.join(rest)}")
    typed = config.explicit_flags(parser, argv)
    bad = [f"-{k} ({RESERVED[k]})" for k in sorted(typed & set(RESERVED))]
    if devices and "device" in typed:
        bad.append("-device (DEVICES gives each run its device)")
    if bad:
        raise ValueError(f"EXTRA_FLAGS={text!r}: final.sh cannot take {', '.join(bad)}")
    return argv


def row_flag_values(argv) -> dict:
    """{dest: value} of the flags typed in ``argv`` (a list, or a string of flags), parsed by
    train_test.py's own parser."""
    import config
    parser = config.build_parser()
    argv = shlex.split(argv) if isinstance(argv, str) else list(argv)
    ns = parser.parse_args(argv)
    return {k: getattr(ns, k) for k in config.explicit_flags(parser, argv)}


def settings_mismatch(folder: str, argv) -> list[str]:
    """Flags of ``argv`` (the row's, then EXTRA_FLAGS) whose value differs from the run folder's
    config.json; flags that only say where or how fast a run computes (those -resume may change)
    are not compared."""
    import config
    cfg = read_config(folder)
    if not cfg:
        return []
    out = []
    for k, v in row_flag_values(argv).items():
        have = cfg.get(k)
        if have is None or config.flag_kind(k) != "computes":
            continue
        same = (math.isclose(float(have), float(v)) if isinstance(v, (int, float)) and
                not isinstance(v, bool) and isinstance(have, (int, float)) else str(have) == str(v))
        if not same:
            out.append(f"-{k} {have} (row: {v})")
    return out


def data_dir(row: Row, env) -> str | None:
    """Where the row's data must be, or None when it needs none (the built-in dataset)."""
    if not row.folder:
        return None
    if row.folder.startswith("$"):
        return env.get(row.folder[1:], "")
    return os.path.join(env.get("DATA_ROOT", "data"), row.folder)


def _has_data(path: str) -> bool:
    return bool(path) and os.path.isdir(path) and any(not n.startswith(".") for n in os.listdir(path))


@dataclass(frozen=True)
class PlannedRun:
    """One run of the table: its row, attention and seed, its folder name, its data folder ('' for
    built-in data), train_test.py's flags (the row's, then EXTRA_FLAGS), and what to do with it:
    new, resume (an unfinished folder, continued with -resume), restart (a folder without
    config.json: moved aside, then started again), done, other (an unfinished folder holding
    other settings: left alone) or in_use (its lock is held by another process: left alone)."""
    name: str
    row: str
    attention: str
    seed: int
    data_dir: str
    flags: tuple
    action: str
    note: str = ""

    @property
    def runnable(self) -> bool:
        return self.action in RUNNABLE


def decide(folder: str, flags=None) -> tuple[str, str]:
    """(action, note) for a run folder now (PlannedRun); with ``flags`` a folder's settings are
    compared with them (without, the run's own train_test.py -resume checks them)."""
    holder = lock_holder(folder) if os.path.isdir(folder) else None
    if holder is not None:
        return "in_use", (f"{shown(folder)} is in use by another process (pid {holder}); left alone")
    try:
        status = run_status(folder)
        if status == "absent":
            return "new", ""
        bad = settings_mismatch(folder, flags) if flags is not None else []
    except (UserError, ValueError, TypeError) as e:       # a broken metrics.csv or config.json
        return "other", f"{shown(folder)} cannot be read ({e}); left alone: repair or move it away"
    if status == "done":
        other = (f", but with other settings ({'; '.join(bad)}): the table reports it as it is; "
                 f"move it away to run this row's settings" if bad else "")
        return "done", f"done already: {shown(folder)}{other} (delete it to run again)"
    if bad:
        return "other", (f"{shown(folder)} holds a run with other settings ({'; '.join(bad)}); move it away "
                         f"to run this row")
    if not os.path.isfile(os.path.join(folder, "config.json")):
        return "restart", f"{shown(folder)} has no config.json (stopped before it was set up)"
    return "resume", ""


def plan(rows: list[Row], env, extra: list[str] | None = None) -> list:
    """final.sh's work: per row, per seed of SEEDS (default: the row's own), the LIF-SNN and the ASA
    run as PlannedRun, with flags that carry the seed and then ``extra`` (EXTRA_FLAGS); a row
    whose data is missing gives one note (a str) instead."""
    runs_dir = env.get("RUNS_DIR", "results/runs")
    seeds = parse_seeds(env.get("SEEDS"))
    out = []
    for row in rows:
        path = data_dir(row, env)
        if path is not None and not _has_data(path):
            where = f"${row.folder[1:]}" if row.folder.startswith("$") else path
            out.append(f"skip {row.name}: no data in {where or '(unset)'} -- {row.prepare}"
                       .replace("$DATA_ROOT", env.get("DATA_ROOT", "data")))
            continue
        for seed, att in ((s, a) for s in (seeds or [row.seed]) for a in ATTENTIONS):
            name, flags = run_name(row, att, seed), tuple(row.argv_for(seed) + list(extra or []))
            action, note = decide(os.path.join(runs_dir, name), flags)
            out.append(PlannedRun(name, row.name, att, seed, path or "", flags, action, note))
    return out


def main(argv=None) -> int:
    """The planner's command line: the rows (--list), or what final.sh would do now (--plan)."""
    import argparse
    import sys
    p = argparse.ArgumentParser(prog="python3 -m utils.analysis.rows",
                                description="final.sh's rows and their flags, or what it would do now.")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--list", action="store_true", help="print the rows and their flags")
    g.add_argument("--plan", nargs="*", metavar="ROW", help="print what final.sh would do now with these "
                   "rows (default: the paper rows, or the demo rows with --demo): per run new, resume, done...")
    p.add_argument("--demo", action="store_true", help="with --plan: the demo rows")
    a = p.parse_args(argv)
    if a.list:
        for r in ROWS:
            print(f"{r.name:<15} {'demo ' if r.demo else ''}data: {r.folder or '(built in)'}\n    {r.flags}")
        return 0
    from utils.analysis.launch import make_plan
    try:
        pl = make_plan(os.environ, a.demo, a.plan)
    except (ValueError, UserError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for r in pl.runs:
        print(f"{r.action:<8} {os.path.join(pl.settings.runs_dir, r.name)}: {r.note or shlex.join(r.flags)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
