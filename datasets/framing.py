"""Events -> frames, RCS training windows and test clip windows.

Every dataset reader turns its files into an :class:`Events` record (t in microseconds, p, x, y as
int64 numpy arrays, sorted by t); everything after that is common to all readers and lives here.
It is vectorised wherever the times are in order: one ``np.bincount`` builds all T frames of a
window, and ``np.searchsorted`` finds the window boundaries, so the cost is linear in the number of
events. The reference's windows and clips: docs/reference.md ("Windows, frames and clips") and
docs/datasets.md ("Windows, clips and scaling").
"""
from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, replace

import numpy as np

UINT32 = 1 << 32


@dataclass(frozen=True)
class Events:
    """One recording: parallel int64 arrays, t in microseconds, sorted by t.

    ``first_backwards`` is the index (in the order the reader decoded them) of the first event whose
    time was earlier than its predecessor's, -1 if the times never went backwards; such recordings
    were sorted by :func:`make_events`, and ``datasets.prepare`` reports them."""
    t: np.ndarray
    p: np.ndarray
    x: np.ndarray
    y: np.ndarray
    first_backwards: int = -1

    def __len__(self):
        return len(self.t)

    def select(self, idx) -> "Events":
        return Events(self.t[idx], self.p[idx], self.x[idx], self.y[idx])


def make_events(t, p, x, y) -> Events:
    """Cast to int64 and sort by time (stable, so simultaneous events keep their file order).

    Sorting is a listed deviation for recordings whose timestamps go backwards (a sensor timestamp
    reset or wrap): the reference bisects such times in file order, where a binary search lands on
    an arbitrary event, so its windows and bins do not follow the timestamps; here every event
    counts at its own time."""
    t, p, x, y = (np.asarray(a).astype(np.int64, copy=False).reshape(-1) for a in (t, p, x, y))
    if not (len(t) == len(p) == len(x) == len(y)):
        raise ValueError(f"event arrays differ in length: t {len(t)}, p {len(p)}, x {len(x)}, y {len(y)}")
    back = np.flatnonzero(t[1:] < t[:-1])
    if len(back) == 0:
        return Events(t, p, x, y)
    order = np.argsort(t, kind="stable")
    return Events(t[order], p[order], x[order], y[order], first_backwards=int(back[0]) + 1)


def frame_shape(sensor_size, ds: int) -> tuple[int, int]:
    """Spatial frame size for a sensor (X, Y) downsampled by ds: ceil(X/ds) x ceil(Y/ds).

    ceil keeps every event inside the grid (346/4 -> 87, as the reference's recognition reader);
    for sizes divisible by ds it equals the reference's X//ds."""
    return (math.ceil(sensor_size[0] / ds), math.ceil(sensor_size[1] / ds))


def frame_bins(t: np.ndarray, T: int, dt: int) -> np.ndarray:
    """The time bin of each event of a window as the reference's framing assigns them (bins
    outside 0..T-1 are not counted): bin i takes the next events in array order up to the first
    one at or after t[0] + (i+1)*dt, found by a left bisection of the remaining times.

    For times in order that is (t - t[0]) // dt. The reference's gait random drop hands the framing
    its survivors in random order; the bisections then land where a binary search on unsorted
    values happens to land, and the loop below repeats them exactly (bisect_left with lo is the
    reference's bisection of the remaining slice)."""
    if len(t) == 0 or np.all(t[1:] >= t[:-1]):
        return (t - t[:1]) // dt
    bins = np.full(len(t), -1, dtype=np.int64)
    lo = 0
    for i in range(T):
        hi = bisect.bisect_left(t, t[0] + (i + 1) * dt, lo)
        bins[lo:hi] = i
        lo = hi
    return bins


def count_frames(w: Events, T: int, dt: int, sensor_size, ds: int) -> np.ndarray:
    """Frames [T, 2, X, Y] (float32 event counts) of a window's events, binned from the window's
    first event (the reference's t0 is that event's time, not the window start); no events -> zeros."""
    X, Y = frame_shape(sensor_size, ds)
    b = frame_bins(w.t, T, dt)
    flat = ((b * 2 + w.p) * X + w.x // ds) * Y + w.y // ds
    frames = np.bincount(flat[(b >= 0) & (b < T)], minlength=T * 2 * X * Y).astype(np.float32)
    return frames.reshape(T, 2, X, Y)


def window_frames(ev: Events, start: int, T: int, dt: int, sensor_size, ds: int) -> np.ndarray:
    """Frames [T, 2, X, Y] of the window [start, start + T*dt) of a recording: bin i counts events
    with t0 + i*dt <= t < t0 + (i+1)*dt, t0 the time of the first event inside the window."""
    lo, hi = np.searchsorted(ev.t, [start, start + T * dt], side="left")
    return count_frames(ev.select(slice(lo, hi)), T, dt, sensor_size, ds)


@dataclass(frozen=True)
class WindowPolicy:
    """How a training window's start is chosen (RCS, "random consecutive slice"), for a recording
    whose events run from t_first to t_last and a window of ``window`` us.

    With augmentation (-is_train_Enhanced) the start is drawn uniformly from [t_first, t_last -
    window), or from [t_first, t_last - window] when ``end_included`` (Python's randint where the
    reference used it, numpy's otherwise). Without augmentation it is ``unaugmented``: "zero"
    (absolute time 0), "first" (the first event) or "zero_unless_short" (time 0, but the first event
    for a recording shorter than the window). A recording no longer than the window always starts
    at its first event when augmenting, where the reference's randint would crash on an empty
    range. ``at_last_event``: every window starts at the last event, whatever else is set."""
    unaugmented: str = "zero"
    end_included: bool = False
    at_last_event: bool = False

    def __post_init__(self):
        if self.unaugmented not in ("zero", "first", "zero_unless_short"):
            raise ValueError(f"WindowPolicy.unaugmented: 'zero', 'first' or 'zero_unless_short', "
                             f"got {self.unaugmented!r}")


# The policies the readers use (docs/reference.md, "Windows, frames and clips"):
FROM_ZERO = WindowPolicy()                                        # DVS128 Gesture (both readers)
FROM_ZERO_UNLESS_SHORT = WindowPolicy("zero_unless_short")        # DailyAction-DVS
FROM_FIRST_END_INCLUDED = WindowPolicy("first", end_included=True)  # DVS128 Gait, the synthetic set
FROM_FIRST = WindowPolicy("first")       # absolute timestamps: recognition (this project's fix),
                                         # N-MNIST, HAR-DVS, your own folders
AT_LAST_EVENT = WindowPolicy(at_last_event=True)   # the reference recognition reader's bug: the
                                                   # training frames are nearly empty


def train_window_start(ev: Events, window: int, rng: np.random.Generator | None, augment: bool,
                       policy: WindowPolicy = FROM_ZERO) -> int:
    """Start time of a training window of length ``window`` us under ``policy`` (WindowPolicy)."""
    if len(ev) == 0:
        return 0
    first, last = int(ev.t[0]), int(ev.t[-1])
    if policy.at_last_event:
        return last
    if not augment:
        if policy.unaugmented == "first" or (policy.unaugmented == "zero_unless_short"
                                             and last - first < window):
            return first
        return 0
    if last - window <= first:
        return first
    return int(rng.integers(first, last - window + int(policy.end_included)))


def clip_starts(L: int, clip: int, window: int, uint32: bool = False) -> np.ndarray:
    """Starts of ``clip`` test windows of length ``window`` spread over [0, L].

    If the clips are longer in total than the sample they overlap by floor((clip*window - L)/clip);
    otherwise they are separated by gaps of floor((L - clip*window)/clip). A window that would end
    after L is moved back to end at L. By default in signed integers, which is what the reference
    computes under NumPy 1.x, where its mix of Python ints and the gesture hdf5's uint32 times
    promotes to int64. ``uint32=True`` computes what the same code gives under NumPy >= 2, where
    the differences stay uint32 and wrap: for L > clip*window the negative clip*window - L becomes
    2**32 + clip*window - L and takes the overlap branch, so every clip after the first starts
    before time 0 and is empty; for L < window the moved-back start L - window becomes
    2**32 + L - window, past the recording, so every clip is empty.
    """
    j = np.arange(clip, dtype=np.int64)
    total = clip * window
    if uint32 and total < L:
        starts = j * (window - (UINT32 + total - L) // clip)
    elif total > L:
        starts = j * (window - (total - L) // clip)
    else:
        starts = j * (window + (L - total) // clip)
    back = L - window
    if uint32:
        back %= UINT32
    return np.where(starts + window > L, back, starts)


def test_clip_frames(ev: Events, clip: int, T: int, dt: int, sensor_size, ds: int,
                     uint32: bool = False) -> np.ndarray:
    """All test clips of a recording: [clip, T, 2, X, Y] (``uint32``: see :func:`clip_starts`).

    The reference first drops the very last event (it keeps t < t_last) and shifts times to 0."""
    if len(ev):
        keep = ev.t < ev.t[-1]
        ev = ev.select(keep)
    if len(ev):
        ev = replace(ev, t=ev.t - ev.t[0])
    L = int(ev.t[-1]) if len(ev) else 0
    window = T * dt
    return np.stack([window_frames(ev, int(s), T, dt, sensor_size, ds)
                     for s in clip_starts(L, clip, window, uint32)])


test_clip_frames.__test__ = False     # not a pytest test, despite its name


def postprocess(frames: np.ndarray, is_spike: bool, interval_scaling: bool,
                empty_window: str = "zeros") -> np.ndarray:
    """-is_spike turns counts into 0/1; -interval_scaling divides each window by its own maximum.

    A window is a training item [T, 2, X, Y], or each test clip of [clip, T, 2, X, Y] on its own,
    as in the reference (its test loop scales clip by clip). An empty window's maximum is 0: the
    reference divides 0 by 0 and its frames are NaN. ``empty_window="zeros"`` keeps them zero (a
    listed deviation: one NaN input makes the loss and, after the step, every weight NaN);
    ``"nan"`` reproduces the reference."""
    if is_spike:
        frames = (frames > 0).astype(np.float32)
    if interval_scaling:
        windows = frames.reshape(-1, math.prod(frames.shape[-4:]))
        m = windows.max(axis=1, keepdims=True)
        if empty_window == "nan":
            with np.errstate(invalid="ignore"):
                windows = windows / m
        else:
            windows = np.divide(windows, m, out=np.zeros_like(windows), where=m > 0)
        frames = windows.reshape(frames.shape)
    return frames
