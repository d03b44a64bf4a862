"""HAR-DVS (300 human actions, DAVIS346 346x260).

    DIR/train_label.txt  DIR/test_label.txt  (DIR/val_label.txt)   lines 'action_XXX/<sample> ...'
    DIR/action_XXX/<sample>.npz   (or DIR/MINI_HARDVS_files/action_XXX/<sample>.npz)
                                  arrays t (us), x (0..345), y (0..259), p

The class is the ``action_XXX`` folder (label XXX - 1). ``python3 -m datasets.prepare har_dvs``
unpacks the release's nested zips (MINI_HARDVS_files.zip -> action_XXX.zip) into this layout.
``-hardvs_test_list val`` evaluates on val_label.txt instead of test_label.txt. The reference has no
HAR-DVS loader; frames use the shared time-window code (training windows start at a random time
with RCS, otherwise at the first event).
"""
from __future__ import annotations

import os
import re

from utils.errors import UserError

from ._common import check_bounds, read_npz_events
from .framed import train_test_sets

SENSOR = (346, 260)
NUM_CLASSES = 300
LAYOUT = ("DIR/{train,test}_label.txt listing 'action_XXX/<sample>' lines and the samples "
          "DIR/action_XXX/<sample>.npz (arrays t, x, y, p)")


def sample_base(root: str) -> str:
    for base in (root, os.path.join(root, "MINI_HARDVS_files")):
        if os.path.isdir(base) and any(d.startswith("action_") for d in os.listdir(base)):
            return base
    raise UserError(f"-data_path {root}: no action_XXX folders (expected {LAYOUT})")


def read_list(root: str, name: str, base: str) -> list[tuple[str, int]]:
    path = os.path.join(root, name)
    if not os.path.isfile(path):
        raise UserError(f"{path}: missing split list (expected {LAYOUT})")
    items = []
    with open(path, encoding="latin-1") as f:
        for k, line in enumerate(f, start=1):
            parts = line.split()
            if not parts:
                continue
            rel = parts[0].strip("/")
            m = re.search(r"action_(\d+)", rel)
            if m is None or not 1 <= int(m.group(1)) <= NUM_CLASSES:
                raise UserError(f"{path}: line {k} {parts[0]!r} does not name an action_001.."
                                f"action_300 folder")
            cands = [os.path.join(base, rel), os.path.join(base, rel + ".npz")]
            f_ = next((c for c in cands if os.path.isfile(c)), None)
            if f_ is None:
                raise UserError(f"{path}: line {k}: sample {rel} not found under {base}")
            items.append((f_, int(m.group(1)) - 1))
    if not items:
        raise UserError(f"{path}: no samples listed")
    return items


def load(item):
    path, label = item
    return check_bounds(read_npz_events(path), SENSOR, path), label


def build(args):
    """(train_set, test_set) for -dataset har_dvs."""
    base = sample_base(args.data_path)
    test_list = getattr(args, "hardvs_test_list", "test")
    train_items = read_list(args.data_path, "train_label.txt", base)
    test_items = read_list(args.data_path, f"{test_list}_label.txt", base)
    load(train_items[0])
    return train_test_sets(args, SENSOR, (train_items, load), (test_items, load), "recognition")
