"""final.sh's plan file, one run of it, and the collection at the end.

    python3 -m utils.analysis.launch plan PLAN [--demo] [ROW ...]   # decide and save the plan (final.sh)
    python3 -m utils.analysis.launch run PLAN K [--slot I]          # run or continue run K of the plan
    python3 -m utils.analysis.launch collect PLAN                   # table, curves, figures, unfinished runs

The plan is one JSON file: the settings read once from final.sh's variables (below) and every run
of the table (utils/analysis/rows.py), each with its whole train_test.py argument list, and the
queue: the runs to start. The shell never parses a field: it passes run numbers, and a run's
arguments go from the JSON file into train_test.py's argv, so a path with `|`, spaces, quotes or
newlines stays one argument, and a SLURM array task finds its run in the saved file
(utils/analysis/slurm.py), not in the submitting shell's environment.

A run is launched by :func:`run_one`: it claims the run's console log (an flock on
RUNS_DIR/<run>.log, held while the run goes, so two final.sh or SLURM tasks never start the same
run), looks at the run folder again (finished meanwhile, or held by another process: left alone,
one line), then starts train_test.py in its own session with stdout appended to the log (epoch
lines shown on the console, prefixed with the run's name when several runs go at once) and stderr
appended to RUNS_DIR/<run>.err. SIGINT, SIGTERM, SIGUSR1 and SIGHUP (as SIGTERM) reach the run
exactly once, through this process: the run saves a resumable last.pth and exits with
``INTERRUPTED`` (75), reported as interrupted. Each run gets ``cores / JOBS`` CPU threads
(OMP_NUM_THREADS, unless set) and, with DEVICES, the device of its job slot.

Variables (final.sh documents them): DATA_ROOT, RUNS_DIR, NMNIST_PATH, SEEDS, EXTRA_FLAGS, OUT_DIR,
IMG_DIR, JOBS, DEVICES, VERBOSE.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field

from utils.analysis.rows import ATTENTIONS, PlannedRun, decide, hold_lock
from utils.errors import UserError
from utils.files import open_in_run_folder, shown

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FORMAT = "asa-snn final.sh plan"
INTERRUPTED = 75      # train_test.py stopped by a signal after saving a resumable last.pth
IN_USE = 76           # this launcher's: the run is held by another process, left alone
OUTCOME = {0: "finished", INTERRUPTED: "interrupted", IN_USE: "skipped"}
APPEND = os.O_WRONLY | os.O_CREAT | os.O_APPEND     # console logs: never truncated (nor written through a link)


@dataclass
class Settings:
    """final.sh's variables, resolved once (defaults here)."""
    runs_dir: str
    out_dir: str
    img_dir: str
    demo: bool
    rows: list
    seeds: list | None
    extra: list = field(default_factory=list)
    devices: list = field(default_factory=list)
    jobs: int = 1
    verbose: bool = False
    data_root: str = "data"


@dataclass
class Plan:
    root: str
    python: str
    settings: Settings
    runs: list            # every PlannedRun of the table
    queue: list           # names of the runs to start, in order

    def run(self, k: int) -> PlannedRun:
        if not 0 <= k < len(self.queue):
            raise ValueError(f"run {k}: the plan has {len(self.queue)} run(s) to start (0..{len(self.queue) - 1})")
        return next(r for r in self.runs if r.name == self.queue[k])


def env_value(env, name: str, default: str = "") -> str:
    """A variable's text; one that is not valid UTF-8 cannot be carried into the run's flags,
    config.json and TensorBoard files, and is refused naming the variable."""
    text = env.get(name) or default
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"{name}={text!r}: not valid UTF-8; use a path that is") from None
    return text


def count(env, name: str, default: int) -> int:
    text = env_value(env, name).strip()
    if not text:
        return default
    if not text.isdigit() or int(text) < 1:
        raise ValueError(f"{name}={text!r}: expected a whole number of at least 1")
    return int(text)


def settings_from_env(env, demo: bool, rows: list[str], slurm: bool = False) -> Settings:
    from utils.analysis.rows import extra_argv, parse_seeds
    if slurm:
        for name in ("JOBS", "DEVICES"):
            if env.get(name, "").strip():
                raise ValueError(f"{name}={env[name]!r}: for runs side by side on one node; with 'slurm' "
                                 f"each run is an array task with the resources of SLURM_FLAGS")
    out_dir = env_value(env, "OUT_DIR", "results/demo" if demo else "results")
    devices = env_value(env, "DEVICES").split()
    jobs = count(env, "JOBS", max(1, len(devices)))
    if devices and jobs > len(devices):
        raise ValueError(f"JOBS={jobs} but DEVICES names {len(devices)} device(s): give one device per "
                         f"job (a device may be listed twice), or leave JOBS unset")
    return Settings(runs_dir=env_value(env, "RUNS_DIR", "results/runs"), out_dir=out_dir,
                    img_dir=env_value(env, "IMG_DIR", "img" if demo else ""), demo=demo, rows=list(rows),
                    seeds=parse_seeds(env_value(env, "SEEDS", "0 1 2" if demo else "")),
                    extra=extra_argv(env_value(env, "EXTRA_FLAGS"), devices=bool(devices)),
                    devices=devices, jobs=jobs, verbose=env_value(env, "VERBOSE") == "1",
                    data_root=env_value(env, "DATA_ROOT", "data"))


def make_plan(env, demo: bool, rows: list[str], slurm: bool = False) -> Plan:
    """The plan; prints what it is about and one note per row without data and per run done or
    left alone."""
    from utils.analysis.rows import plan, select_rows
    s = settings_from_env(env, demo, rows, slurm)
    for name in ("DATA_ROOT", "NMNIST_PATH"):
        env_value(env, name)
    try:
        os.makedirs(s.runs_dir, exist_ok=True)
    except OSError as e:
        raise ValueError(f"RUNS_DIR={s.runs_dir!r}: cannot create it ({e.strerror or e})") from None
    plan_env = {**env, "DATA_ROOT": s.data_root, "RUNS_DIR": s.runs_dir, "SEEDS": " ".join(map(str, s.seeds or []))}
    items = plan(select_rows(rows, demo), plan_env, s.extra)
    notes = [i if isinstance(i, str) else f"{i.name}: {i.note}" if i.action != "done" else i.note
             for i in items if isinstance(i, str) or i.note]
    runs = [i for i in items if isinstance(i, PlannedRun)]
    say(f"final.sh: data root {shown(s.data_root)}, run folders in {shown(s.runs_dir)}, table in {shown(s.out_dir)}"
        f"{', seeds ' + ' '.join(map(str, s.seeds)) if s.seeds else ''}{f', {s.jobs} runs at once' if s.jobs > 1 else ''}")
    for n in notes:
        say(f"-- {n}")
    return Plan(ROOT, sys.executable, s, runs, [r.name for r in runs if r.runnable])


def save_plan(plan: Plan, path: str) -> None:
    from utils.files import atomic_write
    doc = {"format": FORMAT, "root": plan.root, "python": plan.python, "settings": asdict(plan.settings),
           "runs": [asdict(r) for r in plan.runs], "queue": plan.queue}
    atomic_write(path, json.dumps(doc, indent=1) + "\n")


def load_plan(path: str) -> Plan:
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
        if doc.get("format") != FORMAT:
            raise ValueError("not a plan written by final.sh")
        runs = [PlannedRun(**{**r, "flags": tuple(r["flags"])}) for r in doc["runs"]]
        return Plan(doc["root"], doc["python"], Settings(**doc["settings"]), runs, list(doc["queue"]))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise ValueError(f"plan {path}: cannot be read ({type(e).__name__}: {e})") from None


# ------------------------------------------------------------------------------------------------
# one run
# ------------------------------------------------------------------------------------------------

# train_test.py's lines worth seeing on the console (the whole output is in the log)
SHOWN = ("run folder:", "device", "epoch", "done:", "note:", "test acc", "resume:", "interrupted")


def say(text: str) -> None:
    """One console line, written at once (runs going side by side never mix inside a line)."""
    os.write(sys.stdout.fileno(), (text.rstrip("\n") + "\n").encode("utf-8", "backslashreplace"))


def run_argv(plan: Plan, r: PlannedRun, action: str, slot: int) -> list[str]:
    """train_test.py's arguments for run ``r``: the row's flags, the run's own, EXTRA_FLAGS, the
    slot's device. Values go as -flag=value, so a path that starts with '-' stays a value."""
    s = plan.settings
    folder = os.path.join(s.runs_dir, r.name)
    argv = list(r.flags) + ["-attention", r.attention, "-name", r.name, f"-modelPath={s.runs_dir}"]
    if r.data_dir:
        argv.append(f"-data_path={r.data_dir}")
    if action == "resume":
        argv.append(f"-resume={folder}")
    if s.devices:
        argv.append(f"-device={s.devices[slot % len(s.devices)]}")
    return argv


def threads_per_run(jobs: int) -> int:
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    return max(1, cores // max(1, jobs))


def _tail(path: str, n: int = 5) -> list[str]:
    try:
        with open(path, "rb") as f:
            f.seek(max(0, os.path.getsize(path) - 8192))
            return f.read().decode("utf-8", "replace").splitlines()[-n:]
    except OSError:
        return []


def run_one(plan: Plan, k: int, slot: int = 0, received: set | None = None) -> int:
    """Run (or continue) run ``k`` of the plan's queue (module docstring); returns its exit code:
    0 finished (or found finished), INTERRUPTED, IN_USE, or train_test.py's code. Signals received
    are added to ``received``."""
    import fcntl
    s, r = plan.settings, plan.run(k)
    received = set() if received is None else received
    child = []

    def forward(signum, _frame):        # installed first: a signal before the run starts is kept
        received.add(signum)
        if child:
            child[0].send_signal(signal.SIGTERM if signum == signal.SIGHUP else signum)

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1, signal.SIGHUP):
        signal.signal(sig, forward)
    folder = os.path.join(s.runs_dir, r.name)
    log, err = folder + ".log", folder + ".err"
    os.makedirs(s.runs_dir, exist_ok=True)
    log_fd = open_in_run_folder(log, APPEND, "console log")
    try:
        fcntl.flock(log_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        say(f"-- skip {r.name}: started by another final.sh or SLURM task (it holds {shown(log)}); left alone")
        return IN_USE
    action, note = decide(folder)
    if action == "in_use":
        say(f"-- skip {r.name}: {note}")
        return IN_USE
    if action == "done":
        say(f"-- {r.name}: {note}")
        return 0
    if received:
        say(f"!! {r.name}: not started (a signal came first)")
        return INTERRUPTED
    if action == "restart":
        moved = move_aside(folder)
        if moved is None:
            say(f"-- skip {r.name}: {shown(folder)} is in use by another process; left alone")
            return IN_USE
        say(f"-- {r.name}: {note}; moved to {shown(moved)}, starting again")
        action = "new"
    argv = run_argv(plan, r, action, slot)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.setdefault("OMP_NUM_THREADS", str(threads_per_run(s.jobs)))
    device = next((a.split("=", 1)[1] for a in reversed(argv) if a.startswith("-device=")), "")
    say(f"== {r.name}: {'continuing' if action == 'resume' else 'started'} (seed {r.seed}, attention "
        f"{r.attention}{', device ' + device if device else ''}, {env['OMP_NUM_THREADS']} CPU "
        f"thread(s)): {shown(folder)}  (log: {shown(log)})")
    t0 = time.time()
    err_fd = open_in_run_folder(err, APPEND, "console log")
    proc = subprocess.Popen([plan.python, os.path.join(plan.root, "train_test.py"), *argv], cwd=plan.root,
                            env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err_fd,
                            start_new_session=True)
    os.close(err_fd)
    child.append(proc)
    if received:                          # came between the check above and the start
        proc.send_signal(signal.SIGTERM)
    prefix = f"   [{r.name}] " if s.jobs > 1 else "   "
    for line in proc.stdout:
        os.write(log_fd, line)
        text = line.decode("utf-8", "replace")
        if s.verbose or text.startswith(SHOWN):
            say(prefix + text)
    rc = proc.wait()
    took = f"{time.time() - t0:.0f}s"
    if rc == 0:
        say(f"== {r.name}: finished in {took}")
    elif rc == INTERRUPTED:
        say(f"!! {r.name}: interrupted (exit {rc}) after {took}; its last.pth is saved: the same command "
            f"continues it")
    else:
        why = f"killed by {signal.Signals(-rc).name}" if rc < 0 else f"exit {rc}"
        say(f"!! {r.name}: failed ({why}) after {took}; last lines of {shown(err)}:")
        for line in _tail(err):
            say(f"   {line}")
    return rc


def move_aside(folder: str) -> str | None:
    """Rename an unusable run folder to <folder>.unfinished-<time> while holding its lock (None:
    another process holds it). Nothing in it is deleted."""
    fd = hold_lock(folder)
    if isinstance(fd, str):
        return None
    try:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        new, n = f"{folder}.unfinished-{stamp}", 2
        while os.path.exists(new):
            new, n = f"{folder}.unfinished-{stamp}-{n}", n + 1
        os.rename(folder, new)
        return new
    finally:
        if isinstance(fd, int):
            os.close(fd)


# ------------------------------------------------------------------------------------------------
# the end: table, curves, figures, and every run of the table that is not finished
# ------------------------------------------------------------------------------------------------

def collect(plan: Plan, record: str | None = None) -> int:
    """The collector (utils/analysis/table.py) and the figures (utils/analysis/plots.py) as
    final.sh always ran them, then one line per run of the table that is not finished. Returns
    the problems: unfinished runs, runs that failed here (``record``: 'name outcome' lines), tools
    that failed."""
    s, py = plan.settings, plan.python
    problems = 0
    cmd = [py, "-m", "utils.analysis.table", s.runs_dir, "--out", s.out_dir]
    cmd += ["--demo"] if s.demo else ["--all-paper-rows"]
    if s.seeds:
        cmd += ["--seeds", *map(str, s.seeds)]
    problems += subprocess.run(cmd, cwd=plan.root).returncode != 0
    problems += figures(plan)
    failed_here = set()
    if record and os.path.isfile(record):
        with open(record, encoding="utf-8") as f:
            failed_here = {w[0] for w in (line.split() for line in f) if len(w) == 2 and w[1] != "finished"}
    if not plan.runs and not s.demo:
        say(f"final.sh: no data found under {s.data_root}; 'sh final.sh demo' runs the pipeline on built-in data.")
    for r in plan.runs:
        action, note = decide(os.path.join(s.runs_dir, r.name))
        if action == "done" and r.name not in failed_here:
            continue
        why = {"new": f"no run folder (if it was started: {os.path.join(s.runs_dir, r.name)}.err)", "resume": "unfinished: the same command continues it",
               "restart": note, "in_use": note, "done": "finished, but its process failed (see its .err)"}[action]
        if r.action == "other" and action == "resume":        # still holding other settings
            why = r.note
        say(f"!! unfinished: {r.name}: {why}" if action != "done" else f"!! {r.name}: {why}")
        problems += 1
    return problems


def figures(plan: Plan) -> int:
    """Figure 1(c)-style PNGs for every row whose two runs of the first seed have a best.pth; the
    demo copies its curves beside them. Returns the failures."""
    s, failures = plan.settings, 0
    first = {}
    for r in plan.runs:
        first.setdefault(r.row, r.seed)
    for row, seed in first.items():
        lif, asa = (os.path.join(s.runs_dir, next(r.name for r in plan.runs if (r.row, r.seed, r.attention)
                                                  == (row, seed, a))) for a in ATTENTIONS)
        if not (os.path.isfile(os.path.join(lif, "best.pth")) and os.path.isfile(os.path.join(asa, "best.pth"))):
            continue
        if s.demo:
            folder, prefix = s.img_dir, row.removeprefix("demo_") + "_"
            curves = os.path.join(s.out_dir, f"curves_{row}.png")
            if os.path.isfile(curves):       # the README shows the demo's curves beside its other figures
                try:
                    os.makedirs(folder, exist_ok=True)
                    shutil.copyfile(curves, os.path.join(folder, prefix + "curves.png"))
                except OSError as e:
                    say(f"error: cannot copy {curves} to {folder}: {e.strerror or e}")
                    failures += 1
        else:
            folder, prefix = s.img_dir or os.path.join(s.out_dir, "figures"), row + "_"
        cmd = [plan.python, "-m", "utils.analysis.plots", "--lif", lif, "--asa", asa, "--out", folder,
               "--prefix", prefix]
        failures += subprocess.run(cmd, cwd=plan.root).returncode != 0
    return failures


# ------------------------------------------------------------------------------------------------
# command line (final.sh's)
# ------------------------------------------------------------------------------------------------

def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python3 -m utils.analysis.launch",
                                description="final.sh's plan file, one run of it, and the collection at "
                                            "the end (module docstring).")
    sub = p.add_subparsers(dest="command", required=True)
    pp = sub.add_parser("plan", help="plan the runs from final.sh's variables and save the plan")
    pp.add_argument("plan", help="the plan file to write")
    pp.add_argument("rows", nargs="*", metavar="ROW", help="rows (default: the paper rows, or the demo rows)")
    pp.add_argument("--demo", action="store_true", help="the demo rows")
    pp.add_argument("--counts", metavar="FILE", help="write '<runs to start> <jobs>' there (for final.sh)")
    pr = sub.add_parser("run", help="run or continue run K of the plan's queue")
    pr.add_argument("plan", help="the plan file")
    pr.add_argument("k", type=int, help="the run's number in the queue (from 0)")
    pr.add_argument("--slot", type=int, default=0, help="job slot (picks the device of DEVICES)")
    pr.add_argument("--record", metavar="FILE", help="append '<run> <outcome>' there")
    pc = sub.add_parser("collect", help="table, curves and figures; name every unfinished run")
    pc.add_argument("plan", help="the plan file")
    pc.add_argument("--record", metavar="FILE", help="the outcomes 'run' appended")
    pc.add_argument("--problems", metavar="FILE", help="write the number of problems there (for final.sh)")
    a = p.parse_args(argv)
    return one_line_errors(command, a)


def command(a) -> int:
    if a.command == "plan":
        plan = make_plan(os.environ, a.demo, a.rows)
        s = plan.settings
        save_plan(plan, a.plan)
        if a.counts:
            with open(a.counts, "w") as f:
                f.write(f"{len(plan.queue)} {min(s.jobs, len(plan.queue))}\n")
        return 0
    plan = load_plan(a.plan)
    if a.command == "run":
        # final.sh passes each stop signal on once; a terminal's Ctrl-C must not reach this
        # process a second time through final.sh's process group
        try:
            os.setpgrp()
        except OSError:                   # already a session's leader: nothing shares its group
            pass
        rc = one_line_errors(run_one, plan, a.k, a.slot)
        if a.record:
            with open(a.record, "a", encoding="utf-8") as f:
                f.write(f"{plan.queue[a.k]} {OUTCOME.get(rc, 'failed')}\n")
        return rc
    problems = collect(plan, a.record)
    if a.problems:
        with open(a.problems, "w") as f:
            f.write(f"{problems}\n")
    return 1 if problems else 0


def one_line_errors(fn, *args) -> int:
    """``fn(*args)``, a refusal (ValueError, UserError) or a file error printed as one `error:`
    line (exit 2)."""
    try:
        return fn(*args)
    except (ValueError, UserError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        name = getattr(e, "filename", None)
        print(f"error: {name + ': ' if name else ''}{e.strerror or e}", file=sys.stderr)
        return 2

if __name__ == "__main__":
    sys.exit(main())
