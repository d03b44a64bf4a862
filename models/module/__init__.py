"""Building blocks: ASA attention and the multi-step spiking neurons (all take ``[N, T, ...]``)."""
from .Attn import ASA
from .LIF import LIF
from .neurons import LIFNode, PLIF

__all__ = ["ASA", "LIF", "LIFNode", "PLIF"]
