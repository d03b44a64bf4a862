"""Shared layers, each taking ``[N, T, ...]``; each file's fast kernel has the same name in
models/fused/:

- ``Attn.py``: ASA and ``make_attention`` (fused/attn.py). To put ASA into another network, call
  ``make_attention`` (or ``ASA``) before each spiking neuron.
- ``neuron.py``: ``SpikingNeuron``, the base of every spiking layer, and ``spiking_layers(net)``.
- ``lif.py``: the LIF of arch A and D (fused/lif.py).
- ``decay_input.py``: the decay-input neurons, PLIF (arch B, SEW-ResNet-18) and the plain LIFNode
  (arch C) (fused/decay_input.py).
"""
from .Attn import ASA, make_attention
from .decay_input import NEURONS, LIFNode, PLIF
from .lif import LIF
from .neuron import SpikingNeuron, spiking_layers

__all__ = ["ASA", "make_attention", "LIF", "LIFNode", "PLIF", "NEURONS", "SpikingNeuron", "spiking_layers"]
