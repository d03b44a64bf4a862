"""DVS128 Gesture in the preprocessed per-sample hdf5 layout the reference reads.

    DIR/train/*.hdf5   DIR/test/*.hdf5   each with  times uint32 (N,) us from 0,
                                                    addrs uint8 (N, 3) columns [x, y, p],
                                                    labels uint8 scalar (class - 1)

Files are read in sorted name order (the reference's os.walk order is filesystem-dependent).
``python3 -m datasets.prepare gesture`` writes this layout from the official DvsGesture release.
Test clips are placed in signed integers, as the reference computes them under NumPy 1.x;
``-gesture_clip_times uint32`` reproduces what it computes under NumPy >= 2 with these uint32
times (see :func:`datasets.events.clip_starts`).
"""
from __future__ import annotations

import os

import numpy as np

from utils.errors import UserError

from .events import Events, make_events
from .framed import train_test_sets

SENSOR = (128, 128)


def list_split(root: str, split: str) -> list[str]:
    d = os.path.join(root, split)
    if not os.path.isdir(d):
        raise UserError(f"-data_path {root}: expected a folder {split}/ with *.hdf5 samples "
                        f"(the DVS128 Gesture hdf5 layout), found none")
    files = sorted(f for f in os.listdir(d) if f.endswith((".hdf5", ".h5")))
    if not files:
        raise UserError(f"{d}: no *.hdf5 sample files (expected one file per sample with "
                        f"times, addrs, labels)")
    return [os.path.join(d, f) for f in files]


def read_sample(path: str) -> tuple[Events, int]:
    import h5py
    try:
        with h5py.File(path, "r") as h:
            times, addrs, label = h["times"][()], h["addrs"][()], h["labels"][()]
    except KeyError as e:
        raise UserError(f"{path}: missing dataset {e} (expected times, addrs, labels)") from None
    except OSError as e:
        raise UserError(f"{path}: not a readable hdf5 file ({str(e).splitlines()[0]})") from None
    addrs = np.asarray(addrs)
    if addrs.ndim != 2 or addrs.shape[1] != 3 or len(addrs) != len(times):
        raise UserError(f"{path}: addrs has shape {addrs.shape}, expected ({len(times)}, 3) [x, y, p]")
    label = int(np.asarray(label).reshape(-1)[0])
    return make_events(times, addrs[:, 2], addrs[:, 0], addrs[:, 1]), label


def build(args):
    """(train_set, test_set) for -dataset gesture."""
    train_files, test_files = list_split(args.data_path, "train"), list_split(args.data_path, "test")
    read_sample(train_files[0])     # fail at start, with the file's name, if the layout is wrong
    uint32 = getattr(args, "gesture_clip_times", "signed") == "uint32"
    return train_test_sets(args, SENSOR, (train_files, read_sample), (test_files, read_sample), "gesture",
                           uint32_clips=uint32)
