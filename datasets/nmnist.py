"""N-MNIST (Orchard et al. 2015; ATIS 34x34; 10 digits). Not in the paper: the small real dataset
that lets anyone check the whole pipeline on real events.

    DIR/Train/<digit>/<idx>.bin    DIR/Test/<digit>/<idx>.bin     (the official layout; .bs2 too)

The 40-bit binary files are decoded directly (:func:`datasets.readers.read_nmnist_bin`, one numpy
pass), so no conversion is needed; ``python3 -m datasets.prepare nmnist --raw DIR`` checks every
file and prints a summary. Training windows start at a random time (RCS) or at the first event.
"""
from __future__ import annotations

from utils.errors import UserError

from ._common import check_bounds
from .folder import labelled_files, split_dirs
from .framed import train_test_sets
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
    return train_test_sets(args, SENSOR, (train_items, load), (test_items, load), "recognition")
