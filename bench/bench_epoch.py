"""A whole CLI training epoch on real DVS128 Gesture clips: this project against the reference's way.

    python3 bench/bench_epoch.py                       # clips from ../shared/samples (developers)
    python3 bench/bench_epoch.py --raw DIR             # an AEDAT 3.1 folder of the DVS Gesture release
    python3 bench/bench_epoch.py --data DIR            # already prepared: DIR/train, DIR/test (hdf5)
    python3 bench/bench_epoch.py --authors /path/to/launcher.py   # also time the authors' own code

Runs ``train_test.py`` as a user does, with the paper's gesture row (arch A + ASA, T 60, dt 15, ds 4,
clip 10; bench/common.py reads its flags) at batch 8, for one epoch: the training pass, the test
pass, metrics.csv and the checkpoints. Two configurations, each in a fresh process:

* this project: the CLI's defaults (``-backend fused``, the allocator it preloads);
* the reference's way: ``-backend eager`` (the step-by-step definitions under plain autograd)
  under plain glibc malloc (``ASA_ALLOCATOR=off``).

``--authors LAUNCHER`` adds the authors' published code (not part of this project: a launcher
script that runs their train_test.py; its arguments follow ``--authors_args``) on the same data.

Printed per configuration: the process's wall time, the epoch's own time (metrics.csv's
epoch_seconds, training + test; not available for the authors' code), the peak resident memory of
the main process (wait4's ru_maxrss) and the peak PSS of the whole process tree (the DataLoader
workers included, shared pages counted once; sampled every 0.25 s).
"""
from __future__ import annotations

import argparse
import csv
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

from bench_train import allocator_env  # noqa: E402
from common import ROW_OF_ARCH, PeakSampler  # noqa: E402

SHARED_RAW = os.path.join(os.path.dirname(ROOT), "shared", "samples", "dvs128_gesture_aedat31")


def prepare(raw: str, out: str, copies: int) -> str:
    """DIR/train: the recordings ``copies`` times (links under new names), DIR/test: once each."""
    prep = os.path.join(out, "prepared")
    subprocess.run([sys.executable, "-m", "datasets.prepare", "gesture", "--raw", raw, "--out", prep],
                   cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    files = sorted(f for split in ("train", "test") if os.path.isdir(os.path.join(prep, split))
                   for f in (os.path.join(prep, split, n) for n in os.listdir(os.path.join(prep, split))))
    data = os.path.join(out, "data")
    for split, n in (("train", copies), ("test", 1)):
        os.makedirs(os.path.join(data, split))
        for c in range(n):
            for f in files:
                os.symlink(f, os.path.join(data, split, f"c{c}_{os.path.basename(f)}"))
    return data


def cli_flags(data: str, batch: int) -> list[str]:
    from utils.analysis.rows import ROW_BY_NAME
    flags = shlex.split(ROW_BY_NAME[ROW_OF_ARCH["A"]].flags)
    flags[flags.index("-batch_size_train") + 1] = str(batch)
    flags[flags.index("-num_epochs") + 1] = "1"
    return flags + ["-data_path", data]


def measure(cmd: list[str], env: dict, cwd: str) -> dict:
    t0 = time.time()
    p = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    sampler = PeakSampler(p.pid)
    sampler.start()
    out = p.stdout.read()
    _, status, usage = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    peak = sampler.stop()
    if p.returncode != 0:
        raise SystemExit(f"exit {p.returncode}: {' '.join(cmd)}\n{out[-2000:]}")
    return {"wall_s": time.time() - t0, "maxrss_gib": usage.ru_maxrss / 2 ** 20, "pss_gib": peak["pss"],
            "output": out}


def run_cli(name: str, flags: list[str], env: dict, runs: str) -> dict:
    r = measure([sys.executable, os.path.join(ROOT, "train_test.py"), *flags, "-modelPath", runs,
                 "-name", name], env, ROOT)
    with open(os.path.join(runs, name, "metrics.csv"), newline="") as f:
        r["epoch_s"] = float(list(csv.DictReader(f))[-1]["epoch_seconds"])
    r["allocator"] = next((line.split(":", 1)[1].strip() for line in r["output"].splitlines()
                           if line.startswith("CPU allocator")), "?")
    return r


def fmt(name: str, r: dict) -> str:
    epoch = f"epoch {r['epoch_s']:6.1f} s" if "epoch_s" in r else "epoch     -   "
    return (f"{name:34s} wall {r['wall_s']:6.1f} s  {epoch}  peak RSS {r['maxrss_gib']:5.2f} GiB  "
            f"tree PSS {r['pss_gib']:5.2f} GiB  [{r.get('allocator', '')}]")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--raw", default=SHARED_RAW, help="AEDAT 3.1 folder of DVS Gesture recordings")
    p.add_argument("--data", default=None, help="a prepared gesture folder (train/, test/) instead of --raw")
    p.add_argument("--copies", type=int, default=3, help="times each recording is in the training split")
    p.add_argument("--batch", type=int, default=8, help="-batch_size_train")
    p.add_argument("--authors", default=None, metavar="LAUNCHER", help="also time the authors' code")
    p.add_argument("--authors_args", default="", help="arguments for LAUNCHER ({data} = the data folder)")
    a = p.parse_args(argv)
    if a.data is None and not os.path.isdir(a.raw):
        raise SystemExit(f"error: --raw {a.raw}: no such folder (give --raw DIR or --data DIR)")
    tmp = tempfile.mkdtemp(prefix="bench_epoch_")
    try:
        data = a.data or prepare(a.raw, tmp, a.copies)
        flags = cli_flags(data, a.batch)
        print(f"train_test.py {' '.join(flags)}  (+ -modelPath, -name); load average {os.getloadavg()[0]:.2f}")
        runs = os.path.join(tmp, "runs")
        ours = run_cli("project", flags, allocator_env("cli"), runs)
        print(fmt("this project (CLI defaults)", ours), flush=True)
        ref = run_cli("reference", flags + ["-backend", "eager"], allocator_env("glibc"), runs)
        print(fmt("reference's way (eager, glibc)", ref), flush=True)
        print(f"this project vs the reference's way: {ref['epoch_s'] / ours['epoch_s']:.2f}x the epoch rate, "
              f"{ours['maxrss_gib'] / ref['maxrss_gib']:.2f}x the peak RSS")
        if a.authors:
            cmd = [sys.executable, a.authors, *shlex.split(a.authors_args.format(data=data))]
            theirs = measure(cmd, allocator_env("glibc"), os.path.dirname(os.path.abspath(a.authors)))
            print(fmt("the authors' code", theirs))
            print(f"this project vs the authors' code: {theirs['wall_s'] / ours['wall_s']:.2f}x (wall, whole "
                  f"process), {ours['maxrss_gib'] / theirs['maxrss_gib']:.2f}x the peak RSS")
        print(f"load average after: {os.getloadavg()[0]:.2f}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
