"""utils/analysis/plots.py: membrane potentials rebuilt from the spiking layers' inputs, figures written."""
from types import SimpleNamespace

import matplotlib
import pytest
import torch

import config
from models import create_net
from models.module.lif import LIF
from models.module.decay_input import LIFNode, PLIF
from utils.analysis import plots

matplotlib.use("Agg")


@pytest.mark.parametrize("neuron", [LIF(), PLIF(), LIFNode()], ids=["LIF", "PLIF", "LIFNode"])
def test_membrane_matches_the_neurons_spikes(neuron):
    torch.manual_seed(0)
    x = torch.randn(3, 6, 4, 5) * 1.5
    with torch.no_grad():
        spikes = neuron(x)
    u, vth = plots.membrane_and_threshold(neuron, x)
    assert vth == (0.3 if isinstance(neuron, LIF) else 1.0)
    assert spikes.sum() > 0
    torch.testing.assert_close((u >= vth).float(), spikes)     # the spike decision is u >= Vth
    torch.testing.assert_close(u[:, 0], x[:, 0] * (1.0 if isinstance(neuron, LIF) else 0.5))


def tiny(attention):
    args = SimpleNamespace(backend="fused", arch="A", T=4, attention=attention, asa_mask="reference", reduction=1,
                           lam=0.5, ps="00000", num_classes=3, frame_size=(8, 8))
    torch.manual_seed(1)
    return create_net(args)


def test_figures_written(tmp_path):
    x = torch.poisson(torch.full((2, 4, 2, 8, 8), 1.0))
    paths = plots.make_figures({"LIF-SNN": tiny("no"), "+ ASA": tiny("ASA")}, x, str(tmp_path), "t_")
    assert [p.split("/")[-1] for p in paths] == ["t_membrane_potential.png", "t_spike_features.png"]
    import matplotlib.image as mpimg
    hist = mpimg.imread(paths[0])
    feats = mpimg.imread(paths[1])
    # 5 spiking layers -> 5 rows of histograms, 2 columns; input row + 3 conv rows of maps, 4 columns
    assert hist.shape[0] > 800 and hist.shape[1] > 800
    assert feats.shape[1] > 1000 and feats.std() > 0.05


def test_cli_from_a_tiny_checkpoint(tmp_path, capsys):
    args = config.parse_args(["-dataset", "synthetic", "-synthetic_train", "2", "-synthetic_test", "3",
                              "-T", "4", "-attention", "no"])
    net = create_net(args)
    torch.save({"model": net.state_dict(), "config": vars(args), "epoch": 0}, tmp_path / "best.pth")
    out = tmp_path / "figs"
    assert plots.main(["--lif", str(tmp_path), "--samples", "2", "--out", str(out)]) == 0
    assert (out / "membrane_potential.png").stat().st_size > 10_000
    assert (out / "spike_features.png").stat().st_size > 10_000
    assert "wrote" in capsys.readouterr().out
    assert plots.main(["--asa", str(tmp_path / "missing.pth"), "--out", str(out)]) == 2
