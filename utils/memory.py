"""glibc malloc policy for CPU training: fast reuse of large blocks without heap fragmentation.

The problem. A CPU training step frees and reallocates gigabytes of activations. glibc serves every
block above the mmap threshold (128 KiB, rising dynamically up to 32 MiB) with a fresh mmap and
unmaps it on free, so each reuse pays one page fault per 4 KiB page, plus zeroing (arch A + ASA,
T 60, batch 8: ~1.3 M faults = 4.9 GiB faulted per step, ~1.3-1.45x slower). Serving everything
from the heap instead (``M_MMAP_MAX=0``, high trim threshold; the "heap" policy) removes the faults
but fragments: the heap keeps every hole it ever had, and peak RSS grew well above the live peak
(arch A 2.6-3.5 GiB vs 2.1 GiB; arch B 128x128 16.4 GiB vs 8.9 GiB).

The policy applied by default ("thp"):

* large blocks keep going to mmap and back to the OS on free (RSS follows the live tensors), with
  the threshold FIXED at 4 MiB (``M_MMAP_THRESHOLD``; a fixed value also stops glibc's dynamic
  raising to 32 MiB, which parked 16-32 MiB activations in the heap: ~0.2 GiB of peak RSS);
* those mmapped blocks are backed by transparent huge pages, so refilling a 126 MB activation costs
  ~60 faults of 2 MiB instead of ~31000 of 4 KiB. glibc does this with the tunable
  ``GLIBC_TUNABLES=glibc.malloc.hugetlb=1`` (glibc >= 2.35, kernel THP mode "always" or
  "madvise"), which glibc only reads at process start: when :func:`keep_freed_memory` is called
  from the ``__main__`` script (train_test.py, bench/bench_train.py) and the tunable is not set, it
  adds it to the environment and re-executes the same command line once (``os.execv``, same pid,
  before torch is imported). Child processes inherit the variable.

Measured (arch A + ASA T 60 batch 8, 1 thread, same machine and load): default glibc 7.05 s/step,
2.19 GiB; heap 5.64 s, 3.49 GiB; thp 5.67 s, 1.93 GiB. See bench/README.md.

Where huge pages are unavailable (THP "never", older glibc, not the main script, a script read from
stdin or ``-c``), the "heap" policy is applied instead (fast, more RSS). Environment:

* ``ASA_KEEP_FREED_MEMORY=0`` -- change nothing (glibc defaults), as before;
* ``ASA_MALLOC=thp|heap|lean|default`` -- choose a policy ("lean" = the fixed 4 MiB mmap threshold
  without huge pages: lowest RSS, slowest).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

M_TRIM_THRESHOLD = -1
M_TOP_PAD = -2
M_MMAP_THRESHOLD = -3
M_MMAP_MAX = -4

POLICIES = ("thp", "heap", "lean", "default")
MMAP_THRESHOLD = 4 << 20            # fixed mmap threshold of the "thp" and "lean" policies
HUGETLB_TUNABLE = "glibc.malloc.hugetlb=1"
_REEXEC_MARK = "ASA_MALLOC_REEXECED"

applied_policy: str | None = None   # what the last keep_freed_memory() call applied (None: nothing)


def _libc():
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")


def glibc_version() -> tuple[int, int] | None:
    try:
        name, ver = os.confstr("CS_GNU_LIBC_VERSION").split()
        major, minor = ver.split(".")[:2]
        return (int(major), int(minor)) if name == "glibc" else None
    except (AttributeError, ValueError, OSError):
        return None


def thp_available() -> bool:
    """Kernel transparent huge pages usable by madvise (mode "always" or "madvise")."""
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
            return "[never]" not in f.read()
    except OSError:
        return False


def huge_pages_active() -> bool:
    """Whether this process was started with glibc's hugetlb tunable (THP for malloc's mmaps)."""
    return HUGETLB_TUNABLE in os.environ.get("GLIBC_TUNABLES", "").split(":")


def _can_reexec(caller_globals: dict) -> bool:
    """Re-executing is safe only from the main script, run from a file, before it did anything."""
    if caller_globals.get("__name__") != "__main__" or os.environ.get(_REEXEC_MARK) == "1":
        return False
    return bool(sys.argv) and os.path.isfile(sys.argv[0]) and hasattr(sys, "orig_argv")


def _reexec_with_huge_pages() -> None:
    tun = os.environ.get("GLIBC_TUNABLES", "")
    os.environ["GLIBC_TUNABLES"] = f"{tun}:{HUGETLB_TUNABLE}" if tun else HUGETLB_TUNABLE
    os.environ[_REEXEC_MARK] = "1"
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])     # does not return


def keep_freed_memory(trim_threshold: int = 1 << 30, policy: str | None = None,
                      reexec: bool = True) -> bool:
    """Apply the malloc policy (module docstring). Returns True when a setting was applied.

    ``policy`` overrides ``ASA_MALLOC``; ``trim_threshold`` is the heap policy's trim threshold;
    ``reexec=False`` never re-executes (the "thp" policy then falls back to "heap" unless the
    process already runs with huge pages). Call it before torch allocates anything."""
    global applied_policy
    applied_policy = None
    if not sys.platform.startswith("linux") or os.environ.get("ASA_KEEP_FREED_MEMORY", "1") == "0":
        return False
    policy = policy or os.environ.get("ASA_MALLOC", "thp")
    if policy not in POLICIES:
        raise ValueError(f"ASA_MALLOC / policy must be one of {POLICIES}, got {policy!r}")
    if policy == "default":
        return False
    if policy == "thp" and not huge_pages_active():
        ver = glibc_version()
        if reexec and ver is not None and ver >= (2, 35) and thp_available() \
                and _can_reexec(sys._getframe(1).f_globals):
            _reexec_with_huge_pages()
        policy = "heap"
    try:
        libc = _libc()
        if policy == "heap":
            ok = libc.mallopt(M_MMAP_MAX, 0) == 1
            ok = libc.mallopt(M_TRIM_THRESHOLD, trim_threshold) == 1 and ok
        else:                                               # thp (huge pages active) or lean
            ok = libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
    except (OSError, AttributeError):
        return False
    applied_policy = policy if ok else None
    return ok
