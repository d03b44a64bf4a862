"""-amp on CPU (utils/run/precision.py): bfloat16 autocast where the CPU has it, with the first
layer, the output layer, ASA (top-k included), the neurons' membrane state and the loss in float32;
float32 with one note where it has not. Tiny networks (T 4, 16x16 / 32x32 frames, batch 2)."""
import importlib
from contextlib import contextmanager
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from models import create_net
from models.module import SpikingNeuron
from utils.run import checkpoint, precision
from utils.run.engine import Training, train_step
from utils.run.precision import autocast

Attn, LIF, PLIF = (importlib.import_module(f"models.module.{m}") for m in ("Attn", "lif", "decay_input"))
CPU = torch.device("cpu")
BF16 = precision.cpu_bf16()[0]
needs_bf16 = pytest.mark.skipif(not BF16, reason=f"no native bfloat16: {precision.cpu_bf16()[1]}")


def net_args(arch, backend="fused", T=4, size=16, **kw):
    return SimpleNamespace(arch=arch, T=T, attention="ASA", asa_mask="reference", reduction=1, lam=0.5,
                           ps="00000", num_classes=10, frame_size=(size, size), backend=backend, **kw)


def batch(T, size, n=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = (torch.rand(n, T, 2, size, size, generator=g) < 0.3).float() * 2
    return x, torch.randint(0, 10, (n,), generator=g)


@pytest.fixture(autouse=True)
def fresh_policy():
    yield
    precision.cpu_bf16.cache_clear()


@contextmanager
def recorded(monkeypatch):
    """Record the dtypes where the float32 parts compute: ASA's top-k scores and the input of the
    neurons' integration (LIF and PLIF, fused and eager), besides every conv/linear output."""
    log = {"topk": [], "neuron": []}
    topk = Attn.topk_mask

    def rec_topk(score, k, dim):
        log["topk"].append(score.dtype)
        return topk(score, k, dim)
    monkeypatch.setattr(Attn, "topk_mask", rec_topk)
    for mod, names in ((LIF, ("lif_eager",)), (PLIF, ("decay_input_eager",))):
        for name in names:
            f = getattr(mod, name)
            monkeypatch.setattr(mod, name, lambda x, *a, f=f, **k: (log["neuron"].append(x.dtype), f(x, *a, **k))[1])
    for mod, cls in ((LIF, "LIFFunction"), (PLIF, "DecayInputLIFFunction")):
        fn = getattr(mod, cls)
        monkeypatch.setattr(mod, cls, SimpleNamespace(
            apply=lambda x, *a, fn=fn: (log["neuron"].append(x.dtype), fn.apply(x, *a))[1]))
    yield log


def layer_dtypes(net):
    """{conv/linear name: output dtype} of the network's own layers (not ASA's), via hooks."""
    seen, handles = {}, []
    for n, m in net.named_modules():
        if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)) and ".attn." not in n:
            handles.append(m.register_forward_hook(lambda mod, a, out, n=n: seen.__setitem__(n, out.dtype)))
    return seen, handles


@pytest.mark.parametrize("arch, backend, size", [("A", "fused", 16), ("A", "eager", 16), ("B", "fused", 32)])
def test_amp_keeps_first_layer_neurons_asa_topk_and_loss_in_float32(monkeypatch, arch, backend, size):
    torch.manual_seed(0)
    net = create_net(net_args(arch, backend, size=size)).train()
    x, y = batch(4, size)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    seen, handles = layer_dtypes(net)
    with recorded(monkeypatch) as log:
        loss, logits = train_step(net, x, y, Training(opt, 10, amp=True))
    for h in handles:
        h.remove()
    names = list(seen)
    assert loss.dtype == torch.float32 and logits.dtype == torch.float32 and torch.isfinite(loss)
    assert seen[names[0]] == torch.float32 and seen[names[-1]] == torch.float32   # first and output layer
    assert log["topk"] and set(log["topk"]) == {torch.float32}                    # 2 per ASA
    n_neurons = sum(isinstance(m, SpikingNeuron) for m in net.modules())
    assert len(log["neuron"]) == n_neurons and set(log["neuron"]) == {torch.float32}
    middle = {seen[n] for n in names[1:-1]}
    if BF16:
        assert middle == {torch.bfloat16}, seen
    else:
        assert middle == {torch.float32}, seen
    for n, p in net.named_parameters():                                          # weights stay float32
        assert p.dtype == torch.float32 and (p.grad is None or (p.grad.dtype == torch.float32
                                                                and torch.isfinite(p.grad).all())), n


@needs_bf16
def test_amp_is_close_to_float32_and_its_gradients_are_finite():
    """Stated tolerance: all spikes together within 1 % of float32's, each layer within 10 % (+10
    spikes: the small fc layers flip a few neurons at the threshold); logits
    (output spike rates) within 0.1 on average; the loss within 10 %; the weights' gradients
    are finite and point the same way (cosine > 0.3: a surrogate gradient follows every flipped
    spike, so a few flips at the output layer move it visibly; 0.65 here)."""
    torch.manual_seed(0)
    net = create_net(net_args("A", size=16)).train()
    x, y = batch(4, 16, n=4, seed=3)
    counts, out = {}, {}
    for amp in (False, True):
        spikes = []
        hs = [m.register_forward_hook(lambda mod, a, o: spikes.append(float(o.detach().sum())))
              for m in net.modules() if isinstance(m, SpikingNeuron)]
        net.zero_grad()
        with autocast(CPU, amp, net):
            logits = net(x)
        loss = F.mse_loss(logits.float(), F.one_hot(y, 10).float())
        loss.backward()
        for h in hs:
            h.remove()
        counts[amp] = spikes
        out[amp] = (logits.detach(), loss.detach(),
                    torch.cat([p.grad.flatten() for n, p in net.named_parameters() if "attn" not in n]))
    assert counts[False][0] > 500                                                  # a meaningful comparison
    assert abs(sum(counts[True]) - sum(counts[False])) <= 0.01 * sum(counts[False]), counts
    for a, b in zip(counts[False], counts[True]):
        assert abs(a - b) <= 0.1 * a + 10, counts
    assert (out[True][0] - out[False][0]).abs().mean() < 0.1
    assert abs(float(out[True][1]) - float(out[False][1])) <= 0.1 * float(out[False][1])
    g32, g16 = out[False][2], out[True][2]
    assert torch.isfinite(g16).all()
    assert float(F.cosine_similarity(g32, g16, dim=0)) > 0.3


def test_a_checkpoint_saved_under_amp_loads_in_float32(tmp_path):
    import config
    args = config.parse_args(["-dataset", "synthetic", "-T", "4", "-ds", "8", "-reduction", "2", "-amp"])
    args.num_classes, args.frame_size = 10, (16, 16)
    torch.manual_seed(0)
    net = create_net(args).train()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    x, y = batch(4, 16)
    train_step(net, x, y, Training(opt, 10, amp=True))
    checkpoint.atomic_save(checkpoint.make_checkpoint(net, opt, 0, 1.0, 0, args, rng=[checkpoint.rng_state()],
                                                      metrics={"fields": [], "rows": []}),
                           str(tmp_path / "amp.pth"))
    other = create_net(args)
    checkpoint.load_weights(other, str(tmp_path / "amp.pth"), args)
    state = other.state_dict()
    assert all(v.dtype in (torch.float32, torch.int64) for v in state.values())
    assert all(torch.equal(state[k], v) for k, v in net.state_dict().items())
    other.eval()
    with torch.no_grad():
        assert other(x).dtype == torch.float32                                    # a plain float32 run


def test_a_cpu_without_bfloat16_gives_one_note_and_float32(monkeypatch):
    monkeypatch.setattr(precision, "cpu_bf16", lambda: (False, "this CPU has no native bfloat16 (test)"))
    torch.manual_seed(0)
    net = create_net(net_args("A", size=16)).eval()
    x, _ = batch(4, 16)
    lines = precision.describe(net, CPU, True)
    assert lines == ["note: -amp: this CPU has no native bfloat16 (test); training in float32"]
    with torch.no_grad():
        ref = net(x)
        with autocast(CPU, True, net):
            assert not torch.is_autocast_enabled("cpu")
            got = net(x)
    assert torch.equal(got, ref)
    assert set(precision.observe(net, x, CPU, True).values()) == {"float32"}


def test_bfloat16_detection_needs_the_processor_flag(monkeypatch):
    monkeypatch.setattr(precision, "cpu_flags", lambda: {"avx2", "avx512f", "avx512bw"})
    precision.cpu_bf16.cache_clear()
    ok, why = precision.cpu_bf16()
    assert not ok and "avx512_bf16" in why
    monkeypatch.setattr(precision, "cpu_flags", lambda: None)
    precision.cpu_bf16.cache_clear()
    assert precision.cpu_bf16()[0] is False
    monkeypatch.setattr(precision, "cpu_flags", lambda: {"avx512f", "amx_bf16"})
    precision.cpu_bf16.cache_clear()
    ok, why = precision.cpu_bf16()
    assert ok == bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    assert precision.amp_dtype(CPU, True) == (torch.bfloat16 if ok else None)
    assert precision.amp_dtype(CPU, False) is None


def test_cpu_flags_reads_the_flags_line(tmp_path):
    f = tmp_path / "cpuinfo"
    f.write_text("processor\t: 0\nmodel name\t: X\nflags\t\t: fpu avx512f avx512_bf16\n\nprocessor\t: 1\n")
    assert precision.cpu_flags(str(f)) == {"fpu", "avx512f", "avx512_bf16"}
    assert precision.cpu_flags(str(tmp_path / "missing")) is None


def test_float32_runs_are_untouched_by_the_policy():
    """The float32 regions only act inside CPU autocast: without -amp the output is bitwise the
    same with and without them, and they are applied once per module."""
    torch.manual_seed(0)
    net = create_net(net_args("A", size=16)).eval()
    x, _ = batch(4, 16)
    with torch.no_grad():
        ref = net(x)
        precision.apply_policy(net)
        precision.apply_policy(net)
        assert torch.equal(net(x), ref)
    hooked = [m for m in net.modules() if m._forward_pre_hooks]
    parts = precision.fp32_modules(net)
    assert len(hooked) == sum(len(v) for v in parts.values()) + len(precision.bf16_convs(net))
    assert precision.bf16_convs(net) == ["ConvAttLIFs.1.conv.0", "ConvAttLIFs.2.conv.0"]
    assert parts["first layer"] == ["ConvAttLIFs.0.conv.0"] and parts["output layer"] == ["FCs.1.linear.0"]
    precision.remove_policy(net)
    assert not any(m._forward_pre_hooks for m in net.modules())


def test_the_cli_reports_the_precision_of_each_part_and_trains_under_amp(tmp_path):
    import csv
    import subprocess
    import sys
    from conftest import ROOT
    argv = ["-dataset", "synthetic", "-synthetic_train", "8", "-synthetic_test", "4", "-T", "4", "-ds", "8",
            "-reduction", "2", "-batch_size_train", "4", "-batch_size_test", "2", "-clip", "2", "-num_work", "0",
            "-num_epochs", "1", "-seed", "1", "-amp", "-modelPath", str(tmp_path), "-name", "amp"]
    r = subprocess.run([sys.executable, str(ROOT / "train_test.py"), *argv], cwd=tmp_path,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    rows = list(csv.DictReader(open(tmp_path / "amp" / "metrics.csv")))
    assert len(rows) == 1 and float(rows[0]["test_nasfr"]) > 0
    if not BF16:
        assert r.stdout.count("note: -amp:") == 1 and "training in float32" in r.stdout
        return
    plan = [ln for ln in r.stdout.splitlines() if ln.startswith("precision: -amp on CPU")]
    seen = [ln for ln in r.stdout.splitlines() if ln.startswith("precision observed on one sample: ")]
    assert len(plan) == 1 and "first layer (ConvAttLIFs.0.conv.0)" in plan[0]
    groups = dict(g.split(": ", 1) for g in seen[0].split(": ", 1)[1].split("; "))
    assert set(groups) == {"bfloat16", "float32"}
    assert "ConvAttLIFs.1.conv.0" in groups["bfloat16"].split(", ")
    for part in ("ConvAttLIFs.0.conv.0", "FCs.1.linear.0", "ConvAttLIFs.0.attn", "ConvAttLIFs.2.spike.0"):
        assert part in groups["float32"].split(", ")


def test_a_float32_region_returns_its_gradient_in_the_inputs_dtype_and_layout():
    x = torch.randn(2, 3, 4, 5).to(torch.bfloat16, memory_format=torch.channels_last).requires_grad_()
    y = precision.to_float32(x)
    assert y.dtype == torch.float32 and y.is_contiguous() and torch.equal(y, x.detach().float())
    g = torch.arange(y.numel(), dtype=torch.float32).reshape(y.shape)
    y.backward(g)
    assert x.grad.dtype == torch.bfloat16 and x.grad.stride() == x.stride()
    assert torch.equal(x.grad.float(), g.to(torch.bfloat16).float())


def test_a_bfloat16_conv_input_returns_its_gradient_contiguous_float32():
    # Tensor.to would hand a channels-last gradient to the neuron before it (a second copy there)
    x = torch.randn(2, 3, 4, 5, requires_grad=True)
    seen = []
    h = x * 1
    h.register_hook(lambda g: seen.append(g))
    y = precision.to_bf16_channels_last(h)
    assert y.dtype == torch.bfloat16 and y.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(y.float(), x.detach().to(torch.bfloat16).float())
    g = torch.randn(y.shape).to(torch.bfloat16, memory_format=torch.channels_last)
    y.backward(g)
    assert seen[0].dtype == torch.float32 and seen[0].is_contiguous()
    assert torch.equal(seen[0], g.float()) and torch.equal(x.grad, g.float())
