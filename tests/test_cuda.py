"""The same code on CUDA: golden outputs, CPU/CUDA agreement of a training step, AMP, the CLI.

Every test here is skipped without a CUDA device (CI has none); they are run on a GPU machine
when one is at hand (docs/testing.md). TF32 is switched off where values are compared with the CPU.
"""
import copy
import csv
import subprocess
from contextlib import contextmanager
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from conftest import ROOT
import models.module.Attn as Attn
from models import create_net, load_pretrained
from models.module.Attn import ASA

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

DATA = Path(__file__).parent / "data"


@pytest.fixture(autouse=True)
def no_tf32():
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def net_args(arch, T, size, **kw):
    args = dict(arch=arch, T=T, attention="ASA", asa_mask="reference", reduction=1, lam=0.5,
                ps="00000", num_classes=11, frame_size=(size, size), backend="fused")
    args.update(kw)
    return SimpleNamespace(**args)


@contextmanager
def recorded_topk(log):
    """Record every top-k choice ASA makes: (score, k, dim, mask) on the CPU."""
    orig = Attn.topk_mask

    def rec(score, k, dim):
        m = orig(score, k, dim)
        log.append((score.detach().double().cpu(), k, dim, m.cpu()))
        return m
    Attn.topk_mask = rec
    try:
        yield log
    finally:
        Attn.topk_mask = orig


@contextmanager
def masks_of(record=None, replay=None):
    """Record ASA's XOR masks in call order, or replay recorded ones (on any device)."""
    orig = ASA.important_mask

    def patched(self, x):
        if replay is not None:
            return replay.pop(0).to(x.device, x.dtype)
        m = orig(self, x)
        record.append(m.cpu())
        return m
    ASA.important_mask = patched
    try:
        yield
    finally:
        ASA.important_mask = orig


def assert_valid_topk(log):
    """Each recorded mask holds k entries whose scores are the k largest (ties may be broken
    either way: torch.topk orders equal values differently on CPU and CUDA)."""
    assert log
    for score, k, dim, m in log:
        assert (m.sum(dim) == k).all()
        chosen = score.masked_fill(m == 0, float("-inf")).sort(dim, descending=True).values.narrow(dim, 0, k)
        assert torch.equal(chosen, score.topk(k, dim).values)


def test_golden_asa_on_cuda():
    """Where ASA's scores have no tie at the top-k boundary the CUDA output is the authors' golden
    output; where they do (fc's ReLU zeroes whole columns, so channels share one score), CUDA breaks
    the ties its own way, as the authors' code does on a GPU: then the masks must still be valid
    top-k choices and the output must equal the CPU computation given those masks."""
    ties = 0
    for case in torch.load(DATA / "asa_cases.pt", weights_only=False):
        cpu = ASA(case["T"], case["C"], reduction=case["reduction"], lam=case["lam"])
        cpu.load_state_dict(case["state_dict"])
        gpu = copy.deepcopy(cpu).cuda()
        x = case["x"].detach().cuda().requires_grad_(True)
        log, masks = [], []
        with recorded_topk(log), masks_of(record=masks):
            y = gpu(x)
        (y * case["grad_y"].cuda()).sum().backward()
        assert_valid_topk(log)
        with masks_of(record=(own := [])):
            cpu(case["x"])
        if torch.equal(own[0], masks[0]):
            want_y, want_g = case["y_reference"], case["grad_x_reference"]
        else:
            ties += 1
            xc = case["x"].detach().clone().requires_grad_(True)
            with masks_of(replay=list(masks)):
                want_y = cpu(xc)
            (want_y * case["grad_y"]).sum().backward()
            want_y, want_g = want_y.detach(), xc.grad
        torch.testing.assert_close(y.detach().cpu(), want_y, rtol=0, atol=1e-5)
        torch.testing.assert_close(x.grad.cpu(), want_g, rtol=1e-5, atol=1e-5)
    assert ties < 5                       # most cases have no boundary ties: golden values compared


def test_golden_networks_on_cuda():
    """Whole networks: CUDA logits and spike counts equal the CPU ones given the same ASA masks,
    and the golden values themselves wherever CUDA's top-k choices coincide with the CPU's."""
    from test_nets import NET_CASES, case_args, spike_counts
    for case in NET_CASES:
        cpu = load_pretrained(create_net(case_args(case)), case["state_dict"]).eval()
        gpu = copy.deepcopy(cpu).cuda()
        x = case["x"].float()
        log, masks = [], []
        with recorded_topk(log), masks_of(record=masks):
            logits, totals, _ = spike_counts(gpu, x.cuda())
        assert_valid_topk(log)
        with masks_of(record=(own := [])):
            spike_counts(cpu, x)
        if all(torch.equal(a, b) for a, b in zip(own, masks)):
            want_logits, want_totals = case["logits"], case["spikes_per_layer_per_step"]
        else:
            with masks_of(replay=list(masks)):
                want_logits, want_totals, _ = spike_counts(cpu, x)
        torch.testing.assert_close(logits.cpu(), want_logits, rtol=0, atol=1e-4, msg=case["arch"])
        for got, expected in zip(totals, want_totals):
            assert (got.cpu() - expected).abs().sum() <= 3, case["arch"]


@pytest.mark.parametrize("arch, T, size, ps", [("A", 6, 32, "00000"), ("B", 4, 64, "00000"),
                                               ("C", 4, 64, "00000"), ("D", 6, 32, "00000")])
def test_training_step_on_cuda_equals_cpu(arch, T, size, ps):
    """float64 on both devices: the CPU and CUDA paths give the same logits,
    spikes and parameter gradients (a threshold flip would show as a large difference)."""
    torch.manual_seed(0)
    cpu = create_net(net_args(arch, T, size, ps=ps, num_classes=20 if arch == "D" else 11)).double().train()
    gpu = create_net(net_args(arch, T, size, ps=ps, num_classes=20 if arch == "D" else 11)).double().train()
    gpu.load_state_dict(cpu.state_dict())
    gpu.cuda()
    g = torch.Generator().manual_seed(1)
    x = ((torch.rand(4, T, 2, size, size, generator=g) < 0.15).double()
         * torch.randint(1, 4, (4, T, 2, size, size), generator=g).double())
    y = torch.randint(0, 11, (4,), generator=g)
    grads, outs = [], []
    for net, dev in ((cpu, "cpu"), (gpu, "cuda")):
        out = net(x.to(dev))
        F.mse_loss(out, F.one_hot(y.to(dev), out.shape[1]).double()).backward()
        outs.append(out.detach().cpu())
        grads.append({n: p.grad.cpu() for n, p in net.named_parameters() if p.grad is not None})
    torch.testing.assert_close(outs[1], outs[0], rtol=1e-9, atol=1e-9)
    assert grads[0].keys() == grads[1].keys() and grads[0]
    for n in grads[0]:
        torch.testing.assert_close(grads[1][n], grads[0][n], rtol=1e-7, atol=1e-9, msg=n)
    for (n, b0), b1 in zip(cpu.named_buffers(), gpu.buffers()):     # BatchNorm running statistics
        torch.testing.assert_close(b1.cpu(), b0, rtol=1e-9, atol=1e-12, msg=n)


@pytest.mark.parametrize("arch, T, size", [("A", 8, 32), ("B", 4, 64)])
def test_amp_training_on_cuda(arch, T, size):
    """Autocast + GradScaler through utils/run/engine.py: float16 activations reach the fused neurons,
    the spike counts of every layer stay near float32's, the loss stays finite and the parameters move."""
    from torch.utils.data import DataLoader, TensorDataset
    from utils.run.engine import Training, train_one_epoch
    from utils.run.precision import autocast
    from test_nets import spike_counts
    torch.manual_seed(0)
    net = create_net(net_args(arch, T, size)).cuda().train()     # batch statistics: the layers fire
    g = torch.Generator().manual_seed(2)
    x = (torch.rand(8, T, 2, size, size, generator=g) < 0.3).float() * 2
    y = torch.randint(0, 11, (8,), generator=g)
    _, ref, _ = spike_counts(net, x.cuda())
    with autocast(torch.device("cuda"), True):
        logits, half, _ = spike_counts(net, x.cuda())
    assert torch.isfinite(logits).all()
    fired = [(float(a.sum()), float(b.sum())) for a, b in zip(ref, half)]
    assert fired[0][0] > 1000                                     # a meaningful comparison
    for a, b in fired:                                            # float16 currents: a few flips
        assert abs(a - b) <= 0.05 * a + 20, fired
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler("cuda")
    res = train_one_epoch(net, DataLoader(TensorDataset(x, y), batch_size=2),
                          Training(opt, 11, torch.device("cuda"), amp=True, scaler=scaler), progress=False)
    loss_sum, _, seen = res["sums"].tolist()
    assert seen == 8 and loss_sum == loss_sum and 0 < loss_sum / 8 < 10
    moved = [n for n, p in net.named_parameters() if not torch.equal(p.detach(), before[n])]
    assert any("conv" in n or "weight" in n for n in moved) and len(moved) >= len(before) // 2


def test_loaders_pin_memory_on_cuda():
    import config
    import train_test
    from utils.run.loaders import make_loaders
    args = config.parse_args(["-dataset", "synthetic", "-synthetic_train", "8", "-synthetic_test", "4", "-T", "4",
                              "-num_work", "2"])
    train_set, test_set, _ = train_test.build(args, torch.device("cuda"))
    train_loader, test_loader, _ = make_loaders(args, train_set, test_set, torch.device("cuda"))
    assert train_loader.pin_memory and test_loader.pin_memory and train_loader.num_workers == 2
    xb, yb = next(iter(train_loader))
    assert xb.is_pinned()


def test_cli_trains_on_cuda_with_amp_and_the_checkpoint_evaluates_on_cpu(tmp_path):
    small = ["-dataset", "synthetic", "-synthetic_train", "32", "-synthetic_test", "16", "-T", "8",
             "-batch_size_test", "4", "-clip", "3", "-num_work", "2", "-seed", "1"]
    r = subprocess.run([sys.executable, str(ROOT / "train_test.py"), *small, "-num_epochs", "2", "-device", "cuda",
                        "-amp", "-modelPath", str(tmp_path), "-name", "gpu"],
                       capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "device cuda" in r.stdout and "-amp has no effect" not in r.stdout
    rows = list(csv.DictReader(open(tmp_path / "gpu" / "metrics.csv")))
    assert len(rows) == 2
    for row in rows:
        assert 0 <= float(row["test_acc"]) <= 100 and 0 < float(row["test_nasfr"]) < 1
    e = subprocess.run([sys.executable, str(ROOT / "train_test.py"), *small, "-device", "cpu", "-eval_only",
                        "-pretrained_path", str(tmp_path / "gpu" / "last.pth"), "-modelPath", str(tmp_path),
                        "-name", "cpu_eval"], capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert e.returncode == 0, e.stderr[-3000:]
    import json
    got = json.load(open(tmp_path / "cpu_eval" / "eval.json"))
    # the CUDA run evaluated under autocast (float16): a few threshold flips at most
    assert abs(got["test_nasfr"] - float(rows[-1]["test_nasfr"])) < 0.1 * float(rows[-1]["test_nasfr"]) + 1e-3
