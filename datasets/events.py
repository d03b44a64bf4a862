"""``-dataset events``: your own event recordings in a plain folder layout.

    DIR/train/<class>/<sample>.npz      one file per recording, arrays
    DIR/test/<class>/<sample>.npz         t  integer microseconds (any order; sorted on load)
                                          x, y  integer pixel addresses, 0 <= x < X, 0 <= y < Y
                                          p  polarity 0/1 (or -1/1, or bool)
    DIR/info.json                       optional: {"sensor_size": [X, Y]}

Classes are the class folder names of train/ and test/ together, in natural sort order
(``2`` before ``10``); label k is the k-th name. The sensor size comes from ``-sensor_size X Y``,
else info.json, else the largest x and y found in the data (+1; a scan of every file, printed).
Frames are [T, 2, ceil(X/ds), ceil(Y/ds)], x on the first spatial axis.
"""
from __future__ import annotations

import json
import os

from utils.errors import UserError

from .files import check_bounds, labelled_files, read_npz_events, set_geometry, split_dirs
from .frame_dataset import train_test_sets
from .framing import FROM_FIRST

LAYOUT = "DIR/train/<class>/*.npz and DIR/test/<class>/*.npz with arrays t, x, y, p"


def sensor_size_from(args, root: str, files: list[str]) -> tuple[int, int]:
    flag = getattr(args, "sensor_size_flag", None)
    if flag:
        if len(flag) != 2 or min(flag) < 1:
            raise UserError(f"-sensor_size expects two positive integers X Y, got {flag}")
        return int(flag[0]), int(flag[1])
    info = os.path.join(root, "info.json")
    if os.path.isfile(info):
        try:
            with open(info, encoding="utf-8") as f:
                X, Y = json.load(f)["sensor_size"]
            if isinstance(X, bool) or isinstance(Y, bool) or int(X) != X or int(Y) != Y or min(X, Y) < 1:
                raise ValueError(f"got {[X, Y]}, two positive integers expected")
            return int(X), int(Y)
        except (ValueError, KeyError, TypeError, OverflowError) as e:
            raise UserError(f"{info}: expected {{\"sensor_size\": [X, Y]}} ({e})") from None
    print(f"events: scanning {len(files)} files of {root} for the sensor size "
          f"(pass -sensor_size X Y or write info.json to skip this)")
    X = Y = 0
    for f in files:
        ev = read_npz_events(f)
        if len(ev):
            X, Y = max(X, int(ev.x.max()) + 1), max(Y, int(ev.y.max()) + 1)
    if X == 0:
        raise UserError(f"-data_path {root}: every sample is empty; cannot infer the sensor size")
    return X, Y


class NpzLoader:
    """load(item) for (file, label) items of npz event files (picklable for DataLoader workers)."""

    def __init__(self, sensor_size):
        self.sensor_size = tuple(sensor_size)

    def __call__(self, item):
        path, label = item
        return check_bounds(read_npz_events(path), self.sensor_size, path), label


def build(args):
    """(train_set, test_set) for -dataset events; fills args.num_classes and args.sensor_size."""
    root = args.data_path
    train_dir, test_dir = split_dirs(root, LAYOUT)
    classes, train_items, test_items = labelled_files(train_dir, test_dir, LAYOUT)
    sensor = sensor_size_from(args, root, [f for f, _ in train_items + test_items])
    set_geometry(args, len(classes), sensor)
    load = NpzLoader(sensor)
    load(train_items[0])
    # without -is_train_Enhanced a window starts at the first event, so recordings with absolute
    # timestamps do not give empty windows
    train, test = train_test_sets(args, sensor, (train_items, load), (test_items, load), FROM_FIRST)
    train.classes = test.classes = classes
    return train, test
