"""File helpers of the dataset readers and their ``prepare`` functions (no dataset knowledge here):
class folders, event npz / npy reading and writing, bounds checks, the geometry a reader fills in."""
from __future__ import annotations

import io
import os
import re
import zipfile
import zlib

import numpy as np

from utils.errors import UserError
from utils.files import check_declared_size, check_regular_file, inside_folder, probe_writable

from .framing import Events, frame_shape, make_events

_ZIP_DATE = (1980, 1, 1, 0, 0, 0)


def natural_key(name: str):
    """Sort key that orders 'user2' before 'user10' and '9' before '10'."""
    return [int(s) if s.isdigit() else s.lower() for s in re.split(r"(\d+)", name)]


def find_dir(root: str, *names: str) -> str | None:
    """The first of ``names`` that is a folder under root, compared case-insensitively."""
    if not os.path.isdir(root):
        return None
    entries = {e.lower(): e for e in os.listdir(root)}
    for n in names:
        e = entries.get(n.lower())
        if e is not None and os.path.isdir(os.path.join(root, e)):
            return os.path.join(root, e)
    return None


def class_folders(split_dir: str, exts: tuple[str, ...], what: str) -> dict[str, list[str]]:
    """{class folder name: sorted sample files} of split_dir/<class>/*<ext>.

    An empty class folder or a split without class folders is a UserError naming the folder."""
    if not os.path.isdir(split_dir):
        raise UserError(f"{split_dir}: no such folder (expected {what})")
    out = {}
    for c in sorted(os.listdir(split_dir), key=natural_key):
        d = os.path.join(split_dir, c)
        if not os.path.isdir(d):
            continue
        files = sorted((f for f in os.listdir(d) if f.lower().endswith(exts)), key=natural_key)
        if not files:
            raise UserError(f"{d}: empty class folder (no {' / '.join(exts)} files; expected {what})")
        out[c] = [os.path.join(d, f) for f in files]
        for f in out[c]:
            check_regular_file(f)
    if not out:
        raise UserError(f"{split_dir}: no class folders (expected {what})")
    return out


def split_dirs(root: str, what: str, flag: str = "-data_path") -> tuple[str, str]:
    """root's train/ and test/ folders (any case); UserError naming the missing one."""
    train, test = find_dir(root, "train"), find_dir(root, "test")
    if train is None or test is None:
        missing = "train/" if train is None else "test/"
        raise UserError(f"{flag} {root}: no {missing} folder (expected {what})")
    return train, test


def labelled_files(train_dir: str, test_dir: str, what: str, exts=(".npz",)):
    """(classes, [(file, label)] train, [(file, label)] test) from two class-folder trees."""
    tr, te = class_folders(train_dir, exts, what), class_folders(test_dir, exts, what)
    classes = sorted(set(tr) | set(te), key=natural_key)
    index = {c: i for i, c in enumerate(classes)}
    items = lambda d: [(f, index[c]) for c in sorted(d, key=natural_key) for f in d[c]]
    return classes, items(tr), items(te)


def out_folder(args) -> str:
    """The ``--out`` folder of a ``datasets.prepare`` run, created; UserError if it is missing or
    is the ``--raw`` folder."""
    if not args.out:
        raise UserError(f"prepare {args.name}: --out DIR is required")
    raw, out = os.path.realpath(args.raw), os.path.realpath(args.out)
    if out == raw:
        raise UserError(f"--out {args.out}: must differ from --raw (the release is input only)")
    try:
        os.makedirs(args.out, exist_ok=True)
    except OSError as e:
        raise UserError(f"--out {args.out}: cannot create folder ({e.strerror or e})") from None
    if not os.path.isdir(args.out):
        raise UserError(f"--out {args.out}: not a folder")
    probe_writable(args.out, "--out")
    return args.out


def release_member(root: str, name: str, where: str) -> str:
    """root/name for a file name read from a release's list (a trials file): a relative path that
    stays inside root, else UserError naming the list."""
    if not name or os.path.isabs(name) or ".." in name.replace("\\", "/").split("/"):
        raise UserError(f"{where}: lists {name!r}; expected a file name inside {root} (no absolute "
                        f"path, no '..')")
    path = os.path.join(root, name)
    inside_folder(root, path, "--raw")
    return path


def set_geometry(args, num_classes: int | None, sensor_size) -> None:
    """Fill args.num_classes / sensor_size / frame_size that the registry left to the data."""
    if getattr(args, "num_classes", None) is None and num_classes is not None:
        args.num_classes = int(num_classes)
    elif num_classes is not None and args.num_classes < num_classes:
        raise UserError(f"-num_classes {args.num_classes} is smaller than the {num_classes} classes "
                        f"found in {args.data_path}")
    args.sensor_size = tuple(int(v) for v in sensor_size)
    args.frame_size = frame_shape(args.sensor_size, int(args.ds))


def check_bounds(ev: Events, sensor_size, path: str) -> Events:
    """UserError if an event lies outside the sensor (it would land in another frame cell)."""
    if len(ev):
        X, Y = sensor_size
        if ev.x.min() < 0 or ev.y.min() < 0 or ev.x.max() >= X or ev.y.max() >= Y:
            raise UserError(f"{path}: events outside the {X}x{Y} sensor (x {ev.x.min()}..{ev.x.max()}, "
                            f"y {ev.y.min()}..{ev.y.max()}); check the sensor size")
        if ev.p.min() < 0 or ev.p.max() > 1:
            raise UserError(f"{path}: polarity values {np.unique(ev.p)[:4]} (expected 0/1)")
    return ev


def events_from_columns(t, x, y, p, path: str) -> Events:
    """Events from t (integer us), x, y (integers), p (0/1, or -1/1, or bool) arrays; UserError
    naming path for anything else (strings, objects, booleans where a number is meant, fractions,
    NaN, lengths that differ)."""
    t, x, y, p = (np.asarray(a).reshape(-1) for a in (t, x, y, p))
    if not (len(t) == len(x) == len(y) == len(p)):
        raise UserError(f"{path}: t, x, y, p differ in length ({len(t)}, {len(x)}, {len(y)}, {len(p)})")
    for name, a in (("t", t), ("x", x), ("y", y), ("p", p)):
        if a.dtype.kind == "f":
            if len(a) and (not np.all(np.isfinite(a)) or np.any(a != np.floor(a))):
                raise UserError(f"{path}: {name} holds non-integer values (expected integers"
                                f"{'; t in microseconds' if name == 't' else ''})")
        elif a.dtype.kind not in ("iub" if name == "p" else "iu"):
            raise UserError(f"{path}: {name} has dtype {a.dtype}, expected integers"
                            f"{' (or bool)' if name == 'p' else ''}")
    p = np.asarray(p)
    if p.dtype.kind == "b" or (len(p) and p.min() < 0):
        p = (p > 0)
    return make_events(t, p, x, y)


PICKLE_HINT = ("data files are read without pickles, so that no file can run code; convert it once "
               "with 'python3 -m datasets.prepare' (docs/datasets.md), which writes plain arrays")


def check_header(path: str, magic: bytes, kind: str, how: str) -> None:
    """UserError unless ``path`` is a regular, non-empty file starting with ``magic``."""
    check_regular_file(path)
    if os.path.getsize(path) == 0:
        raise UserError(f"{path}: empty file (0 bytes; an interrupted write?), expected {kind}")
    with open(path, "rb") as f:
        if f.read(len(magic)) != magic:
            raise UserError(f"{path}: not {kind} (it does not start {how})")


def refuse_pickled(path: str, e: ValueError, hint: str) -> None:
    """UserError (with ``hint``, the way out) when NumPy refused ``path`` for holding pickles."""
    if "allow_pickle" in str(e) or "Object arrays" in str(e):
        raise UserError(f"{path}: refused: it holds pickled Python objects (nothing in it was run); "
                        f"{hint}") from None


def read_npy_header(f, path: str, name: str = "", hint: str = PICKLE_HINT) -> tuple[tuple, np.dtype, int]:
    """(shape, dtype, data bytes) from the header of the .npy stream ``f``, which is left at the
    start of the data. Only the header is read: nothing is allocated from what it declares."""
    where = f"{path}{': ' + name if name else ''}"
    fmt = np.lib.format
    try:
        version = fmt.read_magic(f)
        if version == (1, 0):
            shape, _, dtype = fmt.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, _, dtype = fmt.read_array_header_2_0(f)
        else:                     # 3.0: a UTF-8 header, written only for non-Latin-1 field names
            shape, _, dtype = fmt._read_array_header(f, version)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error) as e:
        raise UserError(f"{where}: not a readable .npy header ({str(e).splitlines()[0][:160]})") from None
    if dtype.hasobject:
        raise UserError(f"{path}: refused: it holds pickled Python objects{' (' + name + ')' if name else ''} "
                        f"(nothing in it was run); {hint}")
    return shape, dtype, int(np.prod(shape, dtype=object)) * dtype.itemsize


def npz_members(path: str, hint: str = PICKLE_HINT) -> dict:
    """{array name: (shape, dtype)} of an .npz, from its zip directory and the members' .npy
    headers alone (only a header's first block is decompressed). UserError naming the file when
    the members together declare more bytes than this process can allocate, or a header declares
    another size than its member stores (a torn or forged file)."""
    with zipfile.ZipFile(path) as zf:
        infos = [i for i in zf.infolist() if not i.is_dir()]
        check_declared_size(sum(i.file_size for i in infos), path, "its zip directory")
        out = {}
        for info in infos:
            if not info.filename.endswith(".npy"):
                continue
            with zf.open(info) as f:
                shape, dtype, nbytes = read_npy_header(f, path, info.filename, hint)
                stored = info.file_size - f.tell()
            if nbytes != stored:
                raise UserError(f"{path}: {info.filename} declares shape {shape} of {dtype} ({nbytes:,} "
                                f"bytes) but stores {stored:,} bytes; the file is torn or forged")
            out[info.filename[:-len(".npy")]] = (shape, dtype)
    return out


def load_npz(path: str, keys: str | tuple | None = None, hint: str = PICKLE_HINT,
             same_length: bool = False) -> dict:
    """{name: array} of an .npz file, read without pickles. Every failure is one UserError naming
    the file: not a regular file, empty (an interrupted write), not an npz, truncated, missing
    ``keys``, sizes its headers declare but it does not store or memory cannot hold
    (:func:`npz_members`, checked before anything is decompressed), ``keys`` of different lengths
    with ``same_length`` (event columns), or an object array (refused with ``hint``, the way out)."""
    check_header(path, b"PK\x03\x04", "an npz file", "as a zip archive")
    try:
        members = npz_members(path, hint)
        missing = [k for k in (keys or ()) if k not in members]
        if missing:
            raise UserError(f"{path}: missing arrays {missing} (expected {', '.join(keys)}; found "
                            f"{sorted(members)})")
        if same_length:
            sizes = {k: int(np.prod(members[k][0], dtype=object)) for k in keys}
            if len(set(sizes.values())) > 1:
                raise UserError(f"{path}: {', '.join(sizes)} differ in length "
                                f"({', '.join(str(n) for n in sizes.values())})")
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except UserError:
        raise
    except ValueError as e:
        refuse_pickled(path, e, hint)
        raise UserError(f"{path}: not a readable npz file ({str(e).splitlines()[0][:160]})") from None
    except (OSError, EOFError, zipfile.BadZipFile, zlib.error, KeyError) as e:
        raise UserError(f"{path}: not a readable npz file ({type(e).__name__}: {str(e)[:160]}; "
                        f"truncated or damaged?)") from None


def load_npy(path: str, hint: str = PICKLE_HINT) -> np.ndarray:
    """An .npy array read without pickles, with the checks of :func:`load_npz`: its header's
    shape against the bytes the file holds and the memory available, before the array is made."""
    check_header(path, b"\x93NUMPY", "an .npy file", "with the NumPy header")
    with open(path, "rb") as f:
        shape, dtype, nbytes = read_npy_header(f, path, hint=hint)
        stored = os.fstat(f.fileno()).st_size - f.tell()
    if nbytes > stored:
        raise UserError(f"{path}: header declares shape {shape} of {dtype} ({nbytes:,} bytes) but the "
                        f"file holds {stored:,}; truncated or forged")
    check_declared_size(nbytes, path, "its header")
    try:
        return np.load(path, allow_pickle=False)
    except ValueError as e:
        refuse_pickled(path, e, hint)
        raise UserError(f"{path}: not a readable .npy array ({str(e).splitlines()[0][:160]})") from None
    except (OSError, EOFError) as e:
        raise UserError(f"{path}: not a readable .npy array ({type(e).__name__}: {str(e)[:160]})") from None


def read_hdf5_array(ds, path: str, key: str) -> np.ndarray:
    """The values of the h5py dataset ``ds`` (named ``key`` in ``path``), once what its header
    declares has been checked against what the file stores and the memory available: a dataset
    that was never written (no storage: a torn file), contiguous bytes that lie past the end of the
    file or differ from the declared size, chunks missing from the grid, or more bytes than this
    process can allocate are one UserError naming the file, before anything is allocated."""
    declared = int(np.prod(ds.shape, dtype=object)) * ds.dtype.itemsize
    stored = ds.id.get_storage_size()
    if declared and not stored:
        raise UserError(f"{path}: dataset '{key}' declares shape {ds.shape} but was never written "
                        f"(no data stored: a torn file)")
    if ds.chunks is None:
        offset = ds.id.get_offset()
        if ds.compression is None and stored != declared or \
                offset is not None and offset + stored > os.path.getsize(path):
            raise UserError(f"{path}: dataset '{key}' declares {declared:,} bytes (shape {ds.shape}) but "
                            f"the file stores {stored:,} of them; truncated or forged")
    elif declared:
        grid = int(np.prod([-(-n // c) for n, c in zip(ds.shape, ds.chunks)], dtype=object))
        have = ds.id.get_num_chunks()
        if have != grid:
            raise UserError(f"{path}: dataset '{key}' declares shape {ds.shape} in {grid:,} chunks but "
                            f"stores {have:,}; a torn or forged file")
    check_declared_size(declared, path, f"dataset '{key}'")
    return np.asarray(ds[()])


def read_npz_events(path: str) -> Events:
    """An npz with arrays t (us), x, y, p."""
    z = load_npz(path, "txyp", same_length=True)
    return events_from_columns(z["t"], z["x"], z["y"], z["p"], path)


def file_bytes(path: str) -> bytes:
    """A file's contents (a prepare step that copies a file as it is)."""
    with open(path, "rb") as f:
        return f.read()


def npz_bytes(**arrays) -> bytes:
    """An uncompressed .npz as bytes, byte-identical for identical arrays (fixed zip timestamps)."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as zf:
        for k in sorted(arrays):
            zi = zipfile.ZipInfo(k + ".npy", date_time=_ZIP_DATE)
            zi.external_attr = 0o644 << 16
            zf.writestr(zi, npy_bytes(arrays[k]))
    return out.getvalue()


def npy_bytes(array) -> bytes:
    """A .npy file as bytes (no pickles)."""
    buf = io.BytesIO()
    np.lib.format.write_array(buf, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


def events_npz_bytes(ev: Events) -> bytes:
    """A sample in this project's event npz layout (t int64 us, x/y uint16, p uint8)."""
    return npz_bytes(t=ev.t.astype(np.int64), x=ev.x.astype(np.uint16), y=ev.y.astype(np.uint16),
                     p=ev.p.astype(np.uint8))
