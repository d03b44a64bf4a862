"""N-MNIST (Orchard et al. 2015; ATIS 34x34; 10 digits). Not in the paper: the small real dataset
that lets anyone check the whole pipeline on real events.

    DIR/Train/<digit>/<idx>.bin    DIR/Test/<digit>/<idx>.bin     (the official layout; .bs2 too)

The 40-bit binary files are decoded directly (:func:`datasets.readers.read_nmnist_bin`, one numpy
pass), so no conversion is needed; ``python3 -m datasets.prepare nmnist --raw DIR`` checks every
file and prints a summary; with ``--labels`` it sorts a flat folder of samples into this layout
(:func:`prepare`). Training windows start at a random time (RCS) or at the first event.
"""
from __future__ import annotations

import os

from utils.errors import UserError

from .files import check_bounds, class_folders, file_bytes, labelled_files, out_folder, split_dirs
from .frame_dataset import train_test_sets
from .framing import FROM_FIRST
from .readers import read_nmnist_bin

SENSOR = (34, 34)
LAYOUT = "DIR/Train/<digit>/*.bin and DIR/Test/<digit>/*.bin (digit folders 0..9)"
EXTS = (".bin", ".bs2")


def items(root: str):
    train_dir, test_dir = split_dirs(root, LAYOUT)
    classes, train, test = labelled_files(train_dir, test_dir, LAYOUT, EXTS)
    bad = [c for c in classes if c not in [str(d) for d in range(10)]]
    if bad:
        raise UserError(f"-data_path {root}: class folders {bad} are not digits 0..9 (expected {LAYOUT})")
    # the digit folder name is the label, even when some digits are absent
    relabel = lambda its: [(f, int(classes[k])) for f, k in its]
    return relabel(train), relabel(test)


def load(item):
    path, label = item
    return check_bounds(read_nmnist_bin(path), SENSOR, path), label


def build(args):
    """(train_set, test_set) for -dataset nmnist."""
    train_items, test_items = items(args.data_path)
    load(train_items[0])
    return train_test_sets(args, SENSOR, (train_items, load), (test_items, load), FROM_FIRST)


# ---------------------------------------------------------------------------------------------
# preparation: check the official layout, or sort a flat labelled folder into it
# ---------------------------------------------------------------------------------------------

def labelled_sources(raw: str, labels: str) -> list[tuple[str, str, str]]:
    """[(id, digit, source file)] of an '<id> <digit>' list ('#' lines skipped) over RAW/<id>.bin|.bs2."""
    with open(labels, encoding="latin-1") as f:
        rows = [ln.split() for ln in f if ln.strip() and not ln.lstrip().startswith("#")]
    out = []
    for k, r in enumerate(rows):
        if len(r) < 2 or not r[0].isdigit() or not r[1].isdigit() or int(r[1]) > 9:
            raise UserError(f"{labels}: row {k + 1} {' '.join(r)!r}, expected '<id> <digit>'")
        src = next((f for f in (os.path.join(raw, r[0] + e) for e in EXTS) if os.path.isfile(f)), None)
        if src is None:
            raise UserError(f"{labels}: row {k + 1}: no {r[0]}.bin or {r[0]}.bs2 in {raw}")
        out.append((r[0], r[1], src))
    return out


def prepare_labelled(args, report):
    """RAW/<id>.bin|.bs2 listed in --labels -> OUT/<Train|Test>/<digit>/<id>.bin, then read back."""
    out = out_folder(args)
    split = {"train": "Train", "test": "Test"}[args.split]
    jobs = [(os.path.join(out, split, digit, f"{int(i):05d}.bin"), src)
            for i, digit, src in labelled_sources(args.raw, args.labels)]
    for p, src in report.progress(jobs, desc="nmnist", unit="file"):
        read_nmnist_bin(src)
        report.write(p, lambda src=src: file_bytes(src))
    for d in ("Train", "Test"):
        os.makedirs(os.path.join(out, d), exist_ok=True)
    if not args.skip_validation:
        for digit, files in class_folders(os.path.join(out, split), (".bin",), "digit folders").items():
            for f in files:
                ev, _ = load((f, int(digit)))
                report.add(args.split, digit, ev, f)


def prepare(args, report):
    """Check RAW/{Train,Test}/<digit>/*.bin, or with --labels sort a flat folder into that layout."""
    if args.labels:
        return prepare_labelled(args, report)
    train, test = items(args.raw)
    for split_name, its in (("train", train), ("test", test)):
        for item in report.progress(its, desc=f"check {split_name}", unit="file"):
            ev, label = load(item)
            report.add(split_name, label, ev, item[0])
    report.notes.append(f"train with: -dataset nmnist -data_path {args.raw}")
