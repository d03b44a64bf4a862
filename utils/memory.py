"""Keep glibc from returning large freed blocks to the OS after every tensor.

By default glibc serves allocations above 128 KiB-32 MiB with mmap and unmaps them on free, so a
CPU training step that frees and reallocates gigabytes of activations pays a page fault per 4 KiB
page each time (measured 3x slower on 2-core VMs). Turning mmap off for malloc and raising the trim
threshold keeps the memory in the heap for reuse. Applied by train_test.py at start.

The price is fragmentation: the heap keeps every hole it ever had, so peak RSS can exceed the
live peak (measured: arch B + ASA, T 20, 128x128, batch 8: 16.4 GiB with the setting, 8.9 GiB
without, 1.45x slower). ASA_KEEP_FREED_MEMORY=0 in the environment turns the setting off for
memory-bound runs."""
from __future__ import annotations

import ctypes
import os
import ctypes.util
import sys

M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4


def keep_freed_memory(trim_threshold: int = 1 << 30) -> bool:
    """Returns True when the setting was applied (glibc on Linux), False elsewhere."""
    if not sys.platform.startswith("linux") or os.environ.get("ASA_KEEP_FREED_MEMORY", "1") == "0":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        ok = libc.mallopt(M_MMAP_MAX, 0) == 1
        return libc.mallopt(M_TRIM_THRESHOLD, trim_threshold) == 1 and ok
    except (OSError, AttributeError):
        return False
