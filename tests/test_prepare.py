"""``python3 -m datasets.prepare``: real DVS128 Gesture clips through preparation into frames,
round trips of the formats without real samples, re-runs, interruptions and bad input."""
import hashlib
import os
import re
import zipfile
from pathlib import Path
from types import SimpleNamespace

import h5py
import numpy as np
import pytest

from datasets import create_dataset
from datasets.framing import frame_shape
from datasets.prepare import main
from datasets.readers import read_aedat31
from event_writers import (aedat31_packet, davis_address, random_events, shared_samples,
                           write_aedat2, write_aedat31, write_gait_text, write_npz)
from test_datasets import make_args

SAMPLES = shared_samples()
needs_samples = pytest.mark.skipif(SAMPLES is None, reason="../shared/samples not present")


def digest(root: Path) -> dict:
    return {str(p.relative_to(root)): hashlib.md5(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def gesture_release(tmp_path) -> Path:
    """A DvsGesture/ folder with the real clip recording as one train and one test trial."""
    raw = tmp_path / "DvsGesture"
    raw.mkdir()
    src = SAMPLES / "dvs128_gesture_aedat31"
    for stem in ("user01_lab", "user24_led"):
        os.symlink(src / "user99_slayer.aedat", raw / f"{stem}.aedat")
        os.symlink(src / "user99_slayer_labels.csv", raw / f"{stem}_labels.csv")
    (raw / "trials_to_train.txt").write_text("user01_lab.aedat\n\n")
    (raw / "trials_to_test.txt").write_text("user24_led.aedat\n")
    return raw


@needs_samples
def test_real_gesture_release_to_hdf5_to_frames(tmp_path, capsys):
    raw, out = gesture_release(tmp_path), tmp_path / "out"
    assert main(["gesture", "--raw", str(tmp_path), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "20 written" in text and re.search(r"train\s+\(all 10 classes\)\s+10\s+1,206,710", text)
    files = sorted((out / "train").iterdir())
    assert len(files) == 10 and files[0].name == "user01_lab_row00_class01.hdf5"
    ev = read_aedat31(str(raw / "user01_lab.aedat"))
    with h5py.File(files[3], "r") as h:
        times, addrs, label = h["times"][()], h["addrs"][()], h["labels"][()]
    assert times.dtype == np.uint32 and addrs.dtype == np.uint8 and h5py.File(files[3]).get("labels").shape == ()
    assert label == 3 and times[0] == 0
    lo, hi = np.searchsorted(ev.t, [9000003, 10449994])
    np.testing.assert_array_equal(times, ev.t[lo:hi] - ev.t[lo])
    np.testing.assert_array_equal(addrs, np.stack([ev.x, ev.y, ev.p], 1)[lo:hi])
    # re-run: nothing rewritten; a clean second run writes byte-identical files
    before = digest(out)
    assert main(["gesture", "--raw", str(raw), "--out", str(out)]) == 0
    assert "0 written, 20 already present" in capsys.readouterr().out
    assert main(["gesture", "--raw", str(raw), "--out", str(tmp_path / "again"), "--skip_validation"]) == 0
    assert digest(tmp_path / "again") == before == digest(out)
    # into frames
    args = make_args("gesture", out, T=60, dt=15, ds=4, clip=10)
    train, test = create_dataset(args)
    assert len(train) == 10 and len(test) == 10
    x, y = test[3]
    assert tuple(x.shape) == (10, 60, 2, 32, 32) and y == 3
    # 10 clips of 0.9 s over a 1.45 s gesture: every clip is full, no event outside the grid
    assert all(0 < x[j].sum() <= hi - lo for j in range(10))
    x, _ = train[0]
    assert tuple(x.shape) == (60, 2, 32, 32) and x.sum() > 0


def _synthetic_release(raw: Path, rows: str, span=(0, 20_000_000), name="user05_led"):
    raw.mkdir(parents=True, exist_ok=True)
    t, x, y, p = random_events(4000, 128, 128, seed=9, t0=span[0], span=span[1] - span[0])
    ev = list(zip(t.tolist(), x.tolist(), y.tolist(), p.tolist()))
    write_aedat31(raw / f"{name}.aedat", [aedat31_packet(ev[i:i + 1000]) for i in range(0, 4000, 1000)])
    (raw / f"{name}_labels.csv").write_text("class,startTime_usec,endTime_usec\n" + rows)
    (raw / "trials_to_train.txt").write_text(f"{name}.aedat\n")
    (raw / "trials_to_test.txt").write_text(f"{name}.aedat\n")
    return t


def test_gesture_quirky_label_rows_are_all_kept(tmp_path):
    # 13 rows: out of class order, class 8 twice, overlapping windows
    rows = [(1, 0), (2, 1), (3, 2), (5, 3), (4, 4), (6, 5), (7, 6), (8, 7), (8, 8), (9, 9),
            (10, 10), (11, 11), (11, 12)]
    text = "".join(f"{c},{k * 1_500_000},{k * 1_500_000 + 1_700_000}\n" for c, k in rows)
    t = _synthetic_release(tmp_path / "raw", text)
    out = tmp_path / "out"
    assert main(["gesture", "--raw", str(tmp_path / "raw"), "--out", str(out)]) == 0
    names = sorted(p.name for p in (out / "train").iterdir())
    assert len(names) == 13 and names[8] == "user05_led_row08_class08.hdf5"
    with h5py.File(out / "train" / "user05_led_row08_class08.hdf5") as h:
        assert int(h["labels"][()]) == 7
        lo, hi = np.searchsorted(t, [8 * 1_500_000, 8 * 1_500_000 + 1_700_000])
        assert len(h["times"]) == hi - lo


def test_gesture_window_outside_recording_names_the_csv(tmp_path, capsys):
    _synthetic_release(tmp_path / "raw", "1,0,1000000\n2,50000000,51000000\n")
    assert main(["gesture", "--raw", str(tmp_path / "raw"), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "\nerror: " in err and "user05_led_labels.csv: line 3" in err and "holds no events" in err


def test_gesture_missing_and_truncated_files(tmp_path, capsys):
    raw = tmp_path / "raw"
    _synthetic_release(raw, "1,0,1000000\n")
    data = (raw / "user05_led.aedat").read_bytes()
    (raw / "user05_led.aedat").write_bytes(data[:-100])
    assert main(["gesture", "--raw", str(raw), "--out", str(tmp_path / "out")]) == 2
    assert "user05_led.aedat: truncated AEDAT 3.1 packet at byte" in capsys.readouterr().err
    os.remove(raw / "user05_led_labels.csv")
    assert main(["gesture", "--raw", str(raw), "--out", str(tmp_path / "out")]) == 2
    assert "user05_led_labels.csv: missing" in capsys.readouterr().err
    assert main(["gesture", "--raw", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "no trials_to_train.txt" in capsys.readouterr().err


def test_interrupted_run_leaves_no_complete_looking_file(tmp_path, monkeypatch):
    rows = "".join(f"{k % 11 + 1},{k * 1_500_000},{k * 1_500_000 + 1_000_000}\n" for k in range(12))
    raw = tmp_path / "raw"
    _synthetic_release(raw, rows)
    clean = tmp_path / "clean"
    assert main(["gesture", "--raw", str(raw), "--out", str(clean), "--skip_validation"]) == 0
    import h5py as _h5
    calls = {"n": 0}
    real = _h5.Group.create_dataset

    def flaky(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 3 * 5 + 2:              # fail inside the sixth file
            raise KeyboardInterrupt
        return real(self, *a, **k)
    monkeypatch.setattr(_h5.Group, "create_dataset", flaky)
    out = tmp_path / "out"
    assert main(["gesture", "--raw", str(raw), "--out", str(out)]) == 130
    monkeypatch.setattr(_h5.Group, "create_dataset", real)
    done = sorted(p.name for p in (out / "train").iterdir())
    assert len(done) == 5 and all(n.endswith(".hdf5") for n in done)   # no partial file left
    assert main(["gesture", "--raw", str(raw), "--out", str(out)]) == 0
    assert digest(out) == digest(clean)


@needs_samples
def test_gesture_sj_events_np_from_the_release(tmp_path):
    raw, out = gesture_release(tmp_path), tmp_path / "sj"
    assert main(["gesture_sj", "--raw", str(raw), "--out", str(out)]) == 0
    f = out / "events_np" / "train" / "3" / "user01_lab_0.npz"
    ev = read_aedat31(str(raw / "user01_lab.aedat"))
    mask = (ev.t >= 9000003) & (ev.t < 10449994)
    with np.load(f) as z:
        np.testing.assert_array_equal(z["t"], ev.t[mask])          # absolute times, like spikingjelly
        np.testing.assert_array_equal(z["x"], ev.x[mask])
    assert sorted(os.listdir(out / "events_np" / "test")) == sorted(str(k) for k in range(11))


def test_gait_text_round_trip_and_authors_npy(tmp_path, capsys):
    raw = tmp_path / "raw"
    truth = {}
    for split in ("Train", "Test"):
        for person in ("1", "2", "20"):
            for w in range(2):
                t, x, y, p = random_events(50 + w, 128, 128, seed=int(person) * 7 + w)
                f = raw / split / person / f"{person}_{w:05d}.txt"
                write_gait_text(f, t, x, y, p)
                truth[(split.lower(), person, w)] = (t, x, y, p)
    out = tmp_path / "out"
    assert main(["gait", "--raw", str(raw), "--out", str(out)]) == 0
    assert "12 written" in capsys.readouterr().out
    args = make_args("gait_day", out)
    train, test = create_dataset(args)
    assert len(train) == 6 and len(test) == 6
    for ds_, split in ((train, "train"), (test, "test")):
        for item in ds_.items:
            ev, label = ds_.load(item)
            person = Path(item[1]).parent.name
            w = int(Path(item[1]).stem.split("_")[1])
            t, x, y, p = truth[(split, person, w)]
            assert label == {"1": 0, "2": 1, "20": 19}[person]
            for a, v in (("t", t), ("x", x), ("y", y), ("p", p)):
                np.testing.assert_array_equal(getattr(ev, a), v)
    # the authors' pickled npy layout converts too
    npy = tmp_path / "npy"
    for split in ("train", "test"):
        (npy / split).mkdir(parents=True)
        data = np.empty(2, dtype=object)
        data[0], data[1] = np.zeros((0, 4), np.int64), np.stack(truth[(split, "2", 0)], 1)
        np.save(npy / split / f"{split}_data.npy", data, allow_pickle=True)
        np.save(npy / split / f"{split}_target.npy", np.array([3, 4]))
    assert main(["gait", "--raw", str(npy), "--out", str(tmp_path / "out2")]) == 0
    with np.load(tmp_path / "out2" / "train" / "4" / "train_00001.npz") as z:
        np.testing.assert_array_equal(z["t"], truth[("train", "2", 0)][0])
    # bad text
    bad = raw / "Train" / "1" / "1_00000.txt"
    bad.write_text("1 2 3\n4 5 6\n")
    assert main(["gait", "--raw", str(raw), "--out", str(tmp_path / "out3")]) == 2
    assert "1_00000.txt: 3 columns, expected 4" in capsys.readouterr().err


def test_recognition_aedat_to_npy_round_trip(tmp_path):
    raw, truth = tmp_path / "raw", {}
    for cls in ("waving", "kicking"):
        for i in range(5):
            t, x, y, p = random_events(80, 346, 260, seed=i + len(cls), t0=10**8)
            write_aedat2(raw / cls / f"{cls}{i}.aedat",
                         [(davis_address(a, b, c), int(d)) for a, b, c, d in zip(x, y, p, t)],
                         chip="eu.seebetter.ini.chips.davis.DAVIS346B")
            truth[(cls, i)] = (t, x, y, p)
    out = tmp_path / "out"
    assert main(["recognition", "--raw", str(raw), "--out", str(out)]) == 0
    assert sorted(os.listdir(out / "train" / "waving")) == [f"waving{i}.npy" for i in range(4)]
    a = np.load(out / "test" / "kicking" / "kicking4.npy")
    assert a.shape == (4, 80)
    for row, v in zip(a, truth[("kicking", 4)]):
        np.testing.assert_array_equal(row, v)
    train, test = create_dataset(make_args("recognition", out, ds=2, dt=120))
    assert len(train) == 8 and sorted(test.load(it)[1] for it in test.items) == [7, 9]


def test_har_dvs_nested_zips(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    inner = {}
    for k in (1, 2):
        buf = tmp_path / f"action_00{k}.zip"
        with zipfile.ZipFile(buf, "w") as z:
            for i in range(2):
                npz = tmp_path / "x.npz"
                t, x, y, p = random_events(30, 346, 260, seed=k * 3 + i)
                write_npz(npz, t, x, y, p)
                z.write(npz, f"action_00{k}/dvSave-{i}.npz")
        inner[k] = buf
    with zipfile.ZipFile(raw / "MINI_HARDVS_files.zip", "w") as z:
        for k, b in inner.items():
            z.write(b, f"MINI_HARDVS_files/action_00{k}.zip")
    (raw / "train_label.txt").write_text("action_001/dvSave-0 0\naction_002/dvSave-0 1\n")
    (raw / "test_label.txt").write_text("action_001/dvSave-1 0\naction_002/dvSave-1 1\n")
    out = tmp_path / "out"
    assert main(["har_dvs", "--raw", str(raw), "--out", str(out)]) == 0
    assert sorted(os.listdir(out / "action_002")) == ["dvSave-0.npz", "dvSave-1.npz"]
    train, test = create_dataset(make_args("har_dvs", out))
    assert sorted(test.load(it)[1] for it in test.items) == [0, 1]


@needs_samples
def test_nmnist_flat_samples_to_official_layout_and_frames(tmp_path, capsys):
    src = SAMPLES / "nmnist_train"
    lines = (src / "train1K.txt").read_text().splitlines()
    (tmp_path / "a.txt").write_text("\n".join(lines[:31]) + "\n")           # header + 30 samples
    (tmp_path / "b.txt").write_text("\n".join(lines[31:41]) + "\n")
    out = tmp_path / "nmnist"
    assert main(["nmnist", "--raw", str(src), "--labels", str(tmp_path / "a.txt"), "--out", str(out)]) == 0
    assert main(["nmnist", "--raw", str(src), "--labels", str(tmp_path / "b.txt"), "--out", str(out),
                 "--split", "test"]) == 0
    assert (out / "Train" / "5" / "00001.bin").read_bytes() == (src / "1.bs2").read_bytes()
    capsys.readouterr()
    assert main(["nmnist", "--raw", str(out)]) == 0
    text = capsys.readouterr().out
    assert re.search(r"train\s+\(all \d+ classes\)\s+30\s", text) and re.search(r"test\s+\(all", text)
    args = make_args("nmnist", out, T=10, dt=30, ds=1, clip=1)
    train, test = create_dataset(args)
    assert len(train) == 30 and len(test) == 10
    i = [f for f, _ in train.items].index(str(out / "Train" / "5" / "00001.bin"))
    x, y = train[i]
    assert tuple(x.shape) == (10, 2, 34, 34) and y == 5 and x.sum() > 1000


def test_action_check_only(tmp_path, capsys):
    from test_datasets import _action_tree
    _action_tree(tmp_path / "DailyAction-DVS", n=2)
    (tmp_path / "DailyAction-DVS" / "walk" / "cc00_walk (1).aedat").write_bytes(
        (tmp_path / "DailyAction-DVS" / "walk" / "cc00_walk.aedat").read_bytes())
    assert main(["action", "--raw", str(tmp_path)]) == 0
    text = capsys.readouterr().out
    assert "address layouts detected: davis 25" in text and "'(n)' in the name" in text
    assert "-action_decode reference keeps" in text


def test_timestamps_that_go_backwards_are_reported(tmp_path, capsys):
    from test_datasets import _action_tree
    root = tmp_path / "DailyAction-DVS"
    _action_tree(root, n=1)
    reset = root / "jump" / "cc00_jump.aedat"
    # a timestamp reset after the second record; the third record is the file's last, which the
    # reference decoding skips, so the reset must come before it
    recs = [(davis_address(1, 2, 1, width=128), 5000), (davis_address(3, 4, 0, width=128), 6000),
            (davis_address(5, 6, 1, width=128), 10), (davis_address(7, 8, 1, width=128), 20)]
    write_aedat2(reset, recs, chip="eu.seebetter.ini.chips.davis.Davis346red")
    assert main(["action", "--raw", str(tmp_path)]) == 0
    text = capsys.readouterr().out
    assert f"note: 1 recording(s) with timestamps that go backwards, e.g. {reset} (event 2)" in text
    gait = tmp_path / "gait"
    for split in ("train", "test"):
        write_gait_text(gait / split / "1" / "w.txt", [30, 10, 20], [1, 2, 3], [4, 5, 6], [1, 0, 1])
    assert main(["gait", "--raw", str(gait), "--out", str(tmp_path / "gait_out")]) == 0
    assert "2 recording(s) with timestamps that go backwards" in capsys.readouterr().out
    ev = np.load(tmp_path / "gait_out" / "train" / "1" / "w.npz")
    assert ev["t"].tolist() == [10, 20, 30] and ev["x"].tolist() == [2, 3, 1]
