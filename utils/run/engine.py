"""One training step, one training epoch and one test pass (docs/reference.md, "Training").

Loss: MSE between the logits [N, K] and the one-hot label. The membrane state is reset for every
batch because every spiking layer starts from zero at each forward. Test batches hold
batch_size_test samples x clip clips in one forward pass, as in the reference (its ASA masks pool
over the whole test batch).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.nn.functional as F
from tqdm import tqdm

from utils.run.allocator import release_free_memory
from utils.run import precision
from utils.run.distributed import Dist
from utils.run.metrics import Batch, SpikeMonitor, add_batch, means, zero_sums


class NonFiniteLoss(RuntimeError):
    pass


def reference_lr(epoch: int, base_lr: float, T_0: int, eta_min: float = 1e-6) -> float:
    """Learning rate used during 0-based ``epoch``.

    The reference calls CosineAnnealingWarmRestarts(T_0, T_mult=1, eta_min).step(epoch) after each
    epoch, so epochs 0 and 1 both use base_lr and epoch e >= 1 uses the cosine value at T_cur = e - 1."""
    t_cur = 0 if epoch == 0 else (epoch - 1) % T_0
    return eta_min + (base_lr - eta_min) * (1 + math.cos(math.pi * t_cur / T_0)) / 2


def make_optimizer(net, lr: float, weight_decay: float) -> torch.optim.Adam:
    """The reference's optimizer: Adam, betas 0.9/0.999, eps 1e-8."""
    return torch.optim.Adam(net.parameters(), lr=lr, betas=(0.9, 0.999), eps=1e-8,
                            weight_decay=weight_decay)


def set_lr(optimizer, lr: float) -> None:
    for g in optimizer.param_groups:
        g["lr"] = lr


@dataclass
class Training:
    """How training steps are taken: the optimizer, the class count (the one-hot MSE target), the
    device the batches go to, autocast (``amp``) and its GradScaler, and the processes
    (utils/run/distributed.Dist). With several processes each step's loss is weighted by the
    loader's batch plan (:func:`train_one_epoch`) and the processes agree on its finiteness."""
    optimizer: torch.optim.Optimizer
    num_classes: int
    device: torch.device = torch.device("cpu")
    amp: bool = False
    scaler: Any = None
    dist: Dist = field(default_factory=Dist)


def train_step(net, x, y, training: Training, weight: float = 1.0):
    """One optimisation step on the batch (x, y) already on the device; returns (loss, logits),
    both detached. ``weight`` scales the loss that is backpropagated (several processes, see
    :func:`train_one_epoch`). Raises NonFiniteLoss before the update when the loss is not finite
    (on any process)."""
    with precision.autocast(x.device, training.amp, net):
        logits = net(x)
    loss = F.mse_loss(logits.float(), F.one_hot(y, training.num_classes).float())     # float32 under -amp
    if not training.dist.all_true(bool(torch.isfinite(loss))):
        raise NonFiniteLoss(f"non-finite training loss ({loss.item()})")
    optimizer, scaler = training.optimizer, training.scaler
    optimizer.zero_grad(set_to_none=True)
    scaled = loss if weight == 1 else loss * weight
    if scaler is not None:
        scaler.scale(scaled).backward()
        scaler.step(optimizer)
        scaler.update()
    else:
        scaled.backward()
        optimizer.step()
    return loss.detach(), logits.detach()


@dataclass
class EpochStart:
    """Where a training pass resumes: ``step`` (the next one), this process's sums so far
    (utils/run/metrics.zero_sums's layout), and ``restore_rng()``, which sets the random generators as they were
    after step ``step - 1``."""
    step: int
    sums: list
    restore_rng: Callable[[], None]


@dataclass
class EpochControl:
    """What the caller of a training pass hears and decides: ``on_step(b, loss)`` receives each
    step's index and detached loss (TensorBoard); ``should_stop()`` is asked after each step, and
    True ends the pass there; ``start`` (:class:`EpochStart`) continues a pass from its step."""
    start: EpochStart | None = None
    on_step: Callable[[int, torch.Tensor], None] | None = None
    should_stop: Callable[[], bool] | None = None


def train_one_epoch(net, loader, training: Training, epoch: int = 0, control: EpochControl | None = None,
                    progress: bool = True) -> dict:
    """One epoch; returns this process's raw sums {'sums': every per-sample metric's sum and the
    sample count, utils/run/metrics.zero_sums} (float64)
    and {'steps': the index of the next step} (the epoch's step count unless stopped).

    Stopping and resuming inside the epoch (utils/run/fit.py, :class:`EpochControl`): a pass
    continued from ``control.start`` begins with its step and sums. The loader then yields the
    remaining batches only; its iterator is made first, because making it draws the workers' base
    seed from torch's generator, and the saved generator states (taken after the last finished
    step) are restored after that draw.

    Several processes (DistributedDataParallel, ``training.dist.active``): the loader's batch
    sampler plans per step (samples of this rank that count, samples of the global batch)
    (utils/run/loaders.ShardedBatchSampler.plan). The rank's mean loss is weighted by
    world_size * counted / global, so DDP's gradient average equals the gradient of the mean loss
    over the global batch whatever the split; a stand-in sample (counted = 0) gets weight 0 and is
    left out of the sums. In a single process the weight is 1 and the loss is used as it is."""
    control = control or EpochControl()
    start, device, world = control.start, training.device, training.dist.world_size
    plan = loader.batch_sampler.plan() if training.dist.active else None
    release_free_memory()                 # the test pass's blocks do not fit the training's
    net.train()
    first = start.step if start is not None else 0
    sums = zero_sums(device)
    if start is not None:
        sums += torch.tensor(start.sums, dtype=torch.float64, device=device)
    batches = iter(loader)
    if start is not None:
        start.restore_rng()
    bar = tqdm(batches, total=len(loader), desc=f"train {epoch}", leave=False,
               disable=not progress, dynamic_ncols=True)
    b = first - 1
    for b, (x, y) in enumerate(bar, start=first):
        x = x.to(device, non_blocking=True).float()
        y = y.to(device, non_blocking=True)
        counted, global_n = plan[b] if plan is not None else (len(y), len(y))
        try:
            loss, logits = train_step(net, x, y, training, world * counted / global_n)
        except NonFiniteLoss as e:
            raise NonFiniteLoss(f"{e} at epoch {epoch} (0-based, as in metrics.csv), batch {b}") from None
        if counted:
            add_batch(sums, Batch(logits[:counted], y[:counted], 1, loss.double() * counted))
        if control.on_step is not None:
            control.on_step(b, loss)
        if progress:
            bar.set_postfix(loss=f"{loss.item():.4f}")
        if control.should_stop is not None and control.should_stop():
            break
    bar.close()
    return {"sums": sums, "steps": b + 1}


@torch.no_grad()
def evaluate(net, loader, device, num_classes: int, monitor: SpikeMonitor, amp: bool = False,
             progress: bool = True, should_stop=None) -> dict | None:
    """Test pass. Returns raw sums (for reduction across processes) under 'sums' and 'spikes';
    None when ``should_stop(b)``, asked before test batch b, said True (the pass is abandoned)."""
    release_free_memory()                 # the training pass's blocks do not fit the test's
    net.eval()
    monitor.reset()
    sums = zero_sums(device)
    with monitor:
        for b, (x, y) in enumerate(tqdm(loader, desc="test", leave=False, disable=not progress,
                                        dynamic_ncols=True)):
            if should_stop is not None and should_stop(b):
                return None
            x = x.to(device, non_blocking=True).float()
            y = y.to(device, non_blocking=True)
            clip = x.shape[1]
            with precision.autocast(device, amp, net):
                logits = net(x.flatten(0, 1))
            logits = logits.float()
            target = F.one_hot(y, num_classes).float().repeat_interleave(clip, dim=0)
            loss_sum = F.mse_loss(logits, target, reduction="sum").double() / num_classes / clip
            add_batch(sums, Batch(logits, y, clip, loss_sum))
    return {"sums": sums, "spikes": monitor.totals()}


def test_metrics(net, loader, device, args, monitor: SpikeMonitor, dist, progress: bool = True,
                 should_stop=None) -> dict | None:
    """The test pass over this process's test batches, with sums added over the processes ``dist``
    before dividing: {test_<metric> for every per-sample metric, test_nasfr, firing_rates}; None when stopped
    (:func:`evaluate`)."""
    res = evaluate(net, loader, device, args.num_classes, monitor, amp=args.amp, progress=progress,
                   should_stop=should_stop)
    if res is None:
        return None
    out = means(dist.all_reduce_sum(res["sums"]), "test")
    rates = monitor.rates(dist.all_reduce_sum(res["spikes"]))
    out["test_nasfr"] = rates["nasfr"]
    out["firing_rates"] = rates["firing_rates"]
    return out
