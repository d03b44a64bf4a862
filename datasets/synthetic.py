"""Built-in DVS-like gesture dataset: no download, deterministic, generated on the fly.

Each recording is a bright object moving in front of a 128x128 DVS128-like sensor for 1.0-1.6 s.
Events come from the object's outline: an outline point moving with normal speed v_n (px/s) fires
with probability |v_n| * 1 ms * DENSITY per millisecond, ON (p = 1) on the leading edge, OFF on the
trailing edge, as a real DVS sees a bright object on a dark background. Ten classes:

    0-3  translation right / left / up / down        (a disk)
    4-5  rotation clockwise / counter-clockwise       (a bar about its centre)
    6-7  horizontal / vertical waving                  (a disk oscillating at 1.5-3 Hz)
    8-9  expansion / contraction                       (a ring)

with speed (x0.6-1.5), size, start position and phase drawn per recording, so windows of the same
class differ. Sensor noise is added as on real DVS128 recordings: background activity (uniform
random events, 0.05-0.3 Hz per pixel) and 1-6 hot pixels firing at 30-300 Hz with one polarity.
That noise is what ASA claims to suppress. Recording i of a split depends only on (split, i), so any
worker count or training seed sees the same data; nothing is cached on disk.
"""
from __future__ import annotations

import numpy as np

from .frame_dataset import train_test_sets
from .framing import FROM_FIRST_END_INCLUDED, Events, make_events

SENSOR = (128, 128)
NUM_CLASSES = 10
DATA_SEED = 20231002
DENSITY = 2.0          # events per pixel of edge travel
STEP_US = 1000         # simulation step


def _outline_circle(k, r):
    a = np.linspace(0, 2 * np.pi, k, endpoint=False)
    n = np.stack([np.cos(a), np.sin(a)], 1)
    return n * r, n


def _disk(label, t, dur, speed, centre, rng):
    """Outline points [S, K, 2] and their normal speeds [S, K] of a disk moving across the sensor
    (labels 0-3) or waving (6, 7)."""
    steps = len(t)
    pts, nrm = _outline_circle(48, rng.uniform(7, 14))
    pos = np.broadcast_to(pts, (steps,) + pts.shape).copy()         # [S, K, 2] offsets
    nrm = np.broadcast_to(nrm, pos.shape)
    if label <= 3:
        direction = np.array([[1, 0], [-1, 0], [0, -1], [0, 1]][label], float)
        vel_c = direction * speed * 55.0                            # px/s
        c = centre + (t[:, None] - dur / 2) * vel_c                 # [S, 2]
        vel = np.broadcast_to(vel_c, (steps, 2))
    else:
        axis = np.array([1.0, 0.0]) if label == 6 else np.array([0.0, 1.0])
        amp, f = rng.uniform(14, 26), speed * rng.uniform(1.5, 3.0)
        ph = rng.uniform(0, 2 * np.pi)
        w = 2 * np.pi * f
        c = centre + amp * np.sin(w * t + ph)[:, None] * axis
        vel = amp * w * np.cos(w * t + ph)[:, None] * axis
    return c[:, None, :] + pos, np.einsum("sd,skd->sk", vel, nrm)


def _bar(label, t, speed, centre, rng):
    """Outline points and normal speeds of a bar rotating about its centre (labels 4, 5)."""
    length, k = rng.uniform(24, 44), 40
    s = np.linspace(-length / 2, length / 2, k)
    omega = (1 if label == 5 else -1) * speed * rng.uniform(3.0, 5.0)   # rad/s, y axis down
    theta = rng.uniform(0, np.pi) + omega * t                       # [S]
    u = np.stack([np.cos(theta), np.sin(theta)], 1)                 # bar direction
    n = np.stack([-np.sin(theta), np.cos(theta)], 1)                # its normal
    # both faces of a 3 px thick bar: the face on the side it moves towards gets ON events
    side = np.concatenate([np.ones(k), -np.ones(k)])
    ss = np.concatenate([s, s])
    xy = (centre + u[:, None, :] * ss[None, :, None] + 1.5 * side[None, :, None] * n[:, None, :])
    return xy, omega * ss[None, :] * side[None, :] * np.ones((len(t), 1))


def _ring(label, t, speed, centre, rng):
    """Outline points and normal speeds of a ring expanding (label 8) or contracting (9)."""
    r0 = rng.uniform(8, 14) if label == 8 else rng.uniform(34, 44)
    rate = (1 if label == 8 else -1) * speed * rng.uniform(16, 24)
    r = np.clip(r0 + rate * t, 3, 60)
    pts, _ = _outline_circle(64, 1.0)
    xy = centre + r[:, None, None] * pts[None]
    return xy, np.broadcast_to(np.where((r > 3) & (r < 60), rate, 0.0)[:, None], xy.shape[:2])


def _edge_events(xy, vn, rng):
    """(t, x, y, p) of the outline: a point fires with probability |v_n| * step * DENSITY per
    step, ON on the leading edge."""
    fire = rng.random(vn.shape) < np.minimum(1.0, np.abs(vn) * (STEP_US / 1e6) * DENSITY)
    si, ki = np.nonzero(fire)
    ex = np.round(xy[si, ki, 0] + rng.normal(0, 0.4, len(si))).astype(np.int64)
    ey = np.round(xy[si, ki, 1] + rng.normal(0, 0.4, len(si))).astype(np.int64)
    ep = (vn[si, ki] > 0).astype(np.int64)
    et = si * STEP_US + rng.integers(0, STEP_US, len(si))
    return et, ex, ey, ep


def _sensor_noise(dur, steps, rng):
    """(t, x, y, p) of background activity and hot pixels over the recording."""
    # background activity: Poisson events everywhere
    n_ba = rng.poisson(rng.uniform(0.05, 0.3) * SENSOR[0] * SENSOR[1] * dur)
    bt = rng.integers(0, steps * STEP_US, n_ba)
    bx, by = rng.integers(0, SENSOR[0], n_ba), rng.integers(0, SENSOR[1], n_ba)
    bp = rng.integers(0, 2, n_ba)
    # hot pixels: a few pixels firing fast, each with one polarity
    n_hot = rng.integers(1, 7)
    hx, hy, hp = rng.integers(0, SENSOR[0], n_hot), rng.integers(0, SENSOR[1], n_hot), rng.integers(0, 2, n_hot)
    counts = rng.poisson(rng.uniform(30, 300, n_hot) * dur)
    owner = np.repeat(np.arange(n_hot), counts)
    ht = rng.integers(0, steps * STEP_US, len(owner))
    return (np.concatenate([bt, ht]), np.concatenate([bx, hx[owner]]),
            np.concatenate([by, hy[owner]]), np.concatenate([bp, hp[owner]]))


def generate(label: int, rng: np.random.Generator) -> Events:
    """One recording of class ``label`` (0..9)."""
    dur = rng.uniform(1.0, 1.6)
    steps = int(dur * 1e6 / STEP_US)
    t = np.arange(steps) * (STEP_US / 1e6)                          # seconds, [S]
    speed = rng.uniform(0.6, 1.5)
    centre = rng.uniform(44, 84, size=2)
    if label <= 3 or label in (6, 7):
        xy, vn = _disk(label, t, dur, speed, centre, rng)
    elif label in (4, 5):
        xy, vn = _bar(label, t, speed, centre, rng)
    else:
        xy, vn = _ring(label, t, speed, centre, rng)
    edge, noise = _edge_events(xy, vn, rng), _sensor_noise(dur, steps, rng)
    t_all, x_all, y_all, p_all = (np.concatenate([a, b]) for a, b in zip(edge, noise))
    inside = (x_all >= 0) & (x_all < SENSOR[0]) & (y_all >= 0) & (y_all < SENSOR[1])
    return make_events(t_all[inside], p_all[inside], x_all[inside], y_all[inside])


class SyntheticRecordings:
    """Indexable source: item i of a split -> (Events, label) with label = i % 10 (balanced)."""

    def __init__(self, split: str, n: int):
        self.split_id = {"train": 0, "test": 1}[split]
        self.n = n

    def __call__(self, i: int):
        label = i % NUM_CLASSES
        return generate(label, np.random.default_rng([DATA_SEED, self.split_id, i])), label


def build(args):
    """(train_set, test_set) for -dataset synthetic."""
    # without -is_train_Enhanced a window starts at the first event
    return train_test_sets(args, SENSOR,
                           (range(args.synthetic_train), SyntheticRecordings("train", args.synthetic_train)),
                           (range(args.synthetic_test), SyntheticRecordings("test", args.synthetic_test)),
                           FROM_FIRST_END_INCLUDED)
