"""The built-in dataset: deterministic, balanced, noisy like a DVS, and class-dependent."""
import numpy as np

from datasets.synthetic import NUM_CLASSES, SENSOR, SyntheticRecordings, generate


def test_recordings_are_deterministic_and_split_dependent():
    a, la = SyntheticRecordings("train", 20)(7)
    b, lb = SyntheticRecordings("train", 20)(7)
    c, _ = SyntheticRecordings("test", 20)(7)
    assert la == lb == 7 % NUM_CLASSES
    np.testing.assert_array_equal(a.t, b.t)
    assert len(a.t) != len(c.t) or not np.array_equal(a.t, c.t)


def test_events_are_valid_dvs_events():
    for label in range(NUM_CLASSES):
        ev = generate(label, np.random.default_rng(label))
        assert len(ev.t) > 2000
        assert (np.diff(ev.t) >= 0).all()
        assert ev.x.min() >= 0 and ev.x.max() < SENSOR[0] and ev.y.min() >= 0 and ev.y.max() < SENSOR[1]
        assert set(np.unique(ev.p)) <= {0, 1}
        assert 0.9e6 < ev.t[-1] < 1.7e6


def test_hot_pixels_and_background_noise_present():
    ev = generate(0, np.random.default_rng(3))
    pix = ev.x * SENSOR[1] + ev.y
    counts = np.bincount(pix, minlength=SENSOR[0] * SENSOR[1])
    # a hot pixel fires far more than any pixel the object sweeps over
    assert counts.max() > 20 * np.median(counts[counts > 0])
    # background activity reaches most of the sensor, far from the object
    assert (counts > 0).mean() > 0.05


def test_motion_direction_is_in_the_events():
    # class 0 moves right (+x), class 1 left: the mean x of the events drifts accordingly
    def drift(label):
        ev = generate(label, np.random.default_rng(11))
        keep = np.bincount(ev.x * 128 + ev.y)[ev.x * 128 + ev.y] < 50   # drop hot pixels
        t, x = ev.t[keep], ev.x[keep]
        half = t < np.median(t)
        return x[~half].mean() - x[half].mean()
    assert drift(0) > 5 and drift(1) < -5
