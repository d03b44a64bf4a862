"""Training-step benchmark on CUDA: the CLI's step, fused vs eager backend, float32 and AMP.

    python3 bench/bench_gpu.py                 # arch A + ASA (T 60, 32x32) and arch B + ASA (T 20, 128x128)
    python3 bench/bench_gpu.py --only A --steps 20
    python3 bench/bench_gpu.py --batch 16      # another batch size (default 8, the paper's)

The step is train_test.py's own (bench/common.py: the paper's flags through config.py, the network
with the SpikeMonitor's hooks, utils.run.engine.train_step); "eager" is ``-backend eager``, the
reference's way of computing. float32 with TF32 at PyTorch's defaults (off for matmuls, on for cuDNN convolutions);
"amp" = torch.autocast(float16) + GradScaler, train_test.py's ``-amp``. Per configuration: median
step time over ``--steps`` after warm-up (CUDA events, so the GPU's time, with host overhead that
delays the GPU included), samples/s, peak CUDA memory (max_memory_allocated), FLOPs of one step
(FlopCounterMode: convolutions and matmuls of forward and backward) and the achieved TFLOP/s. The
same GPU's dense float32 / TF32 / float16 matmul TFLOP/s (8192^3) are printed first, as the bound
to compare against. Runs everything in this one process; memory is reset between configurations.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)


def matmul_tflops(dtype, tf32: bool = False, n: int = 8192, reps: int = 10) -> float:
    import torch
    saved = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = tf32
    try:
        a, b = torch.randn(n, n, device="cuda", dtype=dtype), torch.randn(n, n, device="cuda", dtype=dtype)
        for _ in range(3):
            a @ b
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(reps):
            a @ b
        end.record()
        torch.cuda.synchronize()
        return 2 * n ** 3 * reps / (start.elapsed_time(end) / 1e3) / 1e12
    finally:
        torch.backends.cuda.matmul.allow_tf32 = saved


def time_config(arch: str, backend: str, amp: bool, batch: int, steps: int, warmup: int) -> dict:
    import torch
    from torch.utils.flop_counter import FlopCounterMode
    from common import cli_step

    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    step, net = cli_step(arch, backend, batch=batch, device="cuda", amp=amp)

    for _ in range(warmup):
        step()
    torch.cuda.synchronize()
    times = []
    for _ in range(steps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        step()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    peak = torch.cuda.max_memory_allocated() / 2 ** 30
    counter = FlopCounterMode(display=False)
    with counter:
        step()
    torch.cuda.synchronize()
    med = statistics.median(times)
    flops = counter.get_total_flops()
    del net, step
    return {"arch": arch, "variant": backend, "amp": amp, "batch": batch, "step_s": med, "steps_s": times,
            "samples_per_s": batch / med, "peak_gib": peak, "flops": flops, "tflops": flops / med / 1e12}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--only", choices=["A", "B"], help="benchmark one architecture")
    p.add_argument("--steps", type=int, default=10, help="timed steps per configuration (default 10)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (default 3)")
    p.add_argument("--batch", type=int, default=8, help="samples per step (default 8)")
    p.add_argument("--no-reference", action="store_true", help="skip the eager backend (the reference's way)")
    p.add_argument("--json", metavar="FILE", help="also write every figure to FILE (JSON)")
    a = p.parse_args(argv)
    import torch
    if not torch.cuda.is_available():
        print("bench_gpu.py: no CUDA device here (bench/bench_train.py measures the CPU)", file=sys.stderr)
        return 2
    if a.steps < 1 or a.warmup < 0 or a.batch < 1:
        p.error("--steps and --batch must be >= 1, --warmup >= 0")
    props = torch.cuda.get_device_properties(0)
    print(f"{props.name}, {props.total_memory / 2 ** 30:.0f} GiB, {props.multi_processor_count} SMs; "
          f"torch {torch.__version__}, CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}")
    mm = {"fp32": matmul_tflops(torch.float32), "tf32": matmul_tflops(torch.float32, tf32=True),
          "fp16": matmul_tflops(torch.float16)}
    print("dense matmul 8192^3: " + ", ".join(f"{k} {v:.1f} TFLOP/s" for k, v in mm.items()))
    results = []
    for arch in (a.only,) if a.only else ("A", "B"):
        configs = [("fused", False), ("fused", True)]
        if not a.no_reference:
            configs.append(("eager", False))
        for variant, amp in configs:
            try:
                r = time_config(arch, variant, amp, a.batch, a.steps, a.warmup)
            except torch.OutOfMemoryError:
                torch.cuda.empty_cache()
                print(f"arch {arch} + ASA {variant:9s} {'amp ' if amp else 'fp32'}: out of CUDA memory")
                continue
            results.append(r)
            print(f"arch {arch} + ASA {variant:9s} {'amp ' if amp else 'fp32'}  batch {r['batch']}: "
                  f"{r['step_s'] * 1e3:8.1f} ms/step  {r['samples_per_s']:7.1f} samples/s  "
                  f"peak {r['peak_gib']:6.2f} GiB  {r['flops'] / 1e9:6.0f} GFLOP/step  "
                  f"{r['tflops']:5.1f} TFLOP/s", flush=True)
        ref = next((r for r in results if r["arch"] == arch and r["variant"] == "eager"), None)
        for r in results:
            if ref is not None and r["arch"] == arch and r is not ref:
                print(f"  arch {arch} {r['variant']} {'amp' if r['amp'] else 'fp32'} vs eager fp32: "
                      f"{ref['step_s'] / r['step_s']:.2f}x the step rate, {r['peak_gib'] / ref['peak_gib']:.2f}x "
                      f"the memory")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"device": props.name, "torch": torch.__version__, "matmul_tflops": mm,
                       "results": results}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
