"""DVS128 Gesture in the preprocessed per-sample hdf5 layout the reference reads.

    DIR/train/*.hdf5   DIR/test/*.hdf5   each with  times uint32 (N,) us from 0,
                                                    addrs uint8 (N, 3) columns [x, y, p],
                                                    labels uint8 scalar (class - 1)

Files are read in sorted name order (the reference's os.walk order is filesystem-dependent).
``python3 -m datasets.prepare gesture`` writes this layout from the official DvsGesture release
(:func:`prepare`, below; the release's trials and label windows are also read by
``datasets.gesture_sj``).
Test clips are placed in signed integers, as the reference computes them under NumPy 1.x;
``-gesture_clip_times uint32`` reproduces what it computes under NumPy >= 2 with these uint32
times (see :func:`datasets.framing.clip_starts`).
"""
from __future__ import annotations

import os
import re

import numpy as np

from utils.errors import UserError

from .files import (check_bounds, check_regular_file, events_from_columns, out_folder, read_hdf5_array,
                    release_member)
from .frame_dataset import train_test_sets
from .framing import FROM_ZERO, Events
from .readers import read_aedat31, read_gesture_labels

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
    """(events, label) of one sample file; every departure from the layout above (a missing or
    mistyped dataset, an address off the 128x128 sensor, a polarity other than 0/1, no label) is a
    UserError naming the file."""
    import h5py
    check_regular_file(path)
    try:
        with h5py.File(path, "r") as h:
            for key in ("times", "addrs", "labels"):
                if key not in h:
                    raise UserError(f"{path}: missing dataset '{key}' (expected times, addrs, labels)")
                if not isinstance(h[key], h5py.Dataset):
                    raise UserError(f"{path}: '{key}' is a {type(h[key]).__name__}, expected a dataset "
                                    f"(an array)")
            n, shape = int(np.prod(h["times"].shape, dtype=object)), h["addrs"].shape
            if len(shape) != 2 or shape[1] != 3 or shape[0] != n:     # declared shapes, nothing read yet
                raise UserError(f"{path}: addrs has shape {shape}, expected ({n}, 3) [x, y, p]")
            times, addrs, label = (read_hdf5_array(h[key], path, key) for key in ("times", "addrs", "labels"))
    except UserError:
        raise
    except (OSError, KeyError, TypeError, ValueError) as e:
        raise UserError(f"{path}: not a readable hdf5 file ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
    if label.size == 0 or label.dtype.kind not in "iu":
        raise UserError(f"{path}: labels holds {label.size} value(s) of dtype {label.dtype}, expected "
                        f"one integer (class - 1)")
    ev = events_from_columns(times, addrs[:, 0], addrs[:, 1], addrs[:, 2], path)
    return check_bounds(ev, SENSOR, path), int(label.reshape(-1)[0])


def build(args):
    """(train_set, test_set) for -dataset gesture."""
    train_files, test_files = list_split(args.data_path, "train"), list_split(args.data_path, "test")
    read_sample(train_files[0])     # fail at start, with the file's name, if the layout is wrong
    uint32 = getattr(args, "gesture_clip_times", "signed") == "uint32"
    return train_test_sets(args, SENSOR, (train_files, read_sample), (test_files, read_sample), FROM_ZERO,
                           uint32_clips=uint32)


# ---------------------------------------------------------------------------------------------
# preparation: DvsGesture/ (AEDAT 3.1 + *_labels.csv + trials_to_*.txt) -> the layout above
# ---------------------------------------------------------------------------------------------

def release_root(raw: str) -> str:
    """The extracted DvsGesture/ folder: raw itself or raw/DvsGesture."""
    for cand in (raw, os.path.join(raw, "DvsGesture")):
        if any(os.path.isfile(os.path.join(cand, f)) for f in ("trials_to_train.txt", "trials_to_test.txt")):
            return cand
    raise UserError(f"--raw {raw}: no trials_to_train.txt / trials_to_test.txt (expected the "
                    f"extracted DvsGesture/ folder of the DVS128 Gesture release)")


def release_trials(root: str, report) -> list[tuple[str, str]]:
    """[(split, trial file name)] from trials_to_{train,test}.txt (stripped, blanks skipped)."""
    trials = []
    for split in ("train", "test"):
        lst = os.path.join(root, f"trials_to_{split}.txt")
        if not os.path.isfile(lst):
            report.notes.append(f"{lst} is missing: no {split}/ samples written")
            continue
        with open(lst, encoding="latin-1") as f:
            names = [ln.strip() for ln in f if ln.strip()]
        if not names:
            raise UserError(f"{lst}: lists no trials")
        for n in names:
            release_member(root, n, lst)
        trials += [(split, n) for n in names]
    return trials


def label_csv(root: str, name: str) -> str:
    """The _labels.csv beside a trial's .aedat."""
    return os.path.join(root, os.path.splitext(name)[0] + "_labels.csv")


def trial_labels(root: str, name: str) -> np.ndarray:
    """The label rows (class, start, end) of a listed trial, from its _labels.csv."""
    csv = label_csv(root, name)
    if not os.path.isfile(csv):
        raise UserError(f"{csv}: missing (listed in the trials file as {name})")
    return read_gesture_labels(csv)


def trial_windows(root: str, name: str, rows: np.ndarray, report):
    """(events sorted by time, [(row, class, lo, hi)]) of one trial and its label rows.

    lo/hi follow the reference (bisect_left of start and of end on the event times)."""
    aedat = os.path.join(root, name)
    if not os.path.isfile(aedat):
        raise UserError(f"{aedat}: missing (listed in the trials file as {name})")
    ev = report.check_order(read_aedat31(aedat, sort=True), aedat)
    wins = []
    for r, (c, s, e) in enumerate(rows):
        lo, hi = np.searchsorted(ev.t, [s, e], side="left")
        if hi <= lo:
            span = f"[{ev.t[0]}, {ev.t[-1]}]" if len(ev) else "empty"
            raise UserError(f"{label_csv(root, name)}: line {r + 2}: window [{s}, {e}) us holds no "
                            f"events of {aedat} (recording spans {span} us)")
        wins.append((r, int(c), int(lo), int(hi)))
    return ev, wins


def write_trials(args, report, desc: str, paths_of, sample_bytes):
    """The loop of ``prepare gesture`` and ``prepare gesture_sj``: every listed trial's label
    windows, one output file each. ``paths_of(out, split, stem, rows)`` names the outputs of a
    trial's label rows; ``sample_bytes(events, class, lo, hi)`` makes one. A trial whose outputs
    all exist is not read again. Returns (out, [(split, path, label)])."""
    root, out = release_root(args.raw), out_folder(args)
    outputs = []
    for split, name in report.progress(release_trials(root, report), desc=desc, unit="trial"):
        rows = trial_labels(root, name)
        paths = paths_of(out, split, os.path.splitext(name)[0], rows)
        outputs += [(split, p, int(c) - 1) for p, c in zip(paths, rows[:, 0])]
        if all(os.path.exists(p) for p in paths):
            report.skipped += len(paths)
            continue
        ev, wins = trial_windows(root, name, rows, report)
        for (_, c, lo, hi), p in zip(wins, paths):
            report.write(p, lambda c=c, lo=lo, hi=hi: sample_bytes(ev, c, lo, hi))
    return out, outputs


def hdf5_bytes(ev: Events, c: int, lo: int, hi: int) -> bytes:
    """One label window in the layout above: times from 0 (uint32), addrs [x, y, p] (uint8),
    labels c - 1. Built in memory (byte-identical to the same file written to disk by h5py)."""
    import h5py
    t = ev.t[lo:hi]
    with h5py.File("sample.hdf5", "w", driver="core", backing_store=False) as h:   # memory only
        h.create_dataset("times", data=(t - t[0]).astype(np.uint32), track_times=False)
        h.create_dataset("addrs", data=np.stack([ev.x[lo:hi], ev.y[lo:hi], ev.p[lo:hi]], axis=1)
                         .astype(np.uint8), track_times=False)
        h.create_dataset("labels", data=np.uint8(c - 1), track_times=False)
        h.flush()
        return h.id.get_file_image()


def output_paths(out: str, split: str, stem: str, rows) -> list[str]:
    """OUT/<split>/<trial>_row<RR>_class<CC>.hdf5: a trial's rows never overwrite each other."""
    return [os.path.join(out, split, f"{stem}_row{r:02d}_class{c:02d}.hdf5")
            for r, c in enumerate(rows[:, 0])]


def prepare(args, report):
    """DvsGesture/ -> OUT/{train,test}/<trial>_row<RR>_class<CC>.hdf5, then read back."""
    _, outputs = write_trials(args, report, "gesture", output_paths, hdf5_bytes)
    if args.skip_validation:
        return
    for split, p, _ in report.progress(outputs, desc="validate", unit="sample"):
        ev, label = read_sample(p)
        want = int(re.search(r"_class(\d+)\.hdf5$", p).group(1)) - 1
        if label != want or len(ev) == 0:
            raise UserError(f"{p}: read back label {label} / {len(ev)} events, expected label {want}")
        report.add(split, label, ev)
