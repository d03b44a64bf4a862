"""Soak: resident memory at the end of every epoch of a real CLI run.

    python3 bench/soak.py                          # the README's first command (arch A + ASA, built-in set), 8 epochs
    python3 bench/soak.py --epochs 10 --allocator glibc
    python3 bench/soak.py -- -arch B -T 10 ...     # other train_test.py flags after --

Runs ``train_test.py`` itself (its loader with the default 2 worker processes, an evaluation and
the checkpoints every epoch, the allocator it picks, or ``--allocator``) and, each time it prints
an epoch's line, reads the resident memory of the main process (VmRSS) and the proportional set
size of the whole process tree (PSS: the main process and its DataLoader workers, shared pages
counted once), and the peaks during that epoch (the kernel's VmHWM of the main process, reset
after each epoch, and the highest tree PSS sampled every 0.25 s). A fixed-shape step benchmark
cannot show growth that builds up over a run; this does. It ends with the last epoch's memory
relative to the first's (the target: within 10 %).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

from bench_train import allocator_env  # noqa: E402
from common import PeakSampler, status_kib, tree_memory_gib  # noqa: E402


def reset_peak(pid: int) -> None:
    """Start a new VmHWM (the kernel's peak resident memory) for ``pid`` (Linux clear_refs 5)."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass

# The README's first command: arch A + ASA on the built-in data (its preset), ~12 s an epoch.
DEFAULT_FLAGS = ["-dataset", "synthetic"]


def soak(flags: list[str], epochs: int, alloc: str | None) -> list[dict]:
    env = allocator_env(alloc) if alloc else dict(os.environ)
    if env is None:
        raise SystemExit(f"{alloc} is not installed")
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, os.path.join(ROOT, "train_test.py"), *flags, "-num_epochs", str(epochs),
               "-modelPath", tmp, "-name", "soak"]
        t0 = time.time()
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env,
                             cwd=ROOT)
        rows, sampler = [], PeakSampler(p.pid)
        sampler.start()
        for line in p.stdout:
            if line.startswith("CPU allocator"):
                print(line.strip(), flush=True)
            if line.startswith("epoch "):
                m = tree_memory_gib(p.pid)
                m["peak_rss"] = status_kib(p.pid, "VmHWM") / 2 ** 20
                m["peak_pss"] = sampler.peak["pss"]
                reset_peak(p.pid)
                sampler.peak = {"rss": 0.0, "pss": 0.0}
                rows.append({"epoch": len(rows) + 1, "seconds": time.time() - t0, **m})
                print(f"epoch {len(rows):3d}  {rows[-1]['seconds']:7.0f} s  at its end: RSS {m['rss']:6.3f} GiB, "
                      f"tree PSS {m['pss']:6.3f} GiB;  its peak: RSS {m['peak_rss']:6.3f} GiB, tree PSS "
                      f"{m['peak_pss']:6.3f} GiB", flush=True)
        sampler.stop()
        if p.wait() != 0:
            raise SystemExit(f"train_test.py exited with {p.returncode}: {' '.join(cmd)}")
    return rows


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=8, help="epochs to train (at least 4 for the target)")
    p.add_argument("--allocator", default=None,
                   help="mimalloc, jemalloc, tcmalloc, 'glibc tuned' or glibc (default: what the CLI picks)")
    a = p.parse_args(argv)
    rows = soak(extra or DEFAULT_FLAGS, a.epochs, a.allocator)
    if len(rows) >= 2:
        first, last = rows[0], rows[-1]
        print(f"last epoch vs first, at the epoch's end: RSS {last['rss'] / first['rss']:.3f}x, tree PSS "
              f"{last['pss'] / first['pss']:.3f}x; the epoch's peak: RSS {last['peak_rss'] / first['peak_rss']:.3f}x, "
              f"tree PSS {last['peak_pss'] / first['peak_pss']:.3f}x")


if __name__ == "__main__":
    main()
