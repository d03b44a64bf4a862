"""Training curves as pictures: per row of the results table, test accuracy and NASFR against the
epoch, LIF-SNN and + ASA on the same axes, from the run folders' metrics.csv.

    python3 -m utils.analysis.curves results/runs --out results/              # every row with runs
    python3 -m utils.analysis.curves results/runs --out results/ --rows demo_synthetic --seeds 0 1 2

The collector (python3 -m utils.analysis.table, and so final.sh) draws them too, as
``<out>/curves_<row>.png``. With one seed a curve is that run's; with several, the line is the mean
over the seeds at each epoch and the shaded band the mean ± the sample standard deviation
(ddof = 1) over the seeds that reached that epoch (the legend gives n). Epochs are counted from 1,
as in the table's best epoch.
"""
from __future__ import annotations

import argparse
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from utils.analysis import wrote  # noqa: E402
from utils.analysis.runs import read_metrics, readable_runs, spread  # noqa: E402
from utils.errors import UserError  # noqa: E402
from utils.files import atomic_write  # noqa: E402

PANELS = (("test_acc", "test accuracy (%)"), ("test_nasfr", "NASFR"))
STYLE = {"no": ("LIF-SNN", "tab:blue"), "ASA": ("+ ASA", "tab:red")}


def epoch_series(folders: list[str], column: str) -> tuple[list[int], list[float], list, list[int]]:
    """(epochs 1.., mean, sample std (None where fewer than two runs), n) of ``column`` over the
    runs in ``folders``, per epoch that at least one of them logged (a repeated epoch: its last row)."""
    per_epoch: dict[int, list[float]] = {}
    for folder in folders:
        values = {int(r["epoch"]): float(r[column]) for r in read_metrics(folder) if r.get(column, "") != ""}
        for e, v in values.items():
            per_epoch.setdefault(e, []).append(v)
    epochs = sorted(per_epoch)
    mean, sd, n = zip(*(spread(per_epoch[e]) for e in epochs)) if epochs else ((), (), ())
    return [e + 1 for e in epochs], list(mean), list(sd), list(n)


def draw(label: str, folders: dict, path: str) -> str:
    """One figure: test accuracy and NASFR per epoch; ``folders`` maps 'no' / 'ASA' to the run
    folders of that attention (one per seed). Written atomically as PNG; returns ``path``."""
    import io
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, (column, title) in zip(axes, PANELS):
        for att in ("no", "ASA"):
            runs = folders.get(att) or []
            x, mean, sd, n = epoch_series(runs, column)
            if not x:
                continue
            name, color = STYLE[att]
            ax.plot(x, mean, color=color, marker="o", markersize=3,
                    label=f"{name} (n={len(runs)})" if len(runs) > 1 else name)
            band = [(xi, m - s, m + s) for xi, m, s in zip(x, mean, sd) if s is not None]
            if band:
                bx, lo, hi = zip(*band)
                ax.fill_between(bx, lo, hi, color=color, alpha=0.2, linewidth=0)
        ax.set_xlabel("epoch")
        ax.set_ylabel(title)
        ax.grid(alpha=0.3)
        ax.legend()
    seeds = max(len(folders.get(a) or []) for a in ("no", "ASA"))
    fig.suptitle(label + (f": mean ± std over {seeds} seeds" if seeds > 1 else ""))
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    atomic_write(path, buf.getvalue())
    return path


def draw_records(records: list[dict], out_dir: str) -> list[str]:
    """curves_<row>.png in ``out_dir`` for every collector record with a run (its 'folders')."""
    return [draw(r["label"], r["folders"], os.path.join(out_dir, f"curves_{r['row']}.png"))
            for r in records if any(r["folders"].values())]


def main(argv=None) -> int:
    from utils.analysis import rows as table_rows
    p = argparse.ArgumentParser(prog="python3 -m utils.analysis.curves", description=__doc__.split("\n\n")[0])
    p.add_argument("runs_dir", help="folder holding the rows' run folders (<row>_no, <row>_ASA, <row>_<att>_s<seed>)")
    p.add_argument("--out", default="results", help="where curves_<row>.png go (default results/)")
    p.add_argument("--rows", nargs="+", metavar="ROW", help="only these rows (default: every row with runs)")
    p.add_argument("--seeds", nargs="+", type=int, metavar="SEED", help="only these seeds (default: every one found)")
    a = p.parse_args(argv)
    try:
        if not os.path.isdir(a.runs_dir):
            raise ValueError(f"{a.runs_dir}: no such folder")
        rows = (table_rows.select_rows(a.rows) if a.rows
                else table_rows.rows_with_runs(a.runs_dir, table_rows.ROWS, a.seeds))
        records, notes = [], []
        for r in rows:
            folders = {}
            for att in table_rows.ATTENTIONS:
                folders[att], left_out = readable_runs(list(table_rows.seed_runs(a.runs_dir, r, att, a.seeds).values()))
                notes += left_out
            records.append({"row": r.name, "label": r.label, "folders": folders})
        for note in notes:
            print(f"note: {note}", file=sys.stderr)
        paths = draw_records(records, a.out)
        if not paths:
            raise ValueError(f"{a.runs_dir}: no run folders of the rows {', '.join(r.name for r in rows)}")
    except (ValueError, UserError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return wrote(paths)


if __name__ == "__main__":
    sys.exit(main())
