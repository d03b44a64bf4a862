"""DVS action recognition (the reference's ``recogition``; PAF, Miao et al. 2019; DAVIS346;
10 actions).

    DIR/{train,test}/<class>/<sample>.npy     a (4, N) array, rows t (us), x (0..345), y (0..259), p

Class folders: arm crossing 0, turning around 1, walking 2, picking up 3, throwing 4, get-up 5,
jumping 6, kicking 7, sit-down 8, waving 9 (case, spaces, '_' and '-' are ignored when matching).
``python3 -m datasets.prepare recognition --raw RAW --out DIR`` writes this layout from the jAER
AEDAT 2.0 recordings (RAW/<class>/*.aedat, or RAW/{train,test}/<class>/*.aedat).

Training windows: the reference starts every window at the LAST event (nearly empty frames).
``-recognition_window first`` (default, a listed deviation) starts at a random
time (RCS) or at the first event; ``-recognition_window last`` reproduces the reference.
"""
from __future__ import annotations

import re

import numpy as np

from utils.errors import UserError

from ._common import check_bounds, class_folders, events_from_columns
from .events import Events
from .folder import split_dirs
from .framed import train_test_sets

CLASSES = ["arm crossing", "turning around", "walking", "picking up", "throwing", "get-up",
           "jumping", "kicking", "sit-down", "waving"]
SENSOR = (346, 260)
LAYOUT = "DIR/{train,test}/<class>/*.npy, each a (4, N) array of rows t, x, y, p"


def class_index(name: str) -> int | None:
    key = lambda s: re.sub(r"[^a-z0-9]", "", s.lower())
    for i, c in enumerate(CLASSES):
        if key(c) == key(name):
            return i
    return None


def read_npy(path: str) -> Events:
    try:
        a = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: not a readable .npy array ({e})") from None
    if a.ndim == 2 and a.shape[0] == 4:
        pass
    elif a.ndim == 2 and a.shape[1] == 4:
        a = a.T
    else:
        raise UserError(f"{path}: array of shape {a.shape}, expected (4, N) rows t, x, y, p")
    return events_from_columns(a[0], a[1], a[2], a[3], path)


def items_of(split_dir: str):
    out = []
    for c, files in class_folders(split_dir, (".npy",), LAYOUT).items():
        k = class_index(c)
        if k is None:
            raise UserError(f"{split_dir}/{c}: unknown class folder (expected one of {CLASSES})")
        out += [(f, k) for f in files]
    return out


def load(item):
    path, label = item
    return check_bounds(read_npy(path), SENSOR, path), label


def build(args):
    """(train_set, test_set) for -dataset recognition."""
    train_dir, test_dir = split_dirs(args.data_path, LAYOUT)
    train_items, test_items = items_of(train_dir), items_of(test_dir)
    load(train_items[0])
    policy = "last" if getattr(args, "recognition_window", "first") == "last" else "recognition"
    return train_test_sets(args, SENSOR, (train_items, load), (test_items, load), policy)
