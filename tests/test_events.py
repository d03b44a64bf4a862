"""Events -> frames, training windows and test clips against the authors' frames and hand cases."""
import types

import numpy as np
import pytest

from conftest import DATA
from datasets import create_dataset
from datasets.frame_dataset import EventFrameDataset, FrameSettings
from datasets.framing import (AT_LAST_EVENT, FROM_FIRST, FROM_FIRST_END_INCLUDED, FROM_ZERO,
                              FROM_ZERO_UNLESS_SHORT, WindowPolicy, clip_starts, count_frames, frame_bins,
                              make_events, postprocess, test_clip_frames, train_window_start, window_frames)
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
    # signed arithmetic (the reference under NumPy 1.x): no clip starts before time 0
    assert (clip_starts(10**7, 10, 900_000) >= 0).all()


def test_train_window_policies():
    ev = make_events(t=[100, 200, 5000], p=[0, 0, 0], x=[0, 0, 0], y=[0, 0, 0])
    rng = np.random.default_rng(0)
    starts = {train_window_start(ev, 1000, rng, True, FROM_ZERO) for _ in range(300)}
    assert min(starts) >= 100 and max(starts) < 4000
    # the end included (Python's randint): t_last - window = 103 is drawn too
    assert {train_window_start(ev, 4897, rng, True, FROM_FIRST_END_INCLUDED) for _ in range(200)} \
        == {100, 101, 102, 103}
    assert {train_window_start(ev, 4897, rng, True, FROM_ZERO) for _ in range(200)} == {100, 101, 102}
    assert train_window_start(ev, 1000, rng, False, FROM_ZERO) == 0
    assert train_window_start(ev, 1000, rng, False, FROM_FIRST_END_INCLUDED) == 100
    assert train_window_start(ev, 1000, rng, False, FROM_FIRST) == 100
    assert train_window_start(ev, 1000, rng, False, FROM_ZERO_UNLESS_SHORT) == 0
    assert train_window_start(ev, 4901, rng, False, FROM_ZERO_UNLESS_SHORT) == 100   # shorter than it
    assert train_window_start(ev, 10_000, rng, True, FROM_ZERO) == 100    # longer than the sample
    assert train_window_start(ev, 1000, rng, True, AT_LAST_EVENT) == 5000
    assert train_window_start(ev, 1000, rng, False, AT_LAST_EVENT) == 5000
    # exactly one window long: the reference's randint(100, 100) has an empty range and crashes
    # (numpy's for gesture; DailyAction swallows the error and then uses an unset start); gait's
    # Python randint(100, 100) returns 100, which every policy here gives
    one = make_events(t=[100, 1100], p=[0, 0], x=[0, 0], y=[0, 0])
    for policy in (FROM_ZERO, FROM_ZERO_UNLESS_SHORT, FROM_FIRST_END_INCLUDED, FROM_FIRST):
        assert train_window_start(one, 1000, rng, True, policy) == 100
    with pytest.raises(ValueError, match="unaugmented"):
        WindowPolicy("gesture")


def test_unsorted_events_are_sorted_stably():
    ev = make_events(t=[3, 1, 2, 1], p=[0, 1, 0, 0], x=[0, 1, 2, 3], y=[0, 0, 0, 0])
    assert ev.t.tolist() == [1, 1, 2, 3] and ev.x.tolist() == [1, 3, 2, 0]


def test_not_hdf5_is_one_clear_error(tmp_path):
    (tmp_path / "train").mkdir()
    bad = tmp_path / "train" / "x.hdf5"
    bad.write_bytes(b"this is not hdf5")
    with pytest.raises(UserError, match="x.hdf5"):
        read_sample(str(bad))


# --- the reference's arithmetic, worked out by hand on tiny recordings ----------------------------

def one_item(ev, train, **kw):
    """The single item of an EventFrameDataset over one hand-made recording (``kw``: frame settings)."""
    frames = FrameSettings(**(dict(T=2, dt_us=10, ds=1, sensor_size=(4, 4)) | kw))
    return EventFrameDataset([0], lambda _: (ev, 7), frames, train=train, clip=2, augment=False)[0][0].numpy()


def test_interval_scaling_divides_each_test_clip_by_its_own_maximum():
    # the last event (t 50) is dropped, L = 31; 2 clips of 20: overlap (40-31)//2 = 4, starts 0 and
    # 16, moved back to 31-20 = 11. Clip 0 = [0, 20): two ON events at (0,0) and one OFF at (1,1),
    # maximum 2. Clip 1 = [11, 31): the ON event at t 30 alone (t 31 is not < 31), maximum 1.
    ev = make_events(t=[0, 0, 5, 30, 31, 50], p=[1, 1, 0, 1, 0, 1], x=[0, 0, 1, 2, 3, 3],
                     y=[0, 0, 1, 2, 3, 3])
    x = one_item(ev, train=False, interval_scaling=True)
    expect = np.zeros((2, 2, 2, 4, 4), np.float32)
    expect[0, 0, 1, 0, 0], expect[0, 0, 0, 1, 1] = 1.0, 0.5
    expect[1, 0, 1, 2, 2] = 1.0           # one maximum for the whole sample would make this 0.5
    np.testing.assert_array_equal(x, expect)


def test_interval_scaling_of_an_empty_window_zeros_or_nan():
    # L = 100 (t 101 dropped), 2 clips of 10: gap (100-20)//2 = 40, starts 0 and 50. Clip 1 = [50, 60)
    # holds no event: the reference divides 0 by 0 and that clip is NaN, clip 0 is not
    ev = make_events(t=[0, 1, 100, 101], p=[1, 1, 1, 1], x=[0, 0, 1, 1], y=[0, 0, 1, 1])
    kw = dict(T=1, interval_scaling=True)
    zeros = one_item(ev, train=False, **kw)
    assert zeros[0, 0, 1, 0, 0] == 1.0 and zeros[0].sum() == 1.0 and not zeros[1].any()
    nan = one_item(ev, train=False, empty_window="nan", **kw)
    np.testing.assert_array_equal(nan[0], zeros[0])
    assert np.isnan(nan[1]).all()
    # training without RCS starts at absolute time 0: a recording from t 1000 gives an empty window
    late = make_events(t=[1000, 1005], p=[1, 0], x=[0, 1], y=[0, 1])
    assert not one_item(late, train=True, **kw).any()
    assert np.isnan(one_item(late, train=True, empty_window="nan", **kw)).all()
    assert not np.isnan(postprocess(np.zeros((2, 2, 4, 4), np.float32), True, True)).any()


def test_test_clips_of_a_recording_shorter_than_one_window():
    # L = 5000 (t 9000 dropped) < window 10000: overlap (20000-5000)//2 = 7500, starts 0 and 2500,
    # both end after L and move back to 5000 - 10000 = -5000. Signed (NumPy 1.x): each clip is
    # [-5000, 5000), i.e. the events at 0 and 3000, both in bin 0. uint32 (NumPy >= 2): the start
    # wraps to 2**32 - 5000, past the recording, and every clip is empty.
    assert clip_starts(5000, 2, 10_000).tolist() == [-5000, -5000]
    assert clip_starts(5000, 2, 10_000, uint32=True).tolist() == [2**32 - 5000] * 2
    ev = make_events(t=[0, 3000, 5000, 9000], p=[1, 0, 1, 0], x=[0, 1, 2, 3], y=[0, 0, 1, 1])
    x = test_clip_frames(ev, 2, 2, 5000, (4, 2), 1)
    expect = np.zeros((2, 2, 4, 2), np.float32)
    expect[0, 1, 0, 0] = expect[0, 0, 1, 0] = 1
    np.testing.assert_array_equal(x, np.stack([expect, expect]))
    assert not test_clip_frames(ev, 2, 2, 5000, (4, 2), 1, uint32=True).any()


def test_uint32_clip_placement_of_a_recording_longer_than_all_clips():
    # L = 90, 3 clips of 10: 30 - 90 wraps to 2**32 - 60; overlap (2**32 - 60)//3 = 1431655745,
    # start_j = j*(10 - 1431655745): clips 1 and 2 lie before time 0 and are empty
    assert clip_starts(90, 3, 10, uint32=True).tolist() == [0, -1431655735, -2863311470]
    assert clip_starts(90, 3, 10).tolist() == [0, 30, 60]          # gap (90-30)//3 = 20
    ev = make_events(t=list(range(0, 101, 10)), p=[1] * 11, x=[0] * 11, y=[0] * 11)
    x = test_clip_frames(ev, 3, 1, 10, (1, 1), 1, uint32=True)
    assert x.reshape(3, -1).sum(1).tolist() == [1, 0, 0]
    x = test_clip_frames(ev, 3, 1, 10, (1, 1), 1)
    assert x.reshape(3, -1).sum(1).tolist() == [1, 1, 1]


def test_gesture_reader_clip_arithmetic_flag(tmp_path):
    import h5py
    for split in ("train", "test"):
        (tmp_path / split).mkdir()
        with h5py.File(tmp_path / split / "s.hdf5", "w") as h:
            h["times"] = np.array([0, 3000, 5000, 9000], np.uint32)
            h["addrs"] = np.array([[0, 0, 1], [1, 0, 0], [2, 1, 1], [3, 1, 0]], np.uint8)
            h["labels"] = np.uint8(4)
    args = types.SimpleNamespace(data_path=str(tmp_path), T=2, dt=5, ds=4, clip=2, augment=False,
                                 is_spike=False, interval_scaling=False, seed=0, dataset="gesture")
    x, _ = create_dataset(args)[1][0]
    assert x.shape == (2, 2, 2, 32, 32) and x.reshape(2, -1).sum(1).tolist() == [2, 2]
    args.gesture_clip_times = "uint32"
    assert not create_dataset(args)[1][0][0].any()


def test_frame_bins_bisect_times_in_array_order():
    # in time order bin i holds t0 + i*dt <= t < t0 + (i+1)*dt (bins from T on are not counted)
    assert frame_bins(np.array([0, 10, 20, 30, 40]), 3, 10).tolist() == [0, 1, 2, 3, 4]
    # shuffled, t0 = 30: bisect_left(t, 40) probes t[2] = 0 (lo 3), t[4] = 40 (hi 4), t[3] = 20
    # (lo 4) -> bin 0 takes the first four events; bisect_left(t, 50, lo=4) -> 5: bin 1 takes t 40
    assert frame_bins(np.array([30, 10, 0, 20, 40]), 3, 10).tolist() == [0, 0, 0, 0, 1]
    # bisect_left(t, 10) probes t[2] = 50 (hi 2), t[1] = 1 (lo 2): t 2 and 3 are never counted
    assert frame_bins(np.array([0, 1, 50, 2, 3]), 1, 10).tolist() == [0, 0, -1, -1, -1]
    w = make_events(t=[0, 1, 2, 3, 50], p=[1] * 5, x=[0] * 5, y=[0] * 5).select([0, 1, 4, 2, 3])
    assert count_frames(w, 1, 10, (1, 1), 1).sum() == 2


def test_frames_cover_a_partial_last_block():
    # 128 // 3 = 42 columns would put x 127 (127 // 3 = 42) one past the frame; ceil gives 43
    ev = make_events(t=[0], p=[1], x=[127], y=[127])
    f = window_frames(ev, 0, 1, 10, (128, 128), 3)
    assert f.shape == (1, 2, 43, 43) and f[0, 1, 42, 42] == 1


def test_timestamps_that_go_backwards_are_sorted_and_flagged():
    # a timestamp reset after the third event: the events are framed at their own times
    ev = make_events(t=[1000, 2000, 3000, 0, 500], p=[1] * 5, x=[0, 1, 2, 3, 0], y=[0] * 5)
    assert ev.t.tolist() == [0, 500, 1000, 2000, 3000] and ev.x.tolist() == [3, 0, 0, 1, 2]
    assert ev.first_backwards == 3
    assert make_events(t=[1, 1, 2], p=[0] * 3, x=[0] * 3, y=[0] * 3).first_backwards == -1
    f = window_frames(ev, train_window_start(ev, 2000, None, False, FROM_FIRST_END_INCLUDED), 2, 1000, (4, 1), 1)
    assert f[0, 1, :, 0].tolist() == [1, 0, 0, 1] and f[1, 1, :, 0].tolist() == [1, 0, 0, 0]
