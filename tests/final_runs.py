"""Small real plans for final.sh's tests: the demo's synthetic row shrunk by EXTRA_FLAGS to two runs
of a few seconds each, in folders whose paths hold `|`, a newline, spaces and quotes."""
import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TINY = "-synthetic_train 16 -synthetic_test 8 -num_epochs 2 -T 4 -num_work 0 -tensorboard false"
RUNS = ("demo_synthetic_no", "demo_synthetic_ASA")
ODD = "o|dd \n'q\" x"            # a folder name no plan line may split on


def final_env(base: Path, **extra) -> dict:
    env = dict(os.environ, RUNS_DIR=str(base / "runs"), OUT_DIR=str(base / "out"), IMG_DIR=str(base / "img"),
               SEEDS="0", EXTRA_FLAGS=TINY, OMP_NUM_THREADS="1", PYTHON=sys.executable, NMNIST_PATH="")
    env.pop("JOBS", None)
    env.pop("DEVICES", None)
    env.update(extra)
    return env


def final(env: dict, *args, timeout=240, **kw):
    return subprocess.run(["sh", str(ROOT / "final.sh"), *args], env=env, capture_output=True, text=True,
                          timeout=timeout, **kw)


def metrics(folder: Path) -> list[dict]:
    """metrics.csv rows without the wall-clock column."""
    with open(folder / "metrics.csv", newline="") as f:
        return [{k: v for k, v in r.items() if k != "epoch_seconds"} for r in csv.DictReader(f)]


@pytest.fixture(scope="session")
def jobs2(tmp_path_factory):
    """`DEVICES="cpu cpu" sh final.sh demo demo_synthetic` (JOBS=2: one job slot per device) once,
    in odd folders: (base folder, result)."""
    base = tmp_path_factory.mktemp("jobs2") / ODD
    r = final(final_env(base, DEVICES="cpu cpu"), "demo", "demo_synthetic")
    return base, r
