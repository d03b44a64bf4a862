"""`sh final.sh slurm` against small fakes of sbatch and scontrol written here: the job array and
the collector as submitted, the array tasks run by hand writing the table `sh final.sh` writes,
resubmitting only what is left, and a task requeueing itself after the time-limit signal."""
import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from utils.analysis import launch
from utils.analysis.rows import PlannedRun

from final_runs import ROOT, RUNS, final, final_env, jobs2  # noqa: F401 (fixture)

FAKE_SBATCH = """#!/bin/sh
# records its arguments and the script it was given, prints a job id as --parsable does
d={calls}/$(ls {calls} | wc -l | tr -d ' ')
mkdir -p "$d"
for a in "$@"; do printf '%s\\n' "$a"; done >"$d/args"
for a in "$@"; do last=$a; done
cp "$last" "$d/script"
echo "$((4100 + $(ls {calls} | wc -l)));cluster"
"""
FAKE_SCONTROL = """#!/bin/sh
echo "$@" >>{calls}/scontrol
"""


def fake_tools(tmp_path: Path) -> tuple[Path, Path]:
    bin_dir, calls = tmp_path / "bin", tmp_path / "calls"
    bin_dir.mkdir()
    calls.mkdir()
    for name, text in (("sbatch", FAKE_SBATCH), ("scontrol", FAKE_SCONTROL)):
        (bin_dir / name).write_text(text.format(calls=calls))
        (bin_dir / name).chmod(0o755)
    return bin_dir, calls


def submissions(calls: Path) -> list[tuple[list[str], str]]:
    return [((calls / d / "args").read_text().splitlines(), (calls / d / "script").read_text())
            for d in sorted(os.listdir(calls), key=lambda d: (len(d), d)) if (calls / d / "args").exists()]


def table_rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def task_env(**extra) -> dict:
    """What a SLURM node gives a task: none of final.sh's variables."""
    env = {k: v for k, v in os.environ.items() if k not in ("RUNS_DIR", "OUT_DIR", "IMG_DIR", "SEEDS",
                                                               "EXTRA_FLAGS", "DATA_ROOT", "JOBS")}
    return dict(env, OMP_NUM_THREADS="1", **extra)


def test_array_tasks_by_hand_write_final_sh_table(tmp_path, jobs2):
    base, ref = jobs2
    assert ref.returncode == 0, ref.stdout + ref.stderr
    bin_dir, calls = fake_tools(tmp_path)
    flags = "--gres=gpu:1 --time=00:10:00 -p 'gpu queue'"
    env = final_env(tmp_path / "s p|ace", PATH=f"{bin_dir}:{os.environ['PATH']}", SLURM_FLAGS=flags)
    r = final(env, "slurm", "demo", "demo_synthetic")
    assert r.returncode == 0, r.stdout + r.stderr
    (array, array_script), (collect, collect_script) = submissions(calls)
    assert "--array=0-1" in array and "--requeue" in array and "--signal=B:USR1@300" in array
    assert array[-5:-1] == ["--gres=gpu:1", "--time=00:10:00", "-p", "gpu queue"]      # resources asked for
    assert collect[:2] == ["--parsable", "--dependency=afterany:4101"] and collect[-5:-1] == array[-5:-1]
    assert "submitted: job array 4101 (2 run(s)), collector job 4102" in r.stdout
    folder = Path(array[-1]).parent
    assert (folder / "jobs").read_text().split() == ["4101", "4102"]
    assert "utils.analysis.slurm --task" in array_script and "utils.analysis.launch collect" in collect_script
    # the tasks, by hand, in an environment without final.sh's variables; then the collector
    for k, name in enumerate(RUNS):
        t = subprocess.run(["sh", str(folder / "array.sh")], env=task_env(SLURM_ARRAY_TASK_ID=str(k)),
                           capture_output=True, text=True, timeout=120)
        assert t.returncode == 0 and f"== {name}: finished" in t.stdout, t.stdout + t.stderr
    c = subprocess.run(["sh", str(folder / "collect.sh")], env=task_env(), capture_output=True, text=True,
                       timeout=180)
    assert c.returncode == 0, c.stdout + c.stderr
    out = tmp_path / "s p|ace" / "out"
    assert table_rows(out / "table.csv") == table_rows(base / "out" / "table.csv")


def done_run(folder: Path, epochs: int = 2) -> None:
    """A finished run as the planner sees it (every epoch in metrics.csv, a best.pth)."""
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"num_epochs": epochs}))
    (folder / "metrics.csv").write_text("epoch,test_acc\n" + "".join(f"{e},10.0\n" for e in range(epochs)))
    (folder / "best.pth").write_bytes(b"")


def test_submitting_again_submits_only_what_is_left(tmp_path):
    bin_dir, calls = fake_tools(tmp_path)
    env = final_env(tmp_path, PATH=f"{bin_dir}:{os.environ['PATH']}")
    assert final(env, "slurm", "demo", "demo_synthetic").returncode == 0
    done_run(tmp_path / "runs" / RUNS[0])                   # task 0 finished; task 1 still queued
    (bin_dir / "squeue").write_text('#!/bin/sh\ncase "$*" in *--jobs=4101*) echo 1 ;; esac\n')
    (bin_dir / "squeue").chmod(0o755)
    r = final(env, "slurm", "demo", "demo_synthetic")
    assert r.returncode == 0 and f"{RUNS[1]}: still in SLURM's queue (job array 4101, task 1)" in r.stdout
    assert "nothing to submit" in r.stdout and len(submissions(calls)) == 2
    (bin_dir / "squeue").unlink()                            # it left the queue without running
    r = final(env, "slurm", "demo", "demo_synthetic")
    assert r.returncode == 0 and f"1 run(s) to submit: {RUNS[1]}" in r.stdout, r.stdout + r.stderr
    (again, _), (collect, _) = submissions(calls)[2:]
    assert "--array=0-0" in again and collect[1] == "--dependency=afterany:4103"
    assert json.loads((Path(again[-1]).parent / "plan.json").read_text())["queue"] == [RUNS[1]]
    done_run(tmp_path / "runs" / RUNS[1])
    r = final(env, "slurm", "demo", "demo_synthetic")
    assert r.returncode == 0 and "nothing to submit" in r.stdout and len(submissions(calls)) == 4


def test_submit_0_and_no_sbatch_only_write(tmp_path):
    env = final_env(tmp_path, SUBMIT="0", PATH=f"{fake_tools(tmp_path)[0]}:{os.environ['PATH']}")
    r = final(env, "slurm", "demo", "demo_synthetic")
    assert r.returncode == 0 and "SUBMIT=0: nothing submitted; submit with: sh " in r.stdout, r.stdout + r.stderr
    assert not submissions(tmp_path / "calls")
    (folder,) = (tmp_path / "runs" / "slurm").iterdir()
    plan = json.loads((folder / "plan.json").read_text())
    assert plan["queue"] == list(RUNS) and {"array.sh", "collect.sh", "submit.sh"} <= set(os.listdir(folder))
    r = final(dict(env, SUBMIT="", PATH="/usr/bin:/bin"), "slurm", "demo", "demo_synthetic")
    assert r.returncode == 0 and "sbatch is not on PATH" in r.stdout
    for extra, named in (({"SUBMIT": "yes"}, "SUBMIT="), ({"SLURM_FLAGS": "--array=0-3"}, "--array"),
                         ({"SLURM_FLAGS": "-p 'gpu"}, "SLURM_FLAGS="), ({"JOBS": "2"}, "JOBS="),
                         ({"RUNS_DIR": str(tmp_path / "a\nb")}, "RUNS_DIR=")):
        r = final(dict(env, **extra), "slurm", "demo", "demo_synthetic", timeout=60)
        assert r.returncode == 2 and r.stderr.startswith("error: ") and named in r.stderr, (extra, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1


FAKE_RUN = """#!/bin/sh
# stands in for train_test.py: stops on a signal as the real one does (saves, exits 75)
trap 'echo "interrupted; continue with -resume"; exit 75' USR1 TERM
echo "epoch 1/9"
while :; do sleep 0.05; done
"""


def test_task_requeues_itself_after_the_time_limit_signal(tmp_path):
    bin_dir, calls = fake_tools(tmp_path)
    fake = tmp_path / "fake_python"
    fake.write_text(FAKE_RUN)
    fake.chmod(0o755)
    runs = tmp_path / "runs"
    item = PlannedRun("demo_synthetic_no", "demo_synthetic", "no", 0, "", ("-dataset", "synthetic"), "new")
    plan = launch.Plan(str(ROOT), str(fake), launch.Settings(str(runs), str(tmp_path / "out"), "", True, [], [0]),
                       [item], [item.name])
    launch.save_plan(plan, str(tmp_path / "plan.json"))
    for sig, requeued in ((signal.SIGUSR1, True), (signal.SIGTERM, False)):
        env = task_env(SLURM_ARRAY_TASK_ID="0", SLURM_JOB_ID="777", PATH=f"{bin_dir}:{os.environ['PATH']}")
        p = subprocess.Popen([sys.executable, "-m", "utils.analysis.slurm", "--task", str(tmp_path / "plan.json")],
                             cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
        log = runs / "demo_synthetic_no.log"
        deadline = time.time() + 60
        while not (log.exists() and log.read_text().count("epoch 1/9") == (1 if requeued else 2)):
            assert time.time() < deadline and p.poll() is None
            time.sleep(0.05)
        p.send_signal(sig)
        out, _ = p.communicate(timeout=60)
        assert p.returncode == 75, out
        assert "demo_synthetic_no: interrupted (exit 75)" in out
        got = (calls / "scontrol").read_text().splitlines() if (calls / "scontrol").exists() else []
        assert got == ["requeue 777"], (sig, got)          # once: after USR1, not after TERM
        assert ("requeueing job 777" in out) == requeued
