"""Throughput of the gesture data pipeline: hdf5 sample -> test clips [clip, T, 2, 32, 32].

Runs the project's own Dataset (datasets/gesture.py + datasets/frame_dataset.py) on the real DVS128
Gesture samples in tests/data/gesture_hdf5 (or --data DIR with the same train/ test/ layout), at
the paper's gesture setting (T 60, dt 15 ms, ds 4, clip 10), and prints clips/s and frames/s.

    python3 bench/bench_data.py [--data DIR] [--repeat 20]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from types import SimpleNamespace

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

DEFAULT_DATA = os.path.join(ROOT, "tests", "data", "gesture_hdf5")


def gesture_sets(data: str, T: int = 60, dt_ms: int = 15, ds: int = 4, clip: int = 10):
    from datasets import gesture
    args = SimpleNamespace(data_path=data, T=T, dt=dt_ms, ds=ds, is_spike=False,
                           interval_scaling=False, seed=0, augment=True, clip=clip)
    return gesture.build(args)


def measure(data: str = DEFAULT_DATA, repeat: int = 20, T: int = 60, clip: int = 10) -> dict:
    """Median time per test sample (all its clips) and per training sample, over ``repeat`` passes."""
    train, test = gesture_sets(data, T=T, clip=clip)
    out = {"test_samples": len(test), "clip": clip, "T": T}
    for name, ds in (("test", test), ("train", train)):
        times = []
        for r in range(repeat):
            for i in range(len(ds)):
                t0 = time.perf_counter()
                ds[i]
                times.append(time.perf_counter() - t0)
        per_item = statistics.median(times)
        clips = clip if name == "test" else 1
        out[f"{name}_item_s"] = per_item
        out[f"{name}_clips_per_s"] = clips / per_item
        out[f"{name}_frames_per_s"] = clips * T / per_item
    return out


def report(r: dict) -> str:
    return (f"data (gesture hdf5, T {r['T']}, clip {r['clip']}, one process): "
            f"test {r['test_clips_per_s']:.0f} clips/s ({r['test_frames_per_s']:.0f} frames/s, "
            f"{r['test_item_s'] * 1e3:.1f} ms per sample of {r['clip']} clips); "
            f"train {r['train_clips_per_s']:.0f} windows/s ({r['train_item_s'] * 1e3:.1f} ms each)")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=DEFAULT_DATA, help="folder with train/ and test/ *.hdf5")
    p.add_argument("--repeat", type=int, default=20)
    a = p.parse_args(argv)
    print(report(measure(a.data, a.repeat)))


if __name__ == "__main__":
    main()
