"""final.sh against a second final.sh and against kills: a run folder or console log held by
another process is left alone with one line (never moved aside, restarted or overwritten), and a
run of the table that is not finished is never reported as '0 problem(s)'; after a stop the same
command continues every run, also when EXTRA_FLAGS changes a row's flag."""
import fcntl
import hashlib
import json
import os
import signal
import sys
import subprocess
import time
from pathlib import Path

import pytest

from final_runs import ROOT, RUNS, TINY, final, final_env, metrics


def tree_hash(folder: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        h.update(str(p.relative_to(folder)).encode())
        if p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()


def hold(path: Path):
    """Another process's flock on ``path`` (as a live train_test.py or launcher holds it)."""
    f = open(path, "a+")
    fcntl.flock(f.fileno(), fcntl.LOCK_EX)
    f.write("4242")
    f.flush()
    return f


def test_live_runs_of_another_final_sh_are_left_alone(tmp_path):
    runs = tmp_path / "runs"
    runs.mkdir()
    # run 1: a folder without config.json (what final.sh would move aside), its lock held
    no = runs / RUNS[0]
    no.mkdir()
    (no / "metrics.csv").write_text("epoch,test_acc\n")
    lock = hold(no / ".lock")
    # run 2: no folder yet, but its console log held by the final.sh that is starting it
    (runs / f"{RUNS[1]}.log").write_text("earlier lines\n")
    claim = hold(runs / f"{RUNS[1]}.log")
    before = tree_hash(runs)
    try:
        r = final(final_env(tmp_path), "demo", "demo_synthetic", timeout=120)
    finally:
        lock.close()
        claim.close()
    out = r.stdout.splitlines()
    assert r.returncode == 1, r.stdout + r.stderr
    assert any(l.startswith(f"-- {RUNS[0]}: ") and "in use by another process (pid 4242); left alone" in l
               for l in out), r.stdout
    assert any(l.startswith(f"-- skip {RUNS[1]}: started by another final.sh") for l in out), r.stdout
    assert tree_hash(runs) == before                    # nothing moved, restarted or overwritten
    assert not [p for p in runs.iterdir() if ".unfinished-" in p.name]
    assert out[-1].startswith("final.sh: 0 run(s) started (0 finished, 0 failed, 0 interrupted, 1 left to "
                              "another process), 2 problem(s)"), out[-1]
    assert sum(l.startswith("!! unfinished: ") for l in out) == 2


def fake_partial(folder: Path, cfg: dict) -> None:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(cfg))
    (folder / "metrics.csv").write_text("epoch,test_acc,test_nasfr\n0,10.0,0.2\n")


def test_unfinished_run_of_other_settings_is_a_problem(tmp_path):
    """A killed run whose folder holds other settings is left alone, and counted: never exit 0."""
    for name in RUNS:
        fake_partial(tmp_path / "runs" / name, {"num_epochs": 3, "T": 4, "synthetic_train": 16})
    r = final(final_env(tmp_path, EXTRA_FLAGS="-num_work 0"), "demo", "demo_synthetic", timeout=120)
    assert r.returncode == 1, r.stdout + r.stderr
    assert r.stdout.count("holds a run with other settings") >= 2
    assert r.stdout.splitlines()[-1].startswith("final.sh: 0 run(s) started") and \
        "2 problem(s)" in r.stdout.splitlines()[-1]


def wait_for(cond, timeout=90):
    deadline = time.time() + timeout
    while not cond():
        assert time.time() < deadline
        time.sleep(0.1)


EPOCHS = 12


@pytest.mark.parametrize("how", ["to final.sh", "to the process group"])
def test_stopped_final_sh_continues_every_run(tmp_path, how):
    """SIGTERM to final.sh mid-run (kill PID), or to its whole process group (as SLURM signals every
    process of a job: the job slots and the runs get it too): each run is stopped and counted as
    interrupted, final.sh exits 75 without '0 problem(s)'; the same command (EXTRA_FLAGS overriding
    the row's -num_epochs) continues both to the end. Twelve epochs of well under a second each: a run
    one or two epochs ahead of the other when the signal is sent still has many steps left to stop in
    (a run that finishes its last epoch before the signal lands is finished, not interrupted)."""
    env = final_env(tmp_path, JOBS="2", EXTRA_FLAGS=TINY.replace("-num_epochs 2", f"-num_epochs {EPOCHS}"))
    p = subprocess.Popen(["sh", str(ROOT / "final.sh"), "demo", "demo_synthetic"], env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    logs = [tmp_path / "runs" / f"{n}.log" for n in RUNS]
    wait_for(lambda: all(l.exists() and f"epoch 1/{EPOCHS}" in l.read_text() for l in logs))
    if how == "to final.sh":
        p.send_signal(signal.SIGTERM)
    else:
        os.killpg(p.pid, signal.SIGTERM)
    out, err = p.communicate(timeout=90)
    last = out.splitlines()[-1]
    assert p.returncode == 75 and last.startswith("final.sh: stopped: 2 run(s) started (0 finished"), out + err
    assert "2 interrupted" in last and "error:" not in err, out + err
    if how != "to final.sh":
        return                              # continuing is the same either way: checked once
    assert "problem" not in last and "the same command continues" in last
    before = [l.read_text() for l in logs]
    r = final(env, "demo", "demo_synthetic")
    assert r.returncode == 0, r.stdout + r.stderr
    for name, log, old in zip(RUNS, logs, before):
        assert f"== {name}: continuing (" in r.stdout
        rows = metrics(tmp_path / "runs" / name)
        assert [int(x["epoch"]) for x in rows] == list(range(EPOCHS))   # every epoch once
        assert log.read_text().startswith(old)                       # the console log appended to
    assert r.stdout.splitlines()[-1].startswith("final.sh: 2 run(s) started (2 finished") and \
        "0 problem(s)" in r.stdout.splitlines()[-1]
    assert not [q for q in (tmp_path / "runs").iterdir() if ".unfinished-" in q.name]


def test_a_planted_log_link_is_not_written_through(tmp_path):
    """A link planted as a run's console log: that run fails with one line, nothing is written
    where the link points, and the failure is counted."""
    from utils.analysis import launch
    from utils.analysis.rows import PlannedRun
    runs, target = tmp_path / "runs", tmp_path / "elsewhere.txt"
    runs.mkdir()
    target.write_text("keep me\n")
    (runs / f"{RUNS[0]}.log").symlink_to(target)
    item = PlannedRun(RUNS[0], "demo_synthetic", "no", 0, "", ("-dataset", "synthetic"), "new")
    plan = launch.Plan(str(ROOT), "/nonexistent/python", launch.Settings(str(runs), "out", "", True, [], [0]),
                       [item], [item.name])
    launch.save_plan(plan, str(tmp_path / "plan.json"))
    r = subprocess.run([sys.executable, "-m", "utils.analysis.launch", "run", str(tmp_path / "plan.json"), "0",
                        "--record", str(tmp_path / "record")], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and r.stderr.startswith("error: ") and "a symbolic link" in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    assert target.read_text() == "keep me\n" and not (runs / RUNS[0]).exists()
    assert (tmp_path / "record").read_text() == f"{RUNS[0]} failed\n"


def test_a_folder_without_config_is_moved_aside_only_when_free(tmp_path):
    """The one folder final.sh moves (no config.json: killed while it was set up) is renamed whole,
    and only when no process holds its lock."""
    from utils.analysis import launch
    from utils.analysis.rows import decide
    folder = tmp_path / RUNS[0]
    folder.mkdir()
    (folder / "metrics.csv").write_text("epoch,test_acc,test_nasfr\n")
    assert decide(str(folder))[0] == "restart"
    lock = hold(folder / ".lock")
    try:
        assert decide(str(folder))[0] == "in_use" and launch.move_aside(str(folder)) is None
    finally:
        lock.close()
    assert (folder / "metrics.csv").exists()
    moved = Path(launch.move_aside(str(folder)))
    assert not folder.exists() and moved.name.startswith(f"{RUNS[0]}.unfinished-")
    assert (moved / "metrics.csv").read_text() == "epoch,test_acc,test_nasfr\n"
    assert decide(str(folder))[0] == "new"
