"""`sh final.sh slurm`: the plan as a SLURM job array, and a collector job after it.

    SLURM_FLAGS="--gres=gpu:1 --time=24:00:00 -p gpu" DATA_ROOT=/data sh final.sh slurm [demo] [ROW ...]
    python3 -m utils.analysis.slurm --task PLAN    # what array task $SLURM_ARRAY_TASK_ID runs

Into RUNS_DIR/slurm/<time>/ go plan.json (utils/analysis/launch.py: the runs still to do, with
their whole argument lists), array.sh (array task k runs or continues run k of that plan),
collect.sh (the table, curves and figures, as final.sh ends), submit.sh (the two sbatch calls) and
logs/ (SLURM's output, one file per task). submit.sh is run when sbatch is on PATH (SUBMIT=0: only
written, and the way to submit printed).

Everything is SLURM's own machinery:
- the array: ``sbatch --array=0-(K-1)``, each task with the resources of SLURM_FLAGS;
- ``--requeue`` and ``--open-mode=append``: a task requeued (node failure, preemption in requeue
  mode, or itself, below) starts again and continues its run, its log appended to;
- ``--signal=B:USR1@300``: five minutes before the time limit SLURM sends SIGUSR1 to the task's
  process (array.sh execs this module), which passes it to train_test.py: the run saves a resumable
  last.pth and exits 75; the task then requeues itself with ``scontrol requeue`` and, when it
  starts again, the run's folder says to continue it (-resume). SIGTERM (scancel, preemption) is
  passed on too, without the requeue;
- the collector: ``sbatch --dependency=afterany:<array>``, after every task ended, requeued
  ones included.
Running `sh final.sh slurm` again plans again: runs finished or held by a live task are left out,
and so are the tasks of earlier submissions that ``squeue`` still lists, so only what is left is
submitted.
"""
from __future__ import annotations

import argparse
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time

from utils.analysis.launch import INTERRUPTED, load_plan, make_plan, one_line_errors, run_one, save_plan, say

SIGNAL_BEFORE = 300          # seconds before the time limit: a training step and one checkpoint write
OURS = {"--array": "the plan decides the tasks", "-a": "the plan decides the tasks",
        "--dependency": "the collector's is set here", "-d": "the collector's is set here"}


def slurm_flags(env) -> list[str]:
    text = env.get("SLURM_FLAGS", "")
    try:
        flags = shlex.split(text)
    except ValueError as e:
        raise ValueError(f"SLURM_FLAGS={text!r}: {e} (quote as in the shell)") from None
    for f in flags:
        name = f.split("=", 1)[0]
        if name in OURS:
            raise ValueError(f"SLURM_FLAGS={text!r}: {name} cannot be given ({OURS[name]})")
    return flags


def sbatch_path(path: str, var: str) -> str:
    """``path`` for sbatch's --output, where % starts a pattern (%% is a %); a control character or
    a backslash cannot be carried there and is refused naming the variable it came from."""
    if any(ord(c) < 32 or c == "\\" for c in path):
        raise ValueError(f"{var}={path!r}: SLURM cannot take a control character or a backslash in "
                         f"the output path {path!r}; use another folder")
    return path.replace("%", "%%")


def new_folder(runs_dir: str) -> str:
    base = os.path.join(runs_dir, "slurm", time.strftime("%Y%m%d-%H%M%S"))
    folder, n = base, 2
    while True:
        try:
            os.makedirs(os.path.join(folder, "logs"))
            return folder
        except FileExistsError:
            folder, n = f"{base}-{n}", n + 1


def write_scripts(plan, plan_path: str, folder: str, flags: list[str]) -> str:
    """array.sh, collect.sh and submit.sh beside the plan; returns submit.sh's path."""
    q = shlex.quote
    k = len(plan.queue)
    logs = sbatch_path(os.path.abspath(os.path.join(folder, "logs")), "RUNS_DIR")
    head = f"#!/bin/sh\n# Written by `sh final.sh slurm` ({time.strftime('%Y-%m-%d %H:%M')}); plan: {plan_path}\n"
    scripts = {
        "array.sh": head + "# Array task k runs (or continues) run k of the plan.\n"
                           f"cd {q(plan.root)} || exit 2\n"
                           f"exec {q(plan.python)} -m utils.analysis.slurm --task {q(plan_path)}\n",
        "collect.sh": head + "# After every task of the array: the table, the curves, the figures.\n"
                             f"cd {q(plan.root)} || exit 2\n"
                             f"exec {q(plan.python)} -m utils.analysis.launch collect {q(plan_path)}\n",
    }
    ours = ["--requeue", "--open-mode=append"]
    if not any(f.split("=", 1)[0] == "--signal" for f in flags):
        ours.append(f"--signal=B:USR1@{SIGNAL_BEFORE}")
    array = ["sbatch", "--parsable", f"--array=0-{k - 1}", *ours, "--job-name=asa-snn-runs",
             f"--output={logs}/run-%a.out", *flags, os.path.join(folder, "array.sh")]
    collect = ["--job-name=asa-snn-table", f"--output={logs}/collect.out", *flags,
               os.path.join(folder, "collect.sh")]
    scripts["submit.sh"] = head + (
        "# The job array (one task per run), then the collector, which waits for every task.\n"
        "set -e\n"
        f"array=$({' '.join(map(q, array))})\n"
        "array=${array%%;*}\n"
        f"collect=$(sbatch --parsable --dependency=afterany:\"$array\" {' '.join(map(q, collect))})\n"
        "collect=${collect%%;*}\n"
        f"echo \"$array $collect\" >{q(os.path.join(folder, 'jobs'))}\n"
        f"echo \"submitted: job array $array ({k} run(s)), collector job $collect (after the array); "
        f"logs in \"{q(os.path.join(folder, 'logs'))}\n")
    from utils.files import atomic_write
    for name, text in scripts.items():
        atomic_write(os.path.join(folder, name), text)
    return os.path.join(folder, "submit.sh")


def submit(env, demo: bool, rows: list[str]) -> int:
    """`sh final.sh slurm`: plan, write, and submit when sbatch is here (module docstring)."""
    choice = env.get("SUBMIT", "").strip()
    if choice not in ("", "0", "1"):
        raise ValueError(f"SUBMIT={choice!r}: expected 0 (only write the scripts) or 1 (submit; the default)")
    flags = slurm_flags(env)
    plan = make_plan(env, demo, rows, slurm=True)
    queued = queued_runs(plan.settings.runs_dir)
    for name in (n for n in plan.queue if n in queued):
        say(f"-- {name}: still in SLURM's queue ({queued[name]}); not submitted again")
    plan.queue = [n for n in plan.queue if n not in queued]
    if not plan.queue:
        say("final.sh slurm: nothing to submit: every run of the table is finished or held by a live "
            "process; `sh final.sh` (same variables) writes the table")
        return 0
    sbatch_path(os.path.abspath(plan.settings.runs_dir), "RUNS_DIR")
    folder = new_folder(plan.settings.runs_dir)
    plan_path = os.path.abspath(os.path.join(folder, "plan.json"))
    save_plan(plan, plan_path)
    script = write_scripts(plan, plan_path, folder, flags)
    say(f"final.sh slurm: {len(plan.queue)} run(s) to submit: {', '.join(plan.queue)}")
    say(f"final.sh slurm: wrote {folder}/array.sh, collect.sh and submit.sh beside its plan.json")
    how = f"sh {shlex.quote(script)}"
    if choice == "0":
        say(f"SUBMIT=0: nothing submitted; submit with: {how}")
        return 0
    if shutil.which("sbatch") is None:
        say(f"sbatch is not on PATH: nothing submitted; on the cluster, submit with: {how}")
        return 0
    return subprocess.run(["sh", script]).returncode


def queued_runs(runs_dir: str) -> dict:
    """{run: 'job array ID, task k'} for the tasks of earlier submissions (RUNS_DIR/slurm/*/jobs)
    that SLURM still lists, pending or running (squeue); nothing when squeue is not here."""
    base = os.path.join(runs_dir, "slurm")
    if shutil.which("squeue") is None or not os.path.isdir(base):
        return {}
    out = {}
    for d in sorted(os.listdir(base)):
        try:
            with open(os.path.join(base, d, "jobs")) as f:
                array = f.read().split()[0]
            queue = load_plan(os.path.join(base, d, "plan.json")).queue
        except (OSError, ValueError, IndexError):
            continue                      # never submitted (SUBMIT=0) or not ours
        r = subprocess.run(["squeue", "--noheader", "--array", f"--jobs={array}", "--format=%K"],
                           capture_output=True, text=True)
        for k in r.stdout.split() if r.returncode == 0 else []:
            if k.isdigit() and int(k) < len(queue):
                out[queue[int(k)]] = f"job array {array}, task {k}"
    return out


def task(plan_path: str, env) -> int:
    """One array task: run (or continue) run $SLURM_ARRAY_TASK_ID of the plan; after SIGUSR1 (the
    time limit is near) and the run's exit 75, requeue this task."""
    k = env.get("SLURM_ARRAY_TASK_ID", "")
    if not k.isdigit():
        raise ValueError(f"SLURM_ARRAY_TASK_ID={k!r}: not a task of a job array (submit with submit.sh)")
    received: set = set()
    rc = run_one(load_plan(plan_path), int(k), 0, received)
    job = env.get("SLURM_JOB_ID", "")
    if rc == INTERRUPTED and signal.SIGUSR1 in received and job:
        say(f"array task {k}: the run saved before the time limit; requeueing job {job} to continue it")
        if subprocess.run(["scontrol", "requeue", job]).returncode != 0:
            say(f"!! scontrol requeue {job} failed: `sh final.sh slurm` (same variables) submits what is left")
    return rc


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python3 -m utils.analysis.slurm",
                                description="final.sh's plan as a SLURM job array and a collector job "
                                            "(module docstring). Variables: those of final.sh, "
                                            "SLURM_FLAGS and SUBMIT.")
    p.add_argument("--demo", action="store_true", help="the demo rows")
    p.add_argument("--task", metavar="PLAN", help="run array task $SLURM_ARRAY_TASK_ID of this plan "
                   "(what array.sh does)")
    p.add_argument("rows", nargs="*", metavar="ROW", help="rows (default: the paper rows, or the demo rows)")
    a = p.parse_args(argv)
    if a.task:
        return one_line_errors(task, a.task, os.environ)
    return one_line_errors(submit, os.environ, a.demo, a.rows)

if __name__ == "__main__":
    sys.exit(main())
