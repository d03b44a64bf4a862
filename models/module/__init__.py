"""Shared layers, each taking ``[N, T, ...]``: ASA (Attn.py), the LIF of arch A/D (LIF.py) and the
decay-input neurons PLIF / LIFNode of arch B/C and SEW-ResNet-18 (PLIF.py). To put ASA into another
network, import ``make_attention`` (or ``ASA``) from Attn.py and call it before each spiking neuron."""
from .Attn import ASA, make_attention
from .LIF import LIF
from .PLIF import NEURONS, LIFNode, PLIF

__all__ = ["ASA", "make_attention", "LIF", "LIFNode", "PLIF", "NEURONS"]
