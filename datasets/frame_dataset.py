"""The torch Dataset every event reader returns: a list of samples -> frames.

A reader supplies ``items`` (anything) and ``load(item) -> (Events, label)``; this class applies the
RCS training window or the test clips (datasets/framing.py) and returns float32 tensors:
training items [T, 2, X, Y], test items [clip, T, 2, X, Y], with the integer label.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from utils.errors import UserError

from .framing import (FROM_ZERO, WindowPolicy, count_frames, postprocess, test_clip_frames, train_window_start,
                      window_frames)


@dataclass(frozen=True)
class FrameSettings:
    """How a recording becomes frames, the same for both splits of a run: ``T`` bins of ``dt_us``
    microseconds, ``ds`` x ``ds`` blocks of a ``sensor_size`` sensor summed, -is_spike,
    -interval_scaling and what an empty window gives under it (``empty_window``), the ``seed`` of
    the training windows' random draws, and ``num_classes``, the range labels are checked
    against (None: any label >= 0)."""
    T: int
    dt_us: int
    ds: int
    sensor_size: tuple
    is_spike: bool = False
    interval_scaling: bool = False
    empty_window: str = "zeros"
    seed: int = 0
    num_classes: int | None = None

    @classmethod
    def from_args(cls, args, sensor_size, interval_scaling: bool | None = None) -> "FrameSettings":
        """The settings of a run's flags (``interval_scaling`` overrides -interval_scaling)."""
        return cls(T=int(args.T), dt_us=int(round(float(args.dt) * 1000)), ds=int(args.ds),
                   sensor_size=tuple(sensor_size), is_spike=bool(args.is_spike),
                   interval_scaling=bool(args.interval_scaling if interval_scaling is None else interval_scaling),
                   empty_window=getattr(args, "interval_scaling_empty", "zeros"), seed=int(args.seed),
                   num_classes=getattr(args, "num_classes", None))


class EventFrameDataset(Dataset):
    """Items -> frames under ``frames`` (:class:`FrameSettings`): training items one RCS window
    placed by ``window_policy`` (after ``event_transform``, e.g. gait's EventDrop, when given and
    ``augment`` draws), test items ``clip`` windows (``uint32_clips``: the reference's NumPy >= 2
    clip arithmetic, datasets/framing.py)."""

    def __init__(self, items, load, frames: FrameSettings, *, train: bool, clip: int = 1, augment: bool = True,
                 window_policy: WindowPolicy = FROM_ZERO, uint32_clips: bool = False, event_transform=None):
        if len(items) == 0:
            raise UserError("a dataset split has no samples (expected at least one)")
        self.items, self.load, self.frames = list(items), load, frames
        self.train, self.clip, self.augment = train, clip, augment
        self.window_policy, self.uint32_clips = window_policy, uint32_clips
        self.event_transform = event_transform
        self.epoch = 0

    def __len__(self):
        return len(self.items)

    @property
    def num_classes(self) -> int | None:
        return self.frames.num_classes

    def set_epoch(self, epoch: int):
        """Window draws depend on (seed, epoch, index) only: reproducible with any worker count."""
        self.epoch = epoch

    def labels(self) -> list[int]:
        """Every sample's label (reads every sample: for checks and summaries, not training)."""
        return [self.load(item)[1] for item in self.items]

    def __getitem__(self, i):
        ev, label = self.load(self.items[i])
        f = self.frames
        check_label(label, f.num_classes, self.items[i])
        if self.train:
            rng = np.random.default_rng([f.seed, self.epoch, i])
            start = train_window_start(ev, f.T * f.dt_us, rng, self.augment, self.window_policy)
            if self.event_transform is None:
                frames = window_frames(ev, start, f.T, f.dt_us, f.sensor_size, f.ds)
            else:       # it returns the window's events, in the order the reference frames them
                w = self.event_transform(ev, start, f.T * f.dt_us, rng)
                frames = count_frames(w, f.T, f.dt_us, f.sensor_size, f.ds)
        else:
            frames = test_clip_frames(ev, self.clip, f.T, f.dt_us, f.sensor_size, f.ds, self.uint32_clips)
        frames = postprocess(frames, f.is_spike, f.interval_scaling, f.empty_window)
        return torch.from_numpy(frames), int(label)


def check_label(label, num_classes: int | None, item) -> None:
    """UserError naming the sample when its label is not an integer in 0..num_classes-1."""
    if isinstance(label, (bool, np.bool_)) or not isinstance(label, (int, np.integer)):
        raise UserError(f"{sample_name(item)}: label {label!r} is not an integer class index")
    if label < 0 or (num_classes is not None and label >= num_classes):
        raise UserError(f"{sample_name(item)}: label {label} is outside 0..{num_classes - 1 if num_classes else '?'} "
                        f"(-num_classes {num_classes}; the dataset's classes, or a larger -num_classes)")


def sample_name(item) -> str:
    """A sample's file for messages: the item itself, or its first element that is a path."""
    if isinstance(item, str):
        return item
    if isinstance(item, (tuple, list)):
        for v in item:
            if isinstance(v, str) and os.sep in v:
                return v
    return f"sample {item!r}"


def train_test_sets(args, sensor_size, train, test, window_policy: WindowPolicy, event_transform=None,
                    interval_scaling: bool | None = None, uint32_clips: bool = False):
    """The (train_set, test_set) pair every dataset's build(args) returns.

    ``train`` and ``test`` are (items, load) pairs. Training items get RCS windows with
    ``window_policy`` (and ``event_transform``), test items ``args.clip`` windows placed as
    :func:`datasets.framing.clip_starts` says; both use the frame settings of ``args``.
    ``interval_scaling`` overrides ``args.interval_scaling`` (gait)."""
    frames = FrameSettings.from_args(args, sensor_size, interval_scaling)
    return (EventFrameDataset(*train, frames, train=True, augment=args.augment, window_policy=window_policy,
                              event_transform=event_transform),
            EventFrameDataset(*test, frames, train=False, clip=args.clip, uint32_clips=uint32_clips))
