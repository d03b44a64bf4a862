"""Fitting: the epoch loop of a training run, written so that a run killed at any moment and
continued with ``-resume`` ends exactly as an uninterrupted one.

Per epoch: the reference's learning rate for that epoch (utils/run/engine.reference_lr), one
training pass, one test pass (accuracy by clip vote, NASFR), then, in this order, the metrics.csv
row, best.pth when the test accuracy is at least the best so far (ties: the later epoch, as the
reference), and last.pth, the resume point, which carries the rows up to this epoch and every
process's random-generator states. With -tensorboard (utils/run/tblog.py) the epoch's events are
flushed first, so whatever last.pth says is done is in the event files too.

Stopped by a signal (utils/run/preempt.py), a run finishes the training step in progress and
writes last.pth at that position inside the epoch (:class:`Position`): the epoch's sample order,
the next step, every process's metric sums and random-generator states after the last finished
step, the optimizer and GradScaler (the learning rate is a function of the epoch). ``-resume``
continues there: the same batches (each sample's random window is a function of (seed, epoch,
index), datasets/frame_dataset.py, whichever worker draws it), the same dropout masks, the same
sums, so metrics.csv and the TensorBoard steps equal an uninterrupted run's. A signal during the
test pass abandons it (it is redone on resume: it draws no random number that training uses); a
signal while the epoch's files are written is acted on once they are. With several processes,
every process asks the others after each step whether one of them got a signal, so all stop
after the same step, and rank 0 writes what every process saved.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from utils.errors import UserError
from utils.run import distributed
from utils.run.checkpoint import atomic_save, make_checkpoint, rng_state, set_rng_state
from utils.run.engine import (EpochControl, EpochStart, NonFiniteLoss, Training, make_optimizer, reference_lr,
                              set_lr, test_metrics, train_one_epoch)
from utils.run.metrics import SAMPLE_METRICS, SpikeMonitor, is_better, means, metric_columns
from utils.run.preempt import STOP, Stopped
from utils.run.reproducibility import NondeterminismReport, seed_everything
from utils.run.runlog import MetricsCSV, read_metrics_csv
from utils.run.tblog import TensorBoardLog

def metrics_fields(monitor) -> list[str]:
    """metrics.csv's columns: epoch, lr, every per-sample metric of the training and the test pass
    (utils/run/metrics.py), NASFR, each spiking layer's firing rate, the epoch's time."""
    return (["epoch", "lr"] + metric_columns("train") + metric_columns("test") + ["test_nasfr"]
            + [f"fr_{name}" for name, _ in monitor.layers] + ["epoch_seconds"])


@dataclass
class Run:
    """One training run as :func:`fit` drives it, made once and handed to every step instead of long
    parameter lists: the settings, the device, the distributed context, the run folder, the data,
    the network and its spike monitor, and TensorBoard's hyper-parameters; :func:`fit` adds how the
    training steps are taken (the optimizer and the GradScaler, utils/run/engine.Training), the
    training network (wrapped for several processes), metrics.csv, the TensorBoard writers and the
    stop rule."""
    args: Any
    device: torch.device
    dist: Any                                  # utils/run/distributed.py's context
    run_dir: str
    net: nn.Module
    train_set: Any
    loaders: tuple                             # (training loader, test loader, training sampler)
    monitor: SpikeMonitor
    hparams: dict = field(default_factory=dict)
    train_net: nn.Module | None = None
    training: Training | None = None
    log: MetricsCSV | None = None
    tb: TensorBoardLog | None = None
    stop: "StopRule | None" = None

    @property
    def sampler(self):
        return self.loaders[2]


@dataclass
class Position:
    """A place inside epoch ``epoch``: ``step`` of its ``steps`` training steps are done (all of
    them: the test pass is next), with the epoch's sample ``order``, every process's metric sums
    (utils/run/metrics.zero_sums's layout) and random-generator states after the last finished step, and the
    epoch's seconds so far. Saved in last.pth as "position" (with "rng"), :func:`save_position`."""
    epoch: int
    step: int
    steps: int
    order: list
    sums: list
    rngs: list
    seconds: float = 0.0

    def rank_sums(self, dist) -> list:
        """This process's sums; saved with another process count, rank 0 carries them all."""
        if len(self.sums) == dist.world_size:
            return list(self.sums[dist.rank])
        width = len(self.sums[0])
        return [sum(s[i] for s in self.sums) for i in range(width)] if dist.is_main else [0.0] * width


@dataclass
class Progress:
    """Where a run stands: the next epoch, the best test accuracy so far and its epoch, the
    metrics.csv rows written so far (strings, as in the file), and the position inside the next
    epoch when the run was stopped inside it."""
    start_epoch: int = 0
    best_acc: float = -1.0
    best_epoch: int = -1
    rows: list = field(default_factory=list)
    position: Position | None = None

    def record(self, row: dict) -> bool:
        """Take ``row``'s test accuracy into the best so far (the tie rule of
        utils/run/metrics.is_better); True when it is the new best."""
        if is_better(row["test_acc"], self.best_acc):
            self.best_acc, self.best_epoch = row["test_acc"], row["epoch"]
            return True
        return False


def restore(run: Run, ckpt: dict, fields: list[str]) -> Progress:
    """The optimizer, GradScaler and progress of a resumed run, from its last.pth."""
    args, dist = run.args, run.dist
    run.training.optimizer.load_state_dict(ckpt["optimizer"])
    if run.training.scaler is not None and ckpt.get("scaler"):
        run.training.scaler.load_state_dict(ckpt["scaler"])
    saved = ckpt.get("metrics") or {}
    if list(saved.get("fields", [])) != fields:
        raise UserError(f"-resume {args.resume_checkpoint}: its metrics columns differ from this "
                        f"network's; cannot continue")
    p = Progress(ckpt["epoch"] + 1, ckpt["best_acc"], ckpt["best_epoch"], [list(r) for r in saved["rows"]],
                 read_position(ckpt, args.resume_checkpoint, run.sampler))
    if dist.is_main:
        extra = len(read_metrics_csv(os.path.join(run.run_dir, "metrics.csv"), checked=False, unreadable=(
            "; a resumed run rewrites it from last.pth: move it away and continue"))[1]) - len(p.rows)
        where = (f"continuing inside epoch {p.start_epoch + 1} after step {p.position.step}/{p.position.steps}"
                 if p.position else f"continuing with epoch {p.start_epoch + 1}")
        done = f"epochs 1-{p.start_epoch} of {args.num_epochs}" if p.start_epoch else "no epoch yet"
        dist.say(f"resume: {done} in last.pth; {where}; best {p.best_acc:.2f}% (epoch {p.best_epoch + 1})" +
              (f"; {extra} metrics.csv row(s) newer than the checkpoint are dropped and recomputed"
               if extra > 0 else ""))
    if ckpt.get("world_size", 1) != dist.world_size:
        dist.say(f"note: the run was saved with {ckpt.get('world_size', 1)} process(es), it continues "
              f"with {dist.world_size}: batches are split differently, so it will not repeat an "
              f"uninterrupted run bitwise")
    return p


def read_position(ckpt: dict, path: str, sampler) -> Position | None:
    """The checkpoint's position inside an epoch (None at an epoch's end), checked against this
    run's training set and batches; a malformed one is one error naming the file and the field."""
    pos = ckpt.get("position")
    if pos is None:
        return None

    def bad(what: str):
        raise UserError(f"-resume {path}: field 'position' {what}; not a checkpoint this version wrote")
    if not isinstance(pos, dict):
        bad("is not a dictionary")
    try:
        epoch, step, steps = int(pos["epoch"]), int(pos["step"]), int(pos["steps"])
        order, sums, seconds = pos["order"], pos["sums"], float(pos["seconds"])
    except (KeyError, TypeError, ValueError) as e:
        bad(f"lacks or mistypes {e}")
    if epoch != ckpt["epoch"] + 1:
        bad(f"says epoch {epoch}, the checkpoint's last finished epoch is {ckpt['epoch']}")
    if steps != sampler.steps_per_epoch or not 0 <= step <= steps:
        bad(f"has step {step} of {steps}; this run has {sampler.steps_per_epoch} steps per epoch")
    if not (isinstance(order, torch.Tensor) and order.dim() == 1 and len(order) == sampler.n and
            torch.equal(order.sort().values, torch.arange(sampler.n))):
        bad(f"has no sample order of this run's {sampler.n} training samples")
    if not (isinstance(sums, torch.Tensor) and sums.dim() == 2 and sums.shape[1] == len(SAMPLE_METRICS) + 1
            and sums.shape[0] == len(ckpt["rng"])):
        bad(f"has no metric sums for each process (of {', '.join(SAMPLE_METRICS)} and the sample count)")
    return Position(epoch, step, steps, order.tolist(), sums.tolist(), ckpt["rng"], seconds)


def restore_rng(rng: list | None, args, start_epoch: int, dist) -> None:
    """Every process's random generators as they were when last.pth was written (``rng``, its
    states of every process; saved with another process count: seeded from the epoch); several
    fresh processes get distinct seeds, so that their dropout masks differ."""
    if rng is not None:
        if len(rng) == dist.world_size:
            set_rng_state(rng[dist.rank])
        else:
            seed_everything(args.seed + 1000 * start_epoch + dist.rank)
    elif dist.world_size > 1:
        seed_everything(args.seed + dist.rank)


def fit(run: Run, ckpt: dict | None) -> Progress:
    """Train ``run.net`` from ``ckpt`` (a resumed run's last.pth) or from scratch for the remaining
    epochs; returns where the run ends."""
    args, dist = run.args, run.dist
    run.training = Training(make_optimizer(run.net, args.lr, args.weight_decay), args.num_classes, run.device,
                            args.amp, torch.amp.GradScaler("cuda") if args.amp and run.device.type == "cuda"
                            else None, dist)
    fields = metrics_fields(run.monitor)
    progress = restore(run, ckpt, fields) if ckpt else Progress()
    run.log = dist.on_main(lambda: MetricsCSV(os.path.join(run.run_dir, "metrics.csv"), fields, progress.rows))
    run.train_net = distributed.wrap(run.net, run.device, dist)
    restore_rng(ckpt["rng"] if ckpt else None, args, progress.start_epoch, dist)
    del ckpt
    if progress.start_epoch >= args.num_epochs:
        dist.say(f"the run already finished all {args.num_epochs} epochs")
        return progress
    start = progress.position
    steps = run.sampler.steps_per_epoch
    run.tb = dist.on_main(lambda: TensorBoardLog(run.run_dir, progress.start_epoch, steps,
                                              start.step if start else 0) if args.tensorboard else None)
    run.stop = StopRule(dist, run.loaders[1].batch_sampler.rounds())
    try:
        if run.stop.after_step():              # a signal while the run was being set up
            raise run.stop.stopped(run.run_dir, progress.start_epoch, start.step if start else 0, steps)
        for epoch in range(progress.start_epoch, args.num_epochs):
            t0 = time.time() - (start.seconds if start else 0.0)
            with NondeterminismReport(args.deterministic and epoch == progress.start_epoch, dist.say):
                row = run_epoch(run, epoch, start)
            start = None
            if isinstance(row, Position):
                row.seconds = time.time() - t0
                dist.on_main(save_position, run, row, progress)
                raise run.stop.stopped(run.run_dir, epoch, row.step, row.steps)
            row["epoch_seconds"] = round(time.time() - t0, 2)
            check_parameters(run.net, epoch)               # before anything of this epoch is saved
            improved = progress.record(row)
            rngs = dist.gather_objects(rng_state())           # after the last random draw of the epoch
            dist.on_main(save_epoch, run, row, progress, rngs, improved)
            dist.say(epoch_line(row, args.num_epochs, progress), flush=True)
            if epoch + 1 < args.num_epochs and run.stop.after_step():   # a signal while the epoch's files were written
                raise run.stop.stopped(run.run_dir, epoch + 1, 0, steps)
    finally:
        if run.tb is not None:
            run.tb.close()
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


class StopRule:
    """When a signalled run stops: after a training step, or before a test batch, once some
    process got a signal (utils/run/preempt.py). With several processes the processes agree with
    one all-reduce, so all of them stop at the same step; in the test pass only while every
    process still has a batch (test batches are dealt round-robin, ``test_rounds`` is the number
    every process has), later requests are acted on after the epoch's files are written."""

    def __init__(self, dist, test_rounds: int):
        self.dist, self.test_rounds = dist, test_rounds

    def after_step(self) -> bool:
        return self.dist.any_true(STOP.requested)

    def before_test_batch(self, b: int) -> bool:
        if not self.dist.active:
            return STOP.requested
        return b < self.test_rounds and self.dist.any_true(STOP.requested)

    def stopped(self, run_dir: str, epoch: int, step: int, steps: int) -> Stopped:
        """The exception every process raises; the signal's name is the first process's that got one."""
        names = [n for n in self.dist.gather_objects(STOP.signame) if n]
        how = "torchrun [the same options] train_test.py" if self.dist.active else "python3 train_test.py"
        return Stopped(names[0] if names else "a signal", run_dir, epoch, step, steps, how)


def run_epoch(run: Run, epoch: int, start: Position | None = None):
    """One training pass and one test pass; the metrics.csv row (without its time), or the
    :class:`Position` where a signal stopped it. ``start``: the position to continue from."""
    args, dist, sampler = run.args, run.dist, run.sampler
    train_loader, test_loader, _ = run.loaders
    lr = reference_lr(epoch, args.lr, args.num_epochs)
    set_lr(run.training.optimizer, lr)
    control = EpochControl(on_step=(lambda b, loss: run.tb.step(epoch, b, loss.item())) if run.tb else None,
                           should_stop=run.stop.after_step if run.stop else None)
    if start is not None:
        sampler.set_epoch(epoch, start.step, start.order)
        control.start = EpochStart(start.step, start.rank_sums(dist),
                                   lambda: restore_rng(start.rngs, args, epoch, dist))
    else:
        sampler.set_epoch(epoch)
    run.train_set.set_epoch(epoch)
    out = train_one_epoch(run.train_net, train_loader, run.training, epoch, control, progress=dist.is_main)
    rng = rng_state()                         # after the last training step: the test loader draws
    sums = out["sums"]

    def position(step: int) -> Position:
        return Position(epoch, step, sampler.steps_per_epoch, sampler.order(),
                        dist.gather_objects(sums.tolist()), dist.gather_objects(rng))
    if out["steps"] < sampler.steps_per_epoch:
        return position(out["steps"])
    train = means(dist.all_reduce_sum(sums), "train")
    dist.broadcast_buffers(run.net)              # every rank tests with rank 0's BatchNorm statistics
    test = test_metrics(run.net, test_loader, run.device, args, run.monitor, dist, progress=dist.is_main,
                        should_stop=run.stop.before_test_batch if run.stop else None)
    if test is None:
        return position(out["steps"])
    rates = test.pop("firing_rates")
    return {"epoch": epoch, "lr": lr, **train, **test, **{f"fr_{n}": r for n, r in rates.items()}}


def save_epoch(run: Run, row: dict, progress: Progress, rngs: list, improved: bool) -> None:
    """TensorBoard's events (flushed), the row, then best.pth, then last.pth (the resume point: a
    kill before it is written repeats the epoch)."""
    args, log = run.args, run.log
    if run.tb is not None:
        run.tb.epoch(row)
        if row["epoch"] == args.num_epochs - 1:
            run.tb.hparams(run.hparams, row["epoch"], best_metrics(row, log, progress.best_epoch), row)
        run.tb.flush()
    log.append(row)
    ck = make_checkpoint(run.net, run.training.optimizer, row["epoch"], progress.best_acc, progress.best_epoch,
                         args, scaler=run.training.scaler, rng=rngs, metrics={"fields": log.fields, "rows": log.rows},
                         world_size=run.dist.world_size)
    if improved:
        atomic_save(ck, os.path.join(run.run_dir, "best.pth"))
    atomic_save(ck, os.path.join(run.run_dir, "last.pth"))


def save_position(run: Run, pos: Position, progress: Progress) -> None:
    """last.pth at a position inside an epoch (a signalled stop): TensorBoard's steps so far are
    flushed first; "epoch" stays the last finished epoch, so whatever reads only that sees the
    run as it was at that epoch's end."""
    if run.tb is not None:
        run.tb.flush()
    log = run.log
    ck = make_checkpoint(run.net, run.training.optimizer, pos.epoch - 1, progress.best_acc, progress.best_epoch,
                         run.args, scaler=run.training.scaler, rng=pos.rngs,
                         metrics={"fields": log.fields, "rows": log.rows}, world_size=run.dist.world_size)
    ck["position"] = {"epoch": pos.epoch, "step": pos.step, "steps": pos.steps,
                      "order": torch.tensor(pos.order, dtype=torch.int64),
                      "sums": torch.tensor(pos.sums, dtype=torch.float64), "seconds": float(pos.seconds)}
    atomic_save(ck, os.path.join(run.run_dir, "last.pth"))


def epoch_line(row: dict, num_epochs: int, p: Progress) -> str:
    return (f"epoch {row['epoch'] + 1}/{num_epochs}  lr {row['lr']:.2e}  train loss {row['train_loss']:.4f} "
            f"acc {row['train_acc']:.1f}%  |  test loss {row['test_loss']:.4f} acc {row['test_acc']:.1f}% "
            f"NASFR {row['test_nasfr']:.4f}  |  best {p.best_acc:.1f}% (epoch {p.best_epoch + 1})  "
            f"{row['epoch_seconds']:.0f}s")
