"""final.sh and its collector: the rows against the specification in the developers' shared folder, skipping absent data,
not redoing finished runs, and the results table from hand-made run folders."""
import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import config
from utils.analysis import table
from utils.analysis import rows
from utils.analysis.rows import ROW_BY_NAME, ROWS

ROOT = Path(__file__).resolve().parents[1]
PAPER_ROWS = ["gesture", "gesture_sj", "gait_day", "gait_night", "action", "har_dvs", "recognition"]


# ------------------------------------------------------------------------------------------------
# the rows against the developers' specification (its section 7), when present
# ------------------------------------------------------------------------------------------------

def spec_section7(spec: str) -> tuple[list[list[str]], list[list[str]]]:
    """(paper table rows, authors' run settings rows) of the specification's section 7, as cell lists."""
    sec = spec.split("## 7.")[1].split("\n## ")[0]
    tables, cur = [], []
    for line in sec.splitlines():
        if line.startswith("|"):
            cur.append([c.strip() for c in line.strip().strip("|").split("|")])
        elif cur:
            tables.append(cur)
            cur = []
    if cur:
        tables.append(cur)
    assert len(tables) == 2
    return [r for r in tables[0][2:]], [r for r in tables[1][2:]]


def expected_settings(cells: list[str]) -> dict:
    """Flag values of one 'authors' run settings' row, with the specification's defaults filled in."""
    row, arch, T, batch, clip, epochs, other = cells
    train, test = batch.split("/")
    exp = dict(arch=arch, T=int(T), batch_size_train=int(train), batch_size_test=int(test),
               clip=int(clip), num_epochs=int(epochs), seed=0, lam=0.5, lr=1e-4, weight_decay=1e-4,
               dt=15, ds=4)
    flags = re.findall(r"-(\w+) (\S+)", other.split("(")[0])
    for k, v in flags:
        exp[k] = v if k == "ps" else float(v)
    if row.startswith("action"):
        exp["num_classes"] = 12          # the specification: "use 12"
    return exp


def row_name(first_cell: str) -> str:
    return first_cell.split(" ")[0]


def resolved(row, tmp_path):
    os.makedirs(tmp_path / "data", exist_ok=True)
    return config.parse_args(row.flags.split() + ["-data_path", str(tmp_path / "data")])


def test_rows_match_spec_settings(shared, tmp_path):
    _, settings = spec_section7((shared / "SPEC.md").read_text())
    names = [row_name(c[0]) for c in settings]
    assert set(names) | {"har_dvs"} == set(PAPER_ROWS)
    for cells in settings:
        row = ROW_BY_NAME[row_name(cells[0])]
        args = resolved(row, tmp_path)
        for k, v in expected_settings(cells).items():
            got = getattr(args, k)
            assert (got == pytest.approx(v) if isinstance(v, float) else got == v), (row.name, k, got, v)
    har = resolved(ROW_BY_NAME["har_dvs"], tmp_path)
    assert (har.arch, har.num_classes, har.seed, har.lam) == ("sew18", 300, 0, 0.5)


def test_paper_numbers_match_spec(shared):
    paper_rows, _ = spec_section7((shared / "SPEC.md").read_text())
    paper = table.read_paper()
    keys = ["gesture", "gesture_sj", "gait_day", "gait_night", "action", "har_dvs"]
    assert len(paper_rows) == len(keys)
    for key, cells in zip(keys, paper_rows):
        acc_no, nasfr_no = (float(x) for x in cells[-2].split("/"))
        acc_asa, nasfr_asa = (float(x) for x in cells[-1].split("/"))
        assert paper[key] == dict(acc_no=acc_no, nasfr_no=nasfr_no, acc_asa=acc_asa, nasfr_asa=nasfr_asa)


def test_rows_parse_and_are_unique(tmp_path):
    assert [r.name for r in ROWS if not r.demo] == PAPER_ROWS
    assert len({r.name for r in ROWS}) == len(ROWS)
    for row in ROWS:
        argv = row.flags.split()
        for forbidden in ("-attention", "-name", "-data_path", "-modelPath"):
            assert forbidden not in argv          # final.sh adds these per run
        assert "-seed" in argv and "-lam" in argv and "-num_epochs" in argv
        if row.folder:
            resolved(row, tmp_path)


# ------------------------------------------------------------------------------------------------
# final.sh
# ------------------------------------------------------------------------------------------------

def run_final(tmp_path, *args, **env):
    e = dict(os.environ, DATA_ROOT=str(tmp_path / "data"), RUNS_DIR=str(tmp_path / "runs"),
             OUT_DIR=str(tmp_path / "out"), PYTHON=sys.executable, NMNIST_PATH="")
    e.update(env)
    return subprocess.run(["sh", str(ROOT / "final.sh"), *args], cwd=tmp_path, env=e,
                          capture_output=True, text=True, timeout=300)


def test_absent_data_is_skipped_with_notes(tmp_path):
    (tmp_path / "data" / "gait_day").mkdir(parents=True)            # present but empty: still absent
    r = run_final(tmp_path)
    assert r.returncode == 0, r.stderr
    notes = [l for l in r.stdout.splitlines() if l.startswith("-- skip")]
    assert len(notes) == len(PAPER_ROWS)
    for name, note in zip(PAPER_ROWS, notes):
        assert f"skip {name}: no data in {tmp_path / 'data' / ROW_BY_NAME[name].folder}" in note
        assert "datasets.prepare" in note
    assert "--out " + str(tmp_path / "data" / "gesture") in notes[0]
    assert "0 run(s) started" in r.stdout
    assert not [p for p in (tmp_path / "runs").iterdir()]           # nothing ran
    md = (tmp_path / "out" / "table.md").read_text()
    assert md.count("not run") == len(PAPER_ROWS) and "91.3 / 0.176" in md


def test_subset_and_unknown_rows(tmp_path):
    r = run_final(tmp_path, "gesture", "har_dvs")
    assert [l.split(":")[0] for l in r.stdout.splitlines() if l.startswith("-- ")] == \
        ["-- skip gesture", "-- skip har_dvs"]
    bad = run_final(tmp_path, "gestur")
    assert bad.returncode == 2 and "unknown row" in bad.stderr
    assert "DATA_ROOT" in run_final(tmp_path, "-h").stdout


def fake_run(folder: Path, accs, nasfrs, num_epochs=None, best=False):
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"num_epochs": num_epochs or len(accs), "arch": "A"}))
    with open(folder / "metrics.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["epoch", "lr", "train_loss", "train_acc", "test_loss", "test_acc", "test_nasfr",
                    "fr_a", "epoch_seconds"])
        for e, (a, n) in enumerate(zip(accs, nasfrs)):
            w.writerow([e, 1e-3, 0.1, 50.0, 0.1, a, n, n, 1.0])
    if best:
        (folder / "best.pth").write_bytes(b"")


def test_plan_skips_finished_runs_and_continues_unfinished(tmp_path):
    (tmp_path / "data" / "gesture").mkdir(parents=True)
    (tmp_path / "data" / "gesture" / "train").mkdir()
    runs = tmp_path / "runs"
    fake_run(runs / "gesture_no", [10, 20], [0.2, 0.1], num_epochs=2, best=True)    # finished
    fake_run(runs / "gesture_ASA", [10], [0.2], num_epochs=200)                     # unfinished
    env = {"DATA_ROOT": str(tmp_path / "data"), "RUNS_DIR": str(runs)}
    items = rows.plan([ROW_BY_NAME["gesture"]], env)
    assert items[0].action == "done" and "done already" in items[0].note and not items[0].runnable
    # a finished run of other settings (here 2 epochs, the row says 200) is reused, and said so
    assert "other settings (-num_epochs 2 (row: 200))" in items[0].note
    # unfinished, with or without a checkpoint yet: continued with -resume in its own folder
    assert (items[1].action, items[1].row, items[1].attention, items[1].name) == \
        ("resume", "gesture", "ASA", "gesture_ASA")
    assert items[1].data_dir == str(tmp_path / "data" / "gesture") and items[1].runnable
    (runs / "gesture_ASA" / "last.pth").write_bytes(b"")
    assert rows.plan([ROW_BY_NAME["gesture"]], env)[1].action == "resume"
    # a folder without config.json (killed before it was set up): moved aside and started again
    (runs / "gesture_ASA" / "config.json").unlink()
    assert rows.plan([ROW_BY_NAME["gesture"]], env)[1].action == "restart"
    # a folder holding a run with other settings is never touched
    (runs / "gesture_ASA" / "config.json").write_text(json.dumps({"num_epochs": 200, "T": 30}))
    items = rows.plan([ROW_BY_NAME["gesture"]], env)
    assert items[1].action == "other" and "other settings" in items[1].note and "-T 30" in items[1].note
    # ... unless EXTRA_FLAGS gives those settings: then it is this run, continued
    items = rows.plan([ROW_BY_NAME["gesture"]], env, extra=["-T", "30"])
    assert items[1].action == "resume" and items[1].flags[-2:] == ("-T", "30")
    # flags that only say where or how fast a run computes never make it another run
    items = rows.plan([ROW_BY_NAME["gesture"]], env, extra=["-T", "30", "-num_work", "7", "-device", "cpu"])
    assert items[1].action == "resume"
    # and absent data wins over everything
    items = rows.plan([ROW_BY_NAME["gait_day"]], env)
    assert len(items) == 1 and isinstance(items[0], str) and "skip gait_day" in items[0]


# ------------------------------------------------------------------------------------------------
# the collector
# ------------------------------------------------------------------------------------------------

def test_collector_on_hand_made_runs(tmp_path):
    runs = tmp_path / "runs"
    # best LIF-SNN epoch: 80.0 at epochs 1 and 2 -> the later one (NASFR 0.20)
    fake_run(runs / "gesture_no", [50.0, 80.0, 80.0, 70.0], [0.30, 0.25, 0.20, 0.10])
    fake_run(runs / "gesture_ASA", [60.0, 85.5, 84.0], [0.10, 0.05, 0.04], num_epochs=200)
    fake_run(runs / "gait_day_ASA", [40.0], [0.3])
    out = tmp_path / "out"
    assert table.main([str(runs), "--out", str(out), "--no-energy"]) == 0
    with open(out / "table.csv", newline="") as f:
        recs = {r["row"]: r for r in csv.DictReader(f)}
    assert set(recs) == {"gesture", "gait_day"}                  # rows with runs only
    g = recs["gesture"]
    assert float(g["acc_no"]) == 80.0 and float(g["nasfr_no"]) == 0.20 and g["best_epoch_no"] == "3"
    assert float(g["acc_asa"]) == 85.5 and float(g["nasfr_asa"]) == 0.05
    assert float(g["d_acc_pp"]) == pytest.approx(5.5)
    assert float(g["d_nasfr_pct"]) == pytest.approx(-75.0)
    assert float(g["paper_d_acc_pp"]) == pytest.approx(3.9)
    assert float(g["paper_d_nasfr_pct"]) == pytest.approx((0.038 - 0.176) / 0.176 * 100, abs=1e-4)
    assert g["epochs_no"] == "4/4" and g["epochs_asa"] == "3/200"
    assert recs["gait_day"]["acc_no"] == "" and recs["gait_day"]["d_acc_pp"] == ""
    md = (out / "table.md").read_text()
    assert "| DVS128 Gesture | A | 4/4 · 3/200 | 80.0 / 0.200 | 85.5 / 0.050 | +5.5 pp / -75.0% |" in md
    # every paper row, also those not run
    assert table.main([str(runs), "--out", str(out), "--no-energy", "--all-paper-rows"]) == 0
    assert (out / "table.md").read_text().count("not run") == len(PAPER_ROWS) - 2


def test_collector_energy_columns(tmp_path):
    from types import SimpleNamespace
    from models import create_net
    runs = tmp_path / "runs"
    for att, rate in (("no", 0.4), ("ASA", 0.1)):
        folder = runs / f"demo_synthetic_{att}"
        args = SimpleNamespace(backend="fused", arch="A", T=2, attention=att, asa_mask="reference", reduction=1, lam=0.5,
                               ps="00000", num_classes=3, frame_size=(4, 4), num_epochs=1)
        folder.mkdir(parents=True)
        torch.save({"model": create_net(args).state_dict(), "config": vars(args), "epoch": 0},
                   folder / "best.pth")
        (folder / "config.json").write_text(json.dumps({"num_epochs": 1, "arch": "A"}))
        layers = ["ConvAttLIFs.0.spike.0", "ConvAttLIFs.1.spike.0", "ConvAttLIFs.2.spike.0",
                  "FCs.0.spike.0", "FCs.1.spike.0"]
        with open(folder / "metrics.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["epoch", "test_acc", "test_nasfr"] + [f"fr_{l}" for l in layers])
            w.writerow([0, 50.0, rate] + [rate] * 5)
    recs = table.collect(str(runs), [ROW_BY_NAME["demo_synthetic"]])
    r = recs[0]
    assert r["notes"] == ""
    first = 2 * (64 * 4 * 4 * 2 * 9) * 4.6e-6                          # uJ, MAC every step
    syn = lambda rate: first + rate * 2 * (128 * 4 * 4 * 64 * 9 + 128 * 2 * 2 * 128 * 9  # noqa: E731
                                           + 128 * 1 * 1 * 256 + 256 * 3) * 0.9e-6
    assert r["energy_no_uJ"] == pytest.approx(syn(0.4))
    assert r["energy_asa_uJ"] == pytest.approx(syn(0.1) + r["energy_asa_part_uJ"])
    assert r["energy_asa_part_uJ"] > 0
    assert r["d_energy_pct"] == pytest.approx((r["energy_asa_uJ"] - r["energy_no_uJ"]) / r["energy_no_uJ"] * 100)


# ------------------------------------------------------------------------------------------------
# seeds: final.sh's plan per seed, the collector's mean, sample std and n, paired deltas
# ------------------------------------------------------------------------------------------------

def test_plan_runs_each_row_once_per_seed(tmp_path):
    (tmp_path / "data" / "gesture" / "train").mkdir(parents=True)
    env = {"DATA_ROOT": str(tmp_path / "data"), "RUNS_DIR": str(tmp_path / "runs"), "SEEDS": "0 7"}
    items = rows.plan([ROW_BY_NAME["gesture"]], env)
    # the row's own seed keeps today's folder names; another seed gets _s<seed>
    assert [i.name for i in items] == ["gesture_no", "gesture_ASA", "gesture_no_s7", "gesture_ASA_s7"]
    for item, seed in zip(items, (0, 0, 7, 7)):
        assert item.action == "new" and item.seed == seed
        args = config.parse_args(list(item.flags) + ["-data_path", item.data_dir])
        assert args.seed == seed and args.T == 60              # only the seed differs from the row
    # without SEEDS: one run per attention, exactly as before seeds existed
    one = rows.plan([ROW_BY_NAME["gesture"]], {k: v for k, v in env.items() if k != "SEEDS"})
    assert [(i.name, " ".join(i.flags)) for i in one] == [("gesture_no", ROW_BY_NAME["gesture"].flags),
                                                          ("gesture_ASA", ROW_BY_NAME["gesture"].flags)]
    for bad, why in (("0 x", "non-negative integers"), ("1 1", "twice"), ("-1", "non-negative")):
        r = run_final(tmp_path, "gesture", SEEDS=bad)
        assert r.returncode == 2 and r.stderr.strip().splitlines() == [r.stderr.strip()], r.stderr
        assert r.stderr.startswith(f"error: SEEDS={bad!r}") and why in r.stderr


def test_collector_mean_std_and_paired_deltas_over_seeds(tmp_path):
    runs = tmp_path / "runs"
    # LIF-SNN, seeds 0 1 2: best epochs 80.0 / 0.20, 70.0 / 0.25, 90.0 / 0.40
    fake_run(runs / "gesture_no", [50.0, 80.0], [0.30, 0.20])
    fake_run(runs / "gesture_no_s1", [70.0, 60.0], [0.25, 0.10])
    fake_run(runs / "gesture_no_s2", [90.0], [0.40])
    # + ASA, seeds 0 1 3: 85.0 / 0.10, 79.0 / 0.05, 60.0 / 0.20 (seed 3 has no LIF-SNN run)
    fake_run(runs / "gesture_ASA", [85.0], [0.10])
    fake_run(runs / "gesture_ASA_s1", [79.0], [0.05])
    fake_run(runs / "gesture_ASA_s3", [60.0], [0.20])
    (runs / "gesture_ASA_s4.log").write_text("a console log, not a run folder")
    out = tmp_path / "out"
    assert table.main([str(runs), "--out", str(out), "--no-energy"]) == 0
    with open(out / "table.csv", newline="") as f:
        (g,) = list(csv.DictReader(f))
    num = lambda k: float(g[k])  # noqa: E731
    assert g["seeds"] == "0 1 2 3" and (g["n_no"], g["n_asa"], g["n_pairs"]) == ("3", "3", "2")
    assert num("acc_no") == pytest.approx(80.0)
    assert num("acc_no_std") == pytest.approx(((0 ** 2 + 10 ** 2 + 10 ** 2) / 2) ** 0.5)       # 10.0, ddof 1
    nasfr_mean = (0.20 + 0.25 + 0.40) / 3
    assert num("nasfr_no") == pytest.approx(nasfr_mean, abs=1e-6)
    assert num("nasfr_no_std") == pytest.approx(
        (((0.20 - nasfr_mean) ** 2 + (0.25 - nasfr_mean) ** 2 + (0.40 - nasfr_mean) ** 2) / 2) ** 0.5, abs=1e-6)
    assert num("acc_asa") == pytest.approx((85 + 79 + 60) / 3, abs=1e-6)
    # deltas from the seeds with both runs (0 and 1), then averaged: acc +5 and +9 -> 7 +- 2.83;
    # NASFR -50 % and -80 % -> -65 % +- 21.2
    assert num("d_acc_pp") == pytest.approx(7.0) and num("d_acc_pp_std") == pytest.approx(8 ** 0.5)
    assert num("d_nasfr_pct") == pytest.approx(-65.0) and num("d_nasfr_pct_std") == pytest.approx(450 ** 0.5)
    md = (out / "table.md").read_text()
    assert "| 80.0 ± 10.0 / 0.283 ± 0.104 (n=3) | 74.7 ± 13.1 / 0.117 ± 0.076 (n=3) | " \
           "+7.0 ± 2.8 pp / -65.0 ± 21.2% (n=2) |" in md
    assert "ddof = 1" in md and (out / "curves_gesture.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # only some seeds: --seeds 0 2 -> LIF-SNN 80, 90; + ASA seed 0 alone
    assert table.main([str(runs), "--out", str(out), "--no-energy", "--no-curves", "--seeds", "0", "2"]) == 0
    with open(out / "table.csv", newline="") as f:
        (g,) = list(csv.DictReader(f))
    assert (g["n_no"], g["n_asa"], g["n_pairs"]) == ("2", "1", "1")
    assert float(g["acc_no"]) == pytest.approx(85.0) and float(g["acc_no_std"]) == pytest.approx(50 ** 0.5)
    assert g["acc_asa_std"] == "" and float(g["d_acc_pp"]) == pytest.approx(5.0) and g["d_acc_pp_std"] == ""


def test_plan_leaves_unreadable_run_folders_alone(tmp_path):
    """A run folder whose files cannot be read is left alone with a note naming it, not a traceback
    that stops the plan."""
    runs = tmp_path / "runs"
    fake_run(runs / "demo_synthetic_no", [10.0], [0.2], num_epochs=3)
    (runs / "demo_synthetic_no" / "metrics.csv").write_text("epoch,test_acc\nnot a number,1\n")
    items = rows.plan([ROW_BY_NAME["demo_synthetic"]], {"RUNS_DIR": str(runs)})
    assert items[0].action == "other" and "demo_synthetic_no cannot be read" in items[0].note
    assert items[1].action == "new"
