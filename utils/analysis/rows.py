"""final.sh's rows: the paper's table (the one place its rows are written down), run folder names
per seed, and the plan of what final.sh runs.

    python3 -m utils.analysis.table --list                     # the rows and their flags
    python3 -m utils.analysis.table --plan [--demo] [ROW ...]  # what final.sh will do (used by it)

Each row of the paper's table (docs/reference.md) runs twice per seed, as run folders
``<RUNS_DIR>/<row>_no`` (LIF-SNN) and ``<RUNS_DIR>/<row>_ASA`` for the row's own seed (the authors'
0), ``<row>_no_s<seed>`` and ``<row>_ASA_s<seed>`` for any other seed: one seed keeps the names it
always had, and adding seeds reuses the runs of the row's own seed. A row's flags are the dataset's
preset (datasets/__init__.py: the authors' run settings) plus the row's overrides.

Environment read by the plan: DATA_ROOT (each row's data is DATA_ROOT/<folder>), RUNS_DIR (default
results/runs), NMNIST_PATH (the demo's optional N-MNIST row), SEEDS (space-separated seeds; default:
the row's own).
"""
from __future__ import annotations

import math
import os
import re
import shlex
from dataclasses import dataclass

from datasets import DATASETS
from utils.analysis.runs import read_config, read_metrics

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
        settings = {**self.settings, "seed": seed}
        return " ".join(["-dataset", self.dataset] + [f"-{k} {v}" for k, v in settings.items()])


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


def row_flag_values(flags: str) -> dict:
    """{dest: value} of the flags typed in ``flags`` (parsed by train_test.py's own parser)."""
    import config
    parser = config.build_parser()
    argv = shlex.split(flags)
    ns = parser.parse_args(argv)
    return {k: getattr(ns, k) for k in config.explicit_flags(parser, argv)}


def settings_mismatch(folder: str, flags: str) -> list[str]:
    """Flags of the row whose value differs from the run folder's config.json."""
    cfg = read_config(folder)
    if not cfg:
        return []
    out = []
    for k, v in row_flag_values(flags).items():
        have = cfg.get(k)
        if have is None:
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


def plan(rows: list[Row], env) -> list[list[str]]:
    """final.sh's work list. Each item is one of
    ['NOTE', text], ['RUN', row, attention, run_name, data_dir or '', flags] (a new run), or the same
    with a 7th item 'resume' to continue an unfinished run from its last.pth (train_test.py -resume);
    ['RESTART', row, attention, run_name, data_dir, flags] for an unfinished run that has no
    checkpoint yet (final.sh moves the old folder aside first). Per row, per seed of SEEDS (default:
    the row's own), the LIF-SNN and the ASA run; the flags carry the seed."""
    runs_dir = env.get("RUNS_DIR", "results/runs")
    seeds = parse_seeds(env.get("SEEDS"))
    out = []
    for row in rows:
        path = data_dir(row, env)
        if path is not None and not _has_data(path):
            where = f"${row.folder[1:]}" if row.folder.startswith("$") else path
            out.append(["NOTE", f"skip {row.name}: no data in {where or '(unset)'} -- {row.prepare}"
                        .replace("$DATA_ROOT", env.get("DATA_ROOT", "data"))])
            continue
        for seed, att in ((s, a) for s in (seeds or [row.seed]) for a in ATTENTIONS):
            name, flags = run_name(row, att, seed), row.flags_for(seed)
            folder = os.path.join(runs_dir, name)
            status = run_status(folder)
            if status == "done":
                bad = settings_mismatch(folder, flags)
                other = (f", but with other settings ({'; '.join(bad)}): the table reports it as it is; "
                         f"move it away to run this row's settings" if bad else "")
                out.append(["NOTE", f"done already: {folder}{other} (delete it to run again)"])
                continue
            if status == "partial":
                bad = settings_mismatch(folder, flags)
                if bad:
                    out.append(["NOTE", f"skip {name}: {folder} holds a run with other settings "
                                        f"({'; '.join(bad)}); move it away to run this row"])
                    continue
                if not os.path.isfile(os.path.join(folder, "last.pth")):
                    out.append(["RESTART", row.name, att, name, path or "", flags])
                else:
                    out.append(["RUN", row.name, att, name, path or "", flags, "resume"])
                continue
            out.append(["RUN", row.name, att, name, path or "", flags])
    return out
