"""Every registered dataset built by create_dataset(args) from a tiny on-disk tree; bad layouts."""
import os
from types import SimpleNamespace

import h5py
import numpy as np
import pytest
import torch

from datasets import DATASETS, create_dataset
from datasets.framing import FROM_FIRST_END_INCLUDED, frame_shape, make_events
from datasets.gait import EventDrop, map_person_ids
from event_writers import (davis_address, dvs128_address, random_events, write_aedat2, write_npz,
                           write_nmnist)
from utils.errors import UserError


def make_args(name, path, **kw):
    info = DATASETS[name]
    a = dict(dataset=name, data_path=str(path), T=4, dt=10, ds=4, clip=2, augment=True,
             is_spike=False, interval_scaling=False, seed=0, num_classes=info.num_classes,
             sensor_size=info.sensor_size, batch_size_train=2, batch_size_test=2,
             action_decode="reference", recognition_window="first", gait_eventdrop="reference",
             hardvs_test_list="test", sensor_size_flag=None)
    a["frame_size"] = frame_shape(info.sensor_size, a["ds"]) if info.sensor_size else None
    a.update(kw)
    return SimpleNamespace(**a)


def check_items(train, test, args, labels_train=None, labels_test=None):
    X, Y = frame_shape(args.sensor_size, args.ds)
    x, y = train[0]
    assert isinstance(x, torch.Tensor) and x.dtype == torch.float32
    assert tuple(x.shape) == (args.T, 2, X, Y) and isinstance(y, int)
    x, y = test[0]
    assert tuple(x.shape) == (args.clip, args.T, 2, X, Y)
    if labels_train is not None:
        assert sorted(train.load(it)[1] for it in train.items) == sorted(labels_train)
    if labels_test is not None:
        assert sorted(test.load(it)[1] for it in test.items) == sorted(labels_test)


# --- one tiny tree per dataset ------------------------------------------------------------------

def test_gesture(tmp_path):
    for split, n in (("train", 2), ("test", 1)):
        (tmp_path / split).mkdir()
        for i in range(n):
            t, x, y, p = random_events(400, 128, 128, seed=i, span=200_000)
            with h5py.File(tmp_path / split / f"s{i}.hdf5", "w") as h:
                h["times"] = (t - t[0]).astype(np.uint32)
                h["addrs"] = np.stack([x, y, p], 1).astype(np.uint8)
                h["labels"] = np.uint8(i + 3)
    args = make_args("gesture", tmp_path)
    train, test = create_dataset(args)
    check_items(train, test, args, [3, 4], [3])


def test_gesture_sj(tmp_path):
    for split in ("train", "test"):
        for k in range(11):
            t, x, y, p = random_events(60, 128, 128, seed=k)
            write_npz(tmp_path / "events_np" / split / str(k) / f"user01_x_{k}.npz", t, x, y, p)
    args = make_args("gesture_sj", tmp_path, T=5, ds=1, clip=1)
    train, test = create_dataset(args)
    assert len(train) == 11 and len(test) == 11
    x, y = train[0]
    assert tuple(x.shape) == (5, 2, 128, 128)
    assert x.sum() == 60                          # frames by count: every event lands in a frame
    x, y = test[3]
    assert tuple(x.shape) == (1, 5, 2, 128, 128)
    # spikingjelly's string-sorted folders: '10' gets label 2 (kept as the reference had it)
    assert sorted(train.labels()) == list(range(11))
    args = make_args("gesture_sj", tmp_path, T=5, ds=4, clip=1)
    train, _ = create_dataset(args)
    assert tuple(train[0][0].shape) == (5, 2, 32, 32) and train[0][0].sum() == 60


def test_gesture_sj_missing_files_is_a_clear_error(tmp_path):
    with pytest.raises(UserError, match="spikingjelly's DVS128 Gesture files are missing.*DvsGesture.tar.gz"):
        create_dataset(make_args("gesture_sj", tmp_path, clip=1))
    assert not (tmp_path / "download").exists()     # nothing created, nothing downloaded


@pytest.mark.parametrize("name", ["gait_day", "gait_night"])
def test_gait_prepared_layout(tmp_path, name):
    for split in ("train", "test"):
        for person in ("1", "2", "20"):
            t, x, y, p = random_events(300, 128, 128, seed=int(person), span=2_000_000)
            write_npz(tmp_path / split / person / f"{split}_{person}.npz", t, x, y, p)
    args = make_args(name, tmp_path)
    train, test = create_dataset(args)
    check_items(train, test, args, [0, 1, 19], [0, 1, 19])


def test_gait_authors_npy_layout_is_refused_at_training_and_converted_by_prepare(tmp_path):
    from datasets.prepare import main as prepare
    raw = tmp_path / "raw"
    for split in ("train", "test"):
        (raw / split).mkdir(parents=True)
        data = np.empty(3, dtype=object)
        for i in range(3):
            t, x, y, p = random_events(100 + i, 128, 128, seed=i)
            data[i] = np.stack([t, x, y, p], 1).astype(np.int64)
        np.save(raw / split / f"{split}_data.npy", data, allow_pickle=True)
        np.save(raw / split / f"{split}_target.npy", np.array([0, 5, 19]))
    with pytest.raises(UserError, match=r"train_data\.npy: refused: it holds pickled.*datasets\.prepare gait"):
        create_dataset(make_args("gait_day", raw))
    assert prepare(["gait", "--raw", str(raw), "--out", str(tmp_path / "out")]) == 0
    args = make_args("gait_day", tmp_path / "out")
    train, test = create_dataset(args)
    check_items(train, test, args, [0, 5, 19], [0, 5, 19])
    lengths = sorted(len(train.load(it)[0]) for it in train.items)
    assert lengths == [100, 101, 102]             # the same walks, event for event


def test_gait_text_layout_points_to_prepare(tmp_path):
    for split in ("train", "test"):
        (tmp_path / split / "1").mkdir(parents=True)
        (tmp_path / split / "1" / "a.txt").write_text("1 2 3 1\n")
    with pytest.raises(UserError, match=r"text files.*datasets\.prepare gait"):
        create_dataset(make_args("gait_day", tmp_path))


def test_person_id_mapping():
    assert map_person_ids(list(range(1, 21)), "x")[20] == 19
    assert map_person_ids(list(range(20)), "x")[0] == 0
    assert map_person_ids(["p03", "p10", "p7"], "x") == {"p03": 0, "p7": 1, "p10": 2}
    with pytest.raises(UserError, match="21 different people"):
        map_person_ids(list(range(21)), "x")


def _action_tree(root, layout="davis", n=2):
    from datasets.daily_action import CLASSES
    for k, c in enumerate(CLASSES):
        for i in range(n):
            if layout == "davis":
                t, x, y, p = random_events(200, 346, 260, seed=k * 10 + i, t0=5 * 10**8)
                recs = [(davis_address(a, b, cc), int(d)) for a, b, cc, d in zip(x, y, p, t)]
            else:
                t, x, y, p = random_events(200, 128, 128, seed=k * 10 + i, t0=5 * 10**8)
                recs = [(dvs128_address(a, b, cc), int(d)) for a, b, cc, d in zip(x, y, p, t)]
            (root / c).mkdir(parents=True, exist_ok=True)
            write_aedat2(root / c / f"cc{i:02d}_{c}.aedat", recs)


def test_action_reference_and_full_decoding(tmp_path):
    _action_tree(tmp_path, "davis")
    args = make_args("action", tmp_path, ds=2)
    train, test = create_dataset(args)
    check_items(train, test, args, list(range(12)), list(range(12)))
    ev_ref, _ = train.load(train.items[0])
    args_full = make_args("action", tmp_path, ds=2, action_decode="full")
    train_f, test_f = create_dataset(args_full)
    check_items(train_f, test_f, args_full)
    ev_full, _ = train_f.load(train_f.items[0])
    assert len(ev_full) == 200 and 0 < len(ev_ref) < 200     # reference keeps only x, y < 128
    assert ev_ref.x.max() < 128 and ev_ref.y.max() < 128
    # DVS128-layout files: the reference maps every event to x in 120..127, y = 0;
    # full decodes them over 128x128
    dvs = tmp_path / "dvs"
    _action_tree(dvs, "dvs128")
    args = make_args("action", dvs, ds=2, action_decode="full")
    train, test = create_dataset(args)
    assert args.sensor_size == (128, 128) and tuple(train[0][0].shape) == (4, 2, 64, 64)
    assert len(train.load(train.items[0])[0]) == 200
    train_r, _ = create_dataset(make_args("action", dvs, ds=2))
    ev = train_r.load(train_r.items[0])[0]
    assert len(ev) == 199 and ev.x.min() >= 120 and ev.y.max() == 0   # the last record is never decoded


def test_action_reference_decoding_skips_the_files_last_record(tmp_path):
    """The reference's read loop moves past a record and tests for the end of the file before
    decoding it: the file's last record (here also the earliest in time) is never decoded."""
    from datasets.daily_action import decode
    recs = [(davis_address(5, 6, 1, width=128), 100), (davis_address(7, 8, 0, width=128), 200),
            (davis_address(9, 10, 1, width=128), 150)]
    f = tmp_path / "climb" / "cc00.aedat"
    write_aedat2(f, recs, chip="eu.seebetter.ini.chips.davis.Davis346red")
    ev, layout = decode(str(f), "reference")
    assert layout == "davis" and ev.t.tolist() == [100, 200]
    assert ev.x.tolist() == [5, 7] and ev.y.tolist() == [6, 8] and ev.p.tolist() == [1, 0]
    full, _ = decode(str(f), "full")
    assert full.t.tolist() == [100, 150, 200] and full.first_backwards == 2
    assert full.x.tolist() == [218 + 5, 218 + 9, 218 + 7]       # 345 - (127 - x) on the DAVIS346


def test_action_missing_class_folder(tmp_path):
    _action_tree(tmp_path, n=1)
    os.rename(tmp_path / "walk", tmp_path / "walking_fast")
    with pytest.raises(UserError, match="walking_fast: unknown class folder"):
        create_dataset(make_args("action", tmp_path))


def _recognition_tree(root):
    for split in ("train", "test"):
        for cls, label in (("arm crossing", 0), ("sit-down", 8)):
            d = root / split / cls
            d.mkdir(parents=True)
            t, x, y, p = random_events(300, 346, 260, seed=label, t0=10**7, span=5_000_000)
            np.save(d / "a.npy", np.stack([t, x, y, p]).astype(np.int64))


def test_recognition_and_window_policies(tmp_path):
    _recognition_tree(tmp_path)
    args = make_args("recognition", tmp_path, ds=2, T=4, dt=120)
    train, test = create_dataset(args)
    check_items(train, test, args, [0, 8], [0, 8])
    assert train[0][0].sum() > 5                          # fix: windows start inside the recording
    args = make_args("recognition", tmp_path, ds=2, T=4, dt=120, recognition_window="last")
    train, _ = create_dataset(args)
    assert train[0][0].sum() <= 2                         # reference bug: window at the last event


def test_har_dvs(tmp_path):
    lines = {"train": [], "test": []}
    for cls in ("action_001", "action_300"):
        for i, split in enumerate(("train", "test")):
            t, x, y, p = random_events(200, 346, 260, seed=i)
            write_npz(tmp_path / cls / f"dvSave-{i}.npz", t, x, y, p)
            lines[split].append(f"{cls}/dvSave-{i} 5 {int(cls[-3:]) - 1}\n")
    for split in lines:
        (tmp_path / f"{split}_label.txt").write_text("".join(lines[split]))
    args = make_args("har_dvs", tmp_path)
    train, test = create_dataset(args)
    check_items(train, test, args, [0, 299], [0, 299])
    (tmp_path / "test_label.txt").write_text("action_001/missing 1\n")
    with pytest.raises(UserError, match=r"test_label\.txt: line 1: sample action_001/missing not found"):
        create_dataset(make_args("har_dvs", tmp_path))


def test_nmnist(tmp_path):
    for split in ("Train", "Test"):
        for digit in (0, 7):
            t, x, y, p = random_events(150, 34, 34, seed=digit, span=300_000)
            write_nmnist(tmp_path / split / str(digit) / "00001.bin", t, x, y, p)
    args = make_args("nmnist", tmp_path, ds=1, T=10, dt=30, clip=1)
    train, test = create_dataset(args)
    check_items(train, test, args, [0, 7], [0, 7])
    assert test[0][0].sum() > 100


def test_events_folder_reads_classes_and_sensor_size(tmp_path):
    for split in ("train", "test"):
        for cls in ("cat", "dog", "eel"):
            t, x, y, p = random_events(100, 50, 20, seed=len(cls))
            x[0], y[0] = 49, 19
            write_npz(tmp_path / split / cls / "r1.npz", t, x, y, p * 2 - 1)   # -1/1 polarity
    args = make_args("events", tmp_path, ds=2)
    train, test = create_dataset(args)
    assert args.num_classes == 3 and args.sensor_size == (50, 20) and args.frame_size == (25, 10)
    check_items(train, test, args, [0, 1, 2], [0, 1, 2])
    args = make_args("events", tmp_path, ds=2, sensor_size_flag=[64, 64])
    create_dataset(args)
    assert args.sensor_size == (64, 64)
    args = make_args("events", tmp_path, sensor_size_flag=[10, 10])
    with pytest.raises(UserError, match=r"r1\.npz: events outside the 10x10 sensor"):
        create_dataset(args)


@pytest.mark.parametrize("name", [n for n in DATASETS if DATASETS[n].needs_path])
def test_wrong_data_path_layout_is_a_user_error(tmp_path, name):
    (tmp_path / "stuff").mkdir()
    (tmp_path / "stuff" / "readme.txt").write_text("hi")
    with pytest.raises(UserError, match=str(tmp_path)):
        create_dataset(make_args(name, tmp_path, clip=1))


@pytest.mark.parametrize("name,ext", [("events", ".npz"), ("nmnist", ".bin"), ("gait_day", ".npz"),
                                      ("recognition", ".npy")])
def test_empty_class_folder_is_a_user_error(tmp_path, name, ext):
    tr = "Train" if name == "nmnist" else "train"
    te = "Test" if name == "nmnist" else "test"
    good = "arm crossing" if name == "recognition" else "1"
    for split in (tr, te):
        d = tmp_path / split / good
        d.mkdir(parents=True)
        t, x, y, p = random_events(10, 30, 30)
        if ext == ".bin":
            write_nmnist(d / "1.bin", t, x, y, p)
        elif ext == ".npy":
            np.save(d / "1.npy", np.stack([t, x, y, p]))
        else:
            write_npz(d / "1.npz", t, x, y, p)
    empty = tmp_path / te / ("waving" if name == "recognition" else "2")
    empty.mkdir()
    with pytest.raises(UserError, match=f"{empty}: empty class folder"):
        create_dataset(make_args(name, tmp_path, sensor_size_flag=[30, 30]))


def test_event_drop_reference_and_fixed():
    rng = np.random.default_rng(0)
    n = 5000
    t, x, y, p = random_events(n, 128, 128, seed=5, span=900_000)
    ev = make_events(t, p, x, y)
    ref, fixed = EventDrop("reference", ds=4), EventDrop("fixed", ds=4)
    for _ in range(50):
        keep = ref.drop_by_area(ev, rng)
        dropped = ev.select(~keep)
        # reference: it tests y and p against a rectangle on the 32x32 grid: it drops everything,
        # or a band of small raw y (<= 32), plus every ON event when the p-range starts at 1
        assert not keep.any() or np.all((dropped.y <= 32) | (dropped.p == 1))
        keep = fixed.drop_by_area(ev, rng)
        if not keep.all():
            d = ev.select(~keep)
            assert d.x.max() - d.x.min() <= 128 * 0.95 + 1 and d.y.max() - d.y.min() <= 128 * 0.95 + 1
    out = fixed(ev, int(t[0]), 10**9, np.random.default_rng(3))
    assert 0 < len(out) <= n and np.all(np.diff(out.t) >= 0)


def test_event_drop_random_drop_order():
    """The reference's random drop (random.sample) hands the framing its survivors in random order;
    "fixed" keeps the same survivors in time order."""
    t, x, y, p = random_events(50, 128, 128, seed=6, span=90_000)
    ev = make_events(t, p, x, y)
    seed = next(s for s in range(100) if np.random.default_rng(s).integers(0, 4) == 3)
    out = EventDrop("reference", ds=4)(ev, int(t[0]), 90_000, np.random.default_rng(seed))
    rng = np.random.default_rng(seed)
    rng.integers(0, 4)                                   # the option: 3, random drop
    ratio = int(rng.integers(1, 10)) / 10.0
    kept = rng.choice(50, size=50 - int(50 * ratio), replace=False)
    assert out.t.tolist() == ev.t[kept].tolist() and np.any(np.diff(out.t) < 0)
    fixed = EventDrop("fixed", ds=4)(ev, int(t[0]), 90_000, np.random.default_rng(seed))
    assert fixed.t.tolist() == np.sort(ev.t[kept]).tolist()
    # the training item frames the survivors in the order EventDrop returned them (seed 4: its
    # generator (seed, epoch, index) draws the random drop)
    args = make_args("gait_day", "unused", T=3, dt=10, ds=4, seed=4)
    from datasets.frame_dataset import train_test_sets
    from datasets.framing import count_frames
    train, _ = train_test_sets(args, (128, 128), ([0], lambda _: (ev, 0)), ([0], lambda _: (ev, 0)),
                               FROM_FIRST_END_INCLUDED, event_transform=EventDrop("reference", ds=4))
    x, _ = train[0]
    rng = np.random.default_rng([4, 0, 0])
    start = int(rng.integers(int(t[0]), int(t[-1]) - 30_000 + 1))
    w = EventDrop("reference", ds=4)(ev, start, 30_000, rng)
    assert np.any(np.diff(w.t) < 0)
    np.testing.assert_array_equal(x.numpy(), count_frames(w, 3, 10_000, (128, 128), 4))
    in_order = w.select(np.argsort(w.t, kind="stable"))
    assert not np.array_equal(x.numpy(), count_frames(in_order, 3, 10_000, (128, 128), 4))


def test_train_and_test_samples_take_a_fixed_balanced_subset():
    import collections

    import config
    from datasets import create_dataset
    a = config.parse_args(["-train_samples", "200", "-test_samples", "30", "-synthetic_test", "100"])
    tr, te = create_dataset(a)
    assert (len(tr), len(te)) == (200, 30)
    again, _ = create_dataset(config.parse_args(["-train_samples", "200"]))
    assert tr.indices == again.indices and len(set(tr.indices)) == 200
    counts = collections.Counter(tr.dataset.items[i] % 10 for i in tr.indices)
    assert len(counts) == 10 and min(counts.values()) >= 10           # every class is there
    tr.set_epoch(3)
    assert tr.dataset.epoch == 3                                      # forwarded to the dataset
    x, y = tr[0]
    assert x.shape == (8, 2, 16, 16) and y == tr.dataset.items[tr.indices[0]] % 10


def test_reader_flags_and_their_defaults():
    import config
    a = config.parse_args([])
    assert (a.interval_scaling_empty, a.gesture_clip_times) == ("zeros", "signed")
    assert (a.action_decode, a.gait_eventdrop) == ("reference", "reference")
    a = config.parse_args(["-interval_scaling_empty", "nan", "-gesture_clip_times", "uint32"])
    assert (a.interval_scaling_empty, a.gesture_clip_times) == ("nan", "uint32")
    with pytest.raises(SystemExit):
        config.parse_args(["-gesture_clip_times", "int64"])
