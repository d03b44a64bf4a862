"""Training-step benchmark on CPU: the CLI's step, fused vs eager backend, under each allocator,
float32 and ``-amp`` (bfloat16 autocast where the CPU has it).

    python3 bench/bench_train.py                    # arch A + ASA (T 60, 32x32) and arch B + ASA (T 20, 128x128)
    python3 bench/bench_train.py --only A --threads 1    # load-independent: CPU seconds per step
    python3 bench/bench_train.py --quick            # 1 warm-up + 2 timed steps, fewer configurations
    python3 bench/bench_train.py --allocators mimalloc,glibc   # only these allocators
    python3 bench/bench_train.py --amp --threads 1  # float32 vs -amp vs the reference's way, CPU s/step, in turns

The step is train_test.py's own (bench/common.py): the paper's flags for the gesture (A) and
gesture_sj (B) rows resolved by config.py, the network from models.create_net with the
SpikeMonitor's hooks attached, utils.run.engine.train_step (forward, MSE, backward, Adam), batch 8.
"eager" is ``-backend eager``, the reference's way of computing (the step-by-step definitions
under plain autograd); "fused" is the CLI default. Allocators are loaded as the CLI loads them
(utils/run/allocator.py: LD_PRELOAD): mimalloc (the CLI default, pip cmeel-mimalloc), jemalloc and
tcmalloc where installed, "glibc tuned" (the CLI's fallback: huge pages, 4 MiB mmap threshold)
and "glibc" (plain, ``ASA_ALLOCATOR=off``). The reference's way is eager under plain glibc.
"-amp" is train_test.py's ``-amp`` (utils/run/precision.py): bfloat16 autocast with the first
layer, the output layer, ASA, the neurons and the loss in float32, on CPUs with native bfloat16;
on other CPUs those configurations run float32 and say so.

Every configuration runs in a fresh subprocess, one after another, or with ``--interleave`` (the
default with ``--amp``) one architecture's configurations alive together, each warmed up, then
taking one step each in turns: a shared virtual machine's speed drifts by up to 1.5x over minutes,
and in turns the drift hits every configuration alike; ratios are then the median of per-round
ratios. Per configuration: median wall time of a step
after warm-up, samples/s, CPU seconds per step (user + system, all threads; with --threads 1 a
load-independent measure), peak resident memory (ru_maxrss), minor page faults per step (as GiB
of 4 KiB pages), FLOPs of one extra step counted by torch.utils.flop_counter.FlopCounterMode
(convolutions and matmuls, forward and backward), the achieved GFLOP/s and a plain float32
2048^3 matmul's GFLOP/s measured in the same subprocess, and the load average around it.
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
sys.path.insert(0, ROOT)

from utils.run import allocator  # noqa: E402

# (name, arch, backend, allocator, amp); "glibc" = plain glibc, "glibc tuned" = the CLI's fallback
CONFIGS = [
    ("A fused, mimalloc (CLI)", "A", "fused", "mimalloc", False),
    ("A fused, mimalloc, -amp (CLI -amp)", "A", "fused", "mimalloc", True),
    ("A fused, jemalloc", "A", "fused", "jemalloc", False),
    ("A fused, tcmalloc", "A", "fused", "tcmalloc", False),
    ("A fused, glibc tuned", "A", "fused", "glibc tuned", False),
    ("A fused, glibc", "A", "fused", "glibc", False),
    ("A eager, glibc (reference's way)", "A", "eager", "glibc", False),
    ("A eager, mimalloc", "A", "eager", "mimalloc", False),
    ("B fused, mimalloc (CLI)", "B", "fused", "mimalloc", False),
    ("B fused, mimalloc, -amp (CLI -amp)", "B", "fused", "mimalloc", True),
    ("B fused, glibc tuned", "B", "fused", "glibc tuned", False),
    ("B eager, mimalloc", "B", "eager", "mimalloc", False),
]
QUICK = {"A fused, mimalloc (CLI)", "A eager, glibc (reference's way)", "B fused, mimalloc (CLI)"}
# --amp: float32 and -amp side by side, with the reference's way in the same run
AMP = {"A fused, mimalloc (CLI)", "A fused, mimalloc, -amp (CLI -amp)", "A eager, glibc (reference's way)",
       "B fused, mimalloc (CLI)", "B fused, mimalloc, -amp (CLI -amp)"}
CLI = {"A": "A fused, mimalloc (CLI)", "B": "B fused, mimalloc (CLI)"}
CLI_AMP = {"A": "A fused, mimalloc, -amp (CLI -amp)", "B": "B fused, mimalloc, -amp (CLI -amp)"}
REFERENCE = {"A": "A eager, glibc (reference's way)", "B": "B eager, mimalloc"}


def allocator_env(name: str) -> dict | None:
    """The environment that runs a process under ``name``; None when it is not installed.
    "cli": no allocator setting at all, so that train_test.py picks as it does for a user."""
    base = {k: v for k, v in os.environ.items()
            if k not in ("LD_PRELOAD", "GLIBC_TUNABLES", allocator.ENV, "MALLOC_CONF")
            and not k.startswith(("MIMALLOC_", "ASA_ALLOCATOR"))}
    if name == "cli":
        return base
    if name == "glibc":
        return {**base, allocator.ENV: "off"}
    if name == "glibc tuned":
        return allocator.environment("glibc", None, base)
    lib = allocator.FINDERS[name]()
    return allocator.environment(name, lib, base) if lib else None


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


def _setup(arch: str, backend: str, warmup: int, threads: int | None, amp: bool):
    """In the worker process: the CLI's step, built and warmed up."""
    import torch
    sys.path.insert(0, HERE)
    from common import cli_step
    if threads:
        torch.set_num_threads(threads)
    step, _ = cli_step(arch, backend, amp=amp)
    for _ in range(max(1, warmup)):
        step()
    return step


def _timed(step) -> dict:
    """One timed step: wall and CPU seconds, minor page faults."""
    t0, c0 = time.perf_counter(), time.process_time()
    f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    step()
    return {"wall": time.perf_counter() - t0, "cpu": time.process_time() - c0,
            "minflt": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0}


def _summary(step, timed: list[dict], amp: bool) -> dict:
    """Peak RSS, the matmul reference rate and one FLOP-counted step, after the timed steps."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode
    from utils.run import precision
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20
    mm = matmul_gflops()
    counter = FlopCounterMode(display=False)
    with counter:
        step()
    times = [t["wall"] for t in timed]
    med = statistics.median(times)
    flops = counter.get_total_flops()
    return {"step_s": med, "steps_s": times, "cpu_s": statistics.median(t["cpu"] for t in timed),
            "cpus_s": [t["cpu"] for t in timed], "samples_per_s": 8 / med,
            "flops": flops, "minflt": statistics.median(t["minflt"] for t in timed), "gflops": flops / med / 1e9,
            "matmul_gflops": mm, "threads": torch.get_num_threads(), "maxrss_gib": maxrss,
            "allocator": allocator.loaded(),
            "precision": str(precision.amp_dtype(torch.device("cpu"), amp) or torch.float32).replace("torch.", "")}


def worker(arch: str, backend: str, steps: int, warmup: int, threads: int | None,
           amp: bool = False) -> dict:
    """Runs in its own process: build, warm up, time ``steps``, read the peak RSS, count FLOPs."""
    step = _setup(arch, backend, warmup, threads, amp)
    return _summary(step, [_timed(step) for _ in range(steps)], amp)


def serve(arch: str, backend: str, warmup: int, threads: int | None, amp: bool) -> None:
    """Interleaved mode's worker: build and warm up, say "ready", then one timed step per "step"
    line on stdin (a JSON line back each), and the summary on "end"."""
    step = _setup(arch, backend, warmup, threads, amp)
    print("ready", flush=True)
    timed = []
    for line in sys.stdin:
        if line.strip() != "step":
            break
        timed.append(_timed(step))
        print(json.dumps(timed[-1]), flush=True)
    print(json.dumps(_summary(step, timed, amp)), flush=True)


def _command(arch, backend, steps, warmup, threads, amp, serving=False) -> list[str]:
    return ([sys.executable, os.path.abspath(__file__), "--worker", arch, backend,
             "--steps", str(steps), "--warmup", str(warmup)] + (["--threads", str(threads)] if threads else [])
            + (["--amp"] if amp else []) + (["--serve"] if serving else []))


def run_config(arch, backend, alloc, steps, warmup, threads, timeout, amp=False) -> dict:
    env = allocator_env(alloc)
    if env is None:
        return {"error": f"skipped: {alloc} is not installed"}
    cmd = _command(arch, backend, steps, warmup, threads, amp)
    load0 = os.getloadavg()[0]
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=env)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout} s"}
    if p.returncode != 0:
        return {"error": _exit_error(p.returncode, p.stderr or p.stdout)}
    r = json.loads(p.stdout.strip().splitlines()[-1])
    r["load"] = (load0, os.getloadavg()[0])
    return r


def _exit_error(returncode: int, output: str) -> str:
    """A failed worker in one line: killed by a signal, or its last line of output."""
    tail = (output or "").strip().splitlines()[-1:] or [""]
    return f"exit {returncode}: {'killed (out of memory?)' if returncode < 0 else tail[0]}"


def _reply(p: subprocess.Popen) -> str:
    line = p.stdout.readline()
    if not line:
        p.wait()
        raise RuntimeError(_exit_error(p.returncode, p.stderr.read()))
    return line


def run_interleaved(configs: list[tuple], rounds: int, warmup: int, threads) -> dict:
    """Time ``configs`` [(name, arch, backend, allocator, amp)] in turns: every configuration's
    worker is built and warmed up first and stays alive; then each round takes one step of each
    (the order rotating), so that a drift of the machine's speed over minutes (shared virtual
    machines drift by 1.5x here) hits every configuration alike. Returns {name: result}, each
    result with its per-round "steps_s"/"cpus_s" in round order."""
    procs, results = {}, {}
    try:
        for name, arch, backend, alloc, amp in configs:
            env = allocator_env(alloc)
            if env is None:
                results[name] = {"error": f"skipped: {alloc} is not installed"}
                continue
            procs[name] = p = subprocess.Popen(_command(arch, backend, rounds, warmup, threads, amp, True),
                                               stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                               stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env)
            try:
                _reply(p)
            except RuntimeError as e:
                results[name] = {"error": str(e)}
                del procs[name]
        load0 = os.getloadavg()[0]
        names = list(procs)
        for r in range(rounds):
            for name in names[r % len(names):] + names[:r % len(names)]:
                procs[name].stdin.write("step\n")
                procs[name].stdin.flush()
                _reply(procs[name])
        for name, p in procs.items():
            p.stdin.write("end\n")
            p.stdin.flush()
            results[name] = json.loads(_reply(p))
            results[name]["load"] = (load0, os.getloadavg()[0])
    finally:
        for p in procs.values():
            p.kill()
            p.wait()
    return results


def cpu_ratio(slow: dict, fast: dict, paired: bool) -> float:
    """slow/fast in CPU time per step: the median of per-round ratios when the steps were taken in
    turns (``paired``), else the ratio of the medians (steps of separate runs pair nothing)."""
    if paired:
        return statistics.median(a / b for a, b in zip(slow["cpus_s"], fast["cpus_s"], strict=True))
    return slow["cpu_s"] / fast["cpu_s"]


def fmt(name: str, r: dict) -> str:
    if "error" in r:
        return f"{name:34s} {r['error']}"
    return (f"{name:34s} {r.get('precision', 'float32'):8s} step {r['step_s']:6.2f} s  {r['samples_per_s']:5.2f} samples/s  "
            f"(CPU {r['cpu_s']:6.2f} s)  peak RSS {r['maxrss_gib']:5.2f} GiB  "
            f"faults {r['minflt'] * os.sysconf('SC_PAGE_SIZE') / 2 ** 30:4.1f} GiB/step  "
            f"{r['flops'] / 1e9:5.0f} GFLOP/step  {r['gflops']:5.1f} GFLOP/s (matmul "
            f"{r['matmul_gflops']:5.1f}, {r['gflops'] / r['matmul_gflops']:.2f}x)  "
            f"[{r['allocator']}; load {r['load'][0]:.2f}->{r['load'][1]:.2f}]")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="1 warm-up + 2 timed steps; only the CLI and the reference's way")
    p.add_argument("--only", choices=["A", "B"], help="benchmark one architecture")
    p.add_argument("--amp", action="store_true",
                   help="only float32 and -amp side by side (the CLI's allocator) and the reference's way")
    p.add_argument("--steps", type=int, default=None, help="timed steps per configuration (default 5, B 3)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--allocators", default=None,
                   help="comma-separated: mimalloc, jemalloc, tcmalloc, 'glibc tuned', glibc (default: all)")
    p.add_argument("--timeout", type=int, default=1800, help="seconds per configuration")
    p.add_argument("--interleave", action=argparse.BooleanOptionalAction, default=None,
                   help="keep one architecture's configurations alive together (their memory adds up) and "
                        "time their steps in turns, ratios as medians of per-round ratios (default: on with --amp)")
    p.add_argument("--worker", nargs=2, metavar=("ARCH", "BACKEND"), help=argparse.SUPPRESS)
    p.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.worker:
        arch, backend = a.worker
        if a.serve:
            return serve(arch, backend, a.warmup, a.threads, a.amp)
        print(json.dumps(worker(arch, backend, a.steps or (3 if arch == "B" else 5), a.warmup, a.threads,
                                a.amp)))
        return

    import torch
    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2 ** 30
    interleave = a.amp if a.interleave is None else a.interleave
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, {mem_gib:.0f} GiB "
          f"RAM, torch {torch.__version__}, threads {a.threads or torch.get_num_threads()}; "
          f"load average before: {os.getloadavg()[0]:.2f}; "
          + ("interleaved: each architecture's configurations step in turns" if interleave
             else "one configuration after another"))
    wanted = a.allocators.split(",") if a.allocators else None
    chosen = []
    for name, arch, backend, alloc, amp in CONFIGS:
        if (a.only and arch != a.only) or (wanted and alloc not in wanted) or (a.quick and name not in QUICK) \
                or (a.amp and name not in AMP):
            continue
        if arch == "B" and backend == "eager" and mem_gib < 48:
            print(f"{name:34s} skipped: the eager backend needs ~35-40 GiB at 128x128 (this machine has "
                  f"{mem_gib:.0f} GiB)")
            continue
        chosen.append((name, arch, backend, alloc, amp))
    results = {}
    warmup = 1 if a.quick else a.warmup
    for arch in "AB":
        mine = [c for c in chosen if c[1] == arch]
        steps = a.steps or (2 if a.quick else 3 if arch == "B" else 5)
        if interleave and mine:
            got = run_interleaved(mine, steps, warmup, a.threads)
            for name, *_ in mine:
                results[name] = got[name]
                print(fmt(name, got[name]), flush=True)
            continue
        for name, _, backend, alloc, amp in mine:
            results[name] = r = run_config(arch, backend, alloc, steps, warmup, a.threads, a.timeout, amp)
            print(fmt(name, r), flush=True)
    summarize(results, interleave)
    print(f"load average after: {os.getloadavg()[0]:.2f}")


def summarize(results: dict, interleave: bool) -> None:
    """The comparisons per architecture: the CLI vs the reference's way, -amp vs float32."""
    how = "median of per-round CPU-time ratios" if interleave else "CPU time"
    ok = {k: r for k, r in results.items() if "error" not in r}
    for arch in "AB":
        cli, ref, fast = ok.get(CLI[arch]), ok.get(REFERENCE[arch]), ok.get(CLI_AMP[arch])
        if cli and ref:
            print(f"arch {arch}: the CLI's step vs {REFERENCE[arch]}: {ref['step_s'] / cli['step_s']:.2f}x the "
                  f"step rate ({how} {cpu_ratio(ref, cli, interleave):.2f}x); peak RSS {cli['maxrss_gib']:.2f} vs "
                  f"{ref['maxrss_gib']:.2f} GiB")
        if cli and fast:
            vs_ref = (f"; vs {REFERENCE[arch]}: {ref['step_s'] / fast['step_s']:.2f}x the step rate ({how} "
                      f"{cpu_ratio(ref, fast, interleave):.2f}x)") if ref else ""
            print(f"arch {arch}: -amp ({fast['precision']}) vs float32: {cli['step_s'] / fast['step_s']:.2f}x the "
                  f"step rate ({how} {cpu_ratio(cli, fast, interleave):.2f}x); peak RSS {fast['maxrss_gib']:.2f} "
                  f"vs {cli['maxrss_gib']:.2f} GiB{vs_ref}")


if __name__ == "__main__":
    main()
