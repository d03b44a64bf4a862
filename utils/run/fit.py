"""Fitting: the epoch loop of a training run, written so that a run killed at any moment and
continued with ``-resume`` ends exactly as an uninterrupted one.

Per epoch: the reference's learning rate for that epoch (utils/run/engine.reference_lr), one
training pass, one test pass (accuracy by clip vote, NASFR), then, in this order, the metrics.csv
row, best.pth when the test accuracy is at least the best so far (ties: the later epoch, as the
reference), and last.pth, the resume point, which carries the rows up to this epoch and every
process's random-generator states. With -tensorboard (utils/run/tblog.py) the epoch's events are
flushed first, so whatever last.pth says is done is in the event files too.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

import torch

from utils.errors import UserError
from utils.run import distributed
from utils.run.checkpoint import atomic_save, make_checkpoint, rng_state, set_rng_state
from utils.run.engine import (NonFiniteLoss, make_optimizer, reference_lr, set_lr, summarise, test_metrics,
                              train_one_epoch)
from utils.run.reproducibility import NondeterminismReport, seed_everything
from utils.run.runlog import MetricsCSV, read_rows
from utils.run.tblog import TensorBoardLog

BASE_FIELDS = ["epoch", "lr", "train_loss", "train_acc", "test_loss", "test_acc", "test_nasfr"]


def metrics_fields(monitor) -> list[str]:
    """metrics.csv's columns: the base ones, each spiking layer's firing rate, the epoch's time."""
    return BASE_FIELDS + [f"fr_{name}" for name, _ in monitor.layers] + ["epoch_seconds"]


@dataclass
class Progress:
    """Where a run stands: the next epoch, the best test accuracy so far and its epoch, and the
    metrics.csv rows written so far (strings, as in the file)."""
    start_epoch: int = 0
    best_acc: float = -1.0
    best_epoch: int = -1
    rows: list = field(default_factory=list)


def restore(ckpt: dict, optimizer, scaler, fields: list[str], args, d, run_dir: str) -> Progress:
    """The optimizer, GradScaler and progress of a resumed run, from its last.pth."""
    optimizer.load_state_dict(ckpt["optimizer"])
    if scaler is not None and ckpt.get("scaler"):
        scaler.load_state_dict(ckpt["scaler"])
    saved = ckpt.get("metrics") or {}
    if list(saved.get("fields", [])) != fields:
        raise UserError(f"-resume {args.resume_checkpoint}: its metrics columns differ from this "
                        f"network's; cannot continue")
    p = Progress(ckpt["epoch"] + 1, ckpt["best_acc"], ckpt["best_epoch"], [list(r) for r in saved["rows"]])
    if d.is_main:
        extra = len(read_rows(os.path.join(run_dir, "metrics.csv"))[1]) - len(p.rows)
        d.say(f"resume: epochs 1-{p.start_epoch} of {args.num_epochs} are in last.pth; continuing with "
              f"epoch {p.start_epoch + 1}; best {p.best_acc:.2f}% (epoch {p.best_epoch + 1})" +
              (f"; {extra} metrics.csv row(s) newer than the checkpoint are dropped and recomputed"
               if extra > 0 else ""))
    if ckpt.get("world_size", 1) != d.world_size:
        d.say(f"note: the run was saved with {ckpt.get('world_size', 1)} process(es), it continues "
              f"with {d.world_size}: batches are split differently, so it will not repeat an "
              f"uninterrupted run bitwise")
    return p


def restore_rng(ckpt: dict | None, args, start_epoch: int, d) -> None:
    """Every process's random generators as they were when last.pth was written (or, saved with
    another process count, seeded from the epoch); several fresh processes get distinct seeds,
    so that their dropout masks differ."""
    if ckpt is not None:
        rng = ckpt["rng"]
        if len(rng) == d.world_size:
            set_rng_state(rng[d.rank])
        else:
            seed_everything(args.seed + 1000 * start_epoch + d.rank)
    elif d.world_size > 1:
        seed_everything(args.seed + d.rank)


def fit(args, net, train_set, loaders, monitor, device: torch.device, d, run_dir: str,
        ckpt: dict | None) -> Progress:
    """Train ``net`` from ``ckpt`` (a resumed run's last.pth) or from scratch for the remaining
    epochs; returns where the run ends."""
    optimizer = make_optimizer(net, args.lr, args.weight_decay)
    scaler = torch.amp.GradScaler("cuda") if args.amp and device.type == "cuda" else None
    fields = metrics_fields(monitor)
    progress = restore(ckpt, optimizer, scaler, fields, args, d, run_dir) if ckpt else Progress()
    log = d.on_main(lambda: MetricsCSV(os.path.join(run_dir, "metrics.csv"), fields, progress.rows))
    train_net = distributed.wrap(net, device, d)
    restore_rng(ckpt, args, progress.start_epoch, d)
    del ckpt
    if progress.start_epoch >= args.num_epochs:
        d.say(f"the run already finished all {args.num_epochs} epochs")
        return progress
    tb = d.on_main(lambda: TensorBoardLog(run_dir, progress.start_epoch, len(loaders[0]))
                   if args.tensorboard else None)
    try:
        for epoch in range(progress.start_epoch, args.num_epochs):
            t0 = time.time()
            on_step = (lambda b, loss, e=epoch: tb.step(e, b, loss.item())) if tb else None
            with NondeterminismReport(args.deterministic and epoch == progress.start_epoch, d.say):
                row = run_epoch(epoch, args, train_net, net, optimizer, scaler, loaders, train_set,
                                monitor, device, d, on_step)
            row["epoch_seconds"] = round(time.time() - t0, 2)
            check_parameters(net, epoch)                   # before anything of this epoch is saved
            if row["test_acc"] >= progress.best_acc:       # ties: the later epoch, as the reference
                progress.best_acc, progress.best_epoch = row["test_acc"], epoch
                improved = True
            else:
                improved = False
            rngs = d.gather_objects(rng_state())           # after the last random draw of the epoch
            d.on_main(save_epoch, log, row, net, optimizer, scaler, progress, args, rngs, d.world_size,
                      run_dir, improved, tb)
            d.say(epoch_line(row, args.num_epochs, progress), flush=True)
    finally:
        if tb is not None:
            tb.close()
    return progress


def best_metrics(row: dict, log: MetricsCSV, best_epoch: int) -> dict:
    """test_acc and test_nasfr of the best epoch: ``row`` (this epoch's) or one of the rows
    written before (metrics.csv's strings: float repr, exact)."""
    if row["epoch"] == best_epoch:
        return {k: row[k] for k in ("test_acc", "test_nasfr")}
    for r in log.rows:
        old = dict(zip(log.fields, r))
        if int(old["epoch"]) == best_epoch:
            return {k: float(old[k]) for k in ("test_acc", "test_nasfr")}
    raise ValueError(f"best epoch {best_epoch} is not among the metrics rows")


def check_parameters(net, epoch: int) -> None:
    """NonFiniteLoss when a weight or buffer is inf or NaN. The loss alone does not show it: a
    spiking layer turns NaN input into no spikes, so the loss of a broken network stays finite."""
    for name, t in list(net.named_parameters()) + list(net.named_buffers()):
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise NonFiniteLoss(f"non-finite values in {name} after epoch {epoch} (0-based, as in "
                                f"metrics.csv); check -lr and -weight_decay")


def run_epoch(epoch: int, args, train_net, net, optimizer, scaler, loaders, train_set, monitor,
              device, d, on_step=None) -> dict:
    """One training pass and one test pass; the metrics.csv row (without its time)."""
    train_loader, test_loader, sampler = loaders
    lr = reference_lr(epoch, args.lr, args.num_epochs)
    set_lr(optimizer, lr)
    sampler.set_epoch(epoch)
    train_set.set_epoch(epoch)
    sums = train_one_epoch(train_net, train_loader, optimizer, device, args.num_classes, epoch,
                           amp=args.amp, scaler=scaler, progress=d.is_main,
                           plan=sampler.plan() if d.active else None, world_size=d.world_size,
                           all_finite=d.all_true if d.active else None, on_step=on_step)["sums"]
    tr = summarise(d.all_reduce_sum(sums), "train")
    d.broadcast_buffers(net)                  # every rank tests with rank 0's BatchNorm statistics
    te = test_metrics(net, test_loader, device, args, monitor, d, progress=d.is_main)
    return {"epoch": epoch, "lr": lr, **tr, **{k: te[k] for k in ("test_loss", "test_acc", "test_nasfr")},
            **{f"fr_{n}": r for n, r in te["firing_rates"].items()}}


def save_epoch(log: MetricsCSV, row: dict, net, optimizer, scaler, progress: Progress, args, rngs,
               world_size: int, run_dir: str, improved: bool, tb=None) -> None:
    """TensorBoard's events (flushed), the row, then best.pth, then last.pth (the resume point: a
    kill before it is written repeats the epoch)."""
    if tb is not None:
        tb.epoch(row)
        if row["epoch"] == args.num_epochs - 1:
            tb.hparams(args, row["epoch"], best_metrics(row, log, progress.best_epoch), row)
        tb.flush()
    log.append(row)
    ck = make_checkpoint(net, optimizer, row["epoch"], progress.best_acc, progress.best_epoch, args,
                         scaler=scaler, rng=rngs, metrics={"fields": log.fields, "rows": log.rows},
                         world_size=world_size)
    if improved:
        atomic_save(ck, os.path.join(run_dir, "best.pth"))
    atomic_save(ck, os.path.join(run_dir, "last.pth"))


def epoch_line(row: dict, num_epochs: int, p: Progress) -> str:
    return (f"epoch {row['epoch'] + 1}/{num_epochs}  lr {row['lr']:.2e}  train loss {row['train_loss']:.4f} "
            f"acc {row['train_acc']:.1f}%  |  test loss {row['test_loss']:.4f} acc {row['test_acc']:.1f}% "
            f"NASFR {row['test_nasfr']:.4f}  |  best {p.best_acc:.1f}% (epoch {p.best_epoch + 1})  "
            f"{row['epoch_seconds']:.0f}s")
