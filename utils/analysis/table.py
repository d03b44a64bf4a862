"""The results-table collector, and the command line of final.sh's rows (utils/analysis/rows.py).

    python3 -m utils.analysis.table results/runs --out results/        # collect run folders -> table.md/.csv
    python3 -m utils.analysis.table results/runs --out results/ --rows gesture gait_day
    python3 -m utils.analysis.table --list                             # = python3 -m utils.analysis.rows --list
    python3 -m utils.analysis.table --plan [--demo] [ROW ...]          # = python3 -m utils.analysis.rows --plan

The rows and their run folders per seed are defined in utils/analysis/rows.py. The collector reads
each run folder's metrics.csv: the best epoch is the one with the highest test accuracy (ties: the later
epoch, as best.pth), its accuracy and its NASFR are reported; the energy per sample
(utils/analysis/energy.py) comes from best.pth with that epoch's firing rates. Deltas: accuracy in
percentage points (ASA - LIF-SNN), NASFR and energy in percent of the LIF-SNN value. With several
seeds every number is the mean over the seeds, with the sample standard deviation (ddof = 1) and
the count n; a delta is computed per seed, from the ASA and LIF-SNN runs of that seed (paired), and
then averaged. The paper's numbers come from results/paper.csv. Beside the table the collector draws
per row the test accuracy and NASFR against the epoch (utils/analysis/curves.py, curves_<row>.png).

``--plan`` reads final.sh's variables (DATA_ROOT, RUNS_DIR, NMNIST_PATH, SEEDS, EXTRA_FLAGS;
utils/analysis/launch.py, where final.sh's own plan file is made).
"""
from __future__ import annotations

import argparse
import csv
import datetime
import io
import os
import shlex
import sys

from utils.analysis.rows import (ATTENTIONS, ROW_BY_NAME, ROWS, Row, parse_seeds, rows_with_runs, seed_runs,
                                 select_rows)
from utils.analysis.runs import best_row, layer_rates, read_config, read_metrics, spread
from utils.errors import UserError
from utils.files import atomic_write

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PAPER_CSV = os.path.join(ROOT, "results", "paper.csv")


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
           "energy_uJ": None, "energy_asa_uJ": None, "sops": None, "energy_error": "",
           "metrics": {k: float(v) for k, v in best.items() if v != "" and k not in SHOWN}}
    ckpt = os.path.join(folder, "best.pth")
    if with_energy and os.path.isfile(ckpt):
        from utils.analysis.energy import checkpoint_energy
        try:
            rep = checkpoint_energy(ckpt, rates=layer_rates(best))
            out.update(energy_uJ=rep["total_uJ"], energy_asa_uJ=rep["asa_uJ"], sops=rep["sops"])
        except Exception as e:                 # a broken checkpoint must not lose the table
            out["energy_error"] = f"{type(e).__name__}: {e}"
    return out


# metrics.csv columns the table shows by name, and the epoch's time (a measurement of the machine,
# not of the network); every other one (each per-sample metric of utils/run/metrics.py, lr) goes
# into table.csv as <column>_no / <column>_asa, its value at the best epoch (mean over seeds)
SHOWN = ("epoch", "test_acc", "test_nasfr", "epoch_seconds")


def metric_fields(records: list[dict]) -> list[str]:
    """table.csv's columns of the metrics.csv columns the table does not show by name
    (firing rates excluded: they differ per layer and architecture)."""
    cols = {c for r in records for c in r.get("metric_columns", ())}
    return [f"{c}_{tag}" for c in sorted(cols) for tag in ("no", "asa")]


def _delta_pct(new, old):
    return None if new is None or old in (None, 0) else (new - old) / old * 100.0


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
        res, left_out = {}, {}                    # attention -> {seed: summary}; folder -> reason
        for a in ATTENTIONS:
            got = {}
            for s, f in seed_runs(runs_dir, row, a, seeds).items():
                try:
                    got[s] = summarise_run(f, with_energy)
                except UserError as e:            # a broken run folder: noted, the table goes on
                    left_out[f] = f"left out: {e}"
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
            for col in sorted({c for r in runs for c in r["metrics"] if not c.startswith("fr_")}):
                rec[f"{col}_{tag}"] = spread([r["metrics"].get(col) for r in runs])[0]
                rec.setdefault("metric_columns", set()).add(col)
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
        rec["notes"] = "; ".join([f"{a} seed {s}: {r['energy_error']}" if len(res[a]) > 1 else r["energy_error"]
                                  for a in ATTENTIONS for s, r in res[a].items() if r["energy_error"]]
                                 + list(left_out.values()))
        rec["folders"] = {a: [f for f in seed_runs(runs_dir, row, a, seeds).values() if f not in left_out]
                          for a in ATTENTIONS}
        records.append(rec)
    return records


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
    fields = CSV_FIELDS + metric_fields(records)
    w = csv.DictWriter(text, fieldnames=fields)
    w.writeheader()
    for r in records:
        w.writerow({k: ("" if r.get(k) is None else (round(r[k], 6) if isinstance(r[k], float) else r[k]))
                    for k in fields})
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
    p.add_argument("--all-paper-rows", action="store_true",
                   help="list every paper row, also those not run (final.sh does)")
    p.add_argument("--no-energy", action="store_true", help="skip the energy columns (no checkpoint loading)")
    p.add_argument("--list", action="store_true", help="print the rows and their flags")
    p.add_argument("--plan", nargs="*", metavar="ROW", help="print what final.sh would do now with these rows "
                   "(default: the paper rows, or the demo rows with --demo): per run new, resume, done...")
    p.add_argument("--demo", action="store_true", help="with --plan: the demo rows; when "
                   "collecting: the demo rows that have runs")
    a = p.parse_args(argv)
    try:
        seeds = parse_seeds(" ".join(a.seeds)) if a.seeds else None
        if a.list or a.plan is not None:          # the planner's command (utils/analysis/rows.py)
            from utils.analysis import rows
            return rows.main(["--list"] if a.list else ["--plan", *a.plan] + (["--demo"] if a.demo else []))
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
    except (ValueError, UserError) as e:
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
