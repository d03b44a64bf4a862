"""A start-up estimate of the memory a run needs, so that a run that cannot fit is refused at once
with its figure instead of growing until the machine swaps or the kernel kills it.

The estimate is a lower bound read off the network itself, built on the meta device (no memory
is allocated, so it is safe also for absurd settings): one float32 tensor per conv layer output
kept for the backward pass of a training step, plus the input frames, for the batch
(-batch_size_train samples x -T steps); the input and the largest conv output for a test forward
pass (-batch_size_test x -clip windows); plus every parameter four times (weights, gradients and
Adam's two moments; ASA's temporal fc grows as T^2). A new architecture needs nothing here. A real
step holds more: for the gesture preset (arch A, T 60, batch 32, 32x32 frames) this gives
1.69 GiB, where bench/README.md measures a training step's peak RSS of 2.1-2.8 GiB (fused backend;
the eager one and arch B need several times more), so a refusal is safe to trust.
``-skip_memory_check`` starts anyway.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from models import create_meta_net
from utils.errors import UserError
from utils.files import available_memory


def conv_output_values(args) -> list[int]:
    """Values of each conv layer's output for one input frame of ``args.frame_size``, in forward
    order: one frame through the network built on the meta device. The shapes do not depend on T
    or on ASA (it keeps its input's shape), so the pass uses T = 1 without attention, which any
    T builds in no time."""
    shape_args = copy.copy(args)
    shape_args.T, shape_args.attention, shape_args.backend = 1, "no", "eager"
    net = create_meta_net(shape_args).eval()
    sizes: list[int] = []
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            m.register_forward_hook(lambda m, i, o: sizes.append(o[0].numel()))
    with torch.no_grad():
        net(torch.empty(1, 1, 2, *args.frame_size, device="meta"))
    return sizes


def parameter_values(args) -> int:
    """Number of parameter values of the network ``args`` describes (built on the meta device)."""
    return sum(p.numel() for p in create_meta_net(args).parameters())


def estimate_bytes(args, batch_train: int) -> int:
    """Lower bound of the bytes of one training step or test pass, whichever is larger (module
    doc), plus the parameters. ValueError when the network cannot be built for these settings."""
    X, Y = args.frame_size
    frame_in = 2 * X * Y
    convs = conv_output_values(args)
    total, largest = sum(convs), max(convs, default=0)
    train = 0 if args.eval_only else 4 * batch_train * args.T * (frame_in + total)
    test = 4 * args.batch_size_test * args.clip * args.T * (frame_in + largest)
    params = parameter_values(args) * 4 * (1 if args.eval_only else 4)
    return max(train, test) + params


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
    have = available_bytes(device)
    if have is None:
        return
    try:
        need = estimate_bytes(args, batch)
    except ValueError:                  # settings the network cannot take: building it says why
        return
    if need <= have:
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
