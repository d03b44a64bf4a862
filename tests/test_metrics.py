"""Clip vote, firing rates and NASFR on hand-computed cases."""
import torch
from torch import nn

from models.module import SpikingNeuron
from utils.run.metrics import SpikeMonitor, clip_vote, nasfr


def test_clip_vote_needs_more_than_half():
    # 2 samples x 4 clips, 3 classes
    logits = torch.zeros(8, 3)
    pred = [0, 0, 1, 1,   2, 2, 2, 1]
    logits[torch.arange(8), torch.tensor(pred)] = 1
    labels = torch.tensor([0, 2])
    # sample 0: 2 of 4 correct -> exactly half -> wrong; sample 1: 3 of 4 -> right
    assert clip_vote(logits, labels, 4).tolist() == [False, True]
    assert clip_vote(logits[:1], labels[:1], 1).tolist() == [True]


class Fixed(SpikingNeuron):
    """A 'spiking layer' that emits given spikes [N, T, ...] regardless of its input."""

    def __init__(self, spikes):
        super().__init__()
        self.s = spikes

    def forward(self, x):
        return self.s


def test_firing_rates_and_nasfr_by_hand():
    # layer a: 4 neurons, layer b: 2 neurons; N=2 samples, T=2 steps
    a = torch.tensor([[[1, 0, 0, 0], [1, 1, 0, 0]], [[0, 0, 0, 0], [1, 1, 1, 1]]], dtype=torch.float)
    b = torch.tensor([[[1, 1], [0, 0]], [[0, 0], [0, 0]]], dtype=torch.float)
    net = nn.Sequential(Fixed(a), Fixed(b))
    mon = SpikeMonitor(net)
    with mon:
        net(torch.zeros(1))
        net(torch.zeros(1))       # a second batch: counts accumulate
    net(torch.zeros(1))           # outside the context: not counted
    r = mon.rates()
    ra, rb = 2 * 7 / (2 * 4 * 4), 2 * 2 / (2 * 2 * 4)    # spikes / (T * n_l * samples)
    assert r["firing_rates"] == {"0": ra, "1": rb}
    assert abs(r["nasfr"] - (ra * 4 + rb * 2) / 6) < 1e-12
    assert nasfr([0.5, 0.0], [1, 3]) == 0.125
