"""End to end through train_test.py on the built-in dataset, as a user runs it."""
import csv
import json
import subprocess
import sys

import torch

from conftest import DATA, ROOT

SMALL = ["-dataset", "synthetic", "-synthetic_train", "32", "-synthetic_test", "16", "-T", "4",
         "-reduction", "2", "-batch_size_train", "8", "-batch_size_test", "4", "-clip", "3",
         "-num_work", "0", "-seed", "1"]


def run_cli(*argv, cwd):
    r = subprocess.run([sys.executable, str(ROOT / "train_test.py"), *argv], cwd=cwd,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    return r


def test_training_run_writes_metrics_and_checkpoints(tmp_path):
    r = run_cli(*SMALL, "-num_epochs", "2", "-modelPath", str(tmp_path), "-name", "run1", cwd=tmp_path)
    run = tmp_path / "run1"
    assert f"run folder: {run}" in r.stdout
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    assert [row["epoch"] for row in rows] == ["0", "1"]
    fr_cols = [k for k in rows[0] if k.startswith("fr_")]
    assert len(fr_cols) == 5                       # arch A: 3 conv + 2 fc spiking layers
    for row in rows:
        assert 0 <= float(row["test_acc"]) <= 100 and 0 <= float(row["train_acc"]) <= 100
        rates = [float(row[k]) for k in fr_cols]
        assert all(0 <= r <= 1 for r in rates) and 0 <= float(row["test_nasfr"]) <= 1
        assert min(rates) <= float(row["test_nasfr"]) <= max(rates)
    cfg = json.load(open(run / "config.json"))
    assert float(rows[0]["lr"]) == float(rows[1]["lr"]) == cfg["lr"]    # epochs 0 and 1 share the lr
    assert cfg["T"] == 4 and cfg["num_classes"] == 10 and cfg["frame_size"] == [16, 16]
    last = torch.load(run / "last.pth", weights_only=True)
    best = torch.load(run / "best.pth", weights_only=True)
    assert last["epoch"] == 1 and best["best_acc"] == max(float(r["test_acc"]) for r in rows)

    # evaluating the best checkpoint reproduces its logged test accuracy and NASFR
    run_cli(*SMALL, "-eval_only", "-pretrained_path", str(run / "best.pth"), "-modelPath", str(tmp_path),
            "-name", "eval1", cwd=tmp_path)
    ev = json.load(open(tmp_path / "eval1" / "eval.json"))
    logged = rows[best["epoch"]]
    assert abs(ev["test_acc"] - float(logged["test_acc"])) < 1e-9
    assert abs(ev["test_nasfr"] - float(logged["test_nasfr"])) < 1e-9
    assert len(ev["firing_rates"]) == 5


def test_existing_run_folder_is_never_overwritten(tmp_path):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("mine")
    r = subprocess.run([sys.executable, str(ROOT / "train_test.py"), *SMALL, "-num_epochs", "1",
                        "-modelPath", str(tmp_path), "-name", "taken"], capture_output=True, text=True)
    assert r.returncode != 0 and "already exists" in r.stderr
    assert (tmp_path / "taken" / "notes.txt").read_text() == "mine"


def test_eval_only_accepts_an_authors_state_dict(tmp_path):
    case = torch.load(DATA / "net_cases.pt", weights_only=False)[0]      # arch A, T 8, 11 classes
    torch.save(case["state_dict"], tmp_path / "authors.pth")
    run_cli("-dataset", "synthetic", "-synthetic_test", "8", "-ds", "4", "-T", "8", "-reduction", "4",
            "-ps", "00111", "-num_classes", "11", "-clip", "2", "-num_work", "0", "-eval_only",
            "-pretrained_path", str(tmp_path / "authors.pth"), "-modelPath", str(tmp_path), "-name", "ev",
            cwd=tmp_path)
    ev = json.load(open(tmp_path / "ev" / "eval.json"))
    assert 0 <= ev["test_acc"] <= 100 and 0 < ev["test_nasfr"] < 1
