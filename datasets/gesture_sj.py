"""``-dataset gesture_sj``: DVS128 Gesture frames made by spikingjelly 0.0.0.0.12, as in the second
row of the paper's table:
``DVS128Gesture(root, train, data_type='frame', frames_number=T, split_by='number')``.

-data_path is spikingjelly's root. It must already hold either

    ROOT/events_np/{train,test}/<0..10>/*.npz          (spikingjelly's converted events), or
    ROOT/download/{DvsGesture.tar.gz, gesture_mapping.csv, LICENSE.txt, README.txt}

(spikingjelly cannot download this dataset; ``python3 -m datasets.prepare gesture_sj --raw
DvsGesture --out ROOT`` writes events_np/ from the extracted release). spikingjelly then writes
ROOT/frames_number_<T>_split_by_number/ itself on first use.

Frames are passed through as the reference did: spikingjelly's [T, 2, H, W] arrays whose element
[j, p, y, x] counts the events of the j-th equal-count slice -- i.e. the spatial axes are (y, x),
transposed with respect to this project's [T, 2, X, Y] frames; the reference fed them to the
network unchanged, and so does this reader. Labels are spikingjelly's: torchvision's DatasetFolder
sorts the class folders as strings ('0', '1', '10', '2', ...), so folder 10 gets label 2 and
folders 2..9 get 3..10 -- a consistent relabelling of train and test, also kept as is.
Training items are [T, 2, 128/ds, 128/ds], test items [1, T, 2, 128/ds, 128/ds] (-clip is 1);
-ds > 1 sums ds x ds blocks, -is_spike / -interval_scaling apply as for the other datasets (the
reference passes spikingjelly's frames on untouched, ignoring all three: a listed deviation).
"""
from __future__ import annotations

import contextlib
import io
import os
from collections import defaultdict

import numpy as np
import torch
from torch.utils.data import Dataset

from utils.errors import UserError

from .files import load_npz, npz_bytes, read_npz_events
from .framing import postprocess
from .gesture import write_trials

SENSOR = (128, 128)
DOWNLOAD_FILES = ("DvsGesture.tar.gz", "gesture_mapping.csv", "LICENSE.txt", "README.txt")


def check_root(root: str) -> None:
    events_np = os.path.join(root, "events_np")
    if os.path.isdir(os.path.join(events_np, "train")) and os.path.isdir(os.path.join(events_np, "test")):
        return
    if os.path.isdir(events_np):
        raise UserError(f"{events_np}: exists but lacks train/ and test/ (a spikingjelly conversion "
                        f"that was interrupted? delete it and rerun)")
    download = os.path.join(root, "download")
    missing = [f for f in DOWNLOAD_FILES if not os.path.isfile(os.path.join(download, f))]
    if missing:
        raise UserError(
            f"-data_path {root}: spikingjelly's DVS128 Gesture files are missing: expected "
            f"{events_np}/{{train,test}}/ or {download}/ with {', '.join(DOWNLOAD_FILES)} "
            f"(missing {', '.join(missing)}). Download the release from IBM by hand, or run "
            f"'python3 -m datasets.prepare gesture_sj --raw DvsGesture --out {root}'")


class SJGestureFrames(Dataset):
    """spikingjelly's frame dataset -> (float32 tensor, label); test items get a clip axis of 1."""

    def __init__(self, sj, train: bool, ds: int, is_spike: bool, interval_scaling: bool,
                 empty_window: str = "zeros", T: int | None = None):
        self.sj, self.train, self.ds, self.T = sj, train, ds, T
        self.is_spike, self.interval_scaling, self.empty_window = is_spike, interval_scaling, empty_window
        self.epoch = 0

    def __len__(self):
        return len(self.sj)

    def set_epoch(self, epoch: int):
        self.epoch = epoch

    def labels(self) -> list[int]:
        return [int(t) for _, t in self.sj.samples]

    def __getitem__(self, i):
        path, label = self.sj.samples[i]
        frames = read_frames(path, self.T)
        if self.ds > 1:
            T, C, H, W = frames.shape
            frames = frames.reshape(T, C, H // self.ds, self.ds, W // self.ds, self.ds).sum((3, 5))
        frames = postprocess(frames, self.is_spike, self.interval_scaling, self.empty_window)
        if not self.train:
            frames = frames[None]
        return torch.from_numpy(np.ascontiguousarray(frames)), int(label)


def build(args):
    """(train_set, test_set) for -dataset gesture_sj."""
    root = args.data_path
    check_root(root)
    ds = int(args.ds)
    if SENSOR[0] % ds:
        raise UserError(f"-ds {ds}: gesture_sj frames are 128x128, -ds must divide 128")
    if int(getattr(args, "clip", 1)) != 1:
        raise UserError(f"-clip {args.clip}: gesture_sj test items are whole recordings (use -clip 1)")
    from utils.compat import import_spikingjelly
    DVS128Gesture = import_spikingjelly("datasets.dvs128_gesture").DVS128Gesture
    sets = []
    for train in (True, False):
        log = io.StringIO()
        try:
            with contextlib.redirect_stdout(log):
                sj = DVS128Gesture(root, train=train, data_type="frame", frames_number=int(args.T),
                                   split_by="number")
        except (NotImplementedError, FileNotFoundError, RuntimeError, OSError, AssertionError) as e:
            raise UserError(f"-data_path {root}: spikingjelly could not open DVS128 Gesture "
                            f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
        if len(sj) == 0:
            raise UserError(f"-data_path {root}: spikingjelly found no {'train' if train else 'test'} samples")
        sets.append(SJGestureFrames(sj, train, ds, bool(args.is_spike), bool(args.interval_scaling),
                                    getattr(args, "interval_scaling_empty", "zeros"), int(args.T)))
    check_frames_folder(root, int(args.T))
    read_frames(sets[0].sj.samples[0][0], int(args.T))    # fail at start, naming the file
    return sets[0], sets[1]


def frames_folder(root: str, T: int) -> str:
    return os.path.join(root, f"frames_number_{T}_split_by_number")


def check_frames_folder(root: str, T: int) -> None:
    """Every events_np sample has a non-empty frame file in spikingjelly's frames folder. An
    interrupted conversion leaves the folder with missing or zero-byte files, and spikingjelly,
    seeing the folder, never converts again: the user must delete it."""
    events_np, frames = os.path.join(root, "events_np"), frames_folder(root, T)
    bad = []
    for split in ("train", "test"):
        split_dir = os.path.join(events_np, split)
        for c in sorted(os.listdir(split_dir)) if os.path.isdir(split_dir) else ():
            for f in sorted(os.listdir(os.path.join(split_dir, c))):
                out = os.path.join(frames, split, c, f)
                if not os.path.isfile(out) or os.path.getsize(out) == 0:
                    bad.append(out)
    if bad:
        raise UserError(f"{frames}: {len(bad)} frame file(s) missing or empty (e.g. {bad[0]}): an "
                        f"interrupted spikingjelly conversion; delete that folder and run again (it is "
                        f"rebuilt from {events_np})")


def read_frames(path: str, T: int | None) -> np.ndarray:
    """spikingjelly's frames [T, 2, H, W] from its frames npz, read without pickles (spikingjelly's
    own loader allows them); UserError naming the file and the folder to delete if it is torn."""
    try:
        frames = load_npz(path, ("frames",), hint="spikingjelly writes plain arrays; delete the frames "
                                                  "folder and run again to rebuild it")["frames"]
    except UserError as e:
        if "refused" in str(e):               # pickled: its message already names the way out
            raise
        folder = os.path.dirname(os.path.dirname(os.path.dirname(path)))     # <frames>/<split>/<class>/
        raise UserError(f"{e} (delete {folder} and run again to rebuild the frames)") from None
    if frames.ndim != 4 or frames.shape[1] != 2 or (T is not None and frames.shape[0] != T) \
            or frames.dtype.kind not in "iuf":
        raise UserError(f"{path}: frames of shape {frames.shape} and dtype {frames.dtype}, expected "
                        f"[{T}, 2, 128, 128] numbers")
    return np.asarray(frames, dtype=np.float32)


# ---------------------------------------------------------------------------------------------
# preparation: DvsGesture/ -> ROOT/events_np/ as spikingjelly writes it (trials read as in gesture.py)
# ---------------------------------------------------------------------------------------------

def output_paths(out: str, split: str, stem: str, rows) -> list[str]:
    """OUT/events_np/<split>/<label>/<trial>_<k>.npz, k counting the rows of a label within a trial."""
    count, paths = defaultdict(int), []
    for c in rows[:, 0]:
        paths.append(os.path.join(out, "events_np", split, str(c - 1), f"{stem}_{count[c]}.npz"))
        count[c] += 1
    return paths


def sample_bytes(ev, c: int, lo: int, hi: int) -> bytes:
    """One label window as spikingjelly saves it: absolute times, the events start <= t < end."""
    seg = ev.select(slice(lo, hi))
    return npz_bytes(t=seg.t, x=seg.x, y=seg.y, p=seg.p)


def prepare(args, report):
    """DvsGesture/ -> OUT/events_np/{train,test}/<label>/<trial>_<k>.npz, then read back."""
    out, outputs = write_trials(args, report, "gesture_sj", output_paths, sample_bytes)
    for split in ("train", "test"):
        for k in range(11):
            os.makedirs(os.path.join(out, "events_np", split, str(k)), exist_ok=True)
    if not args.skip_validation:
        for split, p, label in report.progress(outputs, desc="validate", unit="sample"):
            report.add(split, label, read_npz_events(p))
