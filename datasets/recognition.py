"""DVS action recognition (the reference's ``recogition``; PAF, Miao et al. 2019; DAVIS346;
10 actions).

    DIR/{train,test}/<class>/<sample>.npy     a (4, N) array, rows t (us), x (0..345), y (0..259), p

Class folders: arm crossing 0, turning around 1, walking 2, picking up 3, throwing 4, get-up 5,
jumping 6, kicking 7, sit-down 8, waving 9 (case, spaces, '_' and '-' are ignored when matching).
``python3 -m datasets.prepare recognition --raw RAW --out DIR`` writes this layout from the jAER
AEDAT 2.0 recordings (RAW/<class>/*.aedat, or RAW/{train,test}/<class>/*.aedat; :func:`prepare`).

Training windows: the reference starts every window at the LAST event (nearly empty frames).
``-recognition_window first`` (default, a listed deviation) starts at a random
time (RCS) or at the first event; ``-recognition_window last`` reproduces the reference.
"""
from __future__ import annotations

import os
import re

import numpy as np

from utils.errors import UserError

from .files import (check_bounds, class_folders, events_from_columns, find_dir, load_npy, npy_bytes,
                    out_folder, split_dirs)
from .frame_dataset import train_test_sets
from .framing import AT_LAST_EVENT, FROM_FIRST, Events
from .readers import decode_davis, read_aedat2

CLASSES = ["arm crossing", "turning around", "walking", "picking up", "throwing", "get-up",
           "jumping", "kicking", "sit-down", "waving"]
SENSOR = (346, 260)
LAYOUT = "DIR/{train,test}/<class>/*.npy, each a (4, N) array of rows t, x, y, p"
RELEASE = "RAW/<class>/*.aedat or RAW/{train,test}/<class>/*.aedat (jAER AEDAT 2.0, DAVIS346)"


def class_index(name: str) -> int | None:
    key = lambda s: re.sub(r"[^a-z0-9]", "", s.lower())
    for i, c in enumerate(CLASSES):
        if key(c) == key(name):
            return i
    return None


def read_npy(path: str) -> Events:
    a = load_npy(path)
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
    policy = AT_LAST_EVENT if getattr(args, "recognition_window", "first") == "last" else FROM_FIRST
    return train_test_sets(args, SENSOR, (train_items, load), (test_items, load), policy)


# ---------------------------------------------------------------------------------------------
# preparation: jAER AEDAT 2.0 recordings (DAVIS346) -> the (4, N) npy layout above
# ---------------------------------------------------------------------------------------------

def release_splits(args, report) -> dict:
    """{split: {class folder: [.aedat files]}}: RAW's train/ and test/ folders, or else each class
    of RAW split by sorted name, the first --train_fraction to train."""
    tr, te = find_dir(args.raw, "train"), find_dir(args.raw, "test")
    if tr and te:
        return {"train": class_folders(tr, (".aedat",), RELEASE),
                "test": class_folders(te, (".aedat",), RELEASE)}
    splits = {"train": {}, "test": {}}
    for c, files in class_folders(args.raw, (".aedat",), RELEASE).items():
        k = int(len(files) * args.train_fraction)
        splits["train"][c], splits["test"][c] = files[:k], files[k:]
    report.notes.append(f"no train/test folders in {args.raw}: split each class by sorted name, "
                        f"first {args.train_fraction:g} train")
    return splits


def recording_npy_bytes(path: str, report) -> bytes:
    """A recording decoded with PAFBenchmark's DAVIS masks, every record (its read loop skips the
    last one; how the authors made their npy files is not published), as a (4, N) int64 npy."""
    _, addr, ts = read_aedat2(path)
    ev = report.check_order(decode_davis(addr, ts, 346, 260, drop_special=False), path)
    return npy_bytes(np.stack([ev.t, ev.x, ev.y, ev.p]).astype(np.int64))


def prepare(args, report):
    """RAW's .aedat recordings -> OUT/{train,test}/<class>/<recording>.npy, then read back."""
    out = out_folder(args)
    jobs = []
    for split, classes in release_splits(args, report).items():
        for c, files in classes.items():
            if class_index(c) is None:
                raise UserError(f"{os.path.join(args.raw, c)}: unknown class folder (expected one of {CLASSES})")
            jobs += [(os.path.join(out, split, c, os.path.splitext(os.path.basename(f))[0] + ".npy"), f)
                     for f in files]
    for p, f in report.progress(jobs, desc="recognition", unit="file"):
        report.write(p, lambda f=f: recording_npy_bytes(f, report))
    if args.skip_validation:
        return
    for split in ("train", "test"):
        d = os.path.join(out, split)
        if os.path.isdir(d):
            for item in report.progress(items_of(d), desc=f"validate {split}", unit="file"):
                ev, label = load(item)
                report.add(split, CLASSES[label], ev)
