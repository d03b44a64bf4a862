"""Keep glibc from returning large freed blocks to the OS after every tensor.

By default glibc serves allocations above 128 KiB-32 MiB with mmap and unmaps them on free, so a
CPU training step that frees and reallocates gigabytes of activations pays a page fault per 4 KiB
page each time (measured 3x slower on 2-core VMs). Turning mmap off for malloc and raising the trim
threshold keeps the memory in the heap for reuse. Applied by train_test.py at start."""
from __future__ import annotations

import ctypes
import ctypes.util
import sys

M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4


def keep_freed_memory(trim_threshold: int = 1 << 30) -> bool:
    """Returns True when the setting was applied (glibc on Linux), False elsewhere."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        ok = libc.mallopt(M_MMAP_MAX, 0) == 1
        return libc.mallopt(M_TRIM_THRESHOLD, trim_threshold) == 1 and ok
    except (OSError, AttributeError):
        return False
