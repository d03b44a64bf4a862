"""Seeds and determinism: what makes a run repeat, and what it cannot make repeat here."""
from __future__ import annotations

import os
import random
import warnings

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def make_deterministic(device: torch.device, world: int) -> list[str]:
    """Ask PyTorch for determinism; return notes on what stays non-deterministic here."""
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    torch.use_deterministic_algorithms(True, warn_only=True)   # warn (listed below), never crash
    notes = []
    if device.type == "cpu":
        notes.append(f"CPU: results repeat bitwise for the same PyTorch build, machine type and thread "
                     f"count (now {torch.get_num_threads()} threads); another thread count can change "
                     f"float rounding")
    else:
        notes.append("CUDA: results repeat for the same GPU model, driver and PyTorch build; operations "
                     "without a deterministic CUDA kernel are listed after the first epoch")
        if os.environ.get("CUBLAS_WORKSPACE_CONFIG") not in (":4096:8", ":16:8"):
            notes.append("CUBLAS_WORKSPACE_CONFIG could not be applied (CUDA was initialised first)")
    if world > 1:
        notes.append(f"{world} processes: results repeat for the same process count; another count "
                     f"splits the batches differently")
    return notes


class NondeterminismReport:
    """Records the warnings of a block (the first epoch of a -deterministic run) and prints the
    operations PyTorch reported as lacking a deterministic implementation; other warnings are
    shown again as they were."""

    def __init__(self, active: bool, say):
        self.active, self.say = active, say
        self._catch = warnings.catch_warnings(record=True) if active else None

    def __enter__(self):
        if self.active:
            self.caught = self._catch.__enter__()
            warnings.simplefilter("always")
        return self

    def __exit__(self, *exc):
        if not self.active:
            return False
        self._catch.__exit__(*exc)
        seen = set()
        for w in self.caught:
            msg = str(w.message)
            if "deterministic" in msg:
                key = msg.splitlines()[0][:200]
                if key not in seen:
                    seen.add(key)
                    self.say(f"deterministic: not deterministic on this device: {key}")
            else:
                warnings.showwarning(w.message, w.category, w.filename, w.lineno)
        if not seen and exc[0] is None:
            self.say("deterministic: PyTorch reported no non-deterministic operation in the first epoch")
        return False
