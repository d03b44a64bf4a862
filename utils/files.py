"""Writing files so that nothing is ever half-written or silently lost.

:func:`atomic_write` is the project's one way to write a file that someone will read later
(checkpoints, config.json, metrics.csv rewrites, prepared datasets, result tables): the bytes go
to a temporary name beside the target, are fsynced, and the temporary file is renamed over the
target (``os.replace`` is atomic on POSIX), so a reader, or a process killed at any moment, sees
the old file or the new one, never a torn one. A failed write removes the temporary file, keeps
the old target and raises one UserError naming the file and the reason.
"""
from __future__ import annotations

import errno
import os
import shutil
import stat
import tempfile

from utils.errors import UserError


def atomic_write(path: str, data: bytes | str, what: str = "", then: str = "") -> None:
    """Write ``data`` (bytes, or text as UTF-8) to ``path`` atomically (module docstring).
    ``what`` names the file in the error ("checkpoint"); ``then`` says how to continue after
    freeing space ("and continue with -resume")."""
    if isinstance(data, str):
        data = data.encode("utf-8")
    folder = os.path.dirname(os.path.abspath(path))
    tmp = f"{path}.tmp"
    try:
        os.makedirs(folder, exist_ok=True)
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        name = f"{what} {path}" if what else path
        raise UserError(f"cannot write {name}: {e.strerror or e}{_hint(e, then)}") from None
    finally:
        discard(tmp)              # after a failure or an interrupt; after the rename, nothing is there
    fsync_dir(folder)


def _hint(e: OSError, then: str) -> str:
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"; free some space (the previous version of the file, if any, is kept){' ' + then if then else ''}"
    if e.errno == errno.EFBIG:
        return " (a file size limit, see ulimit -f; the previous version is kept)"
    return ""


def fsync_dir(folder: str) -> None:
    """Make a rename in ``folder`` durable (best effort: not every filesystem allows it)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def discard(path: str) -> None:
    """Remove ``path`` if it exists (cleanup after a failed write)."""
    try:
        os.remove(path)
    except OSError:
        pass


def check_free_space(folder: str, need: int) -> None:
    """UserError when ``folder``'s filesystem has less than ``need`` bytes free."""
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return
    if free < need:
        raise UserError(f"not enough free disk space for checkpoints in {folder}: about "
                        f"{need / 2**20:.1f} MiB needed, {free / 2**20:.1f} MiB free")


def check_regular_file(path: str, what: str = "a sample file", flag: str = "") -> None:
    """UserError unless ``path`` is a regular file: a FIFO or a device named like a data file or a
    checkpoint would block or stream forever."""
    name = f"{flag} {path}" if flag else path
    try:
        st = os.stat(path)
    except OSError as e:
        raise UserError(f"{name}: cannot read ({e.strerror or e})") from None
    if not stat.S_ISREG(st.st_mode):
        kind = "a folder" if stat.S_ISDIR(st.st_mode) else "a FIFO" if stat.S_ISFIFO(st.st_mode) else \
            "a device or socket"
        raise UserError(f"{name}: is {kind}, not a regular file (expected {what})")


def inside_folder(parent: str, path: str, flag: str) -> None:
    """UserError unless ``path`` lies strictly inside ``parent``, compared as written once '..' is
    resolved (a symbolic link the user placed inside is theirs to follow): a path built from a
    name or from data never leaves the folder the user named."""
    top, p = os.path.abspath(parent), os.path.abspath(path)
    if p == top or os.path.commonpath([top, p]) != top:
        raise UserError(f"{flag} {parent}: {path} would lie outside it; refused")


def probe_writable(folder: str, flag: str = "-modelPath") -> None:
    """Write, fsync and remove a small uniquely named file: catches read-only or full filesystems
    and permission problems that os.access cannot see (e.g. when running as root)."""
    probe = None
    try:
        fd, probe = tempfile.mkstemp(prefix=".write_probe_", suffix=".tmp", dir=folder)
        with os.fdopen(fd, "wb") as f:
            f.write(b"\0" * 4096)
            f.flush()
            os.fsync(f.fileno())
        os.remove(probe)
    except OSError as e:
        if probe:
            discard(probe)
        raise UserError(f"{flag}: cannot write in {folder}: {e.strerror or e}") from None
