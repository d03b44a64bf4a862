"""Events -> frames, training windows and test clips against the authors' frames and hand cases."""
import types

import numpy as np
import pytest

from conftest import DATA
from datasets import create_dataset
from datasets.events import clip_starts, make_events, test_clip_frames, train_window_start, window_frames
from datasets.gesture import read_sample
from utils.errors import UserError

GOLDEN = np.load(DATA / "gesture_frames.npz")


@pytest.mark.parametrize("key", sorted(GOLDEN.files))
def test_gesture_frames_equal_reference(key):
    split, name, *kv = key.split("|")
    kv = dict(s.split("=") for s in kv)
    ev, _ = read_sample(str(DATA / "gesture_hdf5" / split / name))
    T, dt, ds = int(kv["T"]), int(kv["dt_ms"]) * 1000, int(kv["ds"])
    if split == "test":
        frames = test_clip_frames(ev, int(kv["clip"]), T, dt, (128, 128), ds)
    else:
        frames = window_frames(ev, train_window_start(ev, T * dt, None, False), T, dt, (128, 128), ds)
    assert frames.shape == GOLDEN[key].shape
    np.testing.assert_array_equal(frames, GOLDEN[key].astype(np.float32))


def test_gesture_dataset_reads_sorted_files_and_batches_clips():
    args = types.SimpleNamespace(data_path=str(DATA / "gesture_hdf5"), T=60, dt=15, ds=4, clip=10,
                                 augment=False, is_spike=False, interval_scaling=False, seed=0,
                                 dataset="gesture")
    train, test = create_dataset(args)
    assert [p.split("/")[-1] for p in test.items] == ["DVS-Gesture-test1.hdf5", "DVS-Gesture-test3.hdf5"]
    x, y = test[1]
    assert x.shape == (10, 60, 2, 32, 32) and y == 9
    key = "test|DVS-Gesture-test3.hdf5|clip=10|T=60|dt_ms=15|ds=4"
    np.testing.assert_array_equal(x.numpy(), GOLDEN[key].astype(np.float32))
    x, y = train[0]
    assert x.shape == (60, 2, 32, 32) and y == 0


def test_window_frames_hand_case():
    # events at 5, 12, 20 (outside: 30 >= start + T*dt), t0 is the first event inside the window (5)
    ev = make_events(t=[1, 5, 12, 20, 30], p=[0, 1, 0, 1, 1], x=[0, 3, 4, 7, 0], y=[0, 2, 2, 5, 0])
    f = window_frames(ev, start=4, T=2, dt=10, sensor_size=(8, 8), ds=2)
    assert f.shape == (2, 2, 4, 4)
    expect = np.zeros_like(f)
    expect[0, 1, 1, 1] += 1     # t=5  -> bin (5-5)//10 = 0, x 3//2, y 2//2
    expect[0, 0, 2, 1] += 1     # t=12 -> bin 0
    expect[1, 1, 3, 2] += 1     # t=20 -> bin 1
    np.testing.assert_array_equal(f, expect)
    assert window_frames(ev, 100, 2, 10, (8, 8), 2).sum() == 0      # empty window -> zeros


def test_clip_starts_overlap_branch_by_hand():
    # L=100, 3 clips of 50: overlap = (150-100)//3 = 16, starts 0, 34, 68 -> 68+50 > 100 -> 50
    np.testing.assert_array_equal(clip_starts(100, 3, 50), [0, 34, 50])


def test_clip_starts_gap_branch_by_hand():
    # L=1000, 3 clips of 100: gap = (1000-300)//3 = 233, starts 0, 333, 666 (all end before L)
    np.testing.assert_array_equal(clip_starts(1000, 3, 100), [0, 333, 666])
    # the reference's uint32 wrap would make clips 1.. start at negative times: ours never do
    assert (clip_starts(10**7, 10, 900_000) >= 0).all()


def test_train_window_policies():
    ev = make_events(t=[100, 200, 5000], p=[0, 0, 0], x=[0, 0, 0], y=[0, 0, 0])
    rng = np.random.default_rng(0)
    starts = {train_window_start(ev, 1000, rng, True, "gesture") for _ in range(300)}
    assert min(starts) >= 100 and max(starts) < 4000
    assert train_window_start(ev, 1000, rng, False, "gesture") == 0
    assert train_window_start(ev, 1000, rng, False, "gait") == 100
    assert train_window_start(ev, 10_000, rng, True, "gesture") == 100    # longer than the sample


def test_unsorted_events_are_sorted_stably():
    ev = make_events(t=[3, 1, 2, 1], p=[0, 1, 0, 0], x=[0, 1, 2, 3], y=[0, 0, 0, 0])
    assert ev.t.tolist() == [1, 1, 2, 3] and ev.x.tolist() == [1, 3, 2, 0]


def test_not_hdf5_is_one_clear_error(tmp_path):
    (tmp_path / "train").mkdir()
    bad = tmp_path / "train" / "x.hdf5"
    bad.write_bytes(b"this is not hdf5")
    with pytest.raises(UserError, match="x.hdf5"):
        read_sample(str(bad))
