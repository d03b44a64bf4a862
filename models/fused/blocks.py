"""Time-step blocking shared by the fused kernels.

Backward passes do their vectorisable work for many time steps at once. A block holds about
``BLOCK_ELEMENTS`` elements: big enough that each vectorised op amortises its dispatch cost,
small enough that the block temporaries stay a small fraction of the layer's activations (arch B
at 128x128 has 16.7M elements per time step).
"""
import torch

BLOCK_ELEMENTS = 1 << 22


def steps_per_block(x: torch.Tensor) -> int:
    """How many time steps of ``x: [N, T, ...]`` one block holds (at least 1)."""
    per_step = max(1, x[:, 0].numel())
    return max(1, min(x.shape[1], BLOCK_ELEMENTS // per_step))


def blocks(T: int, size: int):
    """(t0, t1) ranges covering [0, T) in blocks of ``size`` steps, first block first."""
    for t0 in range(0, T, size):
        yield t0, min(T, t0 + size)


def reverse_blocks(T: int, size: int):
    """(t0, t1) ranges covering [0, T) in blocks of ``size`` steps, last block first."""
    t1 = T
    while t1 > 0:
        t0 = max(0, t1 - size)
        yield t0, t1
        t1 = t0
