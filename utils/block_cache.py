"""A caching CPU allocator for PyTorch's large tensors, built on first use from utils/csrc/.

Why. A CPU training step frees and reallocates gigabytes of activations of the same shapes every
step. glibc either returns each large block to the OS on free (then every reuse is refaulted and
zeroed by the kernel: arch A + ASA, T 60, batch 8 faults ~4.8 GiB per step) or keeps blocks in
its heap, where holes of the wrong size pile up (peak RSS 2.6-3.6 GiB for 1.35 GiB of live
tensors). PyTorch has a caching allocator for CUDA but none for CPU.

What. ``block_cache.cpp`` is a c10 CPU allocator for requests of at least 4 MiB (smaller ones
stay with glibc). Blocks are whole 2 MiB huge pages. A freed block stays mapped and free ranges
coalesce; a request takes the smallest free range that fits, and when none fits it gets a new
mapping into which free ranges are moved with ``mremap`` (page tables move; nothing is copied,
faulted or zeroed), so freed memory serves any later size. New memory is mapped only for the part
no free range covers: mapped memory never exceeds the high-water mark of live big tensors.

Build. ``c++`` (or ``$CXX``) compiles the one file against the installed torch's headers and
libc10 in about a second; the library is kept in ``$ASA_BUILD_DIR`` (default
``~/.cache/asa-snn``), named by a hash of the source, the torch build and the compiler, so it is
rebuilt only when one of them changes. Without a compiler (or off Linux) :func:`install` returns
False with the reason and utils/memory.py falls back to a glibc policy.
"""
from __future__ import annotations

import ctypes
import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SOURCE = Path(__file__).resolve().parent / "csrc" / "block_cache.cpp"
MIN_BYTES = 4 << 20          # requests below this stay with c10's default allocator (glibc)
STAT_FIELDS = ("live_bytes", "free_bytes", "high_water_bytes", "mapped_peak_bytes", "reused",
               "glued", "fresh", "fresh_bytes", "moved_bytes", "fallbacks", "installed")

_lib: ctypes.CDLL | None = None
last_error: str | None = None       # why the last install() returned False


class BuildError(RuntimeError):
    pass


def torch_dir() -> Path | None:
    """The installed torch package's folder, found without importing torch."""
    spec = importlib.util.find_spec("torch")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def build_dir() -> Path:
    if os.environ.get("ASA_BUILD_DIR"):
        return Path(os.environ["ASA_BUILD_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "asa-snn"


def compiler() -> str | None:
    return os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")


def library_path(tdir: Path, cxx: str) -> Path:
    """Where the built library for this source, torch build and compiler lives."""
    h = hashlib.sha256(SOURCE.read_bytes())
    for f in (tdir / "version.py", tdir / "lib" / "libc10.so"):
        st = f.stat()
        h.update(f"{f}:{st.st_size}:{st.st_mtime_ns}".encode())
    h.update(cxx.encode())
    return build_dir() / f"block_cache-{h.hexdigest()[:16]}.so"


def build(verbose: bool = True) -> Path:
    """Compile block_cache.cpp once (atomically: concurrent processes may race) and return the
    library's path. Raises BuildError with a one-line reason."""
    if not sys.platform.startswith("linux"):
        raise BuildError("the block cache uses Linux mmap/mremap")
    tdir, cxx = torch_dir(), compiler()
    if tdir is None or not (tdir / "lib" / "libc10.so").exists() or not (tdir / "include").is_dir():
        raise BuildError("torch's headers or libc10.so were not found")
    if cxx is None:
        raise BuildError("no C++ compiler (c++, g++ or $CXX) on PATH")
    out = library_path(tdir, cxx)
    if out.exists():
        return out
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(suffix=".so.tmp", dir=out.parent)
        os.close(fd)
    except OSError as e:
        raise BuildError(f"cannot write to {out.parent} ({e.strerror}); set ASA_BUILD_DIR") from None
    lib = tdir / "lib"
    cmd = [cxx, "-O2", "-std=c++17", "-fPIC", "-shared", f"-I{tdir / 'include'}", str(SOURCE),
           "-o", tmp, f"-L{lib}", "-lc10", f"-Wl,-rpath,{lib}"]
    t0 = time.perf_counter()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    except (OSError, subprocess.TimeoutExpired) as e:
        os.unlink(tmp)
        raise BuildError(f"{cxx} failed to run ({e})") from None
    if p.returncode != 0:
        os.unlink(tmp)
        first = next((ln for ln in p.stderr.splitlines() if "error" in ln), p.stderr.strip()[:200])
        raise BuildError(f"{cxx} could not compile {SOURCE.name}: {first}")
    os.replace(tmp, out)
    if verbose:
        print(f"built the CPU block cache ({SOURCE.name}) in {time.perf_counter() - t0:.1f} s: {out}",
              file=sys.stderr, flush=True)
    return out


def install(min_bytes: int = MIN_BYTES, verbose: bool = True) -> bool:
    """Build (if needed), load and make the block cache PyTorch's CPU allocator.

    May be called before or after ``import torch``, but not between importing numpy and importing
    torch: loading the library there made the later ``import torch`` crash (segmentation fault in
    the operator registry; seen with torch 2.11 + numpy 2.5.2 on a CUDA machine, where a pytest
    plugin imported numpy before tests/conftest.py), so it is refused there. Tensors that exist
    already keep their own allocator. Returns False (reason in :data:`last_error`) where it cannot
    be used."""
    global _lib, last_error
    if _lib is None and "numpy" in sys.modules and "torch" not in sys.modules:
        last_error = ("numpy was imported before the block cache (loading it between numpy and torch "
                      "can crash torch's import); apply the memory policy before importing numpy")
        return False
    try:
        if _lib is None:
            path = build(verbose=verbose)
            _lib = ctypes.CDLL(str(path), mode=ctypes.RTLD_GLOBAL)
            _lib.asa_cache_install.argtypes = [ctypes.c_uint64]
            _lib.asa_cache_install.restype = ctypes.c_int
            _lib.asa_cache_stats.argtypes = [ctypes.POINTER(ctypes.c_uint64)]
            _lib.asa_cache_release.restype = ctypes.c_uint64
        ok = _lib.asa_cache_install(min_bytes) == 1
        last_error = None if ok else "PyTorch kept another CPU allocator"
        return ok
    except (BuildError, OSError) as e:
        last_error = str(e)
        return False


def stats() -> dict | None:
    """Counters of the block cache (None when it is not loaded). Bytes are of whole 2 MiB pages:
    live (in tensors), free (kept for reuse), high_water (peak live), mapped_peak (peak live +
    free); requests served from a free range (reused), by moving free ranges into a new mapping
    (glued) or by new memory alone (fresh); fresh_bytes ever mapped, moved_bytes ever remapped;
    fallbacks to the default allocator (mapping failed); installed (PyTorch uses it now)."""
    if _lib is None:
        return None
    buf = (ctypes.c_uint64 * len(STAT_FIELDS))()
    _lib.asa_cache_stats(buf)
    return dict(zip(STAT_FIELDS, (int(v) for v in buf)))


def reset_peaks() -> None:
    """Restart high_water_bytes and mapped_peak_bytes from now (like CUDA's reset_peak_memory_stats)."""
    if _lib is not None:
        _lib.asa_cache_reset_peaks()


def release() -> int:
    """Give every free block back to the OS (live tensors are untouched); returns the bytes."""
    return int(_lib.asa_cache_release()) if _lib is not None else 0
