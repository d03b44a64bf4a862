"""The paper's rows (the one place they are written down) and the results-table collector.

    python3 -m utils.analysis.table results/runs --out results/        # collect run folders -> table.md/.csv
    python3 -m utils.analysis.table results/runs --out results/ --rows gesture gait_day
    python3 -m utils.analysis.table --list                             # the rows and their flags
    python3 -m utils.analysis.table --plan [--demo] [ROW ...]          # what final.sh will do (used by it)

Each row of the paper's table (docs/reference.md) runs twice per seed, as run folders
``<RUNS_DIR>/<row>_no`` (LIF-SNN) and ``<RUNS_DIR>/<row>_ASA`` for the row's own seed (the authors'
0), ``<row>_no_s<seed>`` and ``<row>_ASA_s<seed>`` for any other seed: one seed keeps the names it
always had, and adding seeds reuses the runs of the row's own seed. The collector reads each
folder's metrics.csv: the best epoch is the one with the highest test accuracy (ties: the later
epoch, as best.pth), its accuracy and its NASFR are reported; the energy per sample
(utils/analysis/energy.py) comes from best.pth with that epoch's firing rates. Deltas: accuracy in
percentage points (ASA - LIF-SNN), NASFR and energy in percent of the LIF-SNN value. With several
seeds every number is the mean over the seeds, with the sample standard deviation (ddof = 1) and
the count n; a delta is computed per seed, from the ASA and LIF-SNN runs of that seed (paired), and
then averaged. The paper's numbers come from results/paper.csv. Beside the table the collector draws
per row the test accuracy and NASFR against the epoch (utils/analysis/curves.py, curves_<row>.png).

Environment read by ``--plan``: DATA_ROOT (each row's data is DATA_ROOT/<folder>), RUNS_DIR (default
results/runs), NMNIST_PATH (the demo's optional N-MNIST row), SEEDS (space-separated seeds; default:
the row's own).
"""
from __future__ import annotations

import argparse
import csv
import datetime
import io
import math
import os
import re
import shlex
import statistics
import sys
from dataclasses import dataclass

from datasets import DATASETS
from utils.analysis.runs import best_row, layer_rates, read_config, read_metrics
from utils.files import atomic_write

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PAPER_CSV = os.path.join(ROOT, "results", "paper.csv")
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
                out.append(["NOTE", f"done already: {folder} (delete it to run again)"])
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


# ------------------------------------------------------------------------------------------------
# the collector
# ------------------------------------------------------------------------------------------------

def read_paper(path: str = PAPER_CSV) -> dict:
    if not os.path.isfile(path):
        return {}
    with open(path, newline="") as f:
        return {r["row"]: {k: float(v) for k, v in r.items() if k not in ("row", "label") and v != ""}
                for r in csv.DictReader(f)}


def summarise_run(folder: str, with_energy: bool = True) -> dict | None:
    """Best epoch, its accuracy / NASFR, epochs done, and the energy of best.pth; None if no epoch."""
    rows = read_metrics(folder)
    if not rows:
        return None
    best = best_row(rows)
    cfg = read_config(folder)
    out = {"acc": float(best["test_acc"]), "nasfr": float(best["test_nasfr"]),
           "best_epoch": int(best["epoch"]) + 1, "epochs_done": len({int(r["epoch"]) for r in rows}),
           "epochs": int(cfg.get("num_epochs") or 0), "arch": cfg.get("arch", ""),
           "energy_uJ": None, "energy_asa_uJ": None, "sops": None, "energy_error": ""}
    ckpt = os.path.join(folder, "best.pth")
    if with_energy and os.path.isfile(ckpt):
        from utils.analysis.energy import checkpoint_energy
        try:
            rep = checkpoint_energy(ckpt, rates=layer_rates(best))
            out.update(energy_uJ=rep["total_uJ"], energy_asa_uJ=rep["asa_uJ"], sops=rep["sops"])
        except Exception as e:                 # a broken checkpoint must not lose the table
            out["energy_error"] = f"{type(e).__name__}: {e}"
    return out


def _delta_pct(new, old):
    return None if new is None or old in (None, 0) else (new - old) / old * 100.0


def spread(values: list) -> tuple:
    """(mean, sample standard deviation with ddof = 1, n) of the values that are not None;
    the deviation is None for fewer than two values, everything None for none."""
    v = [x for x in values if x is not None]
    if not v:
        return None, None, 0
    return statistics.fmean(v), (statistics.stdev(v) if len(v) > 1 else None), len(v)


def _epochs_text(runs: list[dict]) -> str | None:
    texts = [f"{r['epochs_done']}/{r['epochs']}" for r in runs]
    if not texts:
        return None
    return texts[0] if len(set(texts)) == 1 else ", ".join(texts)


def collect(runs_dir: str, rows: list[Row] | None = None, paper: dict | None = None,
            with_energy: bool = True, seeds: list[int] | None = None) -> list[dict]:
    """One record per row: reproduced and paper numbers, deltas, energy; over ``seeds`` (default:
    every seed with a run folder) the means, sample standard deviations (ddof = 1) and counts, the
    deltas per seed (the ASA and LIF-SNN runs of the same seed) and then averaged.

    ``rows`` None: every row with at least one run folder in ``runs_dir``."""
    paper = read_paper() if paper is None else paper
    if rows is None:
        rows = rows_with_runs(runs_dir, ROWS, seeds)
    records = []
    for row in rows:
        res = {}                                  # attention -> {seed: summary}
        for a in ATTENTIONS:
            got = {s: summarise_run(f, with_energy) for s, f in seed_runs(runs_dir, row, a, seeds).items()}
            res[a] = {s: r for s, r in got.items() if r is not None}
        p = paper.get(row.name, {})
        any_run = next((r for a in ("ASA", "no") for r in res[a].values()), {})
        rec = {"row": row.name, "label": row.label, "arch": any_run.get("arch") or _flag(row.flags, "-arch"),
               "seeds": " ".join(str(s) for s in sorted(set(res["no"]) | set(res["ASA"])))}
        for tag, a in (("no", "no"), ("asa", "ASA")):
            runs = list(res[a].values())
            rec[f"acc_{tag}"], rec[f"acc_{tag}_std"], rec[f"n_{tag}"] = spread([r["acc"] for r in runs])
            rec[f"nasfr_{tag}"], rec[f"nasfr_{tag}_std"], _ = spread([r["nasfr"] for r in runs])
            rec[f"best_epoch_{tag}"] = (runs[0]["best_epoch"] if len(runs) == 1 else
                                        " ".join(str(r["best_epoch"]) for r in runs) or None)
            rec[f"epochs_{tag}"] = _epochs_text(runs)
            rec[f"energy_{tag}_uJ"] = spread([r["energy_uJ"] for r in runs])[0]
            sops = spread([r["sops"] for r in runs])[0]
            rec[f"sops_{tag}_M"] = None if sops is None else sops / 1e6
        rec["energy_asa_part_uJ"] = spread([r["energy_asa_uJ"] for r in res["ASA"].values()])[0]
        pairs = [(res["no"][s], res["ASA"][s]) for s in sorted(set(res["no"]) & set(res["ASA"]))]
        rec["d_acc_pp"], rec["d_acc_pp_std"], rec["n_pairs"] = spread([b["acc"] - a["acc"] for a, b in pairs])
        rec["d_nasfr_pct"], rec["d_nasfr_pct_std"], _ = spread([_delta_pct(b["nasfr"], a["nasfr"]) for a, b in pairs])
        rec["d_energy_pct"] = spread([_delta_pct(b["energy_uJ"], a["energy_uJ"]) for a, b in pairs])[0]
        for k in ("acc_no", "nasfr_no", "acc_asa", "nasfr_asa"):
            rec[f"paper_{k}"] = p.get(k)
        rec["paper_d_acc_pp"] = (None if p.get("acc_no") is None or p.get("acc_asa") is None
                                 else p["acc_asa"] - p["acc_no"])
        rec["paper_d_nasfr_pct"] = _delta_pct(p.get("nasfr_asa"), p.get("nasfr_no"))
        rec["notes"] = "; ".join(f"{a} seed {s}: {r['energy_error']}" if len(res[a]) > 1 else r["energy_error"]
                                 for a in ATTENTIONS for s, r in res[a].items() if r["energy_error"])
        rec["folders"] = {a: list(seed_runs(runs_dir, row, a, seeds).values()) for a in ATTENTIONS}
        records.append(rec)
    return records


def rows_with_runs(runs_dir: str, rows, seeds: list[int] | None = None) -> list[Row]:
    """The rows among ``rows`` with at least one run folder in ``runs_dir``."""
    return [r for r in rows if any(seed_runs(runs_dir, r, a, seeds) for a in ATTENTIONS)]


def _flag(flags: str, name: str) -> str:
    argv = shlex.split(flags)
    return argv[argv.index(name) + 1] if name in argv else ""


CSV_FIELDS = ["row", "label", "arch", "acc_no", "nasfr_no", "acc_asa", "nasfr_asa", "d_acc_pp",
              "d_nasfr_pct", "paper_acc_no", "paper_nasfr_no", "paper_acc_asa", "paper_nasfr_asa",
              "paper_d_acc_pp", "paper_d_nasfr_pct", "energy_no_uJ", "energy_asa_uJ",
              "energy_asa_part_uJ", "d_energy_pct", "sops_no_M", "sops_asa_M", "best_epoch_no",
              "best_epoch_asa", "epochs_no", "epochs_asa", "notes",
              # several seeds: sample standard deviations (ddof = 1) and counts
              "seeds", "n_no", "n_asa", "n_pairs", "acc_no_std", "nasfr_no_std", "acc_asa_std",
              "nasfr_asa_std", "d_acc_pp_std", "d_nasfr_pct_std"]


def _f(v, fmt, dash="–"):
    return dash if v is None else format(v, fmt)


def _pm(v, sd, fmt):
    """"v" alone, or "v ± sd" when there is a deviation (several seeds)."""
    return _f(v, fmt) if sd is None else f"{_f(v, fmt)} ± {format(sd, fmt.lstrip('+'))}"


def _n(n):
    return f" (n={n})" if n and n > 1 else ""


def _pair(acc, nasfr, acc_sd=None, nasfr_sd=None, n=None):
    if acc is None and nasfr is None:
        return "–"
    return f"{_pm(acc, acc_sd, '.1f')} / {_pm(nasfr, nasfr_sd, '.3f')}{_n(n)}"


def _deltas(dacc, dnasfr, dacc_sd=None, dnasfr_sd=None, n=None):
    if dacc is None and dnasfr is None:
        return "–"
    return f"{_pm(dacc, dacc_sd, '+.1f')} pp / {_pm(dnasfr, dnasfr_sd, '+.1f')}%{_n(n)}"


def _epochs(rec):
    vals = [rec["epochs_no"], rec["epochs_asa"]]
    if all(v is None for v in vals):
        return "not run"
    return " · ".join(v or "–" for v in vals)


def to_markdown(records: list[dict], runs_dir: str) -> str:
    head = ("| row | arch | epochs (LIF · ASA) | LIF-SNN acc % / NASFR | + ASA acc % / NASFR | "
            "Δ acc / Δ NASFR | paper LIF-SNN | paper + ASA | paper Δ | energy µJ/sample LIF-SNN | "
            "+ ASA (of which ASA ops) | Δ energy |")
    lines = ["# Results: reproduced vs the paper", "",
             f"Collected from `{runs_dir}` on {datetime.datetime.now():%Y-%m-%d %H:%M} by "
             f"`python3 -m utils.analysis.table`. Accuracy: best test accuracy over the epochs (clip vote); "
             f"NASFR: at that epoch. Δ acc in percentage points (ASA − LIF-SNN), Δ NASFR and Δ energy "
             f"in percent of the LIF-SNN value. Energy per test sample from best.pth and that epoch's "
             f"firing rates (utils/analysis/energy.py: first layer MAC 4.6 pJ, spike-driven layers AC 0.9 pJ, "
             f"ASA ops MAC). Epochs k/N: runs still going or stopped early."
             + (" Several seeds: mean ± sample standard deviation (ddof = 1) over the n seeds; each Δ is "
                "computed per seed from the ASA and LIF-SNN runs of that seed (paired), then averaged; "
                "energy: the mean over the seeds." if any(max(r["n_no"], r["n_asa"]) > 1 for r in records)
                else ""), "",
             head, "|" + "---|" * (head.count("|") - 1)]
    for r in records:
        en_asa = "–" if r["energy_asa_uJ"] is None else \
            f"{r['energy_asa_uJ']:.2f} ({_f(r['energy_asa_part_uJ'], '.2f')})"
        lines.append("| " + " | ".join([
            r["label"], r["arch"], _epochs(r),
            _pair(r["acc_no"], r["nasfr_no"], r["acc_no_std"], r["nasfr_no_std"], r["n_no"]),
            _pair(r["acc_asa"], r["nasfr_asa"], r["acc_asa_std"], r["nasfr_asa_std"], r["n_asa"]),
            _deltas(r["d_acc_pp"], r["d_nasfr_pct"], r["d_acc_pp_std"], r["d_nasfr_pct_std"], r["n_pairs"]),
            _pair(r["paper_acc_no"], r["paper_nasfr_no"]), _pair(r["paper_acc_asa"], r["paper_nasfr_asa"]),
            _deltas(r["paper_d_acc_pp"], r["paper_d_nasfr_pct"]), _f(r["energy_no_uJ"], ".2f"), en_asa,
            _f(r["d_energy_pct"], "+.1f") + ("%" if r["d_energy_pct"] is not None else "")]) + " |")
    notes = [f"- {r['label']}: {r['notes']}" for r in records if r["notes"]]
    if notes:
        lines += ["", "Notes:"] + notes
    return "\n".join(lines) + "\n"


def write_table(records: list[dict], out_dir: str, runs_dir: str) -> tuple[str, str]:
    os.makedirs(out_dir, exist_ok=True)
    md, cs = os.path.join(out_dir, "table.md"), os.path.join(out_dir, "table.csv")
    atomic_write(md, to_markdown(records, runs_dir))
    text = io.StringIO(newline="")
    w = csv.DictWriter(text, fieldnames=CSV_FIELDS)
    w.writeheader()
    for r in records:
        w.writerow({k: ("" if r.get(k) is None else (round(r[k], 6) if isinstance(r[k], float) else r[k]))
                    for k in CSV_FIELDS})
    atomic_write(cs, text.getvalue())
    return md, cs


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python3 -m utils.analysis.table",
                                description="Collect run folders into results/table.md and table.csv "
                                            "(reproduced vs paper), or list / plan final.sh's rows.")
    p.add_argument("runs_dir", nargs="?", help="folder holding <row>_no and <row>_ASA run folders "
                   "(<row>_no_s<seed>, <row>_ASA_s<seed> for seeds other than the row's own)")
    p.add_argument("--out", default="results", help="where table.md, table.csv and the curves_<row>.png "
                   "figures go (default results/)")
    p.add_argument("--rows", nargs="+", metavar="ROW", help="only these rows (default: every row with runs)")
    p.add_argument("--seeds", nargs="+", metavar="SEED", help="only these seeds (default: every seed with "
                   "a run folder); final.sh passes its SEEDS")
    p.add_argument("--no-curves", action="store_true", help="skip the curves_<row>.png figures")
    p.add_argument("--pairs", action="store_true", help="print '<row>|<LIF-SNN run>|<ASA run>' of the first "
                   "seed of SEEDS (default: the row's own) for the rows of --plan (final.sh's figures)")
    p.add_argument("--all-paper-rows", action="store_true",
                   help="list every paper row, also those not run (final.sh does)")
    p.add_argument("--no-energy", action="store_true", help="skip the energy columns (no checkpoint loading)")
    p.add_argument("--list", action="store_true", help="print the rows and their flags")
    p.add_argument("--plan", nargs="*", metavar="ROW", help="print final.sh's work list (one '|'-separated "
                   "line per item) for these rows (default: the paper rows, or the demo rows with --demo)")
    p.add_argument("--demo", action="store_true", help="with --plan or --pairs: the demo rows; when "
                   "collecting: the demo rows that have runs")
    a = p.parse_args(argv)
    try:
        seeds = parse_seeds(" ".join(a.seeds)) if a.seeds else None
        if a.pairs:
            first = (parse_seeds(os.environ.get("SEEDS")) or [None])[0]
            runs_dir = os.environ.get("RUNS_DIR", "results/runs")
            for r in select_rows(a.plan, a.demo):
                seed = r.seed if first is None else first
                print("|".join([r.name] + [os.path.join(runs_dir, run_name(r, att, seed)) for att in ATTENTIONS]))
            return 0
        if a.list:
            for r in ROWS:
                print(f"{r.name:<15} {'demo ' if r.demo else ''}data: {r.folder or '(built in)'}\n    {r.flags}")
            return 0
        if a.plan is not None:
            for item in plan(select_rows(a.plan, a.demo), os.environ):
                print("|".join(item))
            return 0
        if not a.runs_dir:
            p.error("give RUNS_DIR (or --list / --plan)")
        if not os.path.isdir(a.runs_dir):
            raise ValueError(f"{a.runs_dir}: no such folder")
        rows = select_rows(a.rows) if a.rows else \
            ([r for r in ROWS if not r.demo] if a.all_paper_rows else None)
        if a.all_paper_rows and a.rows:
            rows = select_rows([r.name for r in ROWS if not r.demo] + a.rows)
        if a.demo:
            rows = rows_with_runs(a.runs_dir, select_rows(a.rows, demo=True), seeds)
        records = collect(a.runs_dir, rows, with_energy=not a.no_energy, seeds=seeds)
        if not records:
            raise ValueError(f"{a.runs_dir}: no run folders named <row>_no or <row>_ASA "
                             f"(rows: {', '.join(ROW_BY_NAME)})")
        md, cs = write_table(records, a.out, a.runs_dir)
        figures = [] if a.no_curves else draw_curves(records, a.out)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(open(md).read(), end="")
    print(f"wrote {md} and {cs}" + "".join(f", {f}" for f in figures))
    return 0


def draw_curves(records: list[dict], out_dir: str) -> list[str]:
    from utils.analysis.curves import draw_records           # matplotlib only when drawing
    return draw_records(records, out_dir)


if __name__ == "__main__":
    sys.exit(main())
