"""A start-up estimate of the memory a run needs, so that a run that cannot fit is refused at once
with its figure instead of growing until the machine swaps or the kernel kills it.

The estimate is a lower bound computed from the flags alone (no allocation): one float32 tensor per
conv layer output kept for the backward pass of a training step, plus the input frames, for the
batch (-batch_size_train samples x -T steps); the input and the largest conv output for a test
forward pass (-batch_size_test x -clip windows); plus ASA's temporal fc weights, which grow as T^2 (weights, gradients and Adam's two
moments). A real step holds more: for the gesture preset (arch A, T 60, batch 32, 32x32 frames)
this gives 1.66 GiB, where bench/README.md measures a training step's peak RSS of 2.1-2.8 GiB (fused
backend; the eager one and arch B need several times more), so a refusal is safe to trust. ``-skip_memory_check`` starts anyway.
"""
from __future__ import annotations

import math

from utils.errors import UserError
from utils.files import available_memory

# conv layer outputs of each architecture: (channels, spatial stride of the output w.r.t. the frame)
LAYERS = {
    "A": [(64, 1), (128, 1), (128, 2)],
    "D": [(32, 1), (32, 1), (32, 2)],
    "B": [(128, 1), (128, 2), (128, 4), (128, 8), (128, 16)],
    "C": [(64, 1), (128, 2), (128, 4), (128, 8), (128, 16)],
    "sew18": [(64, 2)] + [(64, 4)] * 4 + [(128, 8)] * 4 + [(256, 16)] * 4 + [(512, 32)] * 4,
}
DEFAULT_LAYERS = [(128, 1)]       # an architecture not listed: one full-size 128-channel layer


def per_frame_values(arch: str, frame_size) -> tuple[int, int]:
    """(values of every conv output of one frame summed, the largest one) for ``arch``."""
    X, Y = frame_size
    sizes = [c * math.ceil(X / s) * math.ceil(Y / s) for c, s in LAYERS.get(arch, DEFAULT_LAYERS)]
    return sum(sizes), max(sizes)


def estimate_bytes(args, batch_train: int) -> int:
    """Lower bound of the bytes of one training step or test pass, whichever is larger (module doc)."""
    X, Y = args.frame_size
    frame_in = 2 * X * Y
    total, largest = per_frame_values(args.arch, args.frame_size)
    train = 0 if args.eval_only else 4 * batch_train * args.T * (frame_in + total)
    test = 4 * args.batch_size_test * args.clip * args.T * (frame_in + largest)
    asa = 0
    if args.attention == "ASA":
        hidden = args.T if args.arch in ("B", "C") else max(1, args.T // args.reduction)
        layers = len(LAYERS.get(args.arch, DEFAULT_LAYERS))
        asa = layers * 2 * args.T * hidden * 4 * (1 if args.eval_only else 4)
    return max(train, test) + asa


def available_bytes(device) -> int | None:
    """Memory this run can still take: the GPU's free memory, or the host's (utils/files.py
    available_memory: MemAvailable, lowered to ulimit -v); None where it cannot be read (then
    nothing is checked)."""
    if device.type != "cuda":
        return available_memory()
    try:
        import torch
        return int(torch.cuda.mem_get_info(device)[0])
    except (RuntimeError, ValueError):
        return None


def gib(n: int) -> str:
    return f"{n / 2**30:.1f} GiB"


def check_memory(args, device, world_size: int = 1) -> None:
    """UserError when the estimate exceeds the available memory (unless -skip_memory_check)."""
    if getattr(args, "skip_memory_check", False) or not args.frame_size:
        return
    batch = args.batch_size_train
    if device.type == "cuda":                 # each process its own GPU and its part of the batch
        batch = -(-batch // world_size)
    need, have = estimate_bytes(args, batch), available_bytes(device)
    if have is None or need <= have:
        return
    X, Y = args.frame_size
    sensor = ("; the sensor size was read from the data's largest x and y: check them or pass "
              "-sensor_size X Y" if args.dataset == "events" and not getattr(args, "sensor_size_flag", None)
              else "")
    raise UserError(f"this run needs at least {gib(need)} of {'GPU ' if device.type == 'cuda' else ''}"
                    f"memory (-arch {args.arch}, -T {args.T}, frames 2x{X}x{Y}, -batch_size_train "
                    f"{args.batch_size_train}, -batch_size_test {args.batch_size_test} x -clip {args.clip}) "
                    f"but {gib(have)} are available; lower -T or the batch sizes, raise -ds, or pass "
                    f"-skip_memory_check to start anyway{sensor}")
