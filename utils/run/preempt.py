"""Stopping on a signal without losing work: SIGTERM, SIGINT or SIGUSR1 ends a run after the
training step in progress, with a resumable last.pth and exit code 75.

The contract (``train_test.py -h``, docs/reproduce.md "Stopping and continuing a run"): the step
that is running when the signal arrives is finished, the exact position inside the epoch is saved
(utils/run/fit.py), one line says how to continue, and the process exits with EX_TEMPFAIL (75, from
sysexits.h: "try again later"), which a job script or final.sh tells apart from a failure.

Why the handler only sets a flag once a run has a folder: a signal handler runs between two Python
bytecodes of the main thread, anywhere; raising from it could cut a checkpoint write between its
temporary file and the rename, or a training step between the optimizer update and the bookkeeping.
So from the moment the run folder is opened (:meth:`StopSignals.defer`) a signal is only noted,
and the training loop looks at the note after each step (every process agrees on it, see fit.py).
A second signal while the checkpoint is written is noted too and changes nothing: the write
finishes and its rename is atomic (utils/files.py). Only SIGKILL stops at once (it loses the step in
progress and keeps the previous last.pth; a temporary file it may leave is replaced by the next
save). Before the run folder exists nothing has been written, so a signal stops at once.

DataLoader worker processes ignore the three signals (:func:`ignore_in_worker`): SLURM signals
every process of a job and a terminal's Ctrl-C the whole process group, and a worker that died of
it would fail the step the main process is finishing (torch's SIGCHLD handler raises in the main
process as soon as a worker is killed). A SIGTERM from the worker's own parent still ends it.
"""
from __future__ import annotations

import os
import shlex
import signal
import threading
from contextlib import contextmanager
from dataclasses import dataclass

EXIT_STOPPED = 75                 # EX_TEMPFAIL (sysexits.h)
SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)


@dataclass(eq=False)
class Stopped(Exception):
    """A run stopped by ``signame``. ``epoch`` (0-based) and ``step`` (training steps of it done,
    of ``steps``) say where it continues; ``run_dir`` is the folder to resume (None: nothing was
    written, the command is run again); ``how``: the launch to repeat ('torchrun ...' under DDP)."""
    signame: str
    run_dir: str | None = None
    epoch: int | None = None
    step: int = 0
    steps: int = 0
    how: str = "python3 train_test.py"

    def line(self) -> str:
        """The one line printed when the run stops."""
        at = f" at epoch {self.epoch + 1}, step {self.step}/{self.steps}" if self.epoch is not None else \
            " before training began"
        if self.run_dir is None:
            return f"stopped by {self.signame}{at}; nothing was written: run the same command again"
        return f"stopped by {self.signame}{at}; continue with: {self.how} -resume {shlex.quote(os.path.abspath(self.run_dir))}"


class StopSignals:
    """The process's stop request: which signal came first, and whether handling is deferred."""

    def __init__(self):
        self.signame: str | None = None
        self.deferring = False

    @property
    def requested(self) -> bool:
        return self.signame is not None

    def _handle(self, signum, frame) -> None:
        if self.signame is None:
            self.signame = signal.Signals(signum).name
        if not self.deferring:
            raise Stopped(self.signame)

    @contextmanager
    def installed(self):
        """Handle the stop signals (main thread only; elsewhere a no-op), restoring the previous
        handlers afterwards (tests run several runs in one process)."""
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        self.signame, self.deferring = None, False
        previous = {s: signal.signal(s, self._handle) for s in SIGNALS}
        try:
            yield self
        finally:
            for s, h in previous.items():
                signal.signal(s, h)
            self.deferring = False

    def defer(self) -> None:
        """From here on (until :meth:`installed` ends) a signal is only noted; the training loop
        looks at :attr:`requested`."""
        self.deferring = True


STOP = StopSignals()


def ignore_in_worker() -> None:
    """Make a DataLoader worker ignore the stop signals (the main process decides; module doc),
    except a SIGTERM from its parent: torch ends a worker that does not leave on its own with
    SIGTERM (Process.terminate), so that one must still end it. Python's handlers do not say who
    sent a signal, sigwaitinfo does: SIGTERM stays blocked and a thread waits for it."""
    for s in SIGNALS:
        if s != signal.SIGTERM:
            signal.signal(s, signal.SIG_IGN)
    if not hasattr(signal, "sigwaitinfo"):
        return
    signal.signal(signal.SIGTERM, signal.SIG_DFL)     # not SIG_IGN: an ignored signal is never pending
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})   # this thread and those it starts
    threading.Thread(target=_end_on_parents_sigterm, args=(os.getppid(),), daemon=True,
                     name="sigterm-from-parent").start()


def _end_on_parents_sigterm(parent: int) -> None:
    while signal.sigwaitinfo({signal.SIGTERM}).si_pid != parent:
        pass
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})   # SIG_DFL: it ends the process
    os.kill(os.getpid(), signal.SIGTERM)
