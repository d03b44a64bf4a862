"""Events -> frames, RCS training windows and test clip windows (SPEC.md section 5).

Every dataset reader turns its files into an :class:`Events` record (t in microseconds, p, x, y as
int64 numpy arrays, sorted by t); everything after that is shared and lives here. All of it is
vectorised: one ``np.bincount`` builds all T frames of a window, and ``np.searchsorted`` finds the
window boundaries, so the cost is linear in the number of events with no Python loop over them.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np


@dataclass(frozen=True)
class Events:
    """One recording: parallel int64 arrays, t in microseconds, sorted by t."""
    t: np.ndarray
    p: np.ndarray
    x: np.ndarray
    y: np.ndarray

    def __len__(self):
        return len(self.t)

    def select(self, idx) -> "Events":
        return Events(self.t[idx], self.p[idx], self.x[idx], self.y[idx])


def make_events(t, p, x, y) -> Events:
    """Cast to int64 and sort by time (stable, so simultaneous events keep their file order)."""
    t, p, x, y = (np.asarray(a).astype(np.int64, copy=False).reshape(-1) for a in (t, p, x, y))
    if not (len(t) == len(p) == len(x) == len(y)):
        raise ValueError(f"event arrays differ in length: t {len(t)}, p {len(p)}, x {len(x)}, y {len(y)}")
    if len(t) > 1 and np.any(t[1:] < t[:-1]):
        order = np.argsort(t, kind="stable")
        t, p, x, y = t[order], p[order], x[order], y[order]
    return Events(t, p, x, y)


def frame_shape(sensor_size, ds: int) -> tuple[int, int]:
    """Spatial frame size for a sensor (X, Y) downsampled by ds: ceil(X/ds) x ceil(Y/ds).

    ceil keeps every event inside the grid (346/4 -> 87, as the reference's recognition reader);
    for sizes divisible by ds it equals the reference's X//ds."""
    return (math.ceil(sensor_size[0] / ds), math.ceil(sensor_size[1] / ds))


def window_frames(ev: Events, start: int, T: int, dt: int, sensor_size, ds: int) -> np.ndarray:
    """Frames [T, 2, X, Y] (float32 event counts) of the window [start, start + T*dt).

    Bin i counts events with t0 + i*dt <= t < t0 + (i+1)*dt, where t0 is the time of the first
    event inside the window (the reference's behaviour, not the window start). Empty window -> zeros.
    """
    X, Y = frame_shape(sensor_size, ds)
    lo, hi = np.searchsorted(ev.t, [start, start + T * dt], side="left")
    frames = np.zeros(T * 2 * X * Y, dtype=np.float32)
    if hi > lo:
        t = ev.t[lo:hi]
        b = (t - t[0]) // dt
        keep = b < T
        px, py = ev.x[lo:hi] // ds, ev.y[lo:hi] // ds
        flat = ((b * 2 + ev.p[lo:hi]) * X + px) * Y + py
        flat = flat[keep]
        frames += np.bincount(flat, minlength=T * 2 * X * Y).astype(np.float32)
    return frames.reshape(T, 2, X, Y)


def train_window_start(ev: Events, window: int, rng: np.random.Generator | None, augment: bool,
                       policy: str = "gesture") -> int:
    """Start time of a training window of length ``window`` us (RCS, "random consecutive slice").

    policy "gesture" (also action, recognition, nmnist, synthetic, events): with augmentation a start
    drawn uniformly from [t_first, t_last - window) (upper bound excluded, like numpy's randint);
    without it absolute time 0.  policy "gait": bound included (Python's randint); without
    augmentation the first event.  policy "action": as gesture, but a sample shorter than the window
    starts at its first event.  policy "recognition" (this project's fix for the action-recognition
    reader): as gesture, but without augmentation the first event (its timestamps are absolute).
    policy "last": the reference recognition reader's bug, every window starts at the last event
    (so training frames are nearly empty; SPEC.md section 8).  A recording shorter than the
    window always starts at its first event (the reference would crash on an empty randint range).
    """
    if len(ev) == 0:
        return 0
    first, last = int(ev.t[0]), int(ev.t[-1])
    if policy == "last":
        return last
    if policy == "recognition":
        if not augment or last - window <= first:
            return first
        return int(rng.integers(first, last - window))
    short = last - window <= first
    if policy == "action" and last - first < window:
        return first
    if not augment:
        return first if policy == "gait" else 0
    if short:
        return first
    high = last - window + (1 if policy == "gait" else 0)
    return int(rng.integers(first, high))


def clip_starts(L: int, clip: int, window: int) -> np.ndarray:
    """Starts of ``clip`` test windows of length ``window`` spread over [0, L] (SPEC.md section 5).

    If the clips are longer in total than the sample they overlap by floor((clip*window - L)/clip);
    otherwise they are separated by gaps of floor((L - clip*window)/clip). A window that would end
    after L is moved back to end at L. Computed in signed 64-bit integers: the reference's unsigned
    32-bit arithmetic wraps the gap branch into empty clips (a documented deviation).
    """
    j = np.arange(clip, dtype=np.int64)
    total = clip * window
    if total > L:
        starts = j * (window - (total - L) // clip)
    else:
        starts = j * (window + (L - total) // clip)
    return np.where(starts + window > L, L - window, starts)


def test_clip_frames(ev: Events, clip: int, T: int, dt: int, sensor_size, ds: int) -> np.ndarray:
    """All test clips of a recording: [clip, T, 2, X, Y].

    The reference first drops the very last event (it keeps t < t_last) and shifts times to 0."""
    if len(ev):
        keep = ev.t < ev.t[-1]
        ev = ev.select(keep)
    if len(ev):
        ev = replace(ev, t=ev.t - ev.t[0])
    L = int(ev.t[-1]) if len(ev) else 0
    window = T * dt
    return np.stack([window_frames(ev, int(s), T, dt, sensor_size, ds)
                     for s in clip_starts(L, clip, window)])


test_clip_frames.__test__ = False     # not a pytest test, despite its name


def postprocess(frames: np.ndarray, is_spike: bool, interval_scaling: bool) -> np.ndarray:
    """-is_spike turns counts into 0/1; -interval_scaling divides by the maximum count."""
    if is_spike:
        frames = (frames > 0).astype(np.float32)
    if interval_scaling:
        m = frames.max()
        if m > 0:
            frames = frames / m
    return frames
