"""Dataset registry: ``create_dataset(args) -> (train_set, test_set)``.

Each entry names the module whose ``build(args)`` reads that dataset, the facts a user should not
have to pass (class count, sensor size), and the flag defaults that suit it. Modules are imported
only when used, so ``-h`` and config resolution stay fast.

Training items are (frames [T, 2, X, Y] float32, label); test items are
(frames [clip, T, 2, X, Y], label), except where a preset sets clip to 1.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field

import numpy as np
from torch.utils.data import Dataset

from utils.errors import UserError


@dataclass(frozen=True)
class DatasetInfo:
    module: str
    num_classes: int | None          # None: read from the data
    sensor_size: tuple | None        # (X, Y) of the sensor; None: read from the data
    help: str
    defaults: dict = field(default_factory=dict)   # flag defaults for this dataset
    needs_path: bool = True


DATASETS: dict[str, DatasetInfo] = {
    "synthetic": DatasetInfo(
        "synthetic", 10, (128, 128),
        "built-in procedurally generated DVS-like gestures (no download; default)",
        defaults=dict(T=8, dt=50, ds=8, clip=3, batch_size_train=16, batch_size_test=8,
                      num_epochs=12, lr=3e-4, reduction=4, ps="00000"),
        needs_path=False),
    # The paper's datasets: their presets ARE the authors' run settings (their final.sh, written
    # out in full; docs/reference.md), the one place they are written down: final.sh's rows
    # (utils/analysis/rows.py) are built from them.
    "gesture": DatasetInfo(
        "gesture", 11, (128, 128),
        "DVS128 Gesture, per-sample hdf5 layout (DIR/train, DIR/test)",
        defaults=dict(arch="A", T=60, dt=15, ds=4, clip=10, batch_size_train=32, batch_size_test=4,
                      num_epochs=200, lr=1e-4, weight_decay=1e-4, ps="00111", reduction=4)),
    "gesture_sj": DatasetInfo(
        "gesture_sj", 11, (128, 128),
        "DVS128 Gesture as spikingjelly frames (T frames split by event count; DIR = spikingjelly root)",
        defaults=dict(arch="B", T=20, dt=1, ds=1, clip=1, batch_size_train=8, batch_size_test=4,
                      num_epochs=200, lr=1e-3, weight_decay=0, reduction=4)),
    "gait_day": DatasetInfo(
        "gait", 20, (128, 128),
        "DVS128 Gait-day (20 people; DIR from 'datasets.prepare gait' or the authors' npy/)",
        defaults=dict(arch="A", T=60, dt=15, ds=4, clip=10, batch_size_train=32, batch_size_test=4,
                      num_epochs=200, lr=1e-4, weight_decay=1e-4, reduction=4, ps="00111")),
    "gait_night": DatasetInfo(
        "gait", 20, (128, 128),
        "DVS128 Gait-night (20 people; DIR from 'datasets.prepare gait' or the authors' npy/)",
        defaults=dict(arch="D", T=60, dt=15, ds=4, clip=10, batch_size_train=32, batch_size_test=8,
                      num_epochs=100, lr=1e-4, weight_decay=1e-4, reduction=8, ps="00111")),
    "action": DatasetInfo(
        "daily_action", 12, (346, 260),
        "DailyAction-DVS (12 actions; DIR/<class>/*.aedat, jAER AEDAT 2.0)",
        defaults=dict(arch="B", T=36, dt=120, ds=2, clip=10, batch_size_train=4, batch_size_test=1,
                      num_epochs=100, lr=1e-3, weight_decay=0)),
    "recognition": DatasetInfo(
        "recognition", 10, (346, 260),
        "DVS action recognition (PAF, 10 actions, DAVIS346; DIR/{train,test}/<class>/*.npy [4, N])",
        defaults=dict(arch="B", T=36, dt=120, ds=2, clip=10, batch_size_train=4, batch_size_test=1,
                      num_epochs=200, lr=1e-4, weight_decay=0)),
    "har_dvs": DatasetInfo(
        "har_dvs", 300, (346, 260),
        "HAR-DVS (300 actions, DAVIS346; DIR/action_XXX/*.npz + train/test_label.txt)",
        defaults=dict(arch="sew18", T=10, dt=100, ds=4, clip=3, batch_size_train=16,
                      batch_size_test=4, lr=1e-3, weight_decay=0)),
    "nmnist": DatasetInfo(
        "nmnist", 10, (34, 34),
        "N-MNIST (not in the paper; DIR/Train/<digit>/*.bin, DIR/Test/<digit>/*.bin)",
        # lr 1e-4: at 1e-3 the output layer got stuck for good within the first epoch in 4 of 6
        # runs on 1,000 real recordings (docs/datasets.md)
        defaults=dict(arch="A", T=10, dt=30, ds=1, clip=1, batch_size_train=32, batch_size_test=32,
                      num_epochs=20, lr=1e-4, weight_decay=0, reduction=2, ps="00000")),
    "events": DatasetInfo(
        "events", None, None,
        "your own recordings: DIR/{train,test}/<class>/*.npz with t (us), x, y, p "
        "(classes and sensor size read from the data, or -sensor_size X Y)",
        defaults=dict(T=16, dt=10, ds=1, clip=1)),
}


def create_dataset(args):
    """(train_set, test_set) for args.dataset.

    A build may fill in what the registry leaves to the data (``events``: args.num_classes,
    args.sensor_size, args.frame_size; ``action -action_decode full``: the detected sensor size),
    so call it before building the network."""
    info = DATASETS[args.dataset]
    train, test = importlib.import_module(f"datasets.{info.module}").build(args)
    return (limit(train, getattr(args, "train_samples", 0), "-train_samples"),
            limit(test, getattr(args, "test_samples", 0), "-test_samples"))


class FixedSubset(Dataset):
    """n samples of a dataset drawn at random once with a fixed seed (the same subset on every run
    and machine; a random draw keeps the class shares whatever order the reader lists samples in).
    Forwards set_epoch and the dataset's other attributes."""

    def __init__(self, dataset, n: int):
        self.dataset = dataset
        self.indices = sorted(np.random.default_rng(0).permutation(len(dataset))[:n].tolist())

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, i):
        return self.dataset[self.indices[i]]

    def __getattr__(self, name):          # num_classes, classes, set_epoch, ...
        if name in ("dataset", "indices") or name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.dataset, name)


def limit(dataset, n: int, flag: str):
    if n < 0:
        raise UserError(f"{flag} must be 0 (all) or a positive count, got {n}")
    return FixedSubset(dataset, n) if 0 < n < len(dataset) else dataset
