"""utils/analysis/energy.py: MAC / SOP counting and energy on tiny networks computed by hand."""
import csv
import json
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from models import create_net
from models.module import spiking_layers
from models.module.Attn import ASA
from models.module.lif import LIF
from utils.analysis import energy as E


class Tiny(nn.Module):
    """conv(2->4, 3x3, pad 1) on 4x4 -> [ASA] -> LIF -> flatten -> Linear(64, 3) -> LIF."""

    def __init__(self, asa: bool):
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3, padding=1)
        self.attn = ASA(2, 4, reduction=1) if asa else nn.Identity()
        self.sn1 = LIF()
        self.fc = nn.Linear(64, 3)
        self.sn2 = LIF()

    def forward(self, x):                       # [N, T, 2, 4, 4]
        n, t = x.shape[:2]
        y = self.conv(x.flatten(0, 1)).unflatten(0, (n, t))
        s = self.sn1(self.attn(y))
        return self.sn2(self.fc(s.flatten(2))).mean(1)


def test_tiny_network_by_hand():
    T = 2
    layers = E.count(Tiny(asa=False), T, (4, 4))
    assert [(l.name, l.kind, l.first, l.sources) for l in layers] == [
        ("conv", "conv", True, []), ("fc", "linear", False, ["sn1"])]
    conv_macs = 4 * 4 * 4 * 2 * 3 * 3                  # C_out*H*W * C_in*k*k = 1152 per step
    assert layers[0].macs == conv_macs and layers[1].macs == 64 * 3
    rep = E.energy(layers, {"sn1": 0.25, "sn2": 0.5}, T)
    first = T * conv_macs * 4.6e-12                    # first layer: MAC every step
    sops = 0.25 * T * 64 * 3                           # 96 accumulates
    assert rep["sops"] == pytest.approx(sops)
    assert rep["macs"] == pytest.approx(T * conv_macs)
    assert rep["total_uJ"] == pytest.approx((first + sops * 0.9e-12) * 1e6)
    assert rep["asa_uJ"] == 0 and rep["synaptic_uJ"] == pytest.approx(rep["total_uJ"])
    assert rep["layers"][1]["input_rate"] == 0.25 and rep["layers"][1]["op"] == "AC"


def test_tiny_network_with_asa_by_hand():
    T = 2
    layers = E.count(Tiny(asa=True), T, (4, 4))
    assert [l.name for l in layers] == ["conv", "attn", "fc"]
    n = T * 4 * 4 * 4                                  # ASA input elements per sample: 128
    # 2n scores + 3TC mix + C*T*T fc + 2n part pooling + 2*18HW convs + 2HW sigmoids + n gating
    asa = 2 * n + 3 * T * 4 + 4 * T * T + 2 * n + 2 * 18 * 16 + 2 * 16 + n
    assert asa == 1288
    assert layers[1].macs == asa
    rep = E.energy(layers, {"sn1": 0.1, "sn2": 0.0}, T)
    assert rep["asa_macs"] == asa
    assert rep["asa_uJ"] == pytest.approx(asa * 4.6e-12 * 1e6)
    expected_syn = T * 1152 * 4.6e-12 + 0.1 * T * 192 * 0.9e-12
    assert rep["synaptic_uJ"] == pytest.approx(expected_syn * 1e6)
    assert rep["total_uJ"] == pytest.approx(rep["synaptic_uJ"] + rep["asa_uJ"])


def test_reduced_fc_counted():
    a = ASA(8, 4, reduction=4)
    n = 8 * 4 * 3 * 3
    assert E._asa_macs(a, (1, 8, 4, 3, 3)) == 2 * n + 3 * 8 * 4 + 4 * (2 * 8 * 2) + 2 * n + 36 * 9 + 18 + n


def test_missing_rate_is_an_error():
    layers = E.count(Tiny(asa=False), 2, (4, 4))
    with pytest.raises(KeyError, match="sn1"):
        E.energy(layers, {"sn2": 0.1}, 2)


def test_arch_a_sources_follow_execution_order():
    args = SimpleNamespace(backend="fused", arch="A", T=4, attention="ASA", asa_mask="reference", reduction=1, lam=0.5,
                           ps="00000", num_classes=5, frame_size=(8, 8))
    layers = E.count(create_net(args), 4, (8, 8))
    syn = {l.name: l.sources for l in layers if l.kind != "asa"}
    assert syn == {"ConvAttLIFs.0.conv.0": [], "ConvAttLIFs.1.conv.0": ["ConvAttLIFs.0.spike.0"],
                   "ConvAttLIFs.2.conv.0": ["ConvAttLIFs.1.spike.0"], "FCs.0.linear.0": ["ConvAttLIFs.2.spike.0"],
                   "FCs.1.linear.0": ["FCs.0.spike.0"]}
    assert sum(l.kind == "asa" for l in layers) == 3
    # conv 2: 128 out channels on 8x8 (the pool comes after), 64 in, 3x3
    assert dict((l.name, l.macs) for l in layers)["ConvAttLIFs.1.conv.0"] == 128 * 8 * 8 * 64 * 9


def test_sew_sources_sum_rates():
    from models.sew_resnet import SEWResNet18
    net = SEWResNet18(2, 7, attention="no", widths=(4, 4, 8, 8))
    layers = E.count(net, 2, (32, 32))
    names = [l.name for l in layers]
    assert names[0] == "stem.conv" and layers[0].first and names[-1] == "fc"
    rates = {n: 0.1 for n, _ in spiking_layers(net)}
    rep = E.energy(layers, rates, 2)
    by = {r["name"]: r for r in rep["layers"]}
    assert by["layer1.0.conv2.conv"]["input_rate"] == pytest.approx(0.1)       # one spike tensor
    assert by["layer1.1.conv1.conv"]["input_rate"] == pytest.approx(0.2)       # residual + identity
    assert by["layer2.0.conv1.conv"]["input_rate"] == pytest.approx(0.3)


def test_cli_on_checkpoint(tmp_path, capsys):
    args = SimpleNamespace(backend="fused", arch="A", T=2, attention="no", asa_mask="reference", reduction=1, lam=0.5,
                           ps="00000", num_classes=3, frame_size=(4, 4))
    net = create_net(args)
    torch.save({"model": net.state_dict(), "config": vars(args), "epoch": 1}, tmp_path / "best.pth")
    fields = ["epoch", "test_acc", "test_nasfr", "fr_ConvAttLIFs.0.spike.0", "fr_ConvAttLIFs.1.spike.0",
              "fr_ConvAttLIFs.2.spike.0", "fr_FCs.0.spike.0", "fr_FCs.1.spike.0"]
    with open(tmp_path / "metrics.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(fields)
        w.writerow([0, 50.0, 0.1, 0.9, 0.9, 0.9, 0.9, 0.9])
        w.writerow([1, 60.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6])     # the checkpoint's epoch
    assert E.main([str(tmp_path / "best.pth"), "--json", str(tmp_path / "e.json")]) == 0
    out = capsys.readouterr().out
    assert "epoch 1" in out and "total" in out
    rep = json.loads((tmp_path / "e.json").read_text())
    rates = [r["input_rate"] for r in rep["layers"]]
    assert rates == [None, 0.2, 0.3, 0.4, 0.5]
    conv1 = 64 * 4 * 4 * 2 * 9
    assert rep["macs"] == 2 * conv1
    assert E.main([str(tmp_path / "nothing.pth")]) == 2
