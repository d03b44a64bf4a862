"""Raw-format decoders (datasets/readers.py) on real recordings and on files from independent writers."""
import struct

import numpy as np
import pytest

from datasets.readers import (aedat2_chip, decode_davis, decode_dvs128, detect_aedat2_layout,
                              parse_aedat2_header, read_aedat2, read_aedat31, read_gesture_labels,
                              read_nmnist_bin)
from event_writers import (AEDAT31_HEADER, aedat31_packet, davis_address, dvs128_address, nmnist_record,
                           random_events, shared_samples, write_aedat2, write_aedat31, write_nmnist)
from utils.errors import UserError

SAMPLES = shared_samples()
needs_samples = pytest.mark.skipif(SAMPLES is None, reason="../shared/samples not present")


# --- real recordings ------------------------------------------------------------------------------

@needs_samples
def test_real_aedat31_matches_the_same_clips_in_40bit_format():
    """The AEDAT 3.1 file holds the 10 .bs2 clips re-encoded: decode both, compare exactly."""
    d = SAMPLES / "dvs128_gesture_aedat31"
    ev = read_aedat31(str(d / "user99_slayer.aedat"))
    assert len(ev) == 1_206_710
    assert np.all(np.diff(ev.t) >= 0)
    assert ev.x.min() >= 0 and ev.x.max() == 127 and ev.y.max() == 127
    labels = read_gesture_labels(str(d / "user99_slayer_labels.csv"))
    assert labels[:, 0].tolist() == list(range(1, 11))
    for k, (c, s, e) in enumerate(labels, start=1):
        lo, hi = np.searchsorted(ev.t, [s, e])
        clip = read_nmnist_bin(str(SAMPLES / "dvs128_gesture_clips" / f"{k}.bs2"))
        assert hi - lo == len(clip)
        np.testing.assert_array_equal(ev.t[lo:hi] - ev.t[lo], clip.t - clip.t[0])
        for a in ("x", "y", "p"):
            np.testing.assert_array_equal(getattr(ev, a)[lo:hi], getattr(clip, a))


@needs_samples
def test_real_nmnist_samples():
    files = sorted((SAMPLES / "nmnist_train").glob("*.bs2"))
    assert len(files) == 1000
    labels = dict(line.split() for line in (SAMPLES / "nmnist_train" / "train1K.txt")
                  .read_text().splitlines()[1:] if line.strip())
    assert sorted(set(labels.values())) == [str(d) for d in range(10)]
    counts, durs = [], []
    for f in files:
        ev = read_nmnist_bin(str(f))
        assert len(ev) == f.stat().st_size // 5            # no overflow markers in these files
        assert 0 <= ev.x.min() and ev.x.max() <= 33 and 0 <= ev.y.min() and ev.y.max() <= 33
        assert set(np.unique(ev.p)) <= {0, 1}
        counts.append(len(ev))
        durs.append(ev.t[-1] - ev.t[0])
    # three saccades of ~100 ms each
    assert 250_000 < np.median(durs) < 320_000 and max(durs) < 400_000
    assert 1000 < np.median(counts) < 10_000
    # an independent per-event decode of one file
    raw = (SAMPLES / "nmnist_train" / "1.bs2").read_bytes()
    ev = read_nmnist_bin(str(SAMPLES / "nmnist_train" / "1.bs2"))
    rec = [raw[i:i + 5] for i in range(0, len(raw), 5)]
    t = [((r[2] & 0x7F) << 16) | (r[3] << 8) | r[4] for r in rec]
    order = np.argsort(t, kind="stable")
    assert ev.t.tolist() == np.asarray(t)[order].tolist()
    assert ev.x.tolist() == np.asarray([r[0] for r in rec])[order].tolist()
    assert ev.p.tolist() == np.asarray([r[2] >> 7 for r in rec])[order].tolist()


@needs_samples
def test_real_jaer_headers():
    d = SAMPLES / "aedat2_headers"
    buf = (d / "jaer_DVS128_header_only.aedat").read_bytes()
    lines, pos, version = parse_aedat2_header(buf, "dvs128")
    assert version == "2.0" and lines[0] == "#!AER-DAT2.0"
    assert aedat2_chip(lines) == "ch.unizh.ini.jaer.chip.retina.DVS128"
    assert lines[-1] == "#End Of ASCII Header" and buf[pos:pos + 1] != b"#"
    assert all(not ln.endswith("\r") for ln in lines)      # \r\n line ends stripped
    header, addr, ts = read_aedat2(str(d / "jaer_Davis346red_header_only.aedat"))
    assert aedat2_chip(header) == "eu.seebetter.ini.chips.davis.Davis346red"
    assert len(addr) == 0 and detect_aedat2_layout(addr, header) == "davis"
    assert detect_aedat2_layout(addr[:0], lines) == "dvs128"
    # the DVS128 sample has a 38-byte placeholder after its header: not whole records
    with pytest.raises(UserError, match="jaer_DVS128_header_only.aedat.*truncated.*byte"):
        read_aedat2(str(d / "jaer_DVS128_header_only.aedat"))


@needs_samples
def test_real_label_files_keep_their_quirks():
    rows = read_gesture_labels(str(SAMPLES / "dvs128_gesture_meta" / "user01_natural_labels.csv"))
    assert rows[:, 0].tolist() == [1, 2, 3, 5, 4, 6, 7, 8, 8, 9, 10, 11]     # out of order, 8 twice
    assert rows[3].tolist() == [5, 87200306, 97835393]
    rows = read_gesture_labels(str(SAMPLES / "dvs128_gesture_meta" / "reconstructed" /
                                   "user01_fluorescent_labels.csv"))
    assert len(rows) >= 11 and set(rows[:, 0]) <= set(range(1, 12))


# --- round trips with independent writers -------------------------------------------------------

def test_aedat31_round_trip_overflow_capacity_and_skipped_packets(tmp_path):
    t, x, y, p = random_events(300, 128, 128, seed=1)
    ev1 = list(zip(t[:200].tolist(), x[:200].tolist(), y[:200].tolist(), p[:200].tolist()))
    ev2 = list(zip(t[200:].tolist(), x[200:].tolist(), y[200:].tolist(), p[200:].tolist()))
    special = struct.pack("<hhiiiiii", 0, 1, 8, 4, 0, 2, 2, 2) + b"\1" * 16
    f = tmp_path / "a.aedat"
    write_aedat31(f, [aedat31_packet(ev1, extra_capacity=5), special, aedat31_packet(ev2, overflow=1)])
    ev = read_aedat31(str(f))
    np.testing.assert_array_equal(ev.t[:200], t[:200])
    np.testing.assert_array_equal(ev.t[200:], t[200:] + (1 << 31))
    for a, v in (("x", x), ("y", y), ("p", p)):
        np.testing.assert_array_equal(getattr(ev, a), v)
    assert read_aedat31(str(f), use_overflow=False).t.max() < (1 << 31)


def test_aedat31_truncated_packet_names_file_and_offset(tmp_path):
    t, x, y, p = random_events(50, 128, 128)
    f = tmp_path / "trunc.aedat"
    write_aedat31(f, [aedat31_packet(list(zip(t.tolist(), x.tolist(), y.tolist(), p.tolist())))])
    f.write_bytes(f.read_bytes()[:-13])
    with pytest.raises(UserError, match=r"trunc\.aedat: truncated AEDAT 3\.1 packet at byte 105"):
        read_aedat31(str(f))
    f.write_bytes(f.read_bytes()[:105 + 10])
    with pytest.raises(UserError, match=r"trunc\.aedat: truncated AEDAT 3\.1 packet header at byte 105"):
        read_aedat31(str(f))
    bad = tmp_path / "bad.aedat"
    bad.write_bytes(b"#!AER-DAT2.0\r\n")
    with pytest.raises(UserError, match="bad.aedat: not an AEDAT 3"):
        read_aedat31(str(bad))
    num_gt_cap = tmp_path / "cap.aedat"
    num_gt_cap.write_bytes(AEDAT31_HEADER +
                           struct.pack("<hhiiiiii", 1, 1, 8, 4, 0, 1, 2, 2) + b"\0" * 16)
    with pytest.raises(UserError, match="cap.aedat.*eventNumber 2 > eventCapacity 1"):
        read_aedat31(str(num_gt_cap))


def test_aedat2_dvs128_round_trip(tmp_path):
    t, x, y, p = random_events(500, 128, 128, seed=2, t0=10**9)
    recs = [(dvs128_address(a, b, c), int(d)) for a, b, c, d in zip(x, y, p, t)]
    recs.insert(7, (0x8000 | 5, int(t[7])))                     # an external (special) event
    f = tmp_path / "dvs128.aedat"
    write_aedat2(f, recs)
    header, addr, ts = read_aedat2(str(f))
    assert aedat2_chip(header).endswith("DVS128") and len(addr) == 501
    assert detect_aedat2_layout(addr) == "dvs128"
    ev = decode_dvs128(addr, ts)
    for a, v in (("t", t), ("x", x), ("y", y), ("p", p)):
        np.testing.assert_array_equal(getattr(ev, a), v)


def test_aedat2_davis_round_trip(tmp_path):
    t, x, y, p = random_events(500, 346, 260, seed=3)
    recs = [(davis_address(a, b, c), int(d)) for a, b, c, d in zip(x, y, p, t)]
    recs.insert(3, (0x80000000 | 12345, int(t[3])))             # an APS sample: skipped
    f = tmp_path / "davis.aedat"
    write_aedat2(f, recs, chip="eu.seebetter.ini.chips.davis.Davis346red")
    header, addr, ts = read_aedat2(str(f))
    assert detect_aedat2_layout(addr) == "davis"
    ev = decode_davis(addr, ts, 346, 260)
    for a, v in (("t", t), ("x", x), ("y", y), ("p", p)):
        np.testing.assert_array_equal(getattr(ev, a), v)
    # truncated record -> error naming the file and offset
    f.write_bytes(f.read_bytes()[:-3])
    with pytest.raises(UserError, match=r"davis\.aedat: truncated AEDAT 2\.0 record at byte \d+"):
        read_aedat2(str(f))


def test_nmnist_overflow_marker_and_truncation(tmp_path):
    f = tmp_path / "o.bin"
    recs = [nmnist_record(100, 1, 2, 1), nmnist_record(8000, 3, 4, 0),
            bytes([0, 240, 0, 0, 0]),                          # overflow marker
            nmnist_record(50, 5, 6, 1)]
    f.write_bytes(b"".join(recs))
    ev = read_nmnist_bin(str(f))
    assert ev.t.tolist() == [100, 8000, 50 + 8192] and ev.y.tolist() == [2, 4, 6]
    t, x, y, p = random_events(200, 34, 34, span=300_000)
    write_nmnist(tmp_path / "r.bin", t, x, y, p)
    ev = read_nmnist_bin(str(tmp_path / "r.bin"))
    for a, v in (("t", t), ("x", x), ("y", y), ("p", p)):
        np.testing.assert_array_equal(getattr(ev, a), v)
    f.write_bytes(f.read_bytes()[:-2])
    with pytest.raises(UserError, match=r"o\.bin: truncated N-MNIST event at byte 15"):
        read_nmnist_bin(str(f))


def test_gesture_labels_errors(tmp_path):
    f = tmp_path / "u_labels.csv"
    f.write_text("class,startTime_usec,endTime_usec\n1,10,5\n")
    with pytest.raises(UserError, match="u_labels.csv: line 2: endTime_usec"):
        read_gesture_labels(str(f))
    f.write_text("class,startTime_usec,endTime_usec\n12,1,5\n")
    with pytest.raises(UserError, match="u_labels.csv: line 2: class 12"):
        read_gesture_labels(str(f))
    f.write_text("start,end\n")
    with pytest.raises(UserError, match="u_labels.csv: expected the header"):
        read_gesture_labels(str(f))
