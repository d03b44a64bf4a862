"""Preemption loses at most the step in progress: SIGTERM, SIGINT or SIGUSR1 finishes the step,
writes last.pth at that position inside the epoch, prints one line and exits 75; -resume then
writes the same metrics.csv and TensorBoard steps as a run never interrupted (utils/run/preempt.py,
utils/run/fit.py). Single process with loader workers, a second signal or a kill during the save,
and two processes (DDP) where only one of them gets the signal."""
import csv
import os
import random
import re
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from conftest import ROOT
from test_resume import rows_without_time

EventAccumulator = pytest.importorskip(
    "tensorboard.backend.event_processing.event_accumulator").EventAccumulator

from utils.run.tblog import STEP_TAG, STEPS_SUBDIR  # noqa: E402

SMALL = ["-dataset", "synthetic", "-synthetic_train", "20", "-synthetic_test", "4", "-T", "4",
         "-reduction", "2", "-batch_size_train", "4", "-batch_size_test", "2", "-clip", "2",
         "-num_work", "2", "-seed", "3", "-ps", "00111",    # dropout: the torch RNG state matters
         "-num_epochs", "2", "-device", "cpu"]
STEPS = 5                                                   # 20 samples / batch 4
ENV = dict(os.environ, OMP_NUM_THREADS="1")                 # bitwise-equal runs (docs/reproduce.md, stopping and continuing)
LINE = re.compile(r"^stopped by (SIG\w+) at epoch (\d+), step (\d+)/(\d+); continue with: "
                  r"(python3|torchrun \[the same options\]) train_test.py -resume (\S+)$")


def start(*argv, cwd, env=ENV, **kw):
    return subprocess.Popen([sys.executable, str(ROOT / "train_test.py"), *argv], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True, **kw)


def finish(p, code=0):
    out, err = p.communicate(timeout=300)
    assert p.returncode == code, err.decode(errors="replace")[-3000:]
    return out.decode(), err.decode()


def wait_for_step(p, epoch: int, step: int) -> bytes:
    """Read the progress bar on p's stderr until training epoch ``epoch`` (0-based) has finished
    ``step`` steps; returns what was read."""
    seen, pattern = b"", re.compile(rb"train %d:[^\r\n]*?\| *(\d+)/\d+" % epoch)
    while True:
        chunk = p.stderr.read1(4096)
        assert chunk, (b"the run ended before epoch %d step %d: " % (epoch, step) + seen[-2000:]).decode()
        seen += chunk
        done = [int(n) for n in pattern.findall(seen[-4000:])]
        if done and max(done) >= step:
            return seen


def stop_lines(err: str) -> list:
    """The lines of stderr that are not the progress bar."""
    lines = [ln.strip() for ln in err.replace("\r", "\n").splitlines()]
    return [ln for ln in lines if ln and not re.match(r"^(train \d+|test):", ln)]


def scalars(folder, tag):
    ea = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    ea.Reload()
    return [(e.step, e.value) for e in ea.Scalars(tag)]


def assert_same_as_uninterrupted(run, full):
    assert rows_without_time(run / "metrics.csv") == rows_without_time(full / "metrics.csv")
    steps, want = scalars(run / STEPS_SUBDIR, STEP_TAG), scalars(full / STEPS_SUBDIR, STEP_TAG)
    assert [s for s, _ in steps] == list(range(2 * STEPS))             # each step once
    assert steps == want
    assert scalars(run, "test/acc") == scalars(full, "test/acc")
    assert not [f for f in run.rglob("*") if "tmp" in f.name]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    runs = tmp_path_factory.mktemp("full")
    finish(start(*SMALL, "-modelPath", str(runs), "-name", "full", cwd=runs))
    return runs / "full"


def test_sigterm_at_a_random_step_then_resume_equals_an_uninterrupted_run(tmp_path, uninterrupted):
    """As SLURM does it: SIGTERM to every process of the run, loader workers included."""
    k = random.Random().randint(1, STEPS - 2)          # steps of epoch 2 seen finished before the signal
    victim = start(*SMALL, "-modelPath", str(tmp_path), "-name", "run", cwd=tmp_path)
    seen = wait_for_step(victim, 1, k)
    t0 = time.time()
    os.killpg(victim.pid, signal.SIGTERM)
    out, err = finish(victim, 75)
    seconds = time.time() - t0
    lines = stop_lines(seen.decode() + err)
    assert len(lines) == 1 and "Traceback" not in err, lines
    sig, epoch, step, steps, how, where = LINE.match(lines[0]).groups()
    assert (sig, epoch, int(steps), how, where) == ("SIGTERM", "2", STEPS, "python3", str(tmp_path / "run"))
    assert k <= int(step) <= STEPS, (k, step)           # no finished step is lost
    ck = torch.load(tmp_path / "run" / "last.pth", weights_only=True)
    assert ck["epoch"] == 0 and ck["position"]["epoch"] == 1 and ck["position"]["step"] == int(step)
    assert ck["position"]["order"].tolist() == torch.randperm(20, generator=torch.Generator().manual_seed(
        3 * 100003 + 1)).tolist()                       # the epoch's sample order
    assert not [f for f in (tmp_path / "run").rglob("*") if "tmp" in f.name]
    assert seconds < 60

    out, _ = finish(start("-resume", str(tmp_path / "run"), cwd=tmp_path))
    assert f"continuing inside epoch 2 after step {step}/{STEPS}" in out
    assert_same_as_uninterrupted(tmp_path / "run", uninterrupted)


def test_a_kill_right_after_sigterm_keeps_a_loadable_checkpoint_to_continue_from(tmp_path, uninterrupted):
    """SIGTERM, then SIGKILL as soon as the checkpoint's temporary file appears (or, if the save
    was too fast to catch, once it is done): last.pth is the previous one or the new one, never
    torn, and -resume from it ends as the uninterrupted run."""
    victim = start(*SMALL, "-modelPath", str(tmp_path), "-name", "run", cwd=tmp_path)
    wait_for_step(victim, 1, 2)
    run = tmp_path / "run"
    before = set(os.listdir(run))
    os.killpg(victim.pid, signal.SIGTERM)
    deadline = time.time() + 60
    while victim.poll() is None and time.time() < deadline:
        if [n for n in set(os.listdir(run)) - before if not n.startswith("events.out")]:
            break                                        # the save has begun
    os.killpg(victim.pid, signal.SIGKILL)
    victim.communicate()
    ck = torch.load(run / "last.pth", weights_only=True)
    assert ck["epoch"] == 0 and ck.get("position", {"step": 0})["step"] in range(0, STEPS + 1)
    for f in [f for f in run.iterdir() if "tmp" in f.name]:
        f.unlink()                                       # what SIGKILL leaves; the next save replaces it
    finish(start("-resume", str(run), cwd=tmp_path))
    assert_same_as_uninterrupted(run, uninterrupted)


# ---- in one process: the exact step, a second signal during the save, a signal in the test pass ----

def in_process_run(tmp_path, monkeypatch, capsys, *argv):
    import train_test
    threads = torch.get_num_threads()
    torch.set_num_threads(1)                             # as the subprocesses (same float rounding)
    try:
        code = train_test.main([*argv])
    finally:
        torch.set_num_threads(threads)
    return code, capsys.readouterr().err


@pytest.mark.parametrize("where", ["train step", "test pass", "epoch's save"])
def test_a_signal_stops_after_the_step_in_progress_and_a_second_one_changes_nothing(
        tmp_path, monkeypatch, capsys, uninterrupted, where):
    """The signal arrives inside step 3 of epoch 2 (0-based step 2): exactly 3 steps of it are in
    last.pth. A second SIGTERM arrives between the checkpoint's temporary file and its rename: the
    previous last.pth is intact at that moment, the new one is complete afterwards, no temporary
    file is left. Or the signal arrives inside the first epoch's test pass (abandoned, redone on
    resume), or while epoch 1's last.pth is written (acted on once it is)."""
    from utils.run import engine, metrics
    from utils.run.checkpoint import load_checkpoint
    run = tmp_path / "run"
    me = os.getpid()
    real_step, real_vote, real_replace = engine.train_step, metrics.clip_vote, os.replace
    calls = {"step": 0, "vote": 0, "replace": []}

    def step(*a, **k):
        calls["step"] += 1
        if where == "train step" and calls["step"] == STEPS + 3:
            os.kill(me, signal.SIGUSR1)                  # inside the step: it still finishes
        return real_step(*a, **k)

    def vote(*a, **k):                                   # the accuracy metric's clip vote
        calls["vote"] += not torch.is_grad_enabled()    # the test pass's (training's runs with grad on)
        if where == "test pass" and calls["vote"] == 1:
            os.kill(me, signal.SIGINT)
        return real_vote(*a, **k)

    def replace(src, dst, *a, **k):
        if str(dst).endswith("last.pth"):
            previous = load_checkpoint(str(dst)) if os.path.exists(dst) else None
            calls["replace"].append(previous["epoch"] if previous else None)
            if where == "epoch's save" or len(calls["replace"]) == 2:
                os.kill(me, signal.SIGTERM)              # between the temporary file and the rename
        return real_replace(src, dst, *a, **k)

    monkeypatch.setattr(engine, "train_step", step)
    monkeypatch.setattr(metrics, "clip_vote", vote)
    monkeypatch.setattr(os, "replace", replace)
    code, err = in_process_run(tmp_path, monkeypatch, capsys, *SMALL, "-num_work", "0",
                               "-modelPath", str(tmp_path), "-name", "run")
    lines = stop_lines(err)
    assert code == 75 and len(lines) == 1, err[-2000:]
    want = {"train step": ("SIGUSR1", "2", "3"), "test pass": ("SIGINT", "1", str(STEPS)),
            "epoch's save": ("SIGTERM", "2", "0")}[where]
    assert LINE.match(lines[0]).group(1, 2, 3) == want, lines[0]
    ck = load_checkpoint(str(run / "last.pth"))
    if where == "epoch's save":
        assert ck["epoch"] == 0 and "position" not in ck and calls["replace"] == [None]
    else:
        assert ck["position"]["step"] == int(want[2]) and ck["position"]["epoch"] == int(want[1]) - 1
    if where == "train step":
        assert calls["replace"] == [None, 0]             # epoch 1's last.pth was intact during the write
        steps = scalars(run / STEPS_SUBDIR, STEP_TAG)    # flushed before last.pth
        assert [s for s, _ in steps] == list(range(STEPS + 3))
    assert not [f for f in run.rglob("*") if "tmp" in f.name]
    monkeypatch.undo()

    code, _ = in_process_run(tmp_path, monkeypatch, capsys, "-resume", str(run))
    assert code == 0
    assert_same_as_uninterrupted(run, uninterrupted)


def test_a_signal_before_the_run_folder_exists_stops_at_once_writing_nothing(tmp_path, monkeypatch, capsys):
    import datasets
    real = datasets.create_dataset

    def slow_data(args):
        os.kill(os.getpid(), signal.SIGTERM)             # while the data is being read
        return real(args)

    monkeypatch.setattr("train_test.create_dataset", slow_data)
    code, err = in_process_run(tmp_path, monkeypatch, capsys, *SMALL, "-modelPath", str(tmp_path / "runs"),
                               "-name", "run")
    assert code == 75
    assert stop_lines(err) == ["stopped by SIGTERM before training began; nothing was written: run the "
                               "same command again"]
    assert not (tmp_path / "runs" / "run").exists()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL          # the handlers are restored


# ---- two processes (DDP, as srun starts them): only one gets the signal, both stop at the same step ----

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ranks(*argv, cwd):
    port = free_port()
    return [start(*argv, cwd=cwd, env=dict(ENV, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE="2",
                                           RANK=str(r), LOCAL_RANK=str(r))) for r in range(2)]


def test_ddp_stops_every_process_at_the_same_step_and_resumes_exactly(tmp_path):
    argv = [*SMALL[:-4], "-num_work", "0", "-num_epochs", "1", "-device", "cpu", "-modelPath", str(tmp_path)]
    full = ranks(*argv, "-name", "full", cwd=tmp_path)
    victim = ranks(*argv, "-name", "run", cwd=tmp_path)
    wait_for_step(victim[0], 0, random.Random().randint(1, STEPS - 2))
    os.kill(victim[1].pid, signal.SIGTERM)               # rank 1 only
    (_, err0), (_, err1) = finish(victim[0], 75), finish(victim[1], 75)
    lines = stop_lines(err0)
    assert len(lines) == 1 and not stop_lines(err1), (lines, err1[-2000:])
    sig, epoch, step, steps, how, where = LINE.match(lines[0]).groups()
    assert (sig, epoch, how) == ("SIGTERM", "1", "torchrun [the same options]")
    ck = torch.load(tmp_path / "run" / "last.pth", weights_only=True)
    assert ck["position"]["step"] == int(step) and len(ck["rng"]) == 2 and ck["world_size"] == 2
    assert ck["position"]["sums"].shape == (2, 3)        # each process's own sums
    for p in full:
        finish(p)
    for p in ranks("-resume", str(tmp_path / "run"), cwd=tmp_path):
        finish(p)
    assert rows_without_time(tmp_path / "run" / "metrics.csv") == rows_without_time(tmp_path / "full" / "metrics.csv")
    a = torch.load(tmp_path / "full" / "last.pth", weights_only=True)["model"]
    b = torch.load(tmp_path / "run" / "last.pth", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert np.array_equal(*(np.array(scalars(tmp_path / n / STEPS_SUBDIR, STEP_TAG)) for n in ("full", "run")))


def test_a_sampler_resumed_inside_an_epoch_yields_the_remaining_batches_of_the_saved_order():
    from utils.run.loaders import ShardedBatchSampler
    full = ShardedBatchSampler(11, 3, seed=4, rank=1, world=2)
    full.set_epoch(2)
    resumed = ShardedBatchSampler(11, 3, seed=4, rank=1, world=2)
    resumed.set_epoch(2, 3, full.order())
    assert list(resumed) == list(full)[3:] and len(resumed) == 1 and resumed.plan() == full.plan()
    resumed.set_epoch(2, 4, full.order())                   # the test pass was next: no batch left
    assert list(resumed) == [] and len(resumed) == 0
    other = list(reversed(full.order()))
    resumed.set_epoch(2, 0, other)                           # the saved order is the one used
    # rank 1 of 2 takes the second part of each global batch: 1 of 3 samples, 1 of the last 2
    assert list(resumed) == [[other[2]], [other[5]], [other[8]], [other[10]]]
    with pytest.raises(ValueError):
        resumed.set_epoch(2, 5)
    with pytest.raises(ValueError):
        resumed.set_epoch(2, 0, [0] * 11)


@pytest.mark.parametrize("damage, needle", [
    (lambda p: p.pop("order"), "lacks or mistypes 'order'"),
    (lambda p: p.update(order=torch.arange(19)), "no sample order of this run's 20"),
    (lambda p: p.update(order=torch.zeros(20, dtype=torch.int64)), "no sample order"),
    (lambda p: p.update(step=9), "step 9 of 5"),
    (lambda p: p.update(epoch=3), "says epoch 3"),
    (lambda p: p.update(sums=torch.zeros(2, 3)), "metric sums for each process"),
    (lambda p: p.update(seconds="soon"), "mistypes"),
])
def test_a_damaged_position_is_one_error_naming_the_file_and_the_field(damage, needle):
    from utils.errors import UserError
    from utils.run.fit import read_position
    from utils.run.loaders import ShardedBatchSampler
    sampler = ShardedBatchSampler(20, 4, seed=3)
    pos = {"epoch": 1, "step": 2, "steps": STEPS, "order": torch.randperm(20), "sums": torch.zeros(1, 3),
           "seconds": 1.5}
    ck = {"epoch": 0, "rng": [{}], "position": pos}
    assert read_position(ck, "RUN/last.pth", sampler).step == 2
    damage(pos)
    with pytest.raises(UserError, match=f"-resume RUN/last.pth: field 'position' .*{re.escape(needle)}"):
        read_position(ck, "RUN/last.pth", sampler)
