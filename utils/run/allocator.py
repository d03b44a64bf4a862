"""Run the training CLI under a well-kept malloc: mimalloc, jemalloc or tcmalloc.

Why: a CPU training step frees and reallocates gigabytes of activations. glibc's malloc hands
every large block back to the kernel on free and faults it in again, page by page, on the next
step: about 1.5x slower steps on the machines we measured (bench/README.md). Allocators that keep
freed memory for reuse remove that at no cost in peak memory. PyTorch's own CPU launcher
(``python -m torch.backends.xeon.run_cpu``) preloads jemalloc or tcmalloc for the same reason; this
module does the same for ``train_test.py``, so the README's plain command gets it.

How: :func:`reexec_under_allocator` (called by train_test.py when it runs as a script) puts the
library in ``LD_PRELOAD`` and re-executes the same command line once (``os.execve``: same pid, the
same arguments). A library loaded with ``LD_PRELOAD`` replaces malloc for the whole process, so
correctness does not depend on when this runs; it runs before the heavy imports only to save
their time. DataLoader workers, forked from the process, share its allocator.

Which library (``ASA_ALLOCATOR``, default ``auto``): mimalloc from the pip package
``cmeel-mimalloc`` (in requirements.txt), else Debian's jemalloc (``libjemalloc2``) where
installed. ``ASA_ALLOCATOR=mimalloc|jemalloc|tcmalloc`` asks for one (tcmalloc, Debian's
``libtcmalloc-minimal4``, only on request), ``ASA_ALLOCATOR=off`` keeps glibc's malloc untouched.
With none available the run prints one ``note:`` line and uses glibc with a fixed 4 MiB mmap
threshold and transparent huge pages (``GLIBC_TUNABLES``), which removes most of the page faults.
A malloc the user preloads (``LD_PRELOAD`` naming one) is left alone.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

ENV = "ASA_ALLOCATOR"
CHOICES = ("auto", "mimalloc", "jemalloc", "tcmalloc", "off")
_DONE = "ASA_ALLOCATOR_PRELOADED"          # set in the re-executed process: never re-execute twice

# Settings applied unless the user set the variable. Measured on whole CLI epochs (training and
# the test pass, bench/bench_epoch.py) and training steps (bench/bench_train.py); bench/README.md.
TUNING = {
    # keep freed pages for reuse during a pass (returning them within 100 ms, on two threads, made
    # arch A's step 1.3x and arch B's 1.5x slower; release_free_memory returns them between the
    # training and test passes), in one large arena (less fragmentation: the test pass peaked 1.3x
    # higher in the default 1 GiB arenas). The reserve is address space, not memory.
    "mimalloc": {"MIMALLOC_PURGE_DELAY": "100000", "MIMALLOC_ARENA_RESERVE": "16GiB"},
    # a background thread returns freed pages (default decay times); keeping them (no decay)
    # doubled the epoch's peak
    "jemalloc": {"MALLOC_CONF": "background_thread:true"},
    "tcmalloc": {},
    "glibc": {"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1:glibc.malloc.mmap_threshold=4194304"},
}
MALLOC_NAMES = ("mimalloc", "jemalloc", "tcmalloc")
# auto's order. tcmalloc only on request: its epoch peak was 1.5x tuned glibc's, at the same speed.
AUTO = ("mimalloc", "jemalloc")


class AllocatorError(ValueError):
    """ASA_ALLOCATOR holds an unknown name, or names a library that is not installed."""


def _mimalloc() -> str | None:
    """libmimalloc.so.3 of the pip package cmeel-mimalloc, if installed."""
    try:
        from importlib.metadata import PackageNotFoundError, distribution
        dist = distribution("cmeel-mimalloc")
    except (ImportError, PackageNotFoundError):
        return None
    libs = sorted(str(f) for f in dist.files or () if f.name.startswith("libmimalloc.so."))
    paths = [str(dist.locate_file(f)) for f in libs]
    return next((p for p in paths if os.path.isfile(p)), None)


def _system(name: str) -> str | None:
    """A system library found by the dynamic linker's cache (e.g. libjemalloc.so.2)."""
    return ctypes.util.find_library(name)


FINDERS = {
    "mimalloc": _mimalloc,
    "jemalloc": lambda: _system("jemalloc"),
    "tcmalloc": lambda: _system("tcmalloc_minimal") or _system("tcmalloc"),
}


def choice() -> str:
    value = os.environ.get(ENV, "auto").strip().lower() or "auto"
    if value not in CHOICES:
        raise AllocatorError(f"{ENV}={value}: expected one of {', '.join(CHOICES)}")
    return value


def find(wanted: str = "auto") -> tuple[str, str | None]:
    """(allocator name, library path or None) for ``wanted``; "glibc" when none is found."""
    for name in (AUTO if wanted == "auto" else (wanted,)):
        lib = FINDERS[name]()
        if lib:
            return name, lib
    if wanted != "auto":
        hint = "pip install cmeel-mimalloc" if wanted == "mimalloc" else f"install lib{wanted}"
        raise AllocatorError(f"{ENV}={wanted}: the library is not installed ({hint})")
    return "glibc", None


def environment(name: str, lib: str | None, base: dict | None = None) -> dict:
    """A copy of ``base`` (default os.environ) that runs a process under allocator ``name``."""
    env = dict(os.environ if base is None else base)
    for key, value in TUNING[name].items():
        env.setdefault(key, value)
    if lib:
        env["LD_PRELOAD"] = ":".join(p for p in (lib, env.get("LD_PRELOAD", "")) if p)
    env[_DONE] = name
    return env


def user_preloaded() -> bool:
    """LD_PRELOAD already names a malloc replacement (the user's own choice)."""
    return any(n in os.environ.get("LD_PRELOAD", "") for n in MALLOC_NAMES)


def reexec_under_allocator() -> None:
    """Re-execute this command once under the chosen allocator (module docstring). Returns only
    when nothing is to be done: already re-executed, turned off, not Linux, or a user preload."""
    wanted = choice()
    if (os.environ.get(_DONE) or wanted == "off" or not sys.platform.startswith("linux")
            or user_preloaded() or not getattr(sys, "orig_argv", None)):
        return
    name, lib = find(wanted)
    if lib is None:
        print("note: neither mimalloc nor jemalloc found (pip install cmeel-mimalloc); using "
              "glibc's malloc with huge pages and a 4 MiB mmap threshold (slower CPU training)",
              file=sys.stderr)
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], environment(name, lib))
    except OSError as e:                  # keep running under glibc rather than fail
        print(f"note: could not re-execute under {name} ({e.strerror}); using glibc's malloc",
              file=sys.stderr)


def release_free_memory() -> None:
    """Return the allocator's freed pages to the kernel, between the training and test passes.

    The two passes allocate tensors of different sizes (a test batch holds batch_size_test x clip
    clips), so memory one pass freed rarely fits the other's blocks: kept, it adds to the peak; and
    DataLoader workers, forked when a pass starts, would copy-on-write it. One call of the
    library's own function per pass (mimalloc's mi_collect, glibc's malloc_trim) costs a few ms."""
    if not sys.platform.startswith("linux") or not os.environ.get(_DONE):
        return
    name = loaded()
    try:
        lib = ctypes.CDLL(None)               # the process's global symbols, the preload included
        if name == "mimalloc":
            lib.mi_collect(ctypes.c_bool(True))
        elif name == "glibc":
            lib.malloc_trim(ctypes.c_size_t(0))
    except (OSError, AttributeError):          # not exported here: nothing to release
        pass


def loaded() -> str:
    """The malloc this process runs with, read from its memory map: mimalloc, jemalloc,
    tcmalloc or glibc."""
    try:
        with open("/proc/self/maps") as f:
            maps = f.read()
    except OSError:
        return "unknown"
    return next((n for n in MALLOC_NAMES if f"lib{n}" in maps), "glibc")


def describe() -> str:
    """One line for the run log: the allocator in use and how it was chosen."""
    name = loaded()
    if name == "glibc":
        tuned = "hugetlb=1" in os.environ.get("GLIBC_TUNABLES", "")
        if choice() == "off":
            return f"glibc malloc ({ENV}=off)"
        return "glibc malloc, huge pages, 4 MiB mmap threshold" if tuned else "glibc malloc"
    if name == "mimalloc":
        try:
            from importlib.metadata import version
            name = f"mimalloc {version('cmeel-mimalloc')}"
        except Exception:               # the version is informative only
            pass
    how = "preloaded by the user" if os.environ.get(_DONE) is None else f"{ENV}={choice()}"
    return f"{name} ({how})"
