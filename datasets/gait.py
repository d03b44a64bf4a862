"""DVS128 Gait (day or night; 20 people, DVS128 128x128).

``-data_path DIR`` may hold either layout (detected):

* this project's prepared layout (``python3 -m datasets.prepare gait --raw RAW --out DIR``), one
  npz per walk: ``DIR/{train,test}/<person>/<walk>.npz`` with arrays t, x, y, p (no pickles);
* the authors' npy layout: ``DIR/train/train_data.npy`` (an object array of (N_i, 4) int64 arrays,
  columns t, x, y, p) with ``train_target.npy``, and the same under ``test/``. These are pickles,
  which could run code when loaded: training refuses them (one line naming the file) and
  ``python3 -m datasets.prepare gait --raw DIR --out OUT`` converts them once into the layout above
  (the same events), loading them with pickles allowed, as the release must be trusted to be read.

The released text files (``{train,test}/<person>/*.txt``, lines ``t x y p``) are converted by
``datasets.prepare gait`` (:func:`prepare`, below); pointing -data_path at them gives an error that
says so.

Labels: the person ids (folder names or targets) of train and test together are mapped to 0..19
whatever their numbering: ids already in 0..19 are kept, ids 1..20 are shifted down by one, any
other ids are replaced by their rank. Training windows follow the reference's gait policy
(Python randint bound included; without RCS the first event), then EventDrop (see
:class:`EventDrop`). Like the reference, the gait reader ignores ``-interval_scaling``.
"""
from __future__ import annotations

import os
import pickle

import numpy as np

from utils.errors import UserError

from .files import (check_bounds, class_folders, events_npz_bytes, load_npy, natural_key, out_folder,
                    read_npz_events, split_dirs)
from .frame_dataset import train_test_sets
from .framing import FROM_FIRST_END_INCLUDED, Events, make_events

SENSOR = (128, 128)
NUM_CLASSES = 20
LAYOUT = ("DIR/{train,test}/<person>/*.npz (datasets.prepare gait) or the authors' "
          "DIR/train/train_data.npy + train_target.npy, DIR/test/test_data.npy + test_target.npy")


def map_person_ids(ids, where: str) -> dict:
    """{id: label in 0..19} for the union of person ids (ints or folder names)."""
    uniq = sorted(set(ids), key=lambda v: natural_key(str(v)))
    if len(uniq) > NUM_CLASSES:
        raise UserError(f"{where}: {len(uniq)} different people ({uniq[:5]}...), DVS128 Gait has "
                        f"{NUM_CLASSES}")
    try:
        nums = [int(v) for v in uniq]
    except ValueError:
        nums = None
    if nums is not None and min(nums) >= 0 and max(nums) <= NUM_CLASSES - 1:
        return {v: n for v, n in zip(uniq, nums)}
    if nums is not None and min(nums) >= 1 and max(nums) <= NUM_CLASSES:
        return {v: n - 1 for v, n in zip(uniq, nums)}
    return {v: i for i, v in enumerate(uniq)}


def events_from_txyp(a: np.ndarray, where: str) -> Events:
    """An (N, 4) array with columns t, x, y, p -> Events."""
    a = np.asarray(a)
    if a.ndim != 2 or a.shape[1] != 4:
        if a.size == 0:
            return make_events(*(np.zeros(0, np.int64),) * 4)
        raise UserError(f"{where}: sample has shape {a.shape}, expected (N, 4) columns t, x, y, p")
    return make_events(a[:, 0], a[:, 3], a[:, 1], a[:, 2])


class EventDrop:
    """EventDrop augmentation of gait training windows, as the reference applies it.

    Works on the events of the training window [start, start + window): with probability 1/4 each,
    identity, drop by time, drop by area, random drop; if nothing would remain the window is kept.

    mode "reference" reproduces the authors' drop by area: it reads the y and p columns as x and y,
    draws the rectangle corner from U(1, 128/ds) (numpy's ``uniform(res)`` is uniform(res, 1.0)),
    sizes it on the downsampled grid and keeps only events outside BOTH ranges, which removes a
    band of small raw y, or everything (then the window is kept).
    mode "fixed" drops a real rectangle: x and y columns, raw sensor coordinates, corner from
    U(0, 128), events kept when outside the rectangle.

    Random drop: the reference's ``random.sample`` returns the survivors in random order and its
    framing bisects their times in that order (:func:`datasets.framing.frame_bins`), so events land
    in the wrong bins or in none; mode "reference" returns them in that random order too, mode
    "fixed" in time order. The returned events are the window's, in the order they are to be framed.
    """

    def __init__(self, mode: str = "reference", sensor_size=SENSOR, ds: int = 4):
        if mode not in ("reference", "fixed"):
            raise ValueError(f"EventDrop mode {mode!r}")
        self.mode, self.sensor_size, self.ds = mode, tuple(sensor_size), int(ds)

    def __call__(self, ev: Events, start: int, window: int, rng: np.random.Generator) -> Events:
        lo, hi = np.searchsorted(ev.t, [start, start + window], side="left")
        w = ev.select(slice(lo, hi))
        if len(w) == 0:
            return w
        option = int(rng.integers(0, 4))
        if option == 0:
            return w
        if option == 1:
            kept = w.select(self.drop_by_time(w, rng))
        elif option == 2:
            kept = w.select(self.drop_by_area(w, rng))
        else:
            kept = w.select(self.random_drop(w, rng))
        return kept if len(kept) else w

    @staticmethod
    def drop_by_time(w: Events, rng) -> np.ndarray:
        span = int(rng.integers(1, 10)) / 10.0
        t_start = rng.uniform(0, 1)
        rel = w.t - w.t[0]
        max_t = rel.max()
        return (rel < max_t * t_start) | (rel > max_t * (t_start + span))

    def drop_by_area(self, w: Events, rng) -> np.ndarray:
        ratio = int(rng.integers(1, 20)) / 20.0
        if self.mode == "reference":
            res = (self.sensor_size[0] // self.ds, self.sensor_size[1] // self.ds)
            cx = res[0] + (1.0 - res[0]) * rng.random()
            cy = res[1] + (1.0 - res[1]) * rng.random()
            a, b = w.y, w.p              # the reference's columns 2 and 3 of [t, x, y, p]
        else:
            res = self.sensor_size
            cx, cy = rng.uniform(0, res[0]), rng.uniform(0, res[1])
            a, b = w.x, w.y
        x_out, y_out = res[0] * ratio, res[1] * ratio
        x0 = int(max(0, cx - x_out / 2.0))
        y0 = int(max(0, cy - y_out / 2.0))
        x1 = min(res[0], x0 + x_out)
        y1 = min(res[1], y0 + y_out)
        out_x = (a < x0) | (a > x1)
        out_y = (b < y0) | (b > y1)
        return (out_x & out_y) if self.mode == "reference" else (out_x | out_y)

    def random_drop(self, w: Events, rng) -> np.ndarray:
        """Indices of the survivors: in random order ("reference"), or in time order ("fixed")."""
        ratio = int(rng.integers(1, 10)) / 10.0
        n = len(w)
        kept = rng.choice(n, size=n - int(n * ratio), replace=False)
        return kept if self.mode == "reference" else np.sort(kept)


class NpyGaitSamples:
    """The authors' npy layout, loaded once. Its object arrays are pickles: only ``prepare`` (which
    says it trusts them) passes ``trust_pickles``; training refuses them with the way out."""

    def __init__(self, split_dir: str, split: str, trust_pickles: bool = False):
        data_f = os.path.join(split_dir, f"{split}_data.npy")
        target_f = os.path.join(split_dir, f"{split}_target.npy")
        for f in (data_f, target_f):
            if not os.path.isfile(f):
                raise UserError(f"{f}: missing (expected {LAYOUT})")
        root = os.path.dirname(os.path.abspath(split_dir))
        hint = (f"the authors' npy layout is converted once with 'python3 -m datasets.prepare gait "
                f"--raw {root} --out OUT' (pass -data_path OUT)")
        if not trust_pickles:
            self.data, self.targets = load_npy(data_f, hint), load_npy(target_f, hint).reshape(-1)
        else:
            try:
                self.data = np.load(data_f, allow_pickle=True)
                self.targets = np.load(target_f, allow_pickle=True).reshape(-1)
            except (OSError, ValueError, EOFError, pickle.UnpicklingError) as e:
                raise UserError(f"{split_dir}: cannot load {split}_data.npy / {split}_target.npy ({e})") from None
        if len(self.data) != len(self.targets):
            raise UserError(f"{data_f}: {len(self.data)} samples but {target_f} has "
                            f"{len(self.targets)} targets")
        if len(self.data) == 0:
            raise UserError(f"{data_f}: no samples")
        self.where = data_f


class GaitLoader:
    """load(item): item = (source, index or path, label)."""

    def __init__(self, npy: dict | None = None):
        self.npy = npy or {}

    def __call__(self, item):
        kind, ref, label = item
        if kind == "npz":
            return check_bounds(read_npz_events(ref), SENSOR, ref), label
        src = self.npy[kind]
        where = f"{src.where}[{ref}]"
        return check_bounds(events_from_txyp(src.data[ref], where), SENSOR, where), label


def person_id(target):
    """A target of the authors' npy layout as a plain Python value."""
    return target.item() if hasattr(target, "item") else target


def gait_items(root: str, trust_pickles: bool = False):
    """(train items, test items, loader) for either layout under root."""
    tr, te = split_dirs(root, LAYOUT)
    if os.path.isfile(os.path.join(tr, "train_data.npy")):
        srcs = {"train": NpyGaitSamples(tr, "train", trust_pickles),
                "test": NpyGaitSamples(te, "test", trust_pickles)}
        mapping = map_person_ids([person_id(v) for s in srcs.values() for v in s.targets], root)
        items = {k: [(k, i, mapping[person_id(v)]) for i, v in enumerate(s.targets)]
                 for k, s in srcs.items()}
        return items["train"], items["test"], GaitLoader(srcs)
    for d in (tr, te):
        for c in sorted(os.listdir(d)):
            sub = os.path.join(d, c)
            if os.path.isdir(sub) and any(f.lower().endswith(".txt") for f in os.listdir(sub)):
                raise UserError(f"{sub}: holds the released text files; convert them once with "
                                f"'python3 -m datasets.prepare gait --raw {root} --out OUT' and "
                                f"pass -data_path OUT")
    trc, tec = class_folders(tr, (".npz",), LAYOUT), class_folders(te, (".npz",), LAYOUT)
    mapping = map_person_ids(list(trc) + list(tec), root)
    items = lambda d: [("npz", f, mapping[c]) for c in sorted(d, key=natural_key) for f in d[c]]
    return items(trc), items(tec), GaitLoader()


def build(args):
    """(train_set, test_set) for -dataset gait_day / gait_night."""
    train_items, test_items, load = gait_items(args.data_path)
    load(train_items[0])
    mode = getattr(args, "gait_eventdrop", "reference")
    drop = None if mode == "off" else EventDrop(mode, SENSOR, args.ds)
    return train_test_sets(args, SENSOR, (train_items, load), (test_items, load), FROM_FIRST_END_INCLUDED,
                           event_transform=drop, interval_scaling=False)   # the reference gait reader ignores it


# ---------------------------------------------------------------------------------------------
# preparation: the release's text files (or the authors' npy layout) -> one npz per walk
# ---------------------------------------------------------------------------------------------

def read_text_walk(path: str) -> np.ndarray:
    """A released gait walk: lines 't x y p' -> int64 (N, 4)."""
    import pandas as pd
    try:
        df = pd.read_csv(path, sep=r"\s+", header=None, dtype=np.int64, comment="#", engine="c")
    except pd.errors.EmptyDataError:
        raise UserError(f"{path}: empty file (expected lines 't x y p')") from None
    except (ValueError, pd.errors.ParserError) as e:
        raise UserError(f"{path}: not lines of four integers 't x y p' ({str(e).splitlines()[0]})") from None
    if df.shape[1] != 4:
        raise UserError(f"{path}: {df.shape[1]} columns, expected 4 ('t x y p')")
    return df.to_numpy(dtype=np.int64)


def walk_npz_bytes(a: np.ndarray, where: str, report) -> bytes:
    """An (N, 4) walk t, x, y, p in the npz layout above (the report notes times going backwards)."""
    return events_npz_bytes(report.check_order(events_from_txyp(a, where), where))


def npy_jobs(out: str, tr: str, te: str, report) -> list:
    """[(output path, make bytes)]: OUT/<split>/<person>/<split>_<index>.npz per sample of the
    authors' npy layout."""
    jobs = []
    for split, d in (("train", tr), ("test", te)):
        src = NpyGaitSamples(d, split, trust_pickles=True)
        for i, target in enumerate(src.targets):
            p = os.path.join(out, split, str(person_id(target)), f"{split}_{i:05d}.npz")
            jobs.append((p, lambda a=src.data[i], w=f"{src.where}[{i}]": walk_npz_bytes(a, w, report)))
    return jobs


def text_jobs(out: str, tr: str, te: str, report) -> list:
    """[(output path, make bytes)]: OUT/<split>/<person>/<walk>.npz per released text file."""
    jobs = []
    for split, d in (("train", tr), ("test", te)):
        for person, files in class_folders(d, (".txt",), "RAW/{train,test}/<person>/*.txt").items():
            for f in files:
                p = os.path.join(out, split, person, os.path.splitext(os.path.basename(f))[0] + ".npz")
                jobs.append((p, lambda f=f: walk_npz_bytes(read_text_walk(f), f, report)))
    return jobs


def prepare(args, report):
    """RAW/{train,test}/<person>/*.txt (or the authors' npy layout) -> OUT/{train,test}/<person>/
    <walk>.npz, then read back."""
    out = out_folder(args)
    tr, te = split_dirs(args.raw, "RAW/{train,test}/<person>/*.txt or the authors' npy layout", "--raw")
    authors_npy = os.path.isfile(os.path.join(tr, "train_data.npy"))
    if authors_npy:
        print(f"prepare gait: loading {tr}/train_data.npy and {te}/test_data.npy with pickles allowed "
              f"(the authors' npy layout can run code when loaded: use only files of the authors' "
              f"release); the npz files written hold plain arrays")
    jobs = (npy_jobs if authors_npy else text_jobs)(out, tr, te, report)
    for p, make in report.progress(jobs, desc="gait", unit="walk"):
        report.write(p, make)
    if not args.skip_validation:
        train_items, test_items, load = gait_items(out)
        for split, its in (("train", train_items), ("test", test_items)):
            for item in report.progress(its, desc=f"validate {split}", unit="walk"):
                ev, label = load(item)
                report.add(split, label, ev)
