"""Writing files so that nothing is ever half-written, silently lost, or written through a link.

:func:`atomic_write` is the project's one way to write a file that someone will read later
(checkpoints, config.json, metrics.csv rewrites, prepared datasets, result tables): the bytes go
to a temporary file beside the target, created under a name nobody can predict (``mkstemp``:
``O_CREAT | O_EXCL``, so a symbolic link planted in the folder is never followed), are fsynced, and
the temporary file is renamed over the target (``os.replace`` is atomic on POSIX and replaces a
link at the target's name, never the file it points to), so a reader, or a process killed at any
moment, sees the old file or the new one, never a torn one. A failed write removes the temporary
file, keeps the old target and raises one UserError naming the file and the reason.

Files a run keeps open and changes in place (its lock, metrics.csv) are opened with
:func:`open_in_run_folder`: ``O_NOFOLLOW``, a regular file with one link only, so that a link
planted under that name cannot make a run truncate or append to a file outside its folder.
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
    tmp = None
    try:
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
        os.fchmod(fd, 0o666 & ~_umask())          # mkstemp's 0600 would hide results from the group
        with open(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        name = f"{what} {path}" if what else path
        raise UserError(f"cannot write {name}: {e.strerror or e}{_hint(e, then)}") from None
    finally:
        if tmp is not None:       # after a failure or an interrupt; after the rename, nothing is there
            discard(tmp)
    fsync_dir(folder)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


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


def shown(path: str) -> str:
    """A path as a console or error line shows it: as it is, or quoted with escapes when it holds
    a newline or another control character (one line stays one line)."""
    return path if path.isprintable() else repr(path)


def open_in_run_folder(path: str, flags: int, what: str) -> int:
    """``os.open(path, flags | O_NOFOLLOW)`` (mode 0644 when created) for a file a run changes in
    place; UserError naming ``what`` and the path when it is a symbolic link, not a regular file,
    or has other hard links (writing would change a file outside the folder)."""
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, 0o644)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise UserError(f"{what} {shown(path)}: is a symbolic link; refused (a run never writes through "
                            f"a link: remove it)") from None
        raise UserError(f"{what} {shown(path)}: cannot open ({e.strerror or e})") from None
    st = os.fstat(fd)
    problem = ("not a regular file" if not stat.S_ISREG(st.st_mode) else
               f"has {st.st_nlink} hard links (it is also a file elsewhere)" if st.st_nlink > 1 else "")
    if problem:
        os.close(fd)
        raise UserError(f"{what} {shown(path)}: {problem}; refused (a run changes only its own files: remove it)")
    os.set_blocking(fd, True)
    return fd


def available_memory() -> int | None:
    """Bytes this process can still allocate: the kernel's MemAvailable (/proc/meminfo), lowered
    to the address-space limit (ulimit -v) when one is set; None when neither is known."""
    have = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    have = int(line.split()[1]) * 1024
                    break
    except (OSError, ValueError, IndexError):
        pass
    try:
        import resource
        limit = resource.getrlimit(resource.RLIMIT_AS)[0]
        if limit != resource.RLIM_INFINITY:
            have = limit if have is None else min(have, limit)
    except (ImportError, OSError, ValueError):
        pass
    return have


def check_declared_size(nbytes: int, path: str, what: str) -> None:
    """UserError naming ``path`` when ``what`` (a header's declared array, a zip member, a whole
    file) says it needs more bytes than this process can allocate: refused before anything is
    allocated (with a lazy allocator such as mimalloc a huge allocation succeeds and the process
    grows until the kernel kills it)."""
    have = available_memory()
    if have is not None and nbytes > have:
        raise UserError(f"{path}: {what} declares {nbytes:,} bytes ({nbytes / 2**30:.1f} GiB), more than "
                        f"the {have / 2**30:.1f} GiB of memory available; a damaged or forged file")


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
