"""Training-step benchmark: fused (shipped) vs reference-style step under the malloc policies.

    python3 bench/bench_train.py            # arch A + ASA (T 60, 32x32) and arch B + ASA (T 20, 128x128)
    python3 bench/bench_train.py --quick    # fewer steps; arch B fused only
    python3 bench/bench_train.py --only A   # one architecture
    python3 bench/bench_train.py --policies thp,heap   # only these malloc policies

Every configuration runs in a fresh subprocess, so peak resident memory (ru_maxrss) and the
malloc policy (utils/memory.keep_freed_memory, which train_test.py applies at start: "cache" unless
ASA_MALLOC / ASA_KEEP_FREED_MEMORY say otherwise) do not mix. "default glibc" = no policy.
Per configuration it prints: median step time after warm-up (forward + MSE + backward + Adam, batch
8), samples/s, peak RSS, FLOPs of one step counted by torch.utils.flop_counter.FlopCounterMode
(every aten conv/matmul of forward and backward, ASA's small convs included; elementwise work is
not counted), minor page faults per step (as GiB of 4 KiB pages), the achieved GFLOP/s, and the plain float32 matmul GFLOP/s (2048^3, median of 5) measured
in the same subprocess just before the steps. The data pipeline's clips/s (bench_data.py) follows.
Timings on a shared machine are noisy: the load average is printed before and after, and the CPU
time of the process per step (user + system, all threads) is printed beside the wall time: with
--threads 1 it is a load-independent measure of the work a step does. Each line ends with the policy
actually applied and the load average before and after that configuration.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

# (name, arch, variant, malloc policy of utils/memory.py; "default" = glibc untouched)
CONFIGS = [
    ("A fused, cache (CLI)", "A", "fused", "cache"),
    ("A fused, thp", "A", "fused", "thp"),
    ("A fused, heap", "A", "fused", "heap"),
    ("A fused, default glibc", "A", "fused", "default"),
    ("A reference, default glibc", "A", "reference", "default"),
    ("A reference, cache", "A", "reference", "cache"),
    ("B fused, cache (CLI)", "B", "fused", "cache"),
    ("B fused, thp", "B", "fused", "thp"),
    ("B fused, heap", "B", "fused", "heap"),
    ("B reference, cache", "B", "reference", "cache"),
]
REF_NAME, FUSED_NAME = "A reference, default glibc", "A fused, cache (CLI)"


def matmul_gflops(n: int = 2048, reps: int = 5) -> float:
    import torch
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        a @ b
        ts.append(time.perf_counter() - t0)
    return 2 * n ** 3 / statistics.median(ts) / 1e9


def worker(arch: str, variant: str, policy: str, steps: int, warmup: int, threads: int | None) -> dict:
    """Runs in its own process: build, warm up, time ``steps``, read the peak RSS, then count the
    FLOPs of one more step.
    The "thp" policy re-executes this worker once with glibc's hugetlb tunable (utils/memory.py)."""
    sys.path.insert(0, ROOT)
    from utils import memory
    if policy != "default":
        memory.keep_freed_memory(policy=policy)
    import torch
    from torch.utils.flop_counter import FlopCounterMode
    sys.path.insert(0, HERE)
    from reference_step import CONFIGS as NETS, build_net, make_batch, make_step
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    net = build_net(arch, variant)
    x, y = make_batch(NETS[arch]["T"], NETS[arch]["frame_size"], 8)
    step = make_step(net, x, y)
    for _ in range(max(1, warmup)):
        step()
    mm = matmul_gflops()
    times, cpu, faults = [], [], []
    for _ in range(steps):
        t0, c0 = time.perf_counter(), time.process_time()
        f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        step()
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
    med = statistics.median(times)
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20
    from utils import block_cache
    cache = block_cache.stats() if memory.applied_policy == "cache" else None
    # FLOPs last: FlopCounterMode's module hooks switch the lean path off (models/lif_snn.py
    # steps aside for hooks), so the counted step must not set the memory peak above
    counter = FlopCounterMode(display=False)
    with counter:
        step()
    flops = counter.get_total_flops()
    return {"cache_mapped_peak_gib": cache and cache["mapped_peak_bytes"] / 2 ** 30,"step_s": med, "steps_s": times, "cpu_s": statistics.median(cpu), "samples_per_s": 8 / med, "flops": flops,
            "minflt": statistics.median(faults), "policy": memory.applied_policy or "default",
            "gflops": flops / med / 1e9, "matmul_gflops": mm, "threads": torch.get_num_threads(),
            "maxrss_gib": maxrss}


def run_config(arch, variant, policy, steps, warmup, threads, timeout) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", arch, variant, policy,
           "--steps", str(steps), "--warmup", str(warmup)]
    if threads:
        cmd += ["--threads", str(threads)]
    env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "ASA_MALLOC_REEXECED")}
    load0 = os.getloadavg()[0]
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=env)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout} s"}
    if p.returncode != 0:
        tail = (p.stderr or p.stdout).strip().splitlines()[-1:] or [""]
        why = "killed (out of memory?)" if p.returncode < 0 else tail[0]
        return {"error": f"exit {p.returncode}: {why}"}
    r = json.loads(p.stdout.strip().splitlines()[-1])
    r["load"] = (load0, os.getloadavg()[0])
    return r


def fmt(name: str, r: dict) -> str:
    if "error" in r:
        return f"{name:32s} {r['error']}"
    return (f"{name:32s} step {r['step_s']:6.2f} s  {r['samples_per_s']:5.2f} samples/s  "
            f"(CPU {r['cpu_s']:6.2f} s)  peak RSS {r['maxrss_gib']:5.2f} GiB  "
            f"faults {r['minflt'] * os.sysconf('SC_PAGE_SIZE') / 2 ** 30:4.1f} GiB/step  {r['flops'] / 1e9:5.0f} GFLOP/step  "
            f"{r['gflops']:5.1f} GFLOP/s (matmul {r['matmul_gflops']:5.1f}, "
            f"{r['gflops'] / r['matmul_gflops']:.2f}x)  [{r['policy']}; load {r['load'][0]:.2f}->{r['load'][1]:.2f}]"
            + (f"  cache peak {r['cache_mapped_peak_gib']:.2f} GiB" if r.get("cache_mapped_peak_gib") else ""))


def load() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="1 warm-up + 2 timed steps, no arch B reference")
    p.add_argument("--only", choices=["A", "B"], help="benchmark one architecture")
    p.add_argument("--steps", type=int, default=None, help="timed steps per configuration (default 5, B 3)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first (FLOPs are counted on one extra step at the end)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--skip-b-reference", action="store_true",
                   help="skip arch B's reference step (needs ~35-40 GiB; it is skipped anyway when "
                        "the machine has less than 48 GiB)")
    p.add_argument("--no-data", action="store_true", help="skip the data pipeline measurement")
    p.add_argument("--timeout", type=int, default=1800, help="seconds per configuration")
    p.add_argument("--policies", default=None,
                   help="comma-separated malloc policies to run (cache, thp, heap, default; default: all)")
    p.add_argument("--worker", nargs=3, metavar=("ARCH", "VARIANT", "POLICY"), help=argparse.SUPPRESS)
    a = p.parse_args(argv)

    if a.worker:
        arch, variant, policy = a.worker
        steps = a.steps or (3 if arch == "B" else 5)
        print(json.dumps(worker(arch, variant, policy, steps, a.warmup, a.threads)))
        return

    import torch
    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2 ** 30
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"{mem_gib:.0f} GiB RAM, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"load average before: {load()}")
    results = {}
    policies = a.policies.split(",") if a.policies else None
    for name, arch, variant, policy in CONFIGS:
        if a.only and arch != a.only or policies and policy not in policies:
            continue
        if arch == "B" and variant == "reference" and (a.quick or a.skip_b_reference or mem_gib < 48):
            print(f"{name:32s} skipped (needs ~35-40 GiB; this machine has {mem_gib:.0f} GiB)")
            continue
        if a.quick:
            steps, warmup = a.steps or 2, 1
        else:
            steps, warmup = a.steps or (3 if arch == "B" else 5), a.warmup
        r = run_config(arch, variant, policy, steps, warmup, a.threads, a.timeout)
        results[name] = r
        print(fmt(name, r), flush=True)
    ref, fused = results.get(REF_NAME), results.get(FUSED_NAME)
    if ref and fused and "error" not in ref and "error" not in fused:
        print(f"arch A speedup (fused, cache policy vs reference, default glibc): "
              f"{ref['step_s'] / fused['step_s']:.1f}x; peak RSS {fused['maxrss_gib']:.2f} vs "
              f"{ref['maxrss_gib']:.2f} GiB")
    if not a.no_data:
        sys.path.insert(0, HERE)
        import bench_data
        d = bench_data.measure(repeat=5 if a.quick else 20)
        print(bench_data.report(d))
        if fused and "error" not in fused:
            print(f"data vs arch A training: test clips produced {d['test_clips_per_s']:.0f}/s, "
                  f"a training step consumes {fused['samples_per_s']:.1f} samples/s: "
                  f"{d['test_clips_per_s'] / fused['samples_per_s']:.0f}x")
    print(f"load average after: {load()}")


if __name__ == "__main__":
    main()
