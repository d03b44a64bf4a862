"""Decoders for the raw event-file formats of the paper's datasets (layouts in docs/datasets.md).

* :func:`read_aedat31`  - AEDAT 3.1 (cAER / DVS128 Gesture release): little-endian packets of
  polarity events. The file is read once; a Python loop walks only the 28-byte packet headers
  (a few hundred per recording) and all events of all polarity packets are decoded in one numpy pass.
* :func:`read_aedat2`   - jAER AEDAT 2.0 (and 1.0): ``#`` header lines, then big-endian records
  ``uint32 address, uint32 timestamp``. :func:`detect_aedat2_layout` tells a DVS128 address layout
  from a DAVIS one by looking at the data; :func:`decode_dvs128` / :func:`decode_davis` decode them.
* :func:`read_nmnist_bin` - N-MNIST / N-Caltech101 / SLAYER ``.bin``/``.bs2``: 5-byte (40-bit) events,
  including the y == 240 timestamp-overflow marker.

Every malformed input raises :class:`utils.errors.UserError` naming the file (and the byte offset
where it applies); nothing here returns a silently truncated recording.
"""
from __future__ import annotations

import math
import os

import numpy as np

from utils.errors import UserError
from utils.files import check_declared_size

from .files import check_regular_file
from .framing import Events, make_events

# ---------------------------------------------------------------------------------------------
# AEDAT 3.1
# ---------------------------------------------------------------------------------------------

AEDAT31_PACKET_HEADER = np.dtype([("type", "<i2"), ("source", "<i2"), ("size", "<i4"),
                                  ("tsoffset", "<i4"), ("tsoverflow", "<i4"), ("capacity", "<i4"),
                                  ("number", "<i4"), ("valid", "<i4")])
POLARITY_EVENT = 1


def _read_bytes(path: str) -> bytes:
    """A whole recording; its size (a sparse file can claim terabytes in a few blocks) is checked
    against the memory available before it is read."""
    check_regular_file(path)
    try:
        with open(path, "rb") as f:
            check_declared_size(os.fstat(f.fileno()).st_size, path, "the file's size")
            return f.read()
    except OSError as e:
        raise UserError(f"{path}: cannot read ({e.strerror or e})") from None


def parse_aedat31_header(buf: bytes, path: str) -> tuple[list[str], int]:
    """Header lines (without line ends) and the byte offset of the first packet.

    Reads ``#`` lines up to and including ``#!END-HEADER`` (the release's header is 5 lines,
    105 bytes, but nothing here depends on that)."""
    if not buf.startswith(b"#!AER-DAT3"):
        first = buf[:20].split(b"\n")[0]
        raise UserError(f"{path}: not an AEDAT 3.x file (first line {first!r}, expected '#!AER-DAT3.1')")
    lines, pos = [], 0
    while True:
        end = buf.find(b"\n", pos)
        if end < 0:
            raise UserError(f"{path}: header has no '#!END-HEADER' line (file truncated at byte {len(buf)}?)")
        line = buf[pos:end].rstrip(b"\r").decode("latin-1")
        pos = end + 1
        lines.append(line)
        if line.startswith("#!END-HEADER"):
            return lines, pos
        if not line.startswith("#"):
            raise UserError(f"{path}: header line {len(lines)} does not start with '#' "
                            f"(byte {pos - len(line) - 1}); expected '#' lines up to '#!END-HEADER'")


def read_aedat31(path: str, use_overflow: bool = True, sort: bool = False) -> Events:
    """All polarity events of an AEDAT 3.1 file, in file order (x, y as stored: (0, 0) top-left).

    t = (eventTSOverflow << 31) | timestamp in us (``use_overflow=False`` ignores the overflow
    counter like the reference; identical for recordings shorter than 35.8 minutes). p: 1 = ON.
    The payload of a packet is eventCapacity * eventSize bytes (cAER writes capacity == number);
    eventNumber events of it are decoded. Non-polarity packets are skipped. The valid mark is not
    filtered (the reference and spikingjelly keep every event). ``sort=False`` keeps the file order,
    which is what the reference bisects on; :func:`datasets.framing.make_events` sorts stably.
    """
    buf = _read_bytes(path)
    _, pos = parse_aedat31_header(buf, path)
    n = len(buf)
    chunks, overflows = [], []
    hsize = AEDAT31_PACKET_HEADER.itemsize
    while pos < n:
        if pos + hsize > n:
            raise UserError(f"{path}: truncated AEDAT 3.1 packet header at byte {pos} "
                            f"({n - pos} of {hsize} bytes present)")
        h = np.frombuffer(buf, AEDAT31_PACKET_HEADER, count=1, offset=pos)[0]
        etype, size, cap, num = int(h["type"]), int(h["size"]), int(h["capacity"]), int(h["number"])
        if size <= 0 or cap < 0 or num < 0:
            raise UserError(f"{path}: corrupt AEDAT 3.1 packet header at byte {pos} "
                            f"(eventSize {size}, eventCapacity {cap}, eventNumber {num})")
        if num > cap:
            raise UserError(f"{path}: AEDAT 3.1 packet at byte {pos} has eventNumber {num} > "
                            f"eventCapacity {cap}")
        payload = pos + hsize
        end = payload + cap * size
        if end > n:
            raise UserError(f"{path}: truncated AEDAT 3.1 packet at byte {pos}: header announces "
                            f"{cap} events x {size} bytes, only {n - payload} bytes follow")
        if etype == POLARITY_EVENT and num > 0:
            if size != 8:
                raise UserError(f"{path}: polarity packet at byte {pos} has eventSize {size}, expected 8")
            chunks.append(np.frombuffer(buf, "<u4", count=2 * num, offset=payload))
            overflows.append(np.full(num, int(h["tsoverflow"]), dtype=np.int64))
        pos = end
    if not chunks:
        return make_events(*(np.zeros(0, np.int64),) * 4)
    words = np.concatenate(chunks).reshape(-1, 2)
    data = words[:, 0]
    ts = words[:, 1].view(np.int32).astype(np.int64)
    if use_overflow:
        ts |= np.concatenate(overflows) << 31
    x = (data >> 17) & 0x7FFF
    y = (data >> 2) & 0x7FFF
    p = (data >> 1) & 1
    if sort:
        return make_events(ts, p, x, y)
    return Events(ts, p.astype(np.int64), x.astype(np.int64), y.astype(np.int64))


LABEL_COLUMNS = ("class", "startTime_usec", "endTime_usec")
INT64_MAX = 2**63 - 1


def label_integer(text: str, path: str, line: int, column: str) -> int:
    """An integer of a label file ('3', '1500000', also '1.5e6' as spreadsheets write it);
    UserError naming the file, line and column for a fraction, inf, NaN or a number beyond int64."""
    try:
        exact = int(text)
    except ValueError:
        try:
            v = float(text)
            exact = int(v) if math.isfinite(v) and v.is_integer() else None
        except ValueError:
            exact = None
    if exact is None or not -INT64_MAX <= exact <= INT64_MAX:
        raise UserError(f"{path}: line {line}: {column} is {text!r}, expected an integer "
                        f"(at most {INT64_MAX:,} in magnitude)")
    return exact


def read_gesture_labels(path: str) -> np.ndarray:
    """``userNN_<light>_labels.csv`` -> int64 array (rows, 3) of class (1..11), start us, end us.

    Row order is kept as in the file (the release has rows out of class order and a class twice)."""
    try:
        with open(path, "r", encoding="latin-1") as f:
            text = f.read().splitlines()
    except OSError as e:
        raise UserError(f"{path}: cannot read labels ({e.strerror or e})") from None
    lines = [ln.strip() for ln in text if ln.strip()]
    if not lines or not lines[0].lower().startswith("class"):
        raise UserError(f"{path}: expected the header 'class,startTime_usec,endTime_usec'")
    rows = []
    for k, ln in enumerate(lines[1:], start=2):
        parts = [s.strip() for s in ln.split(",")]
        if len(parts) != 3:
            raise UserError(f"{path}: line {k} is {ln!r}, expected 'class,startTime_usec,endTime_usec'")
        rows.append([label_integer(s, path, k, name) for s, name in zip(parts, LABEL_COLUMNS)])
    if not rows:
        raise UserError(f"{path}: no label rows after the header")
    arr = np.asarray(rows, dtype=np.int64)
    for k, (c, s, e) in enumerate(arr, start=2):
        if not 1 <= c <= 11:
            raise UserError(f"{path}: line {k}: class {c} is outside 1..11")
        if e <= s:
            raise UserError(f"{path}: line {k}: endTime_usec {e} is not after startTime_usec {s}")
    return arr


# ---------------------------------------------------------------------------------------------
# AEDAT 2.0 (jAER)
# ---------------------------------------------------------------------------------------------

AEDAT2_HEADER_END = b"#End Of ASCII Header"


def parse_aedat2_header(buf: bytes, path: str) -> tuple[list[str], int, str]:
    """(header lines, offset of the first record, version) of a jAER file.

    Header lines start with '#'. jAER (since AEDAT 2.0) ends the header with the line
    ``#End Of ASCII Header``: where it is present the data starts right after it, so a first
    record whose address begins with the byte '#' (0x23: DAVIS346 events of some rows) is data,
    not another header line. Older files without that line: the first byte that is not '#' at a
    line start begins the data (the rule jAER's own reader uses). Files without any header are
    read as AEDAT 2.0 records."""
    lines, pos = [], 0
    n = len(buf)
    while pos < n and buf[pos:pos + 1] == b"#":
        end = buf.find(b"\n", pos)
        if end < 0:
            raise UserError(f"{path}: header line at byte {pos} has no line end (truncated header?)")
        line = buf[pos:end].rstrip(b"\r")
        lines.append(line.decode("latin-1"))
        pos = end + 1
        if line == AEDAT2_HEADER_END:
            break
    version = "2.0"
    if lines and lines[0].startswith("#!AER-DAT"):
        version = lines[0][len("#!AER-DAT"):].strip()
        if version.startswith("3") or version.startswith("4"):
            raise UserError(f"{path}: this is AEDAT {version}, expected a jAER AEDAT 2.0 file")
    return lines, pos, version


def aedat2_chip(header: list[str]) -> str | None:
    """The ``# AEChip: ...`` class name of a jAER header (e.g. ch.unizh.ini.jaer.chip.retina.DVS128)."""
    for line in header:
        s = line.lstrip("#").strip()
        if s.startswith("AEChip:"):
            return s.split(":", 1)[1].strip()
    return None


def read_aedat2(path: str) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(header lines, address uint32, timestamp int64 us) of a jAER AEDAT 2.0 (or 1.0) file."""
    buf = _read_bytes(path)
    header, pos, version = parse_aedat2_header(buf, path)
    if version.startswith("1"):
        rec = np.dtype([("a", ">u2"), ("t", ">u4")])
    else:
        rec = np.dtype([("a", ">u4"), ("t", ">u4")])
    body = len(buf) - pos
    if body % rec.itemsize:
        bad = pos + (body // rec.itemsize) * rec.itemsize
        raise UserError(f"{path}: truncated AEDAT {version} record at byte {bad} "
                        f"({body % rec.itemsize} of {rec.itemsize} bytes present)")
    data = np.frombuffer(buf, rec, offset=pos)
    return header, data["a"].astype(np.uint32), data["t"].astype(np.int64)


def detect_aedat2_layout(addr: np.ndarray, header: list[str] | None = None) -> str:
    """'dvs128' or 'davis', decided from the addresses; the header's AEChip only
    breaks a tie (no events).

    DVS128 addresses use only the low 16 bits. In the DAVIS layout a DVS event (bit 31 clear)
    has x in bits 12-21 and y in bits 22-30, so any DVS128 file of a real scene sets bits >= 16."""
    if len(addr) == 0:
        chip = (aedat2_chip(header or []) or "").lower()
        return "dvs128" if "dvs128" in chip or "tmpdiff128" in chip else "davis"
    if not np.any(addr & np.uint32(0xFFFF0000)):
        return "dvs128"
    return "davis"


def decode_dvs128(addr: np.ndarray, ts: np.ndarray) -> Events:
    """jAER DVS128 / Tmpdiff128 layout: x = 127 - ((a >> 1) & 0x7F), y = (a >> 8) & 0x7F,
    p = 1 - (a & 1) (bit 0 set = OFF, so p = 1 is ON); bit 15 (external/special) events dropped."""
    a = addr.astype(np.int64)
    keep = (a & 0x8000) == 0
    a, t = a[keep], ts[keep]
    return make_events(t, 1 - (a & 1), 127 - ((a >> 1) & 0x7F), (a >> 8) & 0x7F)


def decode_davis(addr: np.ndarray, ts: np.ndarray, width: int = 346, height: int = 260,
                 drop_special: bool = True) -> Events:
    """jAER DAVIS layout as in PAFBenchmark ``getDVSeventsDavis``: DVS events have bit 31 clear;
    x = width - 1 - ((a >> 12) & 0x3FF), y = (a >> 22) & 0x1FF, p = 1 - ((a >> 11) & 1);
    events outside 0 <= x < width, 0 <= y < height are dropped. ``drop_special`` also drops
    bit-10 (external input) events, which the reference does not test."""
    a = addr.astype(np.int64)
    keep = (a & 0x80000000) == 0
    if drop_special:
        keep &= (a & 0x400) == 0
    a, t = a[keep], ts[keep]
    x = width - 1 - ((a >> 12) & 0x3FF)
    y = (a >> 22) & 0x1FF
    p = 1 - ((a >> 11) & 1)
    inside = (x >= 0) & (x < width) & (y >= 0) & (y < height)
    return make_events(t[inside], p[inside], x[inside], y[inside])


# ---------------------------------------------------------------------------------------------
# N-MNIST 40-bit binary
# ---------------------------------------------------------------------------------------------

def read_nmnist_bin(path: str) -> Events:
    """N-MNIST ``.bin`` / SLAYER ``.bs2``: 5 bytes per event, x = byte 0, y = byte 1,
    p = bit 7 of byte 2 (1 = ON), t = low 23 bits of bytes 2-4 (big-endian, us).

    An event with y == 240 is a timestamp-overflow marker: it adds 2**13 us to every later event
    and is dropped (Orchard's reader, tonic)."""
    buf = _read_bytes(path)
    if len(buf) % 5:
        bad = len(buf) - len(buf) % 5
        raise UserError(f"{path}: truncated N-MNIST event at byte {bad} (file size {len(buf)} is "
                        f"not a multiple of 5 bytes)")
    b = np.frombuffer(buf, np.uint8).reshape(-1, 5).astype(np.int64)
    x, y = b[:, 0], b[:, 1]
    p = b[:, 2] >> 7
    t = ((b[:, 2] & 0x7F) << 16) | (b[:, 3] << 8) | b[:, 4]
    marker = y == 240
    if marker.any():
        t = t + np.cumsum(marker) * (1 << 13)
        keep = ~marker
        t, p, x, y = t[keep], p[keep], x[keep], y[keep]
    return make_events(t, p, x, y)

