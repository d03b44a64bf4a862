"""What the benchmarks time: the CLI's own network, hooks and training step.

``cli_step(row, backend, ...)`` resolves the paper's flags for a table row through config.py (the
CLI's parser), builds the network with models.create_net, attaches the SpikeMonitor's forward
hooks exactly as train_test.py does before training, and returns utils.run.engine.train_step (forward,
MSE against the one-hot label, backward, Adam) bound to one batch of DVS-like frames. The only
switch between "this project" and "the reference's way of computing" is ``-backend fused|eager``
(models/fused): the same modules, parameters and spikes.

Helpers to measure a process tree's memory (for the whole-CLI benchmarks) live here too.
"""
from __future__ import annotations

import os
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

# The paper's rows the step benchmarks use: gesture (arch A, T 60) and gesture_sj (arch B, T 20).
ROW_OF_ARCH = {"A": "gesture", "B": "gesture_sj"}
NUM_CLASSES = 11


def cli_args(arch: str, backend: str, extra=()):
    """The configuration train_test.py resolves for the row's flags (the authors' settings), with
    the built-in dataset in place of the row's data: its 128x128 sensor gives the same frame size
    (32x32 at ds 4, 128x128 at ds 1); nothing is read."""
    import shlex

    import config
    from utils.analysis.rows import ROW_BY_NAME
    flags = shlex.split(ROW_BY_NAME[ROW_OF_ARCH[arch]].flags)
    flags[flags.index("-dataset") + 1] = "synthetic"
    return config.parse_args([*flags, "-backend", backend, "-num_classes", str(NUM_CLASSES), *extra])


def make_batch(T: int, frame_size, batch: int, seed: int = 0):
    """Sparse event-count frames like DVS data (about 10% of pixels active) and labels."""
    import torch
    g = torch.Generator().manual_seed(seed)
    shape = (batch, T, 2, *frame_size)
    x = (torch.rand(shape, generator=g) < 0.1).float() * torch.randint(1, 4, shape, generator=g).float()
    return x, torch.randint(0, NUM_CLASSES, (batch,), generator=g)


def cli_step(arch: str, backend: str, batch: int = 8, device: str = "cpu", amp: bool = False):
    """(step function, network) for one training step as the CLI takes it."""
    import torch
    from models import create_net
    from utils.run.engine import Training, make_optimizer, train_step
    from utils.run.metrics import SpikeMonitor
    args = cli_args(arch, backend)
    torch.manual_seed(0)
    net = create_net(args).to(device).train()
    SpikeMonitor(net)                       # its forward hooks, as train_test.py registers them
    opt = make_optimizer(net, args.lr, args.weight_decay)
    scaler = torch.amp.GradScaler("cuda") if amp and device == "cuda" else None
    training = Training(opt, NUM_CLASSES, torch.device(device), amp, scaler)
    x, y = make_batch(args.T, args.frame_size, batch)
    x, y = x.to(device), y.to(device)

    def step():
        return train_step(net, x, y, training)[0]
    return step, net


# --- memory of a process tree (the CLI with its DataLoader workers) ----------------------------

def children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(c) for c in f.read().split()]
    except OSError:
        return []


def tree(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children(p))
    return out


def status_kib(pid: int, field: str) -> int:
    """A 'kB' field of /proc/PID/status (VmRSS, VmHWM), 0 once the process is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def pss_kib(pid: int) -> int:
    """Proportional set size: shared pages (forked workers) counted once over the tree."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def tree_memory_gib(pid: int) -> dict:
    """{'rss': resident memory of the main process, 'pss': PSS summed over the tree} in GiB."""
    return {"rss": status_kib(pid, "VmRSS") / 2 ** 20,
            "pss": sum(pss_kib(p) for p in tree(pid)) / 2 ** 20}


class PeakSampler(threading.Thread):
    """Samples tree_memory_gib(pid) every ``interval`` seconds; keeps the peaks."""

    def __init__(self, pid: int, interval: float = 0.25):
        super().__init__(daemon=True)
        self.pid, self.interval = pid, interval
        self.peak = {"rss": 0.0, "pss": 0.0}
        self.running = True

    def run(self):
        while self.running:
            m = tree_memory_gib(self.pid)
            for k in self.peak:
                self.peak[k] = max(self.peak[k], m[k])
            time.sleep(self.interval)

    def stop(self) -> dict:
        self.running = False
        self.join()
        return self.peak
