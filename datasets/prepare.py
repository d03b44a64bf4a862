"""Read an official dataset release once, validate it, and write the layout training reads.

    python3 -m datasets.prepare gesture     --raw DvsGesture/       --out data/gesture
    python3 -m datasets.prepare gesture_sj  --raw DvsGesture/       --out data/gesture_sj
    python3 -m datasets.prepare gait        --raw DVS128-Gait-Day/  --out data/gait_day
    python3 -m datasets.prepare recognition --raw PAF/              --out data/recognition
    python3 -m datasets.prepare har_dvs     --raw HARDVS/           --out data/har_dvs
    python3 -m datasets.prepare action      --raw DailyAction-DVS/          (check only)
    python3 -m datasets.prepare nmnist      --raw N-MNIST/                  (check only)
    python3 -m datasets.prepare nmnist      --raw flat/ --labels labels.txt --split train --out data/nmnist

Each dataset's module holds its own ``prepare(args, report)``, beside the reader that reads what it
writes (``datasets/gesture.py``, ``gesture_sj.py``, ``gait.py``, ``recognition.py``, ``har_dvs.py``,
``daily_action.py``, ``nmnist.py``); this module is the command line, the :class:`Report` each of
them fills and the dispatch. Every output file is written under a temporary name and renamed into
place when complete (:meth:`Report.write`), so an interrupted run never leaves a half-written file
that looks finished; a re-run skips the outputs that exist and writes byte-identical files for the
rest. After writing, every output is read back with the reader training uses (the validation pass)
and a summary is printed: samples per split and class, events, durations. Layouts and quirks:
docs/datasets.md.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np

from utils.errors import UserError
from utils.files import atomic_write, inside_folder

from .files import natural_key


@dataclass
class Report:
    """What one run did, handed to each dataset's ``prepare(args, report)``: files written and
    skipped (:meth:`write`), rows of (split, class, events, duration us) from the validation pass
    (:meth:`add`), notes, and the recordings whose timestamps go backwards."""
    written: int = 0
    skipped: int = 0
    rows: list = field(default_factory=list)
    notes: list = field(default_factory=list)
    backwards: list = field(default_factory=list)
    out: str | None = None          # --out: every file written must lie inside it

    def add(self, split, cls, ev, where: str | None = None):
        """One sample of the summary; ``where`` names a file read in its original event order."""
        dur = int(ev.t[-1] - ev.t[0]) if len(ev) else 0
        self.rows.append((split, str(cls), len(ev), dur))
        if where is not None:
            self.check_order(ev, where)

    def check_order(self, ev, where: str):
        """ev; remembers a recording whose timestamps went backwards, which training sorts while the
        reference bisects its file order (the user should know before training on it)."""
        if ev.first_backwards >= 0:
            self.backwards.append(f"{where} (event {ev.first_backwards})")
        return ev

    def write(self, path: str, make) -> None:
        """Write make() -> bytes to path atomically, unless path exists (a completed earlier run).
        A path outside --out (a name from the release's data with '..' or an absolute path) is
        refused before anything is written."""
        if self.out is not None:
            inside_folder(self.out, path, "--out")
        if os.path.exists(path):
            self.skipped += 1
            return
        atomic_write(path, make())
        self.written += 1

    @staticmethod
    def progress(items, **kw):
        """items with a progress bar on stderr (tqdm's desc, unit, ...)."""
        from tqdm import tqdm
        return tqdm(items, file=sys.stderr, dynamic_ncols=True, mininterval=0.5, **kw)

    def all_notes(self) -> list[str]:
        if not self.backwards:
            return self.notes
        return self.notes + [f"{len(self.backwards)} recording(s) with timestamps that go backwards, "
                             f"e.g. {self.backwards[0]}: training sorts their events by time "
                             f"(docs/datasets.md, 'Timestamps that go backwards')"]

    def summary(self) -> str:
        if not self.rows:
            return "no samples"
        by = defaultdict(list)
        for s, c, n, d in self.rows:
            by[(s, c)].append((n, d))
        out = [f"{'split':<6} {'class':<24} {'samples':>7} {'events':>13} {'ev/sample':>10} "
               f"{'dur mean s':>10} {'min s':>7} {'max s':>7}"]
        for split in sorted({s for s, _ in by}):
            keys = sorted((k for k in by if k[0] == split), key=lambda k: natural_key(k[1]))
            tot_n = tot_e = 0
            for k in keys:
                v = np.asarray(by[k], dtype=np.float64)
                tot_n += len(v)
                tot_e += int(v[:, 0].sum())
                out.append(f"{split:<6} {k[1][:24]:<24} {len(v):>7} {int(v[:, 0].sum()):>13,} "
                           f"{v[:, 0].mean():>10,.0f} {v[:, 1].mean() / 1e6:>10.3f} "
                           f"{v[:, 1].min() / 1e6:>7.3f} {v[:, 1].max() / 1e6:>7.3f}")
            out.append(f"{split:<6} {'(all ' + str(len(keys)) + ' classes)':<24} {tot_n:>7} {tot_e:>13,}")
        return "\n".join(out)


# name -> (the module whose prepare(args, report) runs, description)
PREPARERS = {
    "gesture": ("gesture", "DVS128 Gesture: DvsGesture/ (AEDAT 3.1, *_labels.csv, trials_to_*.txt) "
                           "-> per-sample hdf5 for -dataset gesture"),
    "gesture_sj": ("gesture_sj", "DVS128 Gesture: DvsGesture/ -> spikingjelly's events_np/ for "
                                 "-dataset gesture_sj"),
    "gait": ("gait", "DVS128 Gait day or night: {train,test}/<person>/*.txt (or the authors' npy) "
                     "-> per-walk npz for -dataset gait_day / gait_night"),
    "recognition": ("recognition", "PAF action recognition: <class>/*.aedat (jAER, DAVIS346) -> "
                                   "{train,test}/<class>/*.npy [4, N] for -dataset recognition"),
    "har_dvs": ("har_dvs", "HAR-DVS: MINI_HARDVS_files.zip / action_XXX.zip + *_label.txt -> "
                           "action_XXX/*.npz for -dataset har_dvs"),
    "action": ("daily_action", "DailyAction-DVS: check <class>/*.aedat (read directly by -dataset action)"),
    "nmnist": ("nmnist", "N-MNIST: check Train|Test/<digit>/*.bin, or convert a flat folder "
                         "with --labels into that layout"),
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python3 -m datasets.prepare",
        description="Convert an official dataset release into the layout training reads (once), "
                    "validate it and print a summary. Re-runs skip finished files; interrupted runs "
                    "leave no half-written files under final names.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="datasets:\n" + "\n".join(f"  {k:<12} {v[1]}" for k, v in PREPARERS.items()) +
               "\n\nlayouts and quirks: docs/datasets.md")
    p.add_argument("name", choices=sorted(PREPARERS), help="which dataset to prepare")
    p.add_argument("--raw", required=True, metavar="DIR", help="the release as downloaded and extracted")
    p.add_argument("--out", default=None, metavar="DIR",
                   help="output folder (pass it as -data_path); not needed for action and nmnist checks")
    p.add_argument("--skip_validation", action="store_true",
                   help="do not read every output back (no per-class summary then)")
    p.add_argument("--train_fraction", type=float, default=0.8,
                   help="recognition without train/test folders: per-class fraction (sorted names) "
                        "that goes to train (default 0.8)")
    p.add_argument("--action_decode", default="reference", choices=("reference", "full"),
                   help="action: decoding to check and summarise (as -action_decode; default reference)")
    p.add_argument("--labels", default=None, metavar="FILE",
                   help="nmnist: a '<id> <digit>' file for a flat folder of <id>.bin/.bs2 files")
    p.add_argument("--split", default="train", choices=("train", "test"),
                   help="nmnist with --labels: write into Train/ or Test/ (default train)")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if not os.path.isdir(args.raw):
        print(f"error: --raw {args.raw}: no such folder", file=sys.stderr)
        return 2
    report = Report(out=args.out)
    t0 = time.time()
    try:
        importlib.import_module(f"datasets.{PREPARERS[args.name][0]}").prepare(args, report)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: finished files are kept, rerun to complete", file=sys.stderr)
        return 130
    except OSError as e:             # e.g. the disk filled up outside a write: one line, no traceback
        name = f"{e.filename}: " if getattr(e, "filename", None) else ""
        print(f"error: {name}{e.strerror or e}", file=sys.stderr)
        return 2
    print(f"prepare {args.name}: {report.written} written, {report.skipped} already present "
          f"({time.time() - t0:.1f} s)" + (f" -> {args.out}" if args.out else ""))
    for n in report.all_notes():
        print("note:", n)
    print(report.summary())
    return 0


if __name__ == "__main__":
    sys.exit(main())
