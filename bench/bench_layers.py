"""Per-layer cost of ``-amp`` on CPU: where bfloat16 pays, one convolution layer at a time.

    python3 bench/bench_layers.py                  # arch A (T 60, 32x32) and B (T 20, 128x128), batch 8
    python3 bench/bench_layers.py --only A --reps 5

For every convolution layer of the CLI's network (bench/common.py: the paper's gesture and
gesture_sj flags, batch 8) it times the layer's front, forward and backward, from its input spikes
to the entry of its ASA (conv -> BatchNorm, and arch A's average pool), in two ways:

* float32: as without ``-amp``;
* bfloat16: as ``-amp`` computes the middle layers (utils/run/precision.py): the input recast to
  channels-last bfloat16, the front under bfloat16 autocast, its output recast to contiguous
  float32 for ASA; the recasts (and their backward copies) are counted, since they are what the
  layer pays for running in bfloat16.

The inputs are the layer's real inputs: one float32 forward of a batch of DVS-like frames through
the network records what each convolution receives. The two ways run in turns, ``--reps`` times
each, one thread, under the CLI's allocator; the median CPU time is printed. The policy column says what ``-amp`` does with
the layer: the first layer stays float32 for its input's sake (docs/mixed_precision.md).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)


def fronts(net):
    """[(conv name, front)] for every block holding ``conv`` and ``bn``: the layers' path from
    the conv's input to its ASA's input (the block's ``pool`` too where it precedes ASA)."""
    from torch import nn
    out = []
    for name, m in net.named_modules():
        if hasattr(m, "conv") and hasattr(m, "bn"):
            pool = getattr(m, "pool", nn.Identity())
            out.append((f"{name}.conv.0", lambda x, m=m, pool=pool: pool(m.bn(m.conv(x)))))
    return out


def layer_inputs(net, x):
    """{conv name: the input it receives} in one float32 training-mode forward without a graph."""
    import torch
    seen, handles = {}, []
    for name, m in net.named_modules():
        if isinstance(m, torch.nn.Conv2d):
            handles.append(m.register_forward_pre_hook(
                lambda mod, a, name=name: seen.__setitem__(name, a[0].detach().clone())))
    try:
        with torch.no_grad():
            net(x)
    finally:
        for h in handles:
            h.remove()
    return seen


def timed(fn, x, grad, first: bool) -> float:
    """CPU seconds of ``fn(x)`` forward and backward (the input's gradient too, except for the
    first layer, whose input is data)."""
    x = x.detach().requires_grad_(not first)
    t0 = time.process_time()
    y = fn(x)
    y.backward(grad)
    return time.process_time() - t0


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", choices=["A", "B"], help="one architecture")
    p.add_argument("--reps", type=int, default=3, help="timed repetitions of each way (after one warm-up)")
    a = p.parse_args(argv)
    from utils.run import allocator
    allocator.reexec_under_allocator()          # the CLI's malloc (utils/run/allocator.py)

    import torch
    from common import cli_args, make_batch
    from models import create_net
    from utils.run import precision
    torch.set_num_threads(1)
    if not precision.cpu_bf16()[0]:
        sys.exit(f"bench_layers: {precision.cpu_bf16()[1]}; -amp trains in float32 here")

    def bf16(front):
        def run(x):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                y = front(precision.to_bf16_channels_last(x))
            return precision.to_float32(y)
        return run

    print(f"torch {torch.__version__}, {allocator.loaded()}, one thread, {a.reps} reps each, CPU ms forward + backward of "
          f"conv -> BN (-> pool) up to ASA's input")
    for arch in "AB":
        if a.only and arch != a.only:
            continue
        args = cli_args(arch, "fused")
        torch.manual_seed(0)
        net = create_net(args).train()
        x, _ = make_batch(args.T, args.frame_size, 8)
        inputs = layer_inputs(net, x)
        print(f"arch {arch} (T {args.T}, {args.frame_size[0]}x{args.frame_size[1]}, batch 8):")
        print(f"  {'layer':26s} {'input':>22s} {'float32':>9s} {'bfloat16':>9s} {'ratio':>6s}  -amp")
        for i, (name, front) in enumerate(fronts(net)):
            xin = inputs[name]
            with torch.no_grad():
                grad = torch.randn_like(front(xin))
            ways = {"float32": front, "bfloat16": bf16(front)}
            times = {w: [] for w in ways}
            for rep in range(a.reps + 1):
                for w, fn in ways.items():
                    t = timed(fn, xin, grad, first=i == 0)
                    if rep:
                        times[w].append(t)
            f32, b16 = (statistics.median(times[w]) * 1e3 for w in ways)
            policy = "float32 (first layer)" if i == 0 else "bfloat16"
            print(f"  {name:26s} {str(tuple(xin.shape)):>22s} {f32:7.0f} ms {b16:6.0f} ms {f32 / b16:5.2f}x  {policy}",
                  flush=True)
            del inputs[name]


if __name__ == "__main__":
    main()
