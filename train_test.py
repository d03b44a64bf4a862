"""Train and evaluate an SNN with or without ASA; log accuracy and NASFR every epoch.

    python3 train_test.py -dataset synthetic                       # built-in data, a few minutes on CPU
    python3 train_test.py -arch A -T 60 -attention ASA -dataset gesture -data_path DIR ...
    python3 train_test.py -eval_only -pretrained_path run/best.pth -dataset ...
    python3 train_test.py -resume runs/RUN                         # continue a stopped run exactly
    torchrun --nproc_per_node=4 train_test.py ...                  # DistributedDataParallel
    python3 train_test.py -h                                       # every flag

The run folder (printed at start, under -modelPath) holds config.json, metrics.csv (one row appended
per epoch), last.pth and best.pth, and eval.json for -eval_only. Exit codes: 0 done, 2 a user error
(one 'error: ...' line), 3 a non-finite loss (the last good checkpoint is kept), 75 stopped by
SIGTERM, SIGINT or SIGUSR1 after the step in progress, with a last.pth to continue from and one line
saying how (utils/run/preempt.py).
The story of a run is :func:`run`; the pieces live in utils/run/ (docs/architecture.md).
"""
from __future__ import annotations

import gc
import os
import sys

from utils.run import allocator

if __name__ == "__main__":
    # re-runs this command once under mimalloc or jemalloc (utils/run/allocator.py); here, before
    # the imports below, only so that the re-execution does not pay for them twice
    try:
        allocator.reexec_under_allocator()
    except allocator.AllocatorError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)

import torch  # noqa: E402

import config  # noqa: E402
from datasets import create_dataset  # noqa: E402
from models import create_net  # noqa: E402
from utils.errors import UserError  # noqa: E402
from utils.run import distributed, preempt, runlog  # noqa: E402
from utils.run.checkpoint import load_weights, state_bytes  # noqa: E402
from utils.run.engine import NonFiniteLoss, test_metrics  # noqa: E402
from utils.run.fit import Run, fit  # noqa: E402
from utils.run.loaders import make_loaders, shared_memory_error  # noqa: E402
from utils.run.memory import check_memory  # noqa: E402
from utils.run.metrics import SpikeMonitor  # noqa: E402
from utils.run.reproducibility import make_deterministic, seed_everything  # noqa: E402
from utils.files import check_free_space  # noqa: E402


def build(args, device: torch.device, world_size: int = 1):
    """Datasets and network; fills in what only the data can tell (classes, frame size). A run
    that cannot fit in memory is refused before the network is made (utils/run/memory.py)."""
    train_set, test_set = create_dataset(args)
    if args.num_classes is None:
        args.num_classes = getattr(train_set, "num_classes", None)
        if args.num_classes is None:
            raise UserError(f"-dataset {args.dataset}: cannot tell the number of classes; pass -num_classes")
    if args.frame_size is None:
        args.frame_size = tuple(int(s) for s in test_set[0][0].shape[-2:])
    check_memory(args, device, world_size)
    try:
        net = create_net(args)
    except ValueError as e:             # settings the architecture cannot take, e.g. frames too small
        raise UserError(f"-arch {args.arch} cannot be built for this run: {e} (frames follow -dataset "
                        f"and -ds)") from None
    if args.pretrained_path:
        load_weights(net, args.pretrained_path, args)
    return train_set, test_set, net.to(device)


def run(args) -> int:
    """One run: build the data and the network, continue a stopped run, fit or evaluate, report."""
    if args.deterministic and not torch.cuda.is_initialized():
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")   # before any cuBLAS handle
    dist, device = distributed.setup(args.device)
    try:
        if dist.world_size > args.batch_size_train and not args.eval_only:
            raise UserError(f"-batch_size_train {args.batch_size_train} is the global batch; it cannot be "
                            f"split over {dist.world_size} processes (use at least {dist.world_size})")
        notes = make_deterministic(device, dist.world_size) if args.deterministic else []
        seed_everything(args.seed)
        if args.resume is None:
            dist.on_main(runlog.check_model_path, args.modelPath)       # fail before reading any data
        train_set, test_set, net = build(args, device, dist.world_size)
        if not args.eval_only:
            preempt.STOP.defer()              # from here a signal stops after a step (preempt.py)
        run_dir = runlog.open_run_folder(args, dist)
        dist.say(f"run folder: {run_dir}")
        resuming = args.resume is not None and args.resume_checkpoint is not None
        ckpt = load_weights(net, args.resume_checkpoint, args, "-resume") if resuming else None
        dist.on_main(check_free_space, run_dir, runlog.checkpoint_space(run_dir, state_bytes(net)))
        runlog.start_report(args, dist, device, net, len(train_set), len(test_set), notes)
        if not args.eval_only:
            net = distributed.batch_norm_plan(net, device, dist, args.sync_bn, dist.say)
        monitor = SpikeMonitor(net)
        loaders = make_loaders(args, train_set, test_set, device, dist.rank, dist.world_size)
        if args.eval_only:
            return evaluate_only(args, net, loaders[1], monitor, device, dist, run_dir)
        progress = fit(Run(args, device, dist, run_dir, net, train_set, loaders, monitor,
                           hparams=config.hyperparameters(args)), ckpt)
        dist.say(f"done: best test accuracy {progress.best_acc:.2f}% at epoch {progress.best_epoch + 1}; "
              f"metrics in {os.path.join(run_dir, 'metrics.csv')}")
        return 0
    finally:
        if getattr(args, "run_dir", None):
            runlog.release_run_folder(args.run_dir)   # the process's end would release it too
        dist.close()


def evaluate_only(args, net, test_loader, monitor, device, dist, run_dir: str) -> int:
    """-eval_only: one test pass of -pretrained_path; eval.json in the run folder."""
    m = test_metrics(net, test_loader, device, args, monitor, dist, progress=dist.is_main)
    dist.on_main(runlog.write_json, os.path.join(run_dir, "eval.json"),
              {"test_acc": m["test_acc"], "test_nasfr": m["test_nasfr"], "test_loss": m["test_loss"],
               "firing_rates": m["firing_rates"], "checkpoint": os.path.abspath(args.pretrained_path),
               **({"processes": dist.world_size} if dist.world_size > 1 else {})})
    dist.say(f"test acc {m['test_acc']:.2f}%  NASFR {m['test_nasfr']:.4f}  (eval.json in {run_dir})")
    return 0


def main(argv=None) -> int:
    rank = distributed.env_rank()
    if rank != 0:                      # only rank 0 prints progress; every rank prints its own error
        sys.stdout = open(os.devnull, "w")
    with preempt.STOP.installed():
        code = stoppable_main(argv, rank)
    # a DataLoader iterator kept alive by an error's traceback (a reference cycle) shuts its workers
    # down now; left to the exit, multiprocessing would terminate them and torch would report that
    # as a worker failure with a traceback
    gc.collect()
    return code


def stoppable_main(argv, rank: int) -> int:
    args = None
    try:
        args = config.parse_args(argv)
    except UserError as e:             # the same command line on every rank: rank 0 says it once
        if rank == 0:
            print(f"error: {e}", file=sys.stderr)
        return 2
    except preempt.Stopped as e:
        return stopped(e, None, rank)
    try:
        return run(args)
    except preempt.Stopped as e:
        return stopped(e, args, rank)
    except UserError as e:
        if not isinstance(e, distributed.RelayedError):      # rank 0 prints those
            print(f"error: {rank_prefix(rank)}{e}", file=sys.stderr)
        return 2
    except NonFiniteLoss as e:
        print(f"error: {rank_prefix(rank)}{e}; stopping (the last good checkpoint and metrics.csv up "
              f"to the previous epoch are kept)", file=sys.stderr)
        return 3
    except RuntimeError as e:          # torch's, from the DataLoader workers: one line when it is shm
        err = shared_memory_error(e)
        if err is None:
            raise
        print(f"error: {rank_prefix(rank)}{err}", file=sys.stderr)
        return 2


def stopped(e: "preempt.Stopped", args, rank: int) -> int:
    """The one line of a run stopped by a signal, and exit code 75. A stop before training began
    (the handler raised, nothing of the run was written yet) continues a resumed run's folder, or
    starts the command again."""
    if e.run_dir is None and args is not None and args.resume is not None:
        e.run_dir = args.run_dir
    if rank == 0:
        print(e.line(), file=sys.stderr, flush=True)
    return preempt.EXIT_STOPPED


def rank_prefix(rank: int) -> str:
    """'rank N: ' on the processes of a torchrun launch other than rank 0."""
    return f"rank {rank}: " if rank else ""


if __name__ == "__main__":
    sys.exit(main())
