"""DailyAction-DVS (12 daily actions, 15 subjects, jAER AEDAT 2.0).

    DIR/<class>/<recording>.aedat        class folders: bend climb fall "get up" jump lie lift pick
                                         run sit stand walk (case, '_' for the space accepted)

The .aedat files are read directly (one numpy pass over the big-endian records, no per-event
Python), so there is nothing to convert; ``python3 -m datasets.prepare action --raw DIR`` only
checks every file and prints a summary (:func:`prepare`).

Labels follow the reference: climb 0, stand 1, jump 2, fall 3, sit 4, get up 5, walk 6, run 7,
lift 8, lie 9, bend 10, pick 11. Split: in each class folder the first floor(0.8 n) recordings in
sorted (natural) name order are training, the rest test (the reference used the unsorted,
filesystem-dependent directory order; 96 of 120 either way).

``-action_decode reference`` (default) decodes like the reference (PAFBenchmark's
``getDVSeventsDavis`` with a 128x128 size): DAVIS address masks, x = 127 - x_raw, p = 1 - bit 11,
only events with 0 <= x, y < 128 are kept, in frames sized for the 346x260 DAVIS346. On a
DVS128-layout file this maps every event to x in 120..127, y = 0. Its read loop never decodes the
file's last record, and neither does this mode.
``-action_decode full`` detects the address layout of the files (DVS128 or DAVIS) and decodes every
record over the whole sensor; frames are then 128x128 (DVS128) or 346x260 (DAVIS) before -ds.
"""
from __future__ import annotations

import os
import re
from collections import defaultdict

import numpy as np

from utils.errors import UserError

from .files import check_bounds, natural_key, set_geometry
from .frame_dataset import train_test_sets
from .framing import FROM_ZERO_UNLESS_SHORT
from .readers import decode_davis, decode_dvs128, detect_aedat2_layout, read_aedat2

CLASSES = ["climb", "stand", "jump", "fall", "sit", "get up", "walk", "run", "lift", "lie",
           "bend", "pick"]
SENSOR = (346, 260)
TRAIN_FRACTION = 0.8
LAYOUT = "DIR/<class>/*.aedat with the 12 class folders " + ", ".join(sorted(CLASSES))


def normalise(name: str) -> str:
    return " ".join(name.strip().lower().replace("_", " ").replace("-", " ").split())


def find_root(root: str) -> str:
    """root itself, or root/DailyAction-DVS, whichever holds the class folders."""
    for cand in (root, os.path.join(root, "DailyAction-DVS")):
        if os.path.isdir(cand) and any(normalise(d) in CLASSES for d in os.listdir(cand)
                                       if os.path.isdir(os.path.join(cand, d))):
            return cand
    raise UserError(f"-data_path {root}: no DailyAction-DVS class folders (expected {LAYOUT})")


def list_recordings(root: str) -> dict[str, list[str]]:
    """{class name: sorted .aedat files}; UserError for unknown, missing or empty class folders."""
    root = find_root(root)
    found = {}
    for d in sorted(os.listdir(root)):
        path = os.path.join(root, d)
        if not os.path.isdir(path):
            continue
        c = normalise(d)
        if c not in CLASSES:
            raise UserError(f"{path}: unknown class folder {d!r} (expected {LAYOUT})")
        files = sorted((f for f in os.listdir(path) if f.lower().endswith(".aedat")), key=natural_key)
        if not files:
            raise UserError(f"{path}: empty class folder (no .aedat files)")
        found[c] = [os.path.join(path, f) for f in files]
    missing = [c for c in CLASSES if c not in found]
    if missing:
        raise UserError(f"{root}: missing class folders {missing} (expected {LAYOUT})")
    return found


def split(found: dict[str, list[str]]):
    train, test = [], []
    for c in CLASSES:
        files = found[c]
        k = int(len(files) * TRAIN_FRACTION)
        train += [(f, CLASSES.index(c)) for f in files[:k]]
        test += [(f, CLASSES.index(c)) for f in files[k:]]
    return train, test


def decode(path: str, mode: str):
    """Events of one recording under -action_decode mode; also returns the detected layout."""
    header, addr, ts = read_aedat2(path)
    layout = detect_aedat2_layout(addr, header)
    if mode == "reference":
        # the reference's loop moves past a record and stops at the end of the file before decoding
        # the record it just read, so the file's last record is never decoded
        return decode_davis(addr[:-1], ts[:-1], width=128, height=128, drop_special=False), layout
    if layout == "dvs128":
        return decode_dvs128(addr, ts), layout
    return decode_davis(addr, ts, *SENSOR), layout


class ActionLoader:
    def __init__(self, mode: str, sensor):
        self.mode, self.sensor = mode, tuple(sensor)

    def __call__(self, item):
        path, label = item
        ev, _ = decode(path, self.mode)
        return check_bounds(ev, self.sensor, path), label


def build(args):
    """(train_set, test_set) for -dataset action."""
    mode = getattr(args, "action_decode", "reference")
    train_items, test_items = split(list_recordings(args.data_path))
    sensor = SENSOR
    if mode == "full":
        _, layout = decode(train_items[0][0], mode)
        sensor = (128, 128) if layout == "dvs128" else SENSOR
    set_geometry(args, None, sensor)
    load = ActionLoader(mode, sensor)
    load(train_items[0])
    return train_test_sets(args, sensor, (train_items, load), (test_items, load), FROM_ZERO_UNLESS_SHORT)


# ---------------------------------------------------------------------------------------------
# preparation: nothing to convert; check every recording and summarise
# ---------------------------------------------------------------------------------------------

def prepare(args, report):
    """Decode every recording of RAW under --action_decode; notes the address layouts, the share
    of events the reference decoding keeps and the '(n)' duplicate names (kept, as the reference)."""
    found = list_recordings(args.raw)
    dupes = [f for fs in found.values() for f in fs if re.search(r"\(\d+\)", os.path.basename(f))]
    if dupes:
        report.notes.append(f"{len(dupes)} file(s) with '(n)' in the name (duplicates in the zip?), kept "
                            f"like the reference: e.g. {dupes[0]}")
    train, test = split(found)
    layouts, kept = defaultdict(int), []
    for split_name, items in (("train", train), ("test", test)):
        for f, label in report.progress(items, desc=f"check {split_name}", unit="file"):
            ev, layout = decode(f, args.action_decode)
            layouts[layout] += 1
            if args.action_decode == "reference":
                full, _ = decode(f, "full")
                kept.append(len(ev) / max(1, len(full)))
            report.add(split_name, CLASSES[label], ev, f)
    report.notes.append("address layouts detected: " + ", ".join(f"{k} {v}" for k, v in sorted(layouts.items())))
    if kept:
        report.notes.append(f"-action_decode reference keeps {100 * np.mean(kept):.1f}% of the events on "
                            f"average (use -action_decode full for the whole sensor)")
    report.notes.append(f"train with: -dataset action -data_path {args.raw}")
