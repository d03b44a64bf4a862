"""final.sh with JOBS: runs side by side, each with its own threads (and device), results that do
not depend on JOBS, one console line per run, and paths that no plan line splits."""
import json
import subprocess
import sys

import config
from utils.analysis import launch, rows
from utils.analysis.rows import ROW_BY_NAME

from final_runs import ODD, ROOT, RUNS, final, final_env, jobs2, metrics  # noqa: F401 (fixture)


def test_two_jobs_overlap_and_finish(jobs2):
    base, r = jobs2
    assert r.returncode == 0, r.stdout + r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].endswith(", 2 runs at once")             # JOBS: one slot per device of DEVICES
    started = [i for i, l in enumerate(lines) if l.startswith("== demo_synthetic_") and ": started (" in l]
    finished = [i for i, l in enumerate(lines) if l.startswith("== demo_synthetic_") and ": finished in" in l]
    assert len(started) == 2 and len(finished) == 2
    assert max(started) < min(finished)                    # both were going at the same time
    for name in RUNS:
        (line,) = [l for l in lines if l.startswith(f"== {name}: started")]
        # one line per run with its log, the whole odd path in it; one CPU thread each (OMP_NUM_THREADS)
        assert f"(log: {repr(str(base / 'runs' / name) + '.log')})" in line
        assert "device cpu, 1 CPU thread(s)" in line            # its slot's device, its threads
        # epoch lines carry the run's name when runs go side by side
        assert any(l.startswith(f"   [{name}] epoch 2/2") for l in lines)
        assert len(metrics(base / "runs" / name)) == 2
    assert lines[-1].startswith("final.sh: 2 run(s) started (2 finished, 0 failed, 0 interrupted") and \
        "0 problem(s)" in lines[-1]
    assert (base / "out" / "table.csv").is_file() and (base / "img" / "synthetic_curves.png").is_file()


def test_metrics_do_not_depend_on_jobs(jobs2, tmp_path):
    """Each run of JOBS=2 equals the same run made alone (JOBS=1's way: one launcher at a time)."""
    base, r = jobs2
    assert r.returncode == 0, r.stdout + r.stderr
    env = final_env(tmp_path)
    plan = tmp_path / "plan.json"
    assert subprocess.run([sys.executable, "-m", "utils.analysis.launch", "plan", "--demo", str(plan),
                           "demo_synthetic"], env=env, cwd=ROOT, capture_output=True).returncode == 0
    assert json.loads(plan.read_text())["settings"]["jobs"] == 1
    for k, name in enumerate(RUNS):
        one = subprocess.run([sys.executable, "-m", "utils.analysis.launch", "run", str(plan), str(k)],
                             env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert one.returncode == 0, one.stdout
        assert metrics(tmp_path / "runs" / name) == metrics(base / "runs" / name)


def test_odd_paths_stay_one_argument(tmp_path):
    """DATA_ROOT and RUNS_DIR with |, newline, spaces and quotes reach train_test.py's parser whole."""
    data, runs = tmp_path / ODD / "data", tmp_path / ODD / "runs"
    (data / "gesture" / "train").mkdir(parents=True)
    env = {"DATA_ROOT": str(data), "RUNS_DIR": str(runs), "SEEDS": "0 3"}
    items = rows.plan([ROW_BY_NAME["gesture"]], env, extra=["-num_work", "3"])
    assert [i.name for i in items] == ["gesture_no", "gesture_ASA", "gesture_no_s3", "gesture_ASA_s3"]
    plan = launch.Plan(str(ROOT), sys.executable, launch.Settings(str(runs), "out", "", False, [], [0, 3],
                                                                  devices=["cpu", "cuda:1"], jobs=2), items, [])
    for item in items:
        argv = launch.run_argv(plan, item, "new", slot=1)
        args = config.build_parser().parse_args(argv)
        assert args.data_path == str(data / "gesture") and args.modelPath == str(runs)
        assert (args.name, args.attention, args.num_work, args.device) == (item.name, item.attention, 3, "cuda:1")
        resume = launch.run_argv(plan, item, "resume", slot=0)
        assert config.build_parser().parse_args(resume).resume == str(runs / item.name)
    # a path that starts with '-' is a value, not a flag
    plan.settings.runs_dir = "-runs"
    assert config.build_parser().parse_args(launch.run_argv(plan, items[0], "new", 0)).modelPath == "-runs"


def test_variables_that_cannot_be_carried_are_refused(tmp_path, monkeypatch, capsys):
    cases = [({"JOBS": "two"}, "JOBS='two'"), ({"JOBS": "3", "DEVICES": "cuda:0 cuda:1"}, "JOBS=3"),
             ({"EXTRA_FLAGS": "-num_work '4"}, "EXTRA_FLAGS="), ({"EXTRA_FLAGS": "-seed 3"}, "-seed (use SEEDS)"),
             ({"EXTRA_FLAGS": "-attention ASA"}, "-attention"), ({"EXTRA_FLAGS": "-nosuchflag 1"}, "not train_test.py flags"),
             ({"EXTRA_FLAGS": "-num_work x"}, "-num_work"),
             ({"EXTRA_FLAGS": "-device cpu", "DEVICES": "cpu"}, "DEVICES gives each run"),
             ({"SEEDS": "0 x"}, "SEEDS="), ({"RUNS_DIR": "runs\udcff"}, "RUNS_DIR=")]
    for extra, named in cases:
        for k in ("JOBS", "DEVICES"):
            monkeypatch.delenv(k, raising=False)
        for k, v in final_env(tmp_path, **extra).items():
            monkeypatch.setenv(k, v)
        assert launch.main(["plan", "--demo", str(tmp_path / "plan.json"), "demo_synthetic"]) == 2, extra
        err = capsys.readouterr().err
        assert err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
        assert named in err, (named, err)
        assert not (tmp_path / "plan.json").exists() and not (tmp_path / "runs").exists()
    # through final.sh: a path that is not UTF-8 would not survive config.json and the logs
    env = {k.encode(): v.encode() for k, v in final_env(tmp_path).items()}
    env[b"RUNS_DIR"] = str(tmp_path).encode() + b"/runs\xff"
    r = subprocess.run(["sh", str(ROOT / "final.sh"), "demo"], env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and r.stderr.startswith("error: RUNS_DIR=") and "UTF-8" in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and not list(tmp_path.iterdir())


def test_the_launcher_starts_without_torch():
    """Each job slot starts `python3 -m utils.analysis.launch run` per run; it only plans, locks and
    starts train_test.py, so it must not pay for importing torch (about 2 s per run on a CPU)."""
    r = subprocess.run([sys.executable, "-c", "import sys, utils.analysis.launch; print('torch' in sys.modules)"],
                       cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == "False", r.stdout + r.stderr
