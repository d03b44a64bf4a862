"""Memory policy for CPU training: fast reuse of large blocks without heap fragmentation.

The problem. A CPU training step frees and reallocates gigabytes of activations. glibc serves every
block above the mmap threshold (128 KiB, rising dynamically up to 32 MiB) with a fresh mmap and
unmaps it on free, so each reuse pays one page fault per 4 KiB page, plus zeroing (arch A + ASA,
T 60, batch 8: ~1.3 M faults = 4.9 GiB faulted per step, ~1.3-1.45x slower). Serving everything
from the heap instead (``M_MMAP_MAX=0``, high trim threshold; the "heap" policy) removes the faults
but fragments: the heap keeps every hole it ever had, and peak RSS grew well above the live peak
(arch A 2.6-3.6 GiB vs 1.35 GiB of live tensors; arch B 128x128 16.4 GiB vs 8.9 GiB).

The policy applied by default ("cache"): PyTorch's CPU allocator is replaced, for tensors of 4 MiB
and more, by the caching allocator of utils/block_cache.py (C++, compiled once with the system's
C++ compiler): freed blocks are kept and reused for any later size by moving pages, so a step
after the first neither faults nor fragments; mapped memory stays at the peak of live tensors.
It is installed before torch is imported; no re-execution is needed.

Fallbacks, in order, when the block cache cannot be built (no compiler, not Linux):

* "thp": large blocks keep going to mmap and back to the OS on free (RSS follows the live
  tensors), with the threshold FIXED at 4 MiB (``M_MMAP_THRESHOLD``), and those mmapped blocks
  are backed by transparent huge pages, so refilling a 126 MB activation costs ~60 faults of 2 MiB
  instead of ~31000 of 4 KiB. glibc does this with ``GLIBC_TUNABLES=glibc.malloc.hugetlb=1``
  (glibc >= 2.35, kernel THP mode "always" or "madvise"), which glibc only reads at process start:
  when :func:`keep_freed_memory` is called from the ``__main__`` script (train_test.py,
  bench/bench_train.py) and the tunable is not set, it adds it to the environment and re-executes
  the same command line once (``os.execv``, same pid, before torch is imported).
* "heap" where huge pages are unavailable (THP "never", older glibc, not the main script).

Measured (bench/README.md; 2 threads): arch A + ASA T 60 batch 8 with the shipped model: cache
2.5-2.7 s/step, 1.48 GiB peak RSS; thp 3.0-3.4 s, 1.42 GiB; heap 2.5-2.6 s, 2.1-2.5 GiB; default
glibc 3.8-3.9 s.
Arch B + ASA T 20 128x128: cache 9.7-10.8 s, 8.65 GiB; thp 24.4 s, 8.56 GiB; heap 16.0 s, 15.8 GiB.

Environment:

* ``ASA_KEEP_FREED_MEMORY=0`` -- change nothing (glibc and PyTorch defaults);
* ``ASA_MALLOC=cache|thp|heap|lean|default`` -- choose a policy ("lean" = the fixed 4 MiB mmap
  threshold without huge pages: lowest RSS, slowest);
* ``ASA_BUILD_DIR`` -- where the block cache library is built (default ``~/.cache/asa-snn``).
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

POLICIES = ("cache", "thp", "heap", "lean", "default")
MMAP_THRESHOLD = 4 << 20            # fixed mmap threshold of the "thp" and "lean" policies
HUGETLB_TUNABLE = "glibc.malloc.hugetlb=1"
_REEXEC_MARK = "ASA_MALLOC_REEXECED"

applied_policy: str | None = None   # what the last keep_freed_memory() call applied (None: nothing)
fallback_reason: str | None = None  # why the requested policy was not the one applied


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
    """Apply the memory policy (module docstring). Returns True when a setting was applied.

    ``policy`` overrides ``ASA_MALLOC``; ``trim_threshold`` is the heap policy's trim threshold;
    ``reexec=False`` never re-executes (the "thp" policy then falls back to "heap" unless the
    process already runs with huge pages). Call it before torch allocates anything."""
    global applied_policy, fallback_reason
    applied_policy = fallback_reason = None
    if not sys.platform.startswith("linux") or os.environ.get("ASA_KEEP_FREED_MEMORY", "1") == "0":
        return False
    policy = policy or os.environ.get("ASA_MALLOC", "cache")
    if policy not in POLICIES:
        raise ValueError(f"ASA_MALLOC / policy must be one of {POLICIES}, got {policy!r}")
    if policy == "default":
        return False
    if policy == "cache":
        from . import block_cache
        if block_cache.install():
            applied_policy = "cache"
            return True
        fallback_reason = f"block cache unavailable: {block_cache.last_error}"
        print(f"note: {fallback_reason}; using glibc's thp/heap policy (slower)", file=sys.stderr)
        policy = "thp"
        os.environ["ASA_MALLOC"] = "thp"     # a re-executed process need not try (and note) again
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


def memory_policy_text() -> str:
    """One line for the run log: which policy the last keep_freed_memory() call applied."""
    names = {"cache": "block cache (utils/block_cache.py)", "thp": "glibc, huge pages, 4 MiB mmap threshold",
             "heap": "glibc, heap only", "lean": "glibc, 4 MiB mmap threshold", None: "glibc defaults"}
    text = names.get(applied_policy, str(applied_policy))
    return f"{text} ({fallback_reason})" if fallback_reason else text
