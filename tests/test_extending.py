"""The newcomer tasks of docs/architecture.md, done inside a test with no other file changed: a toy
architecture registered here trains and evaluates through train_test.py's own entry point, gets a
start-up memory estimate and an energy figure; toy metrics registered here reach metrics.csv and
TensorBoard."""
import csv
import json
from types import SimpleNamespace

import pytest
import torch
from torch import nn

import train_test
from models import ARCHITECTURES, register
from models.module import LIF, make_attention
from utils.analysis import energy
from utils.run.memory import estimate_bytes
from utils.run.metrics import SAMPLE_METRICS, clip_vote, sample_metric

SMALL = ["-dataset", "synthetic", "-synthetic_train", "16", "-synthetic_test", "8", "-T", "4",
         "-reduction", "2", "-batch_size_train", "8", "-batch_size_test", "4", "-clip", "1",
         "-num_work", "0", "-seed", "1", "-num_epochs", "2"]


class Toy(nn.Module):
    """conv 2->4 (3x3) -> BN -> ASA -> LIF -> flatten -> Linear -> LIF; logits = mean over T."""

    def __init__(self, args):
        super().__init__()
        X, Y = args.frame_size
        self.conv, self.bn = nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.attn = make_attention(args.attention, args.T, 4, args.reduction, args.lam, args.asa_mask,
                                   args.backend)
        self.sn1 = LIF(backend=args.backend)
        self.fc = nn.Linear(4 * X * Y, args.num_classes)
        self.sn2 = LIF(vth=0.05, backend=args.backend)

    def forward(self, x):
        n, t = x.shape[:2]
        y = self.bn(self.conv(x.flatten(0, 1))).unflatten(0, (n, t))
        return self.sn2(self.fc(self.sn1(self.attn(y)).flatten(2))).mean(1)


@pytest.fixture
def toy():
    register("toy", "a test's toy network")(Toy)
    yield "toy"
    ARCHITECTURES.pop("toy")


@pytest.mark.parametrize("attention", ["ASA", "no"])
def test_a_registered_architecture_trains_evaluates_and_is_counted(toy, tmp_path, attention, capsys):
    run = tmp_path / f"toy_{attention}"
    assert train_test.main(SMALL + ["-arch", toy, "-attention", attention, "-modelPath", str(tmp_path),
                                    "-name", run.name]) == 0
    with open(run / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["epoch"] for r in rows] == ["0", "1"]
    assert set(rows[0]) >= {"fr_sn1", "fr_sn2", "test_nasfr"}       # the spiking layers, found by type
    assert json.loads((run / "config.json").read_text())["arch"] == toy

    assert train_test.main(SMALL + ["-arch", toy, "-attention", attention, "-eval_only", "-pretrained_path",
                                    str(run / "best.pth"), "-modelPath", str(tmp_path), "-name", "eval"]) == 0
    assert 0 <= json.loads((tmp_path / "eval" / "eval.json").read_text())["test_acc"] <= 100

    # the memory estimate reads the toy's conv output and parameters off the network itself
    args = json.loads((run / "config.json").read_text())
    ns = SimpleNamespace(**{**args, "frame_size": tuple(args["frame_size"]), "eval_only": False})
    X, Y = ns.frame_size
    params = sum(p.numel() for p in Toy(ns).parameters())
    train = 4 * 8 * ns.T * (2 * X * Y + 4 * X * Y)         # bytes: input frames + the conv output
    test = 4 * 4 * 1 * ns.T * (2 * X * Y + 4 * X * Y)
    assert estimate_bytes(ns, 8) == max(train, test) + 16 * params

    capsys.readouterr()
    assert energy.main([str(run / "best.pth")]) == 0
    out = capsys.readouterr().out
    assert "conv" in out and "fc" in out and "total" in out
    rep = energy.checkpoint_energy(str(run / "best.pth"))
    assert [l["name"] for l in rep["layers"]][:1] == ["conv"] and rep["total_uJ"] > 0
    assert ("attn" in [l["name"] for l in rep["layers"]]) == (attention == "ASA")


@pytest.fixture
def toy_metrics():
    @sample_metric("one")                       # a sum of 1 per sample: its mean is exactly 1
    def one(b):
        return torch.tensor(float(len(b.labels)))

    @sample_metric("votes", scale=100.0)        # the accuracy again, computed here
    def votes(b):
        return clip_vote(b.logits, b.labels, b.clip).sum()
    yield ["one", "votes"]
    for name in ("one", "votes"):
        SAMPLE_METRICS.pop(name)


def test_a_registered_metric_reaches_metrics_csv_tensorboard_and_the_table(toy_metrics, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from utils.analysis import table
    run = tmp_path / "demo_synthetic_ASA"                # a run folder of the demo row, for the table
    assert train_test.main(SMALL + ["-clip", "3", "-modelPath", str(tmp_path), "-name", run.name]) == 0
    with open(run / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2
    for r in rows:
        for phase in ("train", "test"):
            assert float(r[f"{phase}_one"]) == 1.0
            assert float(r[f"{phase}_votes"]) == float(r[f"{phase}_acc"])
    ea = EventAccumulator(str(run))
    ea.Reload()
    for tag, column in (("train/one", "train_one"), ("test/votes", "test_votes")):
        assert [(e.step, e.value) for e in ea.Scalars(tag)] == \
            [(int(r["epoch"]), pytest.approx(float(r[column]))) for r in rows]
    # the results table: every metric column at the best epoch (the last of equal accuracies)
    assert table.main([str(tmp_path), "--out", str(tmp_path / "out"), "--demo", "--no-energy",
                       "--no-curves"]) == 0
    with open(tmp_path / "out" / "table.csv") as f:
        rec = next(csv.DictReader(f))
    best = max(reversed(rows), key=lambda r: float(r["test_acc"]))
    assert float(rec["test_one_asa"]) == 1.0 and float(rec["train_votes_asa"]) == float(best["train_acc"])
    assert rec["test_one_no"] == ""                      # no LIF-SNN run
