"""One training step, one training epoch and one test pass (docs/reference.md, "Training").

Loss: MSE between the logits [N, K] and the one-hot label. The membrane state is reset for every
batch because every spiking layer starts from zero at each forward. Test batches hold
batch_size_test samples x clip clips in one forward pass, as in the reference (its ASA masks pool
over the whole test batch).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from tqdm import tqdm

from utils.run.allocator import release_free_memory
from utils.run import precision
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


def train_step(net, x, y, optimizer, num_classes: int, amp: bool = False, scaler=None,
               weight: float = 1.0, all_finite=None):
    """One optimisation step on the batch (x, y) already on the device; returns (loss, logits),
    both detached. ``weight`` scales the loss that is backpropagated (several processes, see
    :func:`train_one_epoch`); ``all_finite(bool) -> bool`` agrees on finiteness over processes.
    Raises NonFiniteLoss before the update when the loss is not finite."""
    with precision.autocast(x.device, amp, net):
        logits = net(x)
    loss = F.mse_loss(logits.float(), F.one_hot(y, num_classes).float())     # float32 under -amp
    finite = bool(torch.isfinite(loss))
    if all_finite is not None:
        finite = all_finite(finite)
    if not finite:
        raise NonFiniteLoss(f"non-finite training loss ({loss.item()})")
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


def train_one_epoch(net, loader, optimizer, device, num_classes: int, epoch: int = 0,
                    amp: bool = False, scaler=None, progress: bool = True, plan=None,
                    world_size: int = 1, all_finite=None, on_step=None, resume=None,
                    should_stop=None) -> dict:
    """One epoch; returns this process's raw sums {'sums': every per-sample metric's sum and the
    sample count, utils/run/metrics.zero_sums} (float64)
    and {'steps': the index of the next step} (the epoch's step count unless stopped).
    ``on_step(b, loss)``, when given, receives each step's index and detached loss (TensorBoard).

    Stopping and resuming inside the epoch (utils/run/fit.py): ``should_stop()`` is asked after
    each step, and True ends the pass there; ``resume`` (:class:`EpochStart`) continues a pass
    from its step and sums. The loader then yields the remaining batches only; its iterator is made
    first, because making it draws the workers' base seed from torch's generator, and the saved
    generator states (taken after the last finished step) are restored after that draw.

    Several processes (DistributedDataParallel): ``plan`` lists per step (samples of this rank
    that count, samples of the global batch) (utils/run/loaders.ShardedBatchSampler.plan). The rank's
    mean loss is weighted by world_size * counted / global, so DDP's gradient average equals the
    gradient of the mean loss over the global batch whatever the split; a stand-in sample
    (counted = 0) gets weight 0 and is left out of the sums. In a single process the weight is 1
    and the loss is used as it is."""
    release_free_memory()                 # the test pass's blocks do not fit the training's
    net.train()
    first = resume.step if resume is not None else 0
    sums = zero_sums(device)
    if resume is not None:
        sums += torch.tensor(resume.sums, dtype=torch.float64, device=device)
    batches = iter(loader)
    if resume is not None:
        resume.restore_rng()
    bar = tqdm(batches, total=len(loader), desc=f"train {epoch}", leave=False,
               disable=not progress, dynamic_ncols=True)
    b = first - 1
    for b, (x, y) in enumerate(bar, start=first):
        x = x.to(device, non_blocking=True).float()
        y = y.to(device, non_blocking=True)
        counted, global_n = plan[b] if plan is not None else (len(y), len(y))
        try:
            loss, logits = train_step(net, x, y, optimizer, num_classes, amp, scaler,
                                      world_size * counted / global_n, all_finite)
        except NonFiniteLoss as e:
            raise NonFiniteLoss(f"{e} at epoch {epoch} (0-based, as in metrics.csv), batch {b}") from None
        if counted:
            add_batch(sums, Batch(logits[:counted], y[:counted], 1, loss.double() * counted))
        if on_step is not None:
            on_step(b, loss)
        if progress:
            bar.set_postfix(loss=f"{loss.item():.4f}")
        if should_stop is not None and should_stop():
            break
    bar.close()
    return {"sums": sums, "steps": b + 1}


@dataclass
class EpochStart:
    """Where a training pass resumes: ``step`` (the next one), this process's sums so far
    (utils/run/metrics.zero_sums's layout), and ``restore_rng()``, which sets the random generators as they were
    after step ``step - 1``."""
    step: int
    sums: list
    restore_rng: Callable[[], None]


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
