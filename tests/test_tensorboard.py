"""TensorBoard event files (utils/run/tblog.py), read back with TensorBoard's own reader: they hold
metrics.csv's values, the per-step losses average to the epoch's training loss, the HParams
summary holds the run's settings and final metrics, a killed and resumed run has no duplicated or
stale steps, and -tensorboard false writes none."""
import csv
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from conftest import ROOT

EventAccumulator = pytest.importorskip(
    "tensorboard.backend.event_processing.event_accumulator").EventAccumulator
from tensorboard.plugins.hparams import metadata as hp_metadata  # noqa: E402
from torch.utils.tensorboard import SummaryWriter  # noqa: E402

from utils.run.tblog import STEP_TAG, STEPS_SUBDIR, epoch_tag  # noqa: E402

TINY = ["-dataset", "synthetic", "-T", "4", "-synthetic_train", "16", "-synthetic_test", "8",
        "-batch_size_train", "4", "-batch_size_test", "4", "-clip", "1", "-num_work", "0",
        "-num_epochs", "2", "-device", "cpu", "-seed", "5"]
STEPS = 4                                             # 16 training samples / batch 4
ENV = dict(os.environ, OMP_NUM_THREADS="1")           # bitwise-equal runs (docs/reproduce.md, stopping and continuing)


def cli(*argv, cwd):
    return subprocess.Popen([sys.executable, str(ROOT / "train_test.py"), *argv], cwd=cwd, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(p):
    out, err = p.communicate(timeout=300)
    assert p.returncode == 0, err[-2000:]
    return out


def events(folder):
    ea = EventAccumulator(str(folder), size_guidance={"scalars": 0, "tensors": 0})
    ea.Reload()
    return ea


def scalars(ea, tag):
    return [(e.step, e.value) for e in ea.Scalars(tag)]


def metrics(folder):
    with open(folder / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def f32(x):
    return float(np.float32(float(x)))               # TensorBoard stores scalars as float32


def assert_events_equal_metrics(run):
    rows = metrics(run)
    ea = events(run)
    for col in rows[0]:
        if col in ("epoch", "epoch_seconds"):
            continue
        # one event per epoch, at step = epoch, equal to the csv's value
        assert scalars(ea, epoch_tag(col)) == [(int(r["epoch"]), f32(r[col])) for r in rows], col
    steps = scalars(events(run / STEPS_SUBDIR), STEP_TAG)
    assert [s for s, _ in steps] == list(range(len(rows) * STEPS))          # each step once
    for r in rows:                     # equal batches: the epoch's loss is the mean of its steps'
        e = int(r["epoch"])
        mean = np.mean([v for s, v in steps if e * STEPS <= s < (e + 1) * STEPS])
        assert mean == pytest.approx(float(r["train_loss"]), rel=1e-6)
    return rows, ea, steps


def test_events_hold_the_metrics_and_hparams_and_resume_has_no_duplicates(tmp_path):
    runs = tmp_path / "runs"
    full = cli(*TINY, "-modelPath", str(runs), "-name", "full", cwd=tmp_path)
    victim = cli(*TINY, "-modelPath", str(runs), "-name", "killed", cwd=tmp_path)
    off = cli(*TINY, "-num_epochs", "1", "-modelPath", str(runs), "-name", "off", "-tensorboard",
              "false", cwd=tmp_path)

    # killed during its second epoch, after the first epoch's last.pth
    last = runs / "killed" / "last.pth"
    deadline = time.time() + 300
    while not last.exists() and victim.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    assert last.exists(), victim.communicate()[1][-2000:]
    victim.send_signal(signal.SIGKILL)
    victim.communicate()
    assert torch.load(last, weights_only=True)["epoch"] == 0
    # what a kill after the epoch's events were flushed but before last.pth leaves: events of the
    # epoch that will be redone (wrong values, to tell them apart)
    time.sleep(1.1)                                   # event files are ordered by their name's time
    with SummaryWriter(str(runs / "killed")) as w:
        w.add_scalar("test/acc", 999.0, 1)
        w.add_scalar("lr", 999.0, 1)
    with SummaryWriter(str(runs / "killed" / STEPS_SUBDIR)) as w:
        for s in range(STEPS, STEPS + 3):
            w.add_scalar(STEP_TAG, 999.0, s)
    resumed = cli("-resume", str(runs / "killed"), cwd=tmp_path)
    assert "continuing with epoch 2" in finish(resumed)

    # the uninterrupted run
    finish(full)
    rows, ea, steps = assert_events_equal_metrics(runs / "full")
    assert len(rows) == 2
    hp = ea.PluginTagToContent("hparams")
    start = hp_metadata.parse_session_start_info_plugin_data(hp[hp_metadata.SESSION_START_INFO_TAG])
    assert start.hparams["T"].number_value == 4 and start.hparams["seed"].number_value == 5
    assert start.hparams["attention"].string_value == "ASA"
    assert "data_path" not in start.hparams and "device" not in start.hparams
    accs = [float(r["test_acc"]) for r in rows]
    best = max(range(len(rows)), key=lambda i: (accs[i], i))          # ties: the later epoch
    assert scalars(ea, "hparams/best_test_acc") == [(1, f32(accs[best]))]
    assert scalars(ea, "hparams/best_test_nasfr") == [(1, f32(rows[best]["test_nasfr"]))]
    assert scalars(ea, "hparams/final_test_acc") == [(1, f32(accs[-1]))]
    assert not [d for d in (runs / "full").iterdir() if d.is_dir() and d.name != STEPS_SUBDIR]

    # the resumed run: no stale or duplicated step, the same curves as the uninterrupted run
    rows_k, ea_k, steps_k = assert_events_equal_metrics(runs / "killed")
    assert 999.0 not in [v for _, v in steps_k] + [v for _, v in scalars(ea_k, "test/acc")]
    assert steps_k == steps
    assert [{k: v for k, v in r.items() if k != "epoch_seconds"} for r in rows_k] == \
        [{k: v for k, v in r.items() if k != "epoch_seconds"} for r in rows]

    # -tensorboard false: no event file at all
    finish(off)
    assert (runs / "off" / "metrics.csv").is_file()
    assert not list((runs / "off").rglob("events.out.tfevents*"))



def test_a_quick_resume_opens_its_event_files_in_a_later_second(tmp_path, monkeypatch):
    """TensorBoard orders a run's event files by name: the second the file was opened, then the
    host, the process id and the writer's number in its process. A resume in the same second as
    the stop (an in-process run, a quick final.sh) would be ordered by those, here writers 10 and
    11 before 9 ('10' < '9'), and the purge of the redone steps would hit the wrong file; the
    resumed run waits for the next second, so the steps read back are each step once, in order."""
    from tensorboard.summary.writer import event_file_writer
    from utils.run.tblog import TensorBoardLog
    monkeypatch.setattr(event_file_writer, "_global_uid", event_file_writer.AtomicCounter(8))
    time.sleep(1 - time.time() % 1)                     # the stop and the resume within one second
    before = TensorBoardLog(str(tmp_path), 0, STEPS)
    for i in range(STEPS + 2):                          # stopped inside epoch 2 after its step 1
        before.step(i // STEPS, i % STEPS, float(i))
    before.close()
    after = TensorBoardLog(str(tmp_path), 1, STEPS, start_step=2)
    for i in range(STEPS + 2, 2 * STEPS):
        after.step(1, i - STEPS, float(i))
    after.close()
    first, second = (n.split(".") for n in sorted(os.listdir(tmp_path / STEPS_SUBDIR)))
    assert (first[-2], second[-2]) == ("9", "11") and int(first[3]) < int(second[3])
    assert scalars(events(tmp_path / STEPS_SUBDIR), STEP_TAG) == [(i, float(i)) for i in range(2 * STEPS)]
