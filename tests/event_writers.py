"""Independent writers of the raw event formats, for round-trip tests of datasets/readers.py.

Written from the published format descriptions with struct and plain Python loops,
sharing no code with the readers under test."""
from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np


def shared_samples() -> Path | None:
    """../shared/samples beside the checkout, or $ASA_SHARED/samples (or $ASA_SHARED itself)."""
    env = os.environ.get("ASA_SHARED")
    if env:                                   # an explicit setting replaces the default location
        cands = [Path(env) / "samples", Path(env)]
    else:
        cands = [Path(__file__).resolve().parents[2] / "shared" / "samples"]
    for c in cands:
        if (c / "README.md").is_file() or (c / "nmnist_train").is_dir():
            return c
    return None


def random_events(n, X, Y, seed=0, t0=0, span=1_000_000):
    rng = np.random.default_rng(seed)
    t = np.sort(rng.integers(t0, t0 + span, n))
    return t, rng.integers(0, X, n), rng.integers(0, Y, n), rng.integers(0, 2, n)


# --- AEDAT 3.1 --------------------------------------------------------------------------------

AEDAT31_HEADER = (b"#!AER-DAT3.1\r\n#Format: RAW\r\n#Source 1: DVS128\r\n"
                  b"#Start-Time: 2017-01-01 00:00:00 (TZ-0800)\r\n#!END-HEADER\r\n")


def aedat31_packet(events, overflow=0, etype=1, extra_capacity=0) -> bytes:
    """events: list of (t, x, y, p) -> one packet (header + 8-byte polarity events)."""
    n = len(events)
    cap = n + extra_capacity
    head = struct.pack("<hhiiiiii", etype, 1, 8, 4, overflow, cap, n, n)
    body = b"".join(struct.pack("<Ii", (x << 17) | (y << 2) | (p << 1) | 1, t & 0x7FFFFFFF)
                    for t, x, y, p in events)
    return head + body + b"\0" * (8 * extra_capacity)


def write_aedat31(path, packets: list[bytes]):
    Path(path).write_bytes(AEDAT31_HEADER + b"".join(packets))


# --- AEDAT 2.0 (jAER, big-endian) ----------------------------------------------------------------

def write_aedat2(path, records: list[tuple[int, int]], chip="ch.unizh.ini.jaer.chip.retina.DVS128"):
    head = (b"#!AER-DAT2.0\r\n# This is a raw AE data file - do not edit\r\n"
            b"# Data format is int32 address, int32 timestamp (8 bytes total), repeated for each event\r\n"
            b"# Timestamps tick: 1 us\r\n# AEChip: " + chip.encode() + b"\r\n#End Of ASCII Header\r\n")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_bytes(head + b"".join(struct.pack(">II", a, t) for a, t in records))


def dvs128_address(x, y, p):
    """jAER DVS128: x stored mirrored in bits 1-7, y in bits 8-14, bit 0 set = OFF."""
    return (int(y) << 8) | ((127 - int(x)) << 1) | (1 - int(p))


def davis_address(x, y, p, width=346):
    """jAER DAVIS: x mirrored in bits 12-21, y in bits 22-30, bit 11 = 1 - p (PAF convention)."""
    return (int(y) << 22) | ((width - 1 - int(x)) << 12) | ((1 - int(p)) << 11)


# --- N-MNIST 40-bit -------------------------------------------------------------------------------

def nmnist_record(t, x, y, p) -> bytes:
    return bytes([x, y, (p << 7) | ((t >> 16) & 0x7F), (t >> 8) & 0xFF, t & 0xFF])


def write_nmnist(path, t, x, y, p):
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_bytes(b"".join(nmnist_record(int(a), int(b), int(c), int(d))
                                    for a, b, c, d in zip(t, x, y, p)))


# --- text / npz / npy -----------------------------------------------------------------------------

def write_gait_text(path, t, x, y, p):
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        for row in zip(t, x, y, p):
            f.write(" ".join(str(int(v)) for v in row) + "\n")


def write_npz(path, t, x, y, p):
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, t=np.asarray(t), x=np.asarray(x), y=np.asarray(y), p=np.asarray(p))
