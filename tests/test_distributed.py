"""Several processes: disjoint shards, exact loss weighting, reduced metrics, rank 0 alone writes."""
import csv
import os
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from conftest import ROOT
from utils.run.distributed import Dist, split_sizes
from utils.run.engine import Training, train_one_epoch
from utils.run.loaders import EpochShuffle, ShardedBatchSampler, ShardedTestBatches

SMALL = ["-dataset", "synthetic", "-synthetic_train", "32", "-synthetic_test", "16", "-T", "4",
         "-reduction", "2", "-batch_size_test", "4", "-clip", "3", "-num_work", "0", "-seed", "1",
         "-device", "cpu"]                 # Gloo on CPU, also where one GPU is present


def test_split_sizes():
    assert split_sizes(7, 2) == [4, 3] and split_sizes(1, 3) == [1, 0, 0] and split_sizes(6, 3) == [2, 2, 2]


@pytest.mark.parametrize("n, B, world", [(23, 7, 2), (23, 7, 3), (22, 7, 3), (8, 8, 2), (5, 8, 4)])
def test_train_shards_are_disjoint_and_make_up_the_single_process_batches(n, B, world):
    for epoch in (0, 3):
        single = list(DataLoader(range(n), batch_size=B, sampler=_set(EpochShuffle(n, 11), epoch)))
        single = [b.tolist() for b in single]
        ranks = [_set(ShardedBatchSampler(n, B, 11, r, world), epoch) for r in range(world)]
        assert ranks[0].plan() and len(ranks[0]) == len(single)
        # world 1 is exactly the old single-process batching (bitwise-identical training)
        assert list(_set(ShardedBatchSampler(n, B, 11), epoch)) == single
        per_rank = [list(s) for s in ranks]
        plans = [s.plan() for s in ranks]
        seen = []
        for k, batch in enumerate(single):
            parts = []
            for r in range(world):
                counted, glob = plans[r][k]
                assert glob == len(batch)
                idx = per_rank[r][k]
                assert len(idx) >= 1                       # every rank takes part in every step
                parts += idx[:counted]
                if counted == 0:                           # a stand-in: a sample of this batch, weight 0
                    assert len(idx) == 1 and idx[0] in batch
                else:
                    assert len(idx) == counted
            assert parts == batch                          # disjoint, complete, in order
            seen += parts
        assert sorted(seen) == list(range(n))
    # the order changes with the epoch
    assert list(_set(ShardedBatchSampler(n, B, 11), 0)) != list(_set(ShardedBatchSampler(n, B, 11), 1)) or n <= 1


def test_test_batches_are_dealt_whole_and_once():
    n, B = 11, 3
    single = [list(range(s, min(s + B, n))) for s in range(0, n, B)]
    for world in (1, 2, 3, 5):
        got = [list(ShardedTestBatches(n, B, r, world)) for r in range(world)]
        assert [len(g) for g in got] == [len(ShardedTestBatches(n, B, r, world)) for r in range(world)]
        flat = sorted((b for g in got for b in g), key=lambda b: b[0])
        assert flat == single                              # same forward-pass groups, none twice


def _set(sampler, epoch):
    sampler.set_epoch(epoch)
    return sampler


# ---- exact gradient weighting under DistributedDataParallel (2 Gloo processes) ----

def _data():
    g = torch.Generator().manual_seed(5)
    return torch.randn(11, 6, generator=g), torch.randint(0, 3, (11,), generator=g)


def _net():
    torch.manual_seed(0)
    return torch.nn.Linear(6, 3)


def _worker(rank, world, init_file, out_file):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    d = Dist(rank=rank, world_size=world, active=True, backend="gloo")
    net = _net()
    total = _train_ddp(net, rank, world, d)      # the DDP wrapper is gone when it returns (as in train_test)
    if rank == 0:
        torch.save({"state": net.state_dict(), "sums": total}, out_file)
    d.close()


def _train_ddp(net, rank, world, d):
    from torch.nn.parallel import DistributedDataParallel as DDP
    x, y = _data()
    sampler = ShardedBatchSampler(len(x), 5, 3, rank, world)    # batches 5, 5, 1 -> 3+2, 3+2, 1+stand-in
    loader = DataLoader(TensorDataset(x, y), batch_sampler=sampler)
    ddp = DDP(net)
    opt = torch.optim.SGD(net.parameters(), lr=0.5)
    sums = train_one_epoch(ddp, loader, Training(opt, 3, dist=d), progress=False)["sums"]
    return d.all_reduce_sum(sums)


def test_ddp_step_equals_the_global_batch_step(tmp_path):
    out = tmp_path / "ddp.pt"
    mp.spawn(_worker, args=(2, str(tmp_path / "rdv"), str(out)), nprocs=2, join=True)
    got = torch.load(out, weights_only=True)

    x, y = _data()
    net = _net()
    opt = torch.optim.SGD(net.parameters(), lr=0.5)
    sampler = ShardedBatchSampler(len(x), 5, 3)
    want = train_one_epoch(net, DataLoader(TensorDataset(x, y), batch_sampler=sampler), Training(opt, 3),
                           progress=False)["sums"]
    for k, v in net.state_dict().items():
        torch.testing.assert_close(got["state"][k], v, rtol=1e-6, atol=1e-7)
    assert got["sums"][1:].tolist() == want[1:].tolist() and want[2] == 11      # correct, seen
    assert abs(got["sums"][0] - want[0]) < 1e-6 * abs(want[0])       # float32 means of parts vs whole

    # a plain average over ranks (no weighting, stand-in counted) would give different weights
    torch.manual_seed(0)
    naive = torch.nn.Linear(6, 3)
    opt = torch.optim.SGD(naive.parameters(), lr=0.5)
    for idx in ([0, 1, 2], [3, 4]), ([5, 6, 7], [8, 9]), ([10], [10]):
        order = list(sampler)
        opt.zero_grad()
        loss = 0
        for part in idx:
            rows = [order[i // 5][i % 5] if i < 10 else order[2][0] for i in part]
            loss = loss + F.mse_loss(naive(x[rows]), F.one_hot(y[rows], 3).float()) / 2
        loss.backward()
        opt.step()
    assert not torch.allclose(naive.weight, net.weight, rtol=1e-4)


# ---- torchrun with two Gloo processes, end to end ----

def test_torchrun_two_processes_log_the_single_process_metrics(tmp_path):
    import config

    runs = tmp_path / "runs"
    argv = SMALL + ["-batch_size_train", "7", "-num_epochs", "1", "-lr", "0"]   # lr 0: weights stay put
    env = dict(os.environ, OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                        str(ROOT / "train_test.py"), *argv, "-modelPath", str(runs), "-name", "ddp"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=400, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    out = r.stdout
    assert out.count("run folder: ") == 1 and out.count("epoch 1/1") == 1 and out.count("done: ") == 1
    assert "global train batch 7 = 2 process(es) x 3-4 per process" in out
    assert "backend gloo" in out
    assert sorted(os.listdir(runs)) == ["ddp"]                        # one run folder, made by rank 0
    events = [n for n in os.listdir(runs / "ddp") if n.startswith("events.out.tfevents.")]
    files = sorted(set(os.listdir(runs / "ddp")) - set(events))
    assert files == [".lock", "best.pth", "config.json", "last.pth", "metrics.csv", "steps"]
    assert len(events) == 1 and len(os.listdir(runs / "ddp" / "steps")) == 1   # TensorBoard: rank 0 only
    rows = list(csv.DictReader(open(runs / "ddp" / "metrics.csv")))
    assert len(rows) == 1
    row = rows[0]

    # the same computation in one process: initial weights, each rank's part of every batch
    threads = torch.get_num_threads()
    torch.set_num_threads(1)                     # as the two processes (same float rounding)
    try:
        _check_against_one_process(config.parse_args(argv), runs, row)
    finally:
        torch.set_num_threads(threads)


def _check_against_one_process(args, runs, row):
    import train_test
    from utils.run.engine import evaluate
    from utils.run.loaders import epoch_permutation, make_loaders
    from utils.run.metrics import SpikeMonitor, means

    train_test.seed_everything(args.seed)
    train_set, test_set, net = train_test.build(args, torch.device("cpu"))
    last = torch.load(runs / "ddp" / "last.pth", weights_only=True)
    for k, v in net.state_dict().items():
        if "running" not in k and "num_batches" not in k:
            assert torch.equal(last["model"][k], v), k                 # lr 0 left the weights alone
    train_set.set_epoch(0)
    order = epoch_permutation(32, args.seed, 0)
    loss_sum = [0.0, 0.0]
    correct = 0
    net.train()
    with torch.no_grad():
        for s in range(0, 32, 7):
            batch = order[s:s + 7]
            half = (len(batch) + 1) // 2
            for r_, part in enumerate((batch[:half], batch[half:])):   # rank 0 takes the larger half
                xb = torch.stack([train_set[i][0] for i in part])
                yb = torch.tensor([train_set[i][1] for i in part])
                logits = net(xb)
                loss = F.mse_loss(logits, F.one_hot(yb, 10).float())
                loss_sum[r_] += float(loss.double() * len(part))
                correct += int((logits.argmax(1) == yb).sum())
    assert float(row["train_acc"]) == 100.0 * correct / 32
    assert abs(float(row["train_loss"]) - sum(loss_sum) / 32) < 1e-12

    # test metrics: one process evaluating the checkpoint rank 0 wrote (reference ASA masks: the
    # test forward passes group the same clips, so accuracy and firing rates are exactly equal)
    train_test.load_weights(net, str(runs / "ddp" / "last.pth"), args)
    monitor = SpikeMonitor(net)
    _, test_loader, _ = make_loaders(args, train_set, test_set, torch.device("cpu"))
    res = evaluate(net, test_loader, torch.device("cpu"), 10, monitor, progress=False)
    m = means(res["sums"], "test")
    rates = monitor.rates(res["spikes"])
    assert float(row["test_acc"]) == m["test_acc"]
    assert float(row["test_nasfr"]) == rates["nasfr"] and rates["nasfr"] > 0
    for name, v in rates["firing_rates"].items():
        assert float(row[f"fr_{name}"]) == v
    assert abs(float(row["test_loss"]) - m["test_loss"]) < 1e-12
