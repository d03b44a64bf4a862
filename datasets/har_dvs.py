"""HAR-DVS (300 human actions, DAVIS346 346x260).

    DIR/train_label.txt  DIR/test_label.txt  (DIR/val_label.txt)   lines 'action_XXX/<sample> ...'
    DIR/action_XXX/<sample>.npz   (or DIR/MINI_HARDVS_files/action_XXX/<sample>.npz)
                                  arrays t (us), x (0..345), y (0..259), p

The class is the ``action_XXX`` folder (label XXX - 1). ``python3 -m datasets.prepare har_dvs``
unpacks the release's nested zips (MINI_HARDVS_files.zip -> action_XXX.zip) into this layout
(:func:`prepare`).
``-hardvs_test_list val`` evaluates on val_label.txt instead of test_label.txt. The reference has no
HAR-DVS loader; frames use the common time-window code (training windows start at a random time
with RCS, otherwise at the first event).
"""
from __future__ import annotations

import os
import re
import zipfile

from utils.errors import UserError
from utils.files import check_declared_size

from .files import check_bounds, file_bytes, find_dir, out_folder, read_npz_events
from .frame_dataset import train_test_sets
from .framing import FROM_FIRST

SENSOR = (346, 260)
NUM_CLASSES = 300
LAYOUT = ("DIR/{train,test}_label.txt listing 'action_XXX/<sample>' lines and the samples "
          "DIR/action_XXX/<sample>.npz (arrays t, x, y, p)")


def sample_base(root: str) -> str:
    for base in (root, os.path.join(root, "MINI_HARDVS_files")):
        if os.path.isdir(base) and any(d.startswith("action_") for d in os.listdir(base)):
            return base
    raise UserError(f"-data_path {root}: no action_XXX folders (expected {LAYOUT})")


def read_list(root: str, name: str, base: str) -> list[tuple[str, int]]:
    path = os.path.join(root, name)
    if not os.path.isfile(path):
        raise UserError(f"{path}: missing split list (expected {LAYOUT})")
    items = []
    with open(path, encoding="latin-1") as f:
        for k, line in enumerate(f, start=1):
            parts = line.split()
            if not parts:
                continue
            rel = parts[0].strip("/")
            m = re.search(r"action_(\d+)", rel)
            if m is None or not 1 <= int(m.group(1)) <= NUM_CLASSES:
                raise UserError(f"{path}: line {k} {parts[0]!r} does not name an action_001.."
                                f"action_300 folder")
            cands = [os.path.join(base, rel), os.path.join(base, rel + ".npz")]
            f_ = next((c for c in cands if os.path.isfile(c)), None)
            if f_ is None:
                raise UserError(f"{path}: line {k}: sample {rel} not found under {base}")
            items.append((f_, int(m.group(1)) - 1))
    if not items:
        raise UserError(f"{path}: no samples listed")
    return items


def load(item):
    path, label = item
    return check_bounds(read_npz_events(path), SENSOR, path), label


def build(args):
    """(train_set, test_set) for -dataset har_dvs."""
    base = sample_base(args.data_path)
    test_list = getattr(args, "hardvs_test_list", "test")
    train_items = read_list(args.data_path, "train_label.txt", base)
    test_items = read_list(args.data_path, f"{test_list}_label.txt", base)
    load(train_items[0])
    return train_test_sets(args, SENSOR, (train_items, load), (test_items, load), FROM_FIRST)


# ---------------------------------------------------------------------------------------------
# preparation: the release's nested zips -> DIR/action_XXX/*.npz + the split lists
# ---------------------------------------------------------------------------------------------

SPLIT_LISTS = ("train_label.txt", "val_label.txt", "test_label.txt")


def safe_member(name: str) -> str | None:
    """A zip member's relative path, or None for a folder, an absolute path or one with '..'."""
    parts = [p for p in name.replace("\\", "/").split("/") if p not in ("", ".")]
    if not parts or ".." in parts or name.startswith("/") or name.endswith("/"):
        return None
    return "/".join(parts)


def extract_action_zip(zf: zipfile.ZipFile, zname: str, out: str, report):
    """Every .npz of an opened zip into OUT/action_XXX/ (the action_XXX folder of its path, else
    the zip's own name)."""
    for info in sorted(zf.infolist(), key=lambda i: i.filename):
        rel = safe_member(info.filename)
        if rel is None or not rel.lower().endswith(".npz"):
            continue
        parts = rel.split("/")
        m = next((p for p in parts if re.fullmatch(r"action_\d+", p)), None)
        folder = m or os.path.splitext(os.path.basename(zname))[0]
        check_declared_size(info.file_size, zname, f"member {info.filename}")   # before it is inflated
        report.write(os.path.join(out, folder, parts[-1]), lambda info=info: zf.read(info))


def release_zips(raw: str) -> list[str]:
    """RAW/MINI_HARDVS_files.zip and the loose action_XXX.zip files (in RAW/MINI_HARDVS_files/ or RAW)."""
    zips = []
    outer = os.path.join(raw, "MINI_HARDVS_files.zip")
    inner_dir = find_dir(raw, "MINI_HARDVS_files") or raw
    if os.path.isfile(outer):
        zips.append(outer)
    return zips + [os.path.join(inner_dir, f) for f in sorted(os.listdir(inner_dir))
                   if re.fullmatch(r"action_\d+\.zip", f)]


def unpack_zip(z: str, out: str, report):
    """The action_XXX.zip archives inside z, then z's own .npz members."""
    try:
        with zipfile.ZipFile(z) as zf:
            inner = sorted(i.filename for i in zf.infolist() if re.search(r"action_\d+\.zip$", i.filename))
            for name in inner:
                with zf.open(name) as fh, zipfile.ZipFile(fh) as izf:
                    extract_action_zip(izf, name, out, report)
            extract_action_zip(zf, z, out, report)
    except zipfile.BadZipFile as e:
        raise UserError(f"{z}: not a valid zip file ({e})") from None


def copy_extracted(raw: str, out: str, report):
    """RAW's already extracted action_XXX/ folders into OUT."""
    base = sample_base(raw)
    for d in report.progress(sorted(os.listdir(base)), desc="copy", unit="class"):
        if re.fullmatch(r"action_\d+", d) and os.path.isdir(os.path.join(base, d)):
            for f in sorted(os.listdir(os.path.join(base, d))):
                src = os.path.join(base, d, f)
                report.write(os.path.join(out, d, f), lambda src=src: file_bytes(src))


def has_samples(raw: str) -> bool:
    try:
        sample_base(raw)
        return True
    except UserError:
        return False


def validate(out: str, report):
    """Read every listed sample of OUT back as training does."""
    base = sample_base(out)
    for split in ("train", "val", "test"):
        if not os.path.isfile(os.path.join(out, f"{split}_label.txt")):
            report.notes.append(f"{split}_label.txt missing in {out}")
            continue
        for item in report.progress(read_list(out, f"{split}_label.txt", base), desc=f"validate {split}",
                                    unit="file"):
            ev, label = load(item)
            report.add(split, label, ev, item[0])


def prepare(args, report):
    """RAW (zips, or action_XXX/ folders) -> OUT/action_XXX/*.npz + the split lists, then read
    back; without --out an extracted RAW is only checked."""
    raw, extracted = args.raw, has_samples(args.raw)
    if extracted and not args.out:
        out = raw
        report.notes.append(f"{raw} already holds action_XXX/ folders: checked in place")
    else:
        out, zips = out_folder(args), release_zips(raw)
        if not zips and not extracted:
            raise UserError(f"--raw {raw}: no MINI_HARDVS_files.zip, action_XXX.zip files or action_XXX/ "
                            f"folders (expected the HAR-DVS download)")
        for z in report.progress(zips, desc="har_dvs", unit="zip"):
            unpack_zip(z, out, report)
        if extracted:
            copy_extracted(raw, out, report)
        for name in SPLIT_LISTS:
            if os.path.isfile(os.path.join(raw, name)):
                report.write(os.path.join(out, name), lambda src=os.path.join(raw, name): file_bytes(src))
    if not args.skip_validation:
        validate(out, report)
