"""Read an official dataset release once, validate it, and write the layout training reads.

    python3 -m datasets.prepare gesture     --raw DvsGesture/       --out data/gesture
    python3 -m datasets.prepare gesture_sj  --raw DvsGesture/       --out data/gesture_sj
    python3 -m datasets.prepare gait        --raw DVS128-Gait-Day/  --out data/gait_day
    python3 -m datasets.prepare recognition --raw PAF/              --out data/recognition
    python3 -m datasets.prepare har_dvs     --raw HARDVS/           --out data/har_dvs
    python3 -m datasets.prepare action      --raw DailyAction-DVS/          (check only)
    python3 -m datasets.prepare nmnist      --raw N-MNIST/                  (check only)
    python3 -m datasets.prepare nmnist      --raw flat/ --labels labels.txt --split train --out data/nmnist

Every output file is written under a temporary name and renamed into place when complete, so an
interrupted run never leaves a half-written file that looks finished; a re-run skips the outputs
that exist and writes byte-identical files for the rest. After writing, every output is read back
with the reader training uses (the validation pass) and a summary is printed: samples per split
and class, events, durations. Layouts and quirks: docs/datasets.md.
"""
from __future__ import annotations

import argparse
import os
import re
import sys
import time
import zipfile
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np

from utils.errors import UserError

from ._common import (atomic_write_bytes, class_folders, events_npz_bytes, find_dir, natural_key,
                      npy_bytes, npz_bytes)
from .readers import read_aedat31, read_gesture_labels


def _tqdm(it, **kw):
    from tqdm import tqdm
    return tqdm(it, file=sys.stderr, dynamic_ncols=True, mininterval=0.5, **kw)


# ---------------------------------------------------------------------------------------------
# bookkeeping shared by every preparer
# ---------------------------------------------------------------------------------------------

@dataclass
class Report:
    """Counts of one run; rows of (split, class, events, duration us) from the validation pass."""
    written: int = 0
    skipped: int = 0
    rows: list = field(default_factory=list)
    notes: list = field(default_factory=list)
    backwards: list = field(default_factory=list)

    def add(self, split, cls, ev, where: str | None = None):
        """One sample of the summary; ``where`` names a file read in its original event order."""
        dur = int(ev.t[-1] - ev.t[0]) if len(ev) else 0
        self.rows.append((split, str(cls), len(ev), dur))
        if where is not None:
            self.check_order(ev, where)

    def check_order(self, ev, where: str):
        """ev; remembers a recording whose timestamps went backwards, which training sorts while the
        reference bisects its file order (the user should know before training on it)."""
        if ev.first_backwards >= 0:
            self.backwards.append(f"{where} (event {ev.first_backwards})")
        return ev

    def all_notes(self) -> list[str]:
        if not self.backwards:
            return self.notes
        return self.notes + [f"{len(self.backwards)} recording(s) with timestamps that go backwards, "
                             f"e.g. {self.backwards[0]}: training sorts their events by time "
                             f"(docs/datasets.md, 'Timestamps that go backwards')"]

    def summary(self) -> str:
        if not self.rows:
            return "no samples"
        by = defaultdict(list)
        for s, c, n, d in self.rows:
            by[(s, c)].append((n, d))
        out = [f"{'split':<6} {'class':<24} {'samples':>7} {'events':>13} {'ev/sample':>10} "
               f"{'dur mean s':>10} {'min s':>7} {'max s':>7}"]
        for split in sorted({s for s, _ in by}):
            keys = sorted((k for k in by if k[0] == split), key=lambda k: natural_key(k[1]))
            tot_n = tot_e = 0
            for k in keys:
                v = np.asarray(by[k], dtype=np.float64)
                tot_n += len(v)
                tot_e += int(v[:, 0].sum())
                out.append(f"{split:<6} {k[1][:24]:<24} {len(v):>7} {int(v[:, 0].sum()):>13,} "
                           f"{v[:, 0].mean():>10,.0f} {v[:, 1].mean() / 1e6:>10.3f} "
                           f"{v[:, 1].min() / 1e6:>7.3f} {v[:, 1].max() / 1e6:>7.3f}")
            out.append(f"{split:<6} {'(all ' + str(len(keys)) + ' classes)':<24} {tot_n:>7} {tot_e:>13,}")
        return "\n".join(out)


def _write(path: str, make, report: Report):
    """Write make() -> bytes to path atomically unless path exists (a completed earlier run)."""
    if os.path.exists(path):
        report.skipped += 1
        return
    atomic_write_bytes(path, make())
    report.written += 1


def _need_out(args):
    if not args.out:
        raise UserError(f"prepare {args.name}: --out DIR is required")
    raw, out = os.path.realpath(args.raw), os.path.realpath(args.out)
    if out == raw:
        raise UserError(f"--out {args.out}: must differ from --raw (the release is input only)")
    os.makedirs(args.out, exist_ok=True)
    return args.out


# ---------------------------------------------------------------------------------------------
# DVS128 Gesture: AEDAT 3.1 + labels -> per-sample hdf5 (and spikingjelly's events_np)
# ---------------------------------------------------------------------------------------------

def gesture_root(raw: str) -> str:
    for cand in (raw, os.path.join(raw, "DvsGesture")):
        if any(os.path.isfile(os.path.join(cand, f)) for f in ("trials_to_train.txt", "trials_to_test.txt")):
            return cand
    raise UserError(f"--raw {raw}: no trials_to_train.txt / trials_to_test.txt (expected the "
                    f"extracted DvsGesture/ folder of the DVS128 Gesture release)")


def gesture_trials(root: str, report: Report) -> list[tuple[str, str]]:
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
        trials += [(split, n) for n in names]
    return trials


def gesture_windows(root: str, name: str, report: Report):
    """(events sorted by time, label rows, [(row, class, lo, hi)]) of one trial.

    lo/hi follow the reference (bisect_left of start and of end on the event times)."""
    aedat = os.path.join(root, name)
    csv = os.path.join(root, os.path.splitext(name)[0] + "_labels.csv")
    for f in (aedat, csv):
        if not os.path.isfile(f):
            raise UserError(f"{f}: missing (listed in the trials file as {name})")
    ev = report.check_order(read_aedat31(aedat, sort=True), aedat)
    labels = read_gesture_labels(csv)
    wins = []
    for r, (c, s, e) in enumerate(labels):
        lo, hi = np.searchsorted(ev.t, [s, e], side="left")
        if hi <= lo:
            span = f"[{ev.t[0]}, {ev.t[-1]}]" if len(ev) else "empty"
            raise UserError(f"{csv}: line {r + 2}: window [{s}, {e}) us holds no events of {aedat} "
                            f"(recording spans {span} us)")
        wins.append((r, int(c), int(lo), int(hi)))
    return ev, labels, wins


def _gesture_hdf5(path: str, times, addrs, label) -> None:
    import h5py
    tmp = f"{path}.part{os.getpid()}"
    try:
        with h5py.File(tmp, "w") as h:
            h.create_dataset("times", data=times, track_times=False)
            h.create_dataset("addrs", data=addrs, track_times=False)
            h.create_dataset("labels", data=np.uint8(label), track_times=False)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def prepare_gesture(args, report: Report):
    """DvsGesture/ -> OUT/{train,test}/<trial>_row<RR>_class<CC>.hdf5 (datasets/gesture.py layout)."""
    root, out = gesture_root(args.raw), _need_out(args)
    trials = gesture_trials(root, report)
    outputs = []
    for split, name in _tqdm(trials, desc="gesture", unit="trial"):
        stem = os.path.splitext(name)[0]
        csv = os.path.join(root, stem + "_labels.csv")
        if not os.path.isfile(csv):
            raise UserError(f"{csv}: missing (listed in the trials file as {name})")
        labels = read_gesture_labels(csv)
        paths = [os.path.join(out, split, f"{stem}_row{r:02d}_class{c:02d}.hdf5")
                 for r, c in enumerate(labels[:, 0])]
        outputs += [(split, p) for p in paths]
        if all(os.path.exists(p) for p in paths):
            report.skipped += len(paths)
            continue
        ev, labels, wins = gesture_windows(root, name, report)
        os.makedirs(os.path.join(out, split), exist_ok=True)
        for (r, c, lo, hi), p in zip(wins, paths):
            if os.path.exists(p):
                report.skipped += 1
                continue
            t = ev.t[lo:hi]
            addrs = np.stack([ev.x[lo:hi], ev.y[lo:hi], ev.p[lo:hi]], axis=1).astype(np.uint8)
            _gesture_hdf5(p, (t - t[0]).astype(np.uint32), addrs, c - 1)
            report.written += 1
    if not args.skip_validation:
        from .gesture import read_sample
        for split, p in _tqdm(outputs, desc="validate", unit="sample"):
            ev, label = read_sample(p)
            want = int(re.search(r"_class(\d+)\.hdf5$", p).group(1)) - 1
            if label != want or len(ev) == 0:
                raise UserError(f"{p}: read back label {label} / {len(ev)} events, expected label {want}")
            report.add(split, label, ev)


def prepare_gesture_sj(args, report: Report):
    """DvsGesture/ -> OUT/events_np/{train,test}/<label>/<trial>_<k>.npz as spikingjelly writes
    them (absolute t; mask start <= t < end; k counts the rows of a label within a trial)."""
    root, out = gesture_root(args.raw), _need_out(args)
    trials = gesture_trials(root, report)
    outputs = []
    for split, name in _tqdm(trials, desc="gesture_sj", unit="trial"):
        stem = os.path.splitext(name)[0]
        ev, labels, wins = None, None, None
        csv = os.path.join(root, stem + "_labels.csv")
        if not os.path.isfile(csv):
            raise UserError(f"{csv}: missing (listed in the trials file as {name})")
        rows = read_gesture_labels(csv)
        count = defaultdict(int)
        paths = []
        for c in rows[:, 0]:
            paths.append(os.path.join(out, "events_np", split, str(c - 1), f"{stem}_{count[c]}.npz"))
            count[c] += 1
        outputs += [(split, p, int(c) - 1) for p, c in zip(paths, rows[:, 0])]
        if all(os.path.exists(p) for p in paths):
            report.skipped += len(paths)
            continue
        ev, labels, wins = gesture_windows(root, name, report)
        for (r, c, lo, hi), p in zip(wins, paths):
            seg = ev.select(slice(lo, hi))
            _write(p, lambda seg=seg: npz_bytes(t=seg.t, x=seg.x, y=seg.y, p=seg.p), report)
    for split in ("train", "test"):
        for k in range(11):
            os.makedirs(os.path.join(out, "events_np", split, str(k)), exist_ok=True)
    if not args.skip_validation:
        from ._common import read_npz_events
        for split, p, label in _tqdm(outputs, desc="validate", unit="sample"):
            report.add(split, label, read_npz_events(p))


# ---------------------------------------------------------------------------------------------
# DVS128 Gait: text files (or the authors' pickled npy) -> per-walk npz
# ---------------------------------------------------------------------------------------------

def read_gait_text(path: str) -> np.ndarray:
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


def prepare_gait(args, report: Report):
    from .gait import NpyGaitSamples, events_from_txyp, gait_items
    out = _need_out(args)
    tr, te = find_dir(args.raw, "train"), find_dir(args.raw, "test")
    if tr is None or te is None:
        raise UserError(f"--raw {args.raw}: no {'train' if tr is None else 'test'}/ folder (expected "
                        f"RAW/{{train,test}}/<person>/*.txt or the authors' npy layout)")
    jobs = []                                   # (output path, make bytes)
    if os.path.isfile(os.path.join(tr, "train_data.npy")):
        for split, d in (("train", tr), ("test", te)):
            src = NpyGaitSamples(d, split)
            for i, target in enumerate(src.targets):
                person = str(target.item() if hasattr(target, "item") else target)
                p = os.path.join(out, split, person, f"{split}_{i:05d}.npz")
                jobs.append((p, lambda a=src.data[i], w=f"{src.where}[{i}]":
                             events_npz_bytes(report.check_order(events_from_txyp(a, w), w))))
    else:
        for split, d in (("train", tr), ("test", te)):
            for person, files in class_folders(d, (".txt",), "RAW/{train,test}/<person>/*.txt").items():
                for f in files:
                    stem = os.path.splitext(os.path.basename(f))[0]
                    p = os.path.join(out, split, person, stem + ".npz")
                    jobs.append((p, lambda f=f: events_npz_bytes(
                        report.check_order(events_from_txyp(read_gait_text(f), f), f))))
    for p, make in _tqdm(jobs, desc="gait", unit="walk"):
        _write(p, make, report)
    if not args.skip_validation:
        train_items, test_items, load = gait_items(out)
        for split, its in (("train", train_items), ("test", test_items)):
            for item in _tqdm(its, desc=f"validate {split}", unit="walk"):
                ev, label = load(item)
                report.add(split, label, ev)


# ---------------------------------------------------------------------------------------------
# DVS action recognition (PAF): jAER AEDAT 2.0 (DAVIS346) -> (4, N) npy
# ---------------------------------------------------------------------------------------------

def _split_sorted(files: list[str], fraction: float):
    k = int(len(files) * fraction)
    return files[:k], files[k:]


def prepare_recognition(args, report: Report):
    from .readers import decode_davis, read_aedat2
    from .recognition import CLASSES, class_index, items_of, load
    out = _need_out(args)
    what = "RAW/<class>/*.aedat or RAW/{train,test}/<class>/*.aedat (jAER AEDAT 2.0, DAVIS346)"
    tr, te = find_dir(args.raw, "train"), find_dir(args.raw, "test")
    if tr and te:
        splits = {"train": class_folders(tr, (".aedat",), what), "test": class_folders(te, (".aedat",), what)}
    else:
        found = class_folders(args.raw, (".aedat",), what)
        splits = {"train": {}, "test": {}}
        for c, files in found.items():
            splits["train"][c], splits["test"][c] = _split_sorted(files, args.train_fraction)
        report.notes.append(f"no train/test folders in {args.raw}: split each class by sorted name, "
                            f"first {args.train_fraction:g} train")
    jobs = []
    for split, classes in splits.items():
        for c, files in classes.items():
            if class_index(c) is None:
                raise UserError(f"{os.path.join(args.raw, c)}: unknown class folder (expected one of {CLASSES})")
            for f in files:
                p = os.path.join(out, split, c, os.path.splitext(os.path.basename(f))[0] + ".npy")

                def make(f=f):
                    _, addr, ts = read_aedat2(f)
                    ev = report.check_order(decode_davis(addr, ts, 346, 260, drop_special=False), f)
                    return npy_bytes(np.stack([ev.t, ev.x, ev.y, ev.p]).astype(np.int64))
                jobs.append((p, make))
    for p, make in _tqdm(jobs, desc="recognition", unit="file"):
        _write(p, make, report)
    if not args.skip_validation:
        for split in ("train", "test"):
            d = os.path.join(out, split)
            if not os.path.isdir(d):
                continue
            for item in _tqdm(items_of(d), desc=f"validate {split}", unit="file"):
                ev, label = load(item)
                report.add(split, CLASSES[label], ev)


# ---------------------------------------------------------------------------------------------
# HAR-DVS: nested zips -> DIR/action_XXX/*.npz + split lists
# ---------------------------------------------------------------------------------------------

def _safe_member(name: str) -> str | None:
    parts = [p for p in name.replace("\\", "/").split("/") if p not in ("", ".")]
    if not parts or ".." in parts or name.startswith("/") or name.endswith("/"):
        return None
    return "/".join(parts)


def _extract_action_zip(zf: zipfile.ZipFile, zname: str, out: str, report: Report):
    for info in sorted(zf.infolist(), key=lambda i: i.filename):
        rel = _safe_member(info.filename)
        if rel is None or not rel.lower().endswith(".npz"):
            continue
        parts = rel.split("/")
        m = next((p for p in parts if re.fullmatch(r"action_\d+", p)), None)
        folder = m or os.path.splitext(os.path.basename(zname))[0]
        p = os.path.join(out, folder, parts[-1])
        _write(p, lambda info=info: zf.read(info), report)


def prepare_har_dvs(args, report: Report):
    from .har_dvs import load, read_list, sample_base
    raw = args.raw
    lists = ["train_label.txt", "val_label.txt", "test_label.txt"]
    try:
        sample_base(raw)
        have_samples = True
    except UserError:
        have_samples = False
    if have_samples and not args.out:
        out = raw                                   # already extracted: check only
        report.notes.append(f"{raw} already holds action_XXX/ folders: checked in place")
    else:
        out = _need_out(args)
        zips = []
        outer = os.path.join(raw, "MINI_HARDVS_files.zip")
        inner_dir = find_dir(raw, "MINI_HARDVS_files") or raw
        if os.path.isfile(outer):
            zips.append(outer)
        zips += [os.path.join(inner_dir, f) for f in sorted(os.listdir(inner_dir))
                 if re.fullmatch(r"action_\d+\.zip", f)]
        if not zips and not have_samples:
            raise UserError(f"--raw {raw}: no MINI_HARDVS_files.zip, action_XXX.zip files or action_XXX/ "
                            f"folders (expected the HAR-DVS download)")
        for z in _tqdm(zips, desc="har_dvs", unit="zip"):
            try:
                with zipfile.ZipFile(z) as zf:
                    inner = sorted(i.filename for i in zf.infolist()
                                   if re.search(r"action_\d+\.zip$", i.filename))
                    for name in inner:
                        with zf.open(name) as fh, zipfile.ZipFile(fh) as izf:
                            _extract_action_zip(izf, name, out, report)
                    _extract_action_zip(zf, z, out, report)
            except zipfile.BadZipFile as e:
                raise UserError(f"{z}: not a valid zip file ({e})") from None
        if have_samples:
            base = sample_base(raw)
            for d in _tqdm(sorted(os.listdir(base)), desc="copy", unit="class"):
                if re.fullmatch(r"action_\d+", d) and os.path.isdir(os.path.join(base, d)):
                    for f in sorted(os.listdir(os.path.join(base, d))):
                        src = os.path.join(base, d, f)
                        _write(os.path.join(out, d, f), lambda src=src: open(src, "rb").read(), report)
        for name in lists:
            src = os.path.join(raw, name)
            if os.path.isfile(src):
                _write(os.path.join(out, name), lambda src=src: open(src, "rb").read(), report)
    if not args.skip_validation:
        base = sample_base(out)
        for split in ("train", "val", "test"):
            if not os.path.isfile(os.path.join(out, f"{split}_label.txt")):
                report.notes.append(f"{split}_label.txt missing in {out}")
                continue
            for item in _tqdm(read_list(out, f"{split}_label.txt", base), desc=f"validate {split}", unit="file"):
                ev, label = load(item)
                report.add(split, label, ev, item[0])


# ---------------------------------------------------------------------------------------------
# check-only datasets: DailyAction-DVS, N-MNIST
# ---------------------------------------------------------------------------------------------

def prepare_action(args, report: Report):
    from .daily_action import CLASSES, decode, list_recordings, split
    found = list_recordings(args.raw)
    dupes = [f for fs in found.values() for f in fs if re.search(r"\(\d+\)", os.path.basename(f))]
    if dupes:
        report.notes.append(f"{len(dupes)} file(s) with '(n)' in the name (duplicates in the zip?), kept "
                            f"like the reference: e.g. {dupes[0]}")
    train, test = split(found)
    layouts, kept = defaultdict(int), []
    for split_name, items in (("train", train), ("test", test)):
        for f, label in _tqdm(items, desc=f"check {split_name}", unit="file"):
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


def prepare_nmnist(args, report: Report):
    from .nmnist import items, load
    from .readers import read_nmnist_bin
    if args.labels:
        out = _need_out(args)
        split = {"train": "Train", "test": "Test"}[args.split]
        with open(args.labels, encoding="latin-1") as f:
            rows = [ln.split() for ln in f if ln.strip() and not ln.lstrip().startswith("#")]
        jobs = []
        for k, r in enumerate(rows):
            if len(r) < 2 or not r[0].isdigit() or not r[1].isdigit() or int(r[1]) > 9:
                raise UserError(f"{args.labels}: row {k + 1} {' '.join(r)!r}, expected '<id> <digit>'")
            src = next((os.path.join(args.raw, r[0] + e) for e in (".bin", ".bs2")
                        if os.path.isfile(os.path.join(args.raw, r[0] + e))), None)
            if src is None:
                raise UserError(f"{args.labels}: row {k + 1}: no {r[0]}.bin or {r[0]}.bs2 in {args.raw}")
            jobs.append((os.path.join(out, split, r[1], f"{int(r[0]):05d}.bin"), src))
        for p, src in _tqdm(jobs, desc="nmnist", unit="file"):
            read_nmnist_bin(src)
            _write(p, lambda src=src: open(src, "rb").read(), report)
        for d in ("Train", "Test"):
            os.makedirs(os.path.join(out, d), exist_ok=True)
        if not args.skip_validation:
            from ._common import class_folders as cf
            for digit, files in cf(os.path.join(out, split), (".bin",), "digit folders").items():
                for f in files:
                    ev, _ = load((f, int(digit)))
                    report.add(args.split, digit, ev, f)
        return
    train, test = items(args.raw)
    for split_name, its in (("train", train), ("test", test)):
        for item in _tqdm(its, desc=f"check {split_name}", unit="file"):
            ev, label = load(item)
            report.add(split_name, label, ev, item[0])
    report.notes.append(f"train with: -dataset nmnist -data_path {args.raw}")


PREPARERS = {
    "gesture": (prepare_gesture, "DVS128 Gesture: DvsGesture/ (AEDAT 3.1, *_labels.csv, trials_to_*.txt) "
                                 "-> per-sample hdf5 for -dataset gesture"),
    "gesture_sj": (prepare_gesture_sj, "DVS128 Gesture: DvsGesture/ -> spikingjelly's events_np/ for "
                                       "-dataset gesture_sj"),
    "gait": (prepare_gait, "DVS128 Gait day or night: {train,test}/<person>/*.txt (or the authors' npy) "
                           "-> per-walk npz for -dataset gait_day / gait_night"),
    "recognition": (prepare_recognition, "PAF action recognition: <class>/*.aedat (jAER, DAVIS346) -> "
                                         "{train,test}/<class>/*.npy [4, N] for -dataset recognition"),
    "har_dvs": (prepare_har_dvs, "HAR-DVS: MINI_HARDVS_files.zip / action_XXX.zip + *_label.txt -> "
                                 "action_XXX/*.npz for -dataset har_dvs"),
    "action": (prepare_action, "DailyAction-DVS: check <class>/*.aedat (read directly by -dataset action)"),
    "nmnist": (prepare_nmnist, "N-MNIST: check Train|Test/<digit>/*.bin, or convert a flat folder "
                               "with --labels into that layout"),
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python3 -m datasets.prepare",
        description="Convert an official dataset release into the layout training reads (once), "
                    "validate it and print a summary. Re-runs skip finished files; interrupted runs "
                    "leave no half-written files under final names.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="datasets:\n" + "\n".join(f"  {k:<12} {v[1]}" for k, v in PREPARERS.items()) +
               "\n\nlayouts and quirks: docs/datasets.md")
    p.add_argument("name", choices=sorted(PREPARERS), help="which dataset to prepare")
    p.add_argument("--raw", required=True, metavar="DIR", help="the release as downloaded and extracted")
    p.add_argument("--out", default=None, metavar="DIR",
                   help="output folder (pass it as -data_path); not needed for action and nmnist checks")
    p.add_argument("--skip_validation", action="store_true",
                   help="do not read every output back (no per-class summary then)")
    p.add_argument("--train_fraction", type=float, default=0.8,
                   help="recognition without train/test folders: per-class fraction (sorted names) "
                        "that goes to train (default 0.8)")
    p.add_argument("--action_decode", default="reference", choices=("reference", "full"),
                   help="action: decoding to check and summarise (as -action_decode; default reference)")
    p.add_argument("--labels", default=None, metavar="FILE",
                   help="nmnist: a '<id> <digit>' file for a flat folder of <id>.bin/.bs2 files")
    p.add_argument("--split", default="train", choices=("train", "test"),
                   help="nmnist with --labels: write into Train/ or Test/ (default train)")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if not os.path.isdir(args.raw):
        print(f"error: --raw {args.raw}: no such folder", file=sys.stderr)
        return 2
    report = Report()
    t0 = time.time()
    try:
        PREPARERS[args.name][0](args, report)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: finished files are kept, rerun to complete", file=sys.stderr)
        return 130
    print(f"prepare {args.name}: {report.written} written, {report.skipped} already present "
          f"({time.time() - t0:.1f} s)" + (f" -> {args.out}" if args.out else ""))
    for n in report.all_notes():
        print("note:", n)
    print(report.summary())
    return 0


if __name__ == "__main__":
    sys.exit(main())
