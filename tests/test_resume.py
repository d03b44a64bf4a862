"""Never lose work: kill-and-resume equality, atomic checkpoints, a non-finite loss."""
import csv
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import ROOT

SMALL = ["-dataset", "synthetic", "-synthetic_train", "24", "-synthetic_test", "8", "-T", "4",
         "-reduction", "2", "-batch_size_train", "8", "-batch_size_test", "4", "-clip", "2",
         "-num_work", "0", "-seed", "3", "-ps", "00111",   # dropout: the torch RNG state matters
         "-device", "cpu"]                  # bitwise equality is promised on CPU (docs/reproduce.md)
ENV = dict(os.environ, OMP_NUM_THREADS="1")        # the same thread count in every process


def cli(*argv, cwd):
    return subprocess.Popen([sys.executable, str(ROOT / "train_test.py"), *argv], cwd=cwd, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def rows_without_time(path):
    rows = list(csv.reader(open(path, newline="")))
    i = rows[0].index("epoch_seconds")
    return [r[:i] + r[i + 1:] for r in rows]


def test_kill_and_resume_equals_an_uninterrupted_run(tmp_path):
    runs = tmp_path / "runs"
    full = cli(*SMALL, "-num_epochs", "3", "-modelPath", str(runs), "-name", "full", cwd=tmp_path)
    victim = cli(*SMALL, "-num_epochs", "3", "-modelPath", str(runs), "-name", "killed", cwd=tmp_path)
    last = runs / "killed" / "last.pth"
    deadline = time.time() + 300
    while not last.exists() and victim.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    assert last.exists(), victim.communicate()[1][-2000:]
    time.sleep(0.1)                                   # into epoch 2's training (an epoch: ~0.4 s)
    victim.send_signal(signal.SIGKILL)
    victim.communicate()
    assert victim.returncode == -signal.SIGKILL
    saved = torch.load(last, weights_only=True)
    assert saved["epoch"] < 2                         # killed before the run ended

    # what a kill between the metrics row and last.pth leaves: a row newer than the checkpoint,
    # and a torn line from a write cut short
    with open(runs / "killed" / "metrics.csv", "a") as f:
        f.write("9,0.001,0.5,50.0,0.1,50.0,0.01,0.0,0.0,0.0,0.0,0.0,1.0\n2,0.00")
    res = cli("-resume", str(runs / "killed"), cwd=tmp_path)
    out, err = res.communicate(timeout=300)
    assert res.returncode == 0, err[-2000:]
    assert f"run folder: {runs / 'killed'}" in out
    assert f"continuing with epoch {saved['epoch'] + 2}" in out and "dropped and recomputed" in out
    out_full, err_full = full.communicate(timeout=300)
    assert full.returncode == 0, err_full[-2000:]

    want = rows_without_time(runs / "full" / "metrics.csv")
    assert len(want) == 4 and [r[0] for r in want[1:]] == ["0", "1", "2"]
    assert rows_without_time(runs / "killed" / "metrics.csv") == want     # every column, bitwise
    for name in ("last.pth", "best.pth"):
        a = torch.load(runs / "full" / name, weights_only=True)
        b = torch.load(runs / "killed" / name, weights_only=True)
        assert a["epoch"] == b["epoch"] and a["best_acc"] == b["best_acc"]
        for k in a["model"]:
            assert torch.equal(a["model"][k], b["model"][k]), (name, k)
        assert torch.equal(a["optimizer"]["state"][0]["exp_avg_sq"], b["optimizer"]["state"][0]["exp_avg_sq"])
    assert not list((runs / "killed").glob("*.tmp"))

    # resuming a finished run changes nothing
    before = (runs / "killed" / "metrics.csv").read_bytes()
    again = cli("-resume", "-name", "killed", "-modelPath", str(runs), cwd=tmp_path)
    out, err = again.communicate(timeout=300)
    assert again.returncode == 0 and "already finished" in out, err[-2000:]
    assert (runs / "killed" / "metrics.csv").read_bytes() == before


_SAVER = """
import sys, torch
sys.path.insert(0, {root!r})
from utils.run.checkpoint import atomic_save
atomic_save({{"new": torch.ones(24_000_000)}}, {path!r})
"""


def test_a_kill_during_a_save_keeps_the_previous_checkpoint(tmp_path):
    from utils.run.checkpoint import atomic_save, load_checkpoint
    path = tmp_path / "last.pth"
    atomic_save({"old": torch.arange(10)}, str(path))
    tmp = tmp_path / "last.pth.tmp"
    for attempt in range(3):                          # the write window is short: retry if missed
        p = subprocess.Popen([sys.executable, "-c", _SAVER.format(root=str(ROOT), path=str(path))])
        while p.poll() is None and not tmp.exists():
            time.sleep(0.001)
        if p.poll() is None:
            p.send_signal(signal.SIGKILL)
            p.wait()
            break
        p.wait()
        atomic_save({"old": torch.arange(10)}, str(path))     # it finished first: start over
    else:
        pytest.skip("the save finished before it could be killed three times")
    assert torch.equal(load_checkpoint(str(path))["old"], torch.arange(10))


def test_a_non_finite_loss_stops_with_epoch_and_batch_keeping_the_last_checkpoint(tmp_path, monkeypatch, capsys):
    import torch.nn.functional as F

    import train_test
    real = F.mse_loss
    calls = {"train": 0}

    def poisoned(input, target, *a, **k):
        loss = real(input, target, *a, **k)
        if k.get("reduction", "mean") == "mean":       # training batches (the test pass sums)
            calls["train"] += 1
            if calls["train"] == 3 + 2:                # epoch 1 (3 batches per epoch), batch 1
                return loss * float("nan")
        return loss

    monkeypatch.setattr(F, "mse_loss", poisoned)
    code = train_test.main(SMALL + ["-num_epochs", "3", "-modelPath", str(tmp_path), "-name", "nan"])
    err = capsys.readouterr().err
    assert code == 3
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == 1 and "epoch 1" in errors[0] and "batch 1" in errors[0] and "nan" in errors[0]
    run = tmp_path / "nan"
    assert [r["epoch"] for r in csv.DictReader(open(run / "metrics.csv"))] == ["0"]
    assert torch.load(run / "last.pth", weights_only=True)["epoch"] == 0
    assert not list(run.glob("*.tmp"))


def test_resume_takes_the_runs_own_settings(tmp_path):
    import config
    from test_checkpoint_safety import SMALL as TINY, project_checkpoint
    (tmp_path / "RUN").mkdir()
    project_checkpoint(tmp_path / "RUN" / "last.pth", TINY + ["-lr", "0.003", "-num_epochs", "7"])
    for argv in (["-resume", str(tmp_path / "RUN")], ["-resume", str(tmp_path / "RUN" / "last.pth")],
                 ["-resume", "-name", "RUN", "-modelPath", str(tmp_path), "-T", "4", "-num_work", "2"]):
        a = config.parse_args(argv)
        assert (a.T, a.lr, a.num_epochs, a.synthetic_train, a.reduction) == (4, 0.003, 7, 8, 2), argv
        assert a.run_dir == str(tmp_path / "RUN") and a.pretrained_path is None
    assert a.num_work == 2                                   # -num_work may change on resume
    with pytest.raises(Exception, match="-lr"):
        config.parse_args(["-resume", str(tmp_path / "RUN"), "-lr", "0.001"])
    with pytest.raises(Exception, match="name different runs"):
        config.parse_args(["-resume", str(tmp_path / "RUN"), "-name", "OTHER"])
