"""TensorBoard event files in the run folder (``-tensorboard``, on by default; rank 0 only).

    tensorboard --logdir runs          # every run under -modelPath, live while they train

Layout (README, "What a run writes"): the run folder is one TensorBoard run, the x-axis of its
curves is the epoch (0-based, as in metrics.csv):

- ``<run>/events.out.tfevents.*.<random>``: per epoch every column of the metrics.csv row (``lr``,
  ``train/loss``, ``train/acc``, ``test/loss``, ``test/acc``, ``test/nasfr``, ``firing_rate/<layer>``
  and any other metric, :func:`epoch_tag`); once, with the
  last epoch, the hyper-parameters (the run's settings that change what it computes, config.py's
  flag kinds) with ``hparams/best_test_acc``,
  ``hparams/best_test_nasfr`` (at the best epoch), ``hparams/final_test_acc`` and
  ``hparams/final_test_nasfr``. They are written into the run's own event file, not into the
  time-stamped sub-folder SummaryWriter.add_hparams would make, so the HParams view shows one row
  per run.
- ``<run>/steps/events.out.tfevents.*``: per training step ``train/loss_step`` at global step
  ``epoch * steps_per_epoch + i`` (with several processes, rank 0's share of the batch). A sub-run
  of its own, because its x-axis is the step, not the epoch.

Resume: each writer starts with ``purge_step`` at the first epoch (or step) that is redone, so
TensorBoard drops whatever an interrupted run logged from there on and the curves continue without
duplicates. The epoch's events are flushed before its metrics.csv row and last.pth are written,
and a run stopped by a signal inside an epoch flushes its steps before that position's last.pth:
whatever a checkpoint says is done is on disk, and anything newer is purged on resume.
"""
from __future__ import annotations

import os
import secrets
import time

from utils.errors import UserError

STEPS_SUBDIR = "steps"
STEP_TAG = "train/loss_step"
NOT_SCALARS = ("epoch", "epoch_seconds")        # metrics.csv columns that are the x-axis or a timing


def epoch_tag(column: str) -> str:
    """The TensorBoard tag of a metrics.csv column: ``train_<m>`` -> ``train/<m>``, ``test_<m>`` ->
    ``test/<m>``, ``fr_<layer>`` -> ``firing_rate/<layer>``, any other column its own name."""
    if column.startswith("fr_"):
        return "firing_rate/" + column[3:]
    for phase in ("train", "test"):
        if column.startswith(phase + "_"):
            return f"{phase}/{column[len(phase) + 1:]}"
    return column


def after_existing_event_files(*folders: str) -> None:
    """Wait until the clock's second is past the opening second of every event file in
    ``folders``. TensorBoard reads a run's event files in name order, and a name begins with the
    second its file was opened; a resumed run's file opened in the same second as the stopped run's
    would be ordered by process id and writer number instead, maybe before it, and the purge of
    the redone steps would then apply to the wrong file. At most a second, only on a quick resume."""
    newest = -1
    for folder in folders:
        for name in os.listdir(folder) if os.path.isdir(folder) else ():
            parts = name.split(".")
            if name.startswith("events.out.tfevents.") and len(parts) > 3 and parts[3].isdigit():
                newest = max(newest, int(parts[3]))
    wait = newest + 1 - time.time()
    if newest >= 0 and wait > 0:
        time.sleep(wait)


class TensorBoardLog:
    """The two SummaryWriters of a run, opened at ``start_epoch`` (0 for a new run)."""

    def __init__(self, run_dir: str, start_epoch: int, steps_per_epoch: int, start_step: int = 0):
        """``start_step``: the first step of ``start_epoch`` still to do (a run stopped inside
        that epoch, utils/run/preempt.py: the steps before it are kept, the rest purged)."""
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise UserError("-tensorboard: the tensorboard package is not installed (pip install "
                            "tensorboard, see requirements.txt), or pass -tensorboard false") from None
        self.steps_per_epoch = steps_per_epoch
        first_step = start_epoch * steps_per_epoch + start_step
        steps_dir = os.path.join(run_dir, STEPS_SUBDIR)
        if os.path.islink(steps_dir) or os.path.lexists(steps_dir) and not os.path.isdir(steps_dir):
            raise UserError(f"-tensorboard: {steps_dir} is a symbolic link or not a folder; refused (a run "
                            f"writes its event files only inside its folder: remove it)")
        after_existing_event_files(run_dir, steps_dir)
        # The writer opens its event file by name ("wb"), following links: a random suffix makes the
        # name one nobody can plant a link under beforehand.
        suffix = "." + secrets.token_hex(8)
        self.epochs = SummaryWriter(run_dir, purge_step=start_epoch or None, filename_suffix=suffix)
        self.steps = SummaryWriter(steps_dir, purge_step=first_step or None, filename_suffix=suffix)

    def step(self, epoch: int, i: int, loss: float) -> None:
        self.steps.add_scalar(STEP_TAG, loss, epoch * self.steps_per_epoch + i)

    def epoch(self, row: dict) -> None:
        """Every column of one metrics.csv row (but the epoch and its time) as a scalar at step
        ``row['epoch']``: a new metric needs nothing here."""
        for k, v in row.items():
            if k not in NOT_SCALARS:
                self.epochs.add_scalar(epoch_tag(k), float(v), row["epoch"])

    def hparams(self, values: dict, epoch: int, best: dict, final: dict) -> None:
        """The hyper-parameters ``values`` (config.hyperparameters) with the run's final metrics,
        once, at the last epoch's step."""
        from torch.utils.tensorboard.summary import hparams
        metrics = {"hparams/best_test_acc": best["test_acc"], "hparams/best_test_nasfr": best["test_nasfr"],
                   "hparams/final_test_acc": final["test_acc"], "hparams/final_test_nasfr": final["test_nasfr"]}
        for summary in hparams(values, metrics):
            self.epochs.file_writer.add_summary(summary, epoch)
        for k, v in metrics.items():
            self.epochs.add_scalar(k, float(v), epoch)

    def flush(self) -> None:
        self.steps.flush()
        self.epochs.flush()

    def close(self) -> None:
        self.steps.close()
        self.epochs.close()
