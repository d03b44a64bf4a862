"""Train and evaluate an SNN with or without ASA; log accuracy and NASFR every epoch.

    python3 train_test.py -dataset synthetic                       # built-in data, a few minutes on CPU
    python3 train_test.py -arch A -T 60 -attention ASA -dataset gesture -data_path DIR ...
    python3 train_test.py -eval_only -pretrained_path run/best.pth -dataset ...
    python3 train_test.py -resume runs/RUN                         # continue a stopped run exactly
    torchrun --nproc_per_node=4 train_test.py ...                  # DistributedDataParallel
    python3 train_test.py -h                                       # every flag

The run folder (printed at start, under -modelPath) holds config.json, metrics.csv (one row appended
per epoch), last.pth and best.pth, and eval.json for -eval_only. Exit codes: 0 done, 2 a user error
(one 'error: ...' line), 3 a non-finite loss (the last good checkpoint is kept), 130 interrupted.
"""
from __future__ import annotations

import os
import random
import sys
import time
import warnings

from utils import allocator

if __name__ == "__main__":
    # re-runs this command once under mimalloc/jemalloc/tcmalloc (utils/allocator.py); here,
    # before the imports below, only so that the re-execution does not pay for them twice
    try:
        allocator.reexec_under_allocator()
    except allocator.AllocatorError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)

import numpy as np
import torch

import config
from datasets import create_dataset
from models import create_net, load_pretrained
from utils import distributed
from utils.checkpoint import (atomic_save, check_compatible, check_free_space, load_checkpoint, make_checkpoint,
                              probe_writable, rng_state, set_rng_state, state_bytes)
from utils.engine import (NonFiniteLoss, evaluate, make_optimizer, reference_lr, set_lr, summarise,
                          train_one_epoch)
from utils.errors import UserError
from utils.loaders import make_loaders
from utils.metrics import SpikeMonitor
from utils.runlog import MetricsCSV, config_dict, create_run_dir, default_run_name, read_rows, write_json


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"-device {name}: CUDA is not available on this machine (use -device cpu)")
    return torch.device(name)


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


def load_weights(net, path: str, args, flag: str = "-pretrained_path") -> dict | None:
    """Load a checkpoint's weights into net (weights-only loading); refuse another architecture."""
    obj = load_checkpoint(path, flag)
    if isinstance(obj, dict) and isinstance(obj.get("config"), dict) and "model" in obj:
        check_compatible(obj["config"], args, flag, path)
    try:
        load_pretrained(net, obj)
    except (ValueError, RuntimeError, KeyError, TypeError, AttributeError) as e:
        raise UserError(f"{flag} {path}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    return obj if isinstance(obj, dict) else None


def build(args, device):
    """Datasets and network; fills in what only the data can tell (classes, frame size)."""
    train_set, test_set = create_dataset(args)
    if args.num_classes is None:
        args.num_classes = getattr(train_set, "num_classes", None)
        if args.num_classes is None:
            raise UserError(f"-dataset {args.dataset}: cannot tell the number of classes; pass -num_classes")
    if args.frame_size is None:
        args.frame_size = tuple(int(s) for s in test_set[0][0].shape[-2:])
    net = create_net(args)
    if args.pretrained_path:
        load_weights(net, args.pretrained_path, args)
    return train_set, test_set, net.to(device)


def print_summary(net, args, device):
    try:
        from torchinfo import summary
        x = torch.zeros(1, args.T, 2, *args.frame_size, device=device)
        print(summary(net, input_data=[x], depth=3, verbose=0,
                      col_names=("output_size", "num_params")))
    except Exception as e:       # the summary is informative only; never fail a run over it
        print(f"(model summary unavailable: {e})")


def test_metrics(net, loader, device, args, monitor, dist=None, progress=True) -> dict:
    """Test pass over this process's test batches; sums are added over processes before dividing."""
    dist = dist or distributed.Dist()
    res = evaluate(net, loader, device, args.num_classes, monitor, amp=args.amp, progress=progress)
    out = summarise(dist.all_reduce_sum(res["sums"]), "test")
    rates = monitor.rates(dist.all_reduce_sum(res["spikes"]))
    out["test_nasfr"] = rates["nasfr"]
    out["firing_rates"] = rates["firing_rates"]
    return out


def check_model_path(args) -> None:
    """-modelPath must be creatable and writable before any data is read."""
    parent = args.modelPath
    try:
        os.makedirs(parent, exist_ok=True)
    except OSError as e:
        raise UserError(f"-modelPath {parent}: cannot create folder ({e.strerror or e})") from None
    if not os.path.isdir(parent):
        raise UserError(f"-modelPath {parent}: not a folder")
    probe_writable(parent)


def batch_plan_text(args, world: int) -> str:
    if world == 1:
        return (f"batch: train {args.batch_size_train} samples; test forward pass {args.batch_size_test} "
                f"samples x {args.clip} clips")
    sizes = distributed.split_sizes(args.batch_size_train, world)
    per = str(sizes[0]) if min(sizes) == max(sizes) else f"{min(sizes)}-{max(sizes)}"
    return (f"batch: global train batch {args.batch_size_train} = {world} process(es) x {per} per process; "
            f"test forward pass {args.batch_size_test} samples x {args.clip} clips, test batches dealt "
            f"round-robin to the processes")


def run(args) -> int:
    if args.deterministic and not torch.cuda.is_initialized():
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")   # before any cuBLAS handle
    dist, device_name = distributed.setup(args.device)
    try:
        return _run(args, dist, pick_device(device_name))
    finally:
        dist.close()


def _run(args, dist: distributed.Dist, device: torch.device) -> int:
    say = print if dist.is_main else (lambda *a, **k: None)
    resuming = args.resume is not None
    if dist.world_size > args.batch_size_train and not args.eval_only:
        raise UserError(f"-batch_size_train {args.batch_size_train} is the global batch; it cannot be split "
                        f"over {dist.world_size} processes (use at least {dist.world_size})")
    det_notes = make_deterministic(device, dist.world_size) if args.deterministic else []
    seed_everything(args.seed)
    if not resuming:
        dist.on_main(check_model_path, args)           # fail before reading any data
    train_set, test_set, net = build(args, device)
    if resuming:
        run_dir = args.run_dir
    else:
        run_dir = dist.from_main(create_run_dir, args.modelPath, args.name, default_run_name(args))
        args.run_dir = run_dir
    say(f"run folder: {run_dir}")
    ckpt = None
    if resuming:
        ckpt = load_checkpoint(args.resume_checkpoint, "-resume")
        check_compatible(ckpt["config"], args, "-resume", args.resume_checkpoint)
        try:
            load_pretrained(net, ckpt["model"])
        except (ValueError, RuntimeError, KeyError) as e:
            raise UserError(f"-resume {args.resume_checkpoint}: {str(e).splitlines()[0]}") from None
    dist.on_main(check_free_space, run_dir, 3 * state_bytes(net))     # best.pth, last.pth, one .tmp
    if not resuming:
        dist.on_main(write_json, os.path.join(run_dir, "config.json"), config_dict(args))
    say(f"device {device}; dataset {args.dataset}: {len(train_set)} train / {len(test_set)} test "
        f"samples, frames {args.T}x2x{args.frame_size[0]}x{args.frame_size[1]}, {args.num_classes} classes")
    if dist.active:
        say(f"distributed: {dist.world_size} processes, backend {dist.backend}")
    if device.type == "cpu":
        say(f"CPU allocator: {allocator.describe()}")
    say(batch_plan_text(args, dist.world_size))
    for note in det_notes:
        say(f"deterministic: {note}")
    if dist.is_main:
        print_summary(net, args, device)
    use_sync_bn = dist.active and device.type == "cuda" and args.sync_bn and not args.eval_only
    if use_sync_bn:
        net = torch.nn.SyncBatchNorm.convert_sync_batchnorm(net)
        say("BatchNorm: SyncBatchNorm (statistics over the global batch)")
    elif dist.active and not args.eval_only and dist.world_size > 1:
        why = "-sync_bn false" if device.type == "cuda" else "PyTorch has no SyncBatchNorm on CPU"
        say(f"BatchNorm: each process normalises with its own part of the batch ({why}); running "
            f"statistics are rank 0's")
    if dist.world_size > 1 and args.attention == "ASA" and args.asa_mask == "reference" and not args.eval_only:
        say("note: reference ASA masks pool over each process's part of the training batch (test "
            "batches are whole, as in one process)")
    monitor = SpikeMonitor(net)
    train_loader, test_loader, sampler = make_loaders(args, train_set, test_set, device, dist.rank, dist.world_size)

    if args.eval_only:
        m = test_metrics(net, test_loader, device, args, monitor, dist, progress=dist.is_main)
        dist.on_main(write_json, os.path.join(run_dir, "eval.json"),
                     {"test_acc": m["test_acc"], "test_nasfr": m["test_nasfr"], "test_loss": m["test_loss"],
                      "firing_rates": m["firing_rates"], "checkpoint": os.path.abspath(args.pretrained_path),
                      **({"processes": dist.world_size} if dist.world_size > 1 else {})})
        say(f"test acc {m['test_acc']:.2f}%  NASFR {m['test_nasfr']:.4f}  (eval.json in {run_dir})")
        return 0

    optimizer = make_optimizer(net, args.lr, args.weight_decay)
    scaler = torch.amp.GradScaler("cuda") if args.amp and device.type == "cuda" else None
    if args.amp and device.type != "cuda":
        say("note: -amp has no effect on CPU; training in float32")
    layer_names = [n for n, _ in monitor.layers]
    fields = ["epoch", "lr", "train_loss", "train_acc", "test_loss", "test_acc", "test_nasfr"] + \
             [f"fr_{n}" for n in layer_names] + ["epoch_seconds"]
    best_acc, best_epoch, start_epoch, rows = -1.0, -1, 0, None
    if ckpt is not None:
        optimizer.load_state_dict(ckpt["optimizer"])
        if scaler is not None and ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        start_epoch, best_acc, best_epoch = ckpt["epoch"] + 1, ckpt["best_acc"], ckpt["best_epoch"]
        saved = ckpt.get("metrics") or {}
        if list(saved.get("fields", [])) != fields:
            raise UserError(f"-resume {args.resume_checkpoint}: its metrics columns differ from this "
                            f"network's; cannot continue")
        rows = [list(r) for r in saved["rows"]]
        if dist.is_main:
            _, on_disk = read_rows(os.path.join(run_dir, "metrics.csv"))
            extra = len(on_disk) - len(rows)
            say(f"resume: epochs 1-{ckpt['epoch'] + 1} of {args.num_epochs} are in last.pth; continuing with "
                f"epoch {ckpt['epoch'] + 2}; best {best_acc:.2f}% (epoch {best_epoch + 1})" +
                (f"; {extra} metrics.csv row(s) newer than the checkpoint are dropped and recomputed"
                 if extra > 0 else ""))
        if ckpt.get("world_size", 1) != dist.world_size:
            say(f"note: the run was saved with {ckpt.get('world_size', 1)} process(es), it continues "
                f"with {dist.world_size}: batches are split differently, so it will not repeat an "
                f"uninterrupted run bitwise")
    log = dist.on_main(lambda: MetricsCSV(os.path.join(run_dir, "metrics.csv"), fields, rows))
    train_net = net
    if dist.active:
        from torch.nn.parallel import DistributedDataParallel as DDP
        # static_graph: ASA's alpha, beta and fc never get a gradient (SPEC 2, dead parameters);
        # DDP then leaves their .grad None, exactly as a single process does.
        import inspect
        sync = ({"forward_sync_buffers": True} if "forward_sync_buffers" in inspect.signature(DDP).parameters
                else {"broadcast_buffers": True})      # rank 0's buffers at every training forward
        train_net = DDP(net, device_ids=[device.index] if device.type == "cuda" else None,
                        static_graph=True, **sync)
    if ckpt is not None:
        rng = ckpt["rng"]
        if len(rng) == dist.world_size:
            set_rng_state(rng[dist.rank])
        else:
            seed_everything(args.seed + 1000 * start_epoch + dist.rank)
        ckpt = None
    elif dist.world_size > 1:
        seed_everything(args.seed + dist.rank)   # independent dropout masks on every process
    if start_epoch >= args.num_epochs:
        say(f"done: the run already finished all {args.num_epochs} epochs; best test accuracy "
            f"{best_acc:.2f}% at epoch {best_epoch + 1}")
        return 0

    for epoch in range(start_epoch, args.num_epochs):
        t0 = time.time()
        lr = reference_lr(epoch, args.lr, args.num_epochs)
        set_lr(optimizer, lr)
        sampler.set_epoch(epoch)
        train_set.set_epoch(epoch)
        catch = args.deterministic and epoch == start_epoch
        with warnings.catch_warnings(record=catch) as caught:
            if catch:
                warnings.simplefilter("always")
            sums = train_one_epoch(train_net, train_loader, optimizer, device, args.num_classes, epoch,
                                   amp=args.amp, scaler=scaler, progress=dist.is_main,
                                   plan=sampler.plan() if dist.active else None,
                                   world_size=dist.world_size,
                                   all_finite=dist.all_true if dist.active else None)["sums"]
            tr = summarise(dist.all_reduce_sum(sums), "train")
            dist.broadcast_buffers(net)       # every rank tests with rank 0's BatchNorm statistics
            te = test_metrics(net, test_loader, device, args, monitor, dist, progress=dist.is_main)
        if catch:
            report_nondeterminism(caught, say)
        row = {"epoch": epoch, "lr": lr, **tr, **{k: te[k] for k in ("test_loss", "test_acc", "test_nasfr")},
               **{f"fr_{n}": r for n, r in te["firing_rates"].items()}, "epoch_seconds": round(time.time() - t0, 2)}
        improved = te["test_acc"] >= best_acc          # ties: the later epoch, as the reference
        if improved:
            best_acc, best_epoch = te["test_acc"], epoch
        rngs = dist.gather_objects(rng_state())         # after the last random draw of the epoch

        def save_epoch():
            # order: the row, then best.pth, then last.pth. last.pth is the resume point and
            # carries the rows up to this epoch; a kill before it is written repeats the epoch.
            log.append(row)
            ck = make_checkpoint(net, optimizer, epoch, best_acc, best_epoch, args, scaler=scaler, rng=rngs,
                                 metrics={"fields": fields, "rows": log.rows}, world_size=dist.world_size)
            if improved:
                atomic_save(ck, os.path.join(run_dir, "best.pth"))
            atomic_save(ck, os.path.join(run_dir, "last.pth"))
        dist.on_main(save_epoch)
        say(f"epoch {epoch + 1}/{args.num_epochs}  lr {lr:.2e}  train loss {tr['train_loss']:.4f} "
            f"acc {tr['train_acc']:.1f}%  |  test loss {te['test_loss']:.4f} acc {te['test_acc']:.1f}% "
            f"NASFR {te['test_nasfr']:.4f}  |  best {best_acc:.1f}% (epoch {best_epoch + 1})  "
            f"{row['epoch_seconds']:.0f}s", flush=True)
    say(f"done: best test accuracy {best_acc:.2f}% at epoch {best_epoch + 1}; metrics in "
        f"{os.path.join(run_dir, 'metrics.csv')}")
    return 0


def report_nondeterminism(caught, say) -> None:
    """Print the operations PyTorch reported as lacking a deterministic implementation; re-show the
    other warnings recorded during the first epoch."""
    seen = set()
    for w in caught:
        msg = str(w.message)
        if "deterministic" in msg:
            key = msg.splitlines()[0][:200]
            if key not in seen:
                seen.add(key)
                say(f"deterministic: not deterministic on this device: {key}")
        else:
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)
    if not seen:
        say("deterministic: PyTorch reported no non-deterministic operation in the first epoch")


def main(argv=None) -> int:
    rank = distributed.env_rank()
    if rank != 0:                      # only rank 0 prints; errors are reported by rank 0 as well
        sys.stdout = open(os.devnull, "w")
    try:
        return run(config.parse_args(argv))
    except UserError as e:
        if rank == 0:
            print(f"error: {e}", file=sys.stderr)
        return 2
    except NonFiniteLoss as e:
        if rank == 0:
            print(f"error: {e}; stopping (the last good checkpoint and metrics.csv up to the previous "
                  f"epoch are kept)", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        if rank == 0:
            print("interrupted; metrics.csv and the last checkpoint are on disk (continue with -resume)",
                  file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
