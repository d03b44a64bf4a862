"""Whole networks against the authors' golden outputs (tests/data/net_cases.pt), shapes, loading."""
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from models import ARCHITECTURES, create_net, load_pretrained, register
from models.lif_snn import HeldDropout
from models.module.Attn import ASA
from models.module.neuron import SpikingNeuron

NET_CASES = torch.load(Path(__file__).parent / "data" / "net_cases.pt", weights_only=False)


def make_args(**overrides):
    args = dict(arch="A", T=4, attention="ASA", asa_mask="reference", reduction=1, lam=0.5,
                ps="00000", num_classes=11, frame_size=(32, 32), backend="fused")
    args.update(overrides)
    return SimpleNamespace(**args)


def case_args(case):
    return make_args(arch=case["arch"], T=case["T"], attention=case["attention"],
                     frame_size=(case["input_hw"],) * 2, **case["flags"])


def spike_counts(net, x):
    """Run ``net`` on ``x`` with a hook on every ``spiking`` module (the NASFR monitor's way).

    Returns logits, per-layer [T] spike totals and per-layer neurons per sample per step."""
    totals, neurons = [], []

    def hook(module, inputs, out):
        totals.append(out.detach().sum(dim=[d for d in range(out.dim()) if d != 1]))
        neurons.append(out[0, 0].numel())

    handles = [m.register_forward_hook(hook) for m in net.modules() if isinstance(m, SpikingNeuron)]
    try:
        with torch.no_grad():
            logits = net(x)
    finally:
        for h in handles:
            h.remove()
    return logits, totals, neurons


@pytest.mark.parametrize("case", NET_CASES, ids=[c["arch"] for c in NET_CASES])
def test_network_matches_authors(case):
    net = load_pretrained(create_net(case_args(case)), case["state_dict"]).eval()
    x = case["x"].float()
    n, t = x.shape[:2]
    logits, totals, neurons = spike_counts(net, x)
    torch.testing.assert_close(logits, case["logits"], rtol=0, atol=1e-5)
    assert neurons == case["neurons_per_layer"]
    assert len(totals) == len(case["spikes_per_layer_per_step"])
    for got, expected in zip(totals, case["spikes_per_layer_per_step"]):
        assert (got - expected).abs().sum() <= 3          # a spike may flip at the threshold
    # docs/reference.md, NASFR: r_l = spikes_l / (T * n_l * samples); NASFR = sum r_l n_l / sum n_l
    rates = [float(s.sum()) / (t * n_l * n) for s, n_l in zip(totals, neurons)]
    nasfr = sum(r * n_l for r, n_l in zip(rates, neurons)) / sum(neurons)
    assert rates == pytest.approx(case["firing_rate_per_layer"], abs=1e-6)
    assert nasfr == pytest.approx(case["nasfr"], abs=1e-6)


@pytest.mark.parametrize("arch, frame_size, flat, classes", [
    ("A", (32, 32), 128 * 8 * 8, 11), ("D", (32, 32), 32 * 8 * 8, 20),
    ("B", (128, 128), 128 * 4 * 4, 11), ("C", (128, 128), 128 * 4 * 4, 11),
    ("B", (173, 130), 128 * 80 // 2 ** 2, 12), ("B", (87, 65), 512, 12),
])
def test_shapes_at_real_input_sizes(arch, frame_size, flat, classes):
    net = create_net(make_args(arch=arch, T=2, frame_size=frame_size, num_classes=classes))
    first_fc = net.FCs[0][1].fc if arch in "BC" else net.FCs[0].linear[0]
    assert first_fc.in_features == flat
    x = torch.rand(1, 2, 2, *frame_size).round()
    logits, totals, _ = spike_counts(net.eval(), x)
    assert logits.shape == (1, classes)
    assert len(totals) == (7 if arch in "BC" else 5) and all(s.shape == (2,) for s in totals)


@pytest.mark.parametrize("ds, frame_size, flat", [
    (1, (346, 260), 128 * 80), (2, (173, 130), 128 * 80 // 4), (4, (87, 65), 512), (4, (86, 65), 512),
])
def test_davis346_head_size_follows_spec(ds, frame_size, flat):
    # docs/reference.md: 128*80/ds^2 inputs for ds <= 2, 512 for ds = 4 (whether 346/4 is rounded up or down)
    net = create_net(make_args(arch="B", T=2, frame_size=frame_size, attention="no"))
    assert net.FCs[0][1].fc.in_features == flat


def test_training_step_reaches_every_learning_parameter():
    torch.manual_seed(0)
    for arch, frame in (("D", (16, 16)), ("B", (32, 32))):
        net = create_net(make_args(arch=arch, T=4, frame_size=frame, ps="11111")).train()
        x = (torch.rand(2, 4, 2, *frame) < 0.3).float() * 3
        (net(x) - 1.0).pow(2).sum().backward()                    # MSE to an all-ones target
        dead = {name for name, p in net.named_parameters() if p.grad is None}
        # only ASA's top-k scoring parameters are dead (docs/reference.md, dead parameters)
        assert dead and all(".attn." in n and n.split(".attn.")[1].split(".")[0] in ("alpha", "beta", "fc")
                            for n in dead)
        first_conv = next(p for n, p in net.named_parameters() if n.endswith("conv.0.weight"))
        assert first_conv.grad.abs().sum() > 0


def test_bc_ignore_cli_reduction_and_lam():
    net = create_net(make_args(arch="B", T=4, frame_size=(32, 32), reduction=4, lam=0.25))
    attn = net.ConvAttLIFs[0][0].attn
    assert isinstance(attn, ASA) and attn.lam == 0.5 and attn.fc.weight.shape == (4, 4)


def test_attention_no_is_identity_without_parameters():
    for arch, frame in (("A", (32, 32)), ("C", (32, 32))):
        net = create_net(make_args(arch=arch, attention="no", frame_size=frame))
        assert not any(isinstance(m, ASA) for m in net.modules())
        assert not any(".attn." in k for k in net.state_dict())


def test_dropout_follows_ps_with_two_masks():
    net = create_net(make_args(arch="D", ps="00101"))
    drops = [layer.drop_in for layer in (*net.ConvAttLIFs, *net.FCs)]
    assert [isinstance(d, torch.nn.Dropout) for d in drops] == [False, False, True, False, True]
    assert drops[2].p == 0.5 and isinstance(net.FCs[1].drop_out, HeldDropout)
    spikes = torch.ones(64, 6, 50)
    held, per_step = net.FCs[1].drop_out.train(), net.FCs[1].drop_in.train()
    out = held(spikes)
    assert torch.equal(out, out[:, :1].expand_as(out))                 # one mask per sample
    assert set(out.unique().tolist()) == {0.0, 2.0}                    # scaled by 1/(1-p)
    assert not torch.equal(per_step(spikes)[:, 0], per_step(spikes)[:, 1])
    assert torch.equal(held.eval()(spikes), spikes)


def test_load_pretrained_sources(tmp_path):
    case = NET_CASES[1]                                                   # arch D
    state = {f"module.{k}": v for k, v in case["state_dict"].items()}
    path = tmp_path / "ckpt.pth"
    torch.save({"model": state, "epoch": 3}, path)
    expected = {k: v.float() for k, v in case["state_dict"].items() if ".spike.0.attn." not in k}
    from utils.run.checkpoint import load_weights               # files: the run's one loader
    from_file = create_net(case_args(case))
    assert load_weights(from_file, str(path), case_args(case))["epoch"] == 3
    for loaded in [load_pretrained(create_net(case_args(case)), source).state_dict()
                   for source in (state, {"model": state})] + [from_file.state_dict()]:
        assert loaded.keys() == expected.keys()
        assert all(loaded[k].dtype == (torch.int64 if k.endswith("num_batches_tracked") else torch.float32)
                   and torch.equal(loaded[k].float(), expected[k]) for k in expected)


def test_load_pretrained_names_offending_keys():
    case = NET_CASES[0]                                                   # arch A, 11 classes
    net = create_net(case_args(case))
    bad = dict(case["state_dict"])
    bad["FCs.1.linear.0.weight"] = torch.zeros(10, 256)
    with pytest.raises(ValueError, match=r"FCs\.1\.linear\.0\.weight: checkpoint \(10, 256\) vs model \(11, 256\)"):
        load_pretrained(net, bad)
    bad = dict(case["state_dict"])
    del bad["ConvAttLIFs.2.bn.0.running_var"]
    bad["ConvAttLIFs.0.extra"] = torch.zeros(1)
    with pytest.raises(ValueError, match=r"missing keys: \['ConvAttLIFs\.2\.bn\.0\.running_var'\].*"
                                         r"unexpected keys: \['ConvAttLIFs\.0\.extra'\]"):
        load_pretrained(net, bad)
    with pytest.raises(ValueError, match=r"unexpected keys: \['ConvAttLIFs\.0\.attn\.alpha'"):
        load_pretrained(create_net(make_args(**{**vars(case_args(case)), "attention": "no"})),
                        case["state_dict"])


def test_registry_rejects_unknown_and_duplicate_names():
    with pytest.raises(ValueError, match="unknown arch 'Z'.*'A', 'B', 'C', 'D'"):
        create_net(make_args(arch="Z"))
    with pytest.raises(ValueError, match="already registered"):
        register("A", "a second A")(lambda args: None)
    assert {"A", "B", "C", "D"} <= set(ARCHITECTURES)
