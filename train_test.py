"""Train and evaluate an SNN with or without ASA; log accuracy and NASFR every epoch.

    python3 train_test.py -dataset synthetic                       # built-in data, a few minutes on CPU
    python3 train_test.py -arch A -T 60 -attention ASA -dataset gesture -data_path DIR ...
    python3 train_test.py -eval_only -pretrained_path run/best.pth -dataset ...
    python3 train_test.py -h                                       # every flag

The run folder (printed at start, under -modelPath) holds config.json, metrics.csv (one row appended
per epoch), last.pth and best.pth, and eval.json for -eval_only.
"""
from __future__ import annotations

import os
import random
import sys
import time

from utils.memory import keep_freed_memory

keep_freed_memory()     # before torch allocates anything

import numpy as np
import torch

import config
from datasets import create_dataset
from models import create_net, load_pretrained
from utils.checkpoint import atomic_save, make_checkpoint
from utils.engine import NonFiniteLoss, evaluate, reference_lr, set_lr, summarise, train_one_epoch
from utils.errors import UserError
from utils.loaders import make_loaders
from utils.metrics import SpikeMonitor
from utils.runlog import MetricsCSV, config_dict, create_run_dir, default_run_name, write_json


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
        try:
            load_pretrained(net, args.pretrained_path)
        except (ValueError, RuntimeError, KeyError) as e:
            raise UserError(f"-pretrained_path {args.pretrained_path}: {str(e).splitlines()[0]}") from None
        except Exception as e:   # unpickling errors: weights_only refuses anything but tensors
            raise UserError(f"-pretrained_path {args.pretrained_path}: cannot load as a weights-only "
                            f"checkpoint ({type(e).__name__}: {str(e).splitlines()[0][:200]})") from None
    return train_set, test_set, net.to(device)


def print_summary(net, args, device):
    try:
        from torchinfo import summary
        x = torch.zeros(1, args.T, 2, *args.frame_size, device=device)
        print(summary(net, input_data=[x], depth=3, verbose=0,
                      col_names=("output_size", "num_params")))
    except Exception as e:       # the summary is informative only; never fail a run over it
        print(f"(model summary unavailable: {e})")


def test_metrics(net, loader, device, args, monitor) -> dict:
    res = evaluate(net, loader, device, args.num_classes, monitor, amp=args.amp)
    out = summarise(res["sums"], "test")
    rates = monitor.rates(res["spikes"])
    out["test_nasfr"] = rates["nasfr"]
    out["firing_rates"] = rates["firing_rates"]
    return out


def run(args) -> int:
    device = pick_device(args.device)
    seed_everything(args.seed)
    train_set, test_set, net = build(args, device)
    run_dir = create_run_dir(args.modelPath, args.name, default_run_name(args))
    args.run_dir = run_dir
    print(f"run folder: {run_dir}")
    write_json(os.path.join(run_dir, "config.json"), config_dict(args))
    print(f"device {device}; dataset {args.dataset}: {len(train_set)} train / {len(test_set)} test "
          f"samples, frames {args.T}x2x{args.frame_size[0]}x{args.frame_size[1]}, {args.num_classes} classes")
    print_summary(net, args, device)
    monitor = SpikeMonitor(net)
    train_loader, test_loader, sampler = make_loaders(args, train_set, test_set, device)

    if args.eval_only:
        m = test_metrics(net, test_loader, device, args, monitor)
        write_json(os.path.join(run_dir, "eval.json"),
                   {"test_acc": m["test_acc"], "test_nasfr": m["test_nasfr"], "test_loss": m["test_loss"],
                    "firing_rates": m["firing_rates"], "checkpoint": os.path.abspath(args.pretrained_path)})
        print(f"test acc {m['test_acc']:.2f}%  NASFR {m['test_nasfr']:.4f}  (eval.json in {run_dir})")
        return 0

    optimizer = torch.optim.Adam(net.parameters(), lr=args.lr, betas=(0.9, 0.999), eps=1e-8,
                                 weight_decay=args.weight_decay)
    scaler = torch.amp.GradScaler("cuda") if args.amp and device.type == "cuda" else None
    if args.amp and device.type != "cuda":
        print("note: -amp has no effect on CPU; training in float32")
    layer_names = [n for n, _ in monitor.layers]
    fields = ["epoch", "lr", "train_loss", "train_acc", "test_loss", "test_acc", "test_nasfr"] + \
             [f"fr_{n}" for n in layer_names] + ["epoch_seconds"]
    log = MetricsCSV(os.path.join(run_dir, "metrics.csv"), fields)
    best_acc, best_epoch = -1.0, -1
    for epoch in range(args.num_epochs):
        t0 = time.time()
        lr = reference_lr(epoch, args.lr, args.num_epochs)
        set_lr(optimizer, lr)
        sampler.set_epoch(epoch)
        train_set.set_epoch(epoch)
        tr = summarise(train_one_epoch(net, train_loader, optimizer, device, args.num_classes, epoch,
                                             amp=args.amp, scaler=scaler)["sums"], "train")
        te = test_metrics(net, test_loader, device, args, monitor)
        row = {"epoch": epoch, "lr": lr, **tr, **{k: te[k] for k in ("test_loss", "test_acc", "test_nasfr")},
               **{f"fr_{n}": r for n, r in te["firing_rates"].items()}, "epoch_seconds": round(time.time() - t0, 2)}
        log.append(row)
        if te["test_acc"] >= best_acc:          # ties: the later epoch, as the reference
            best_acc, best_epoch = te["test_acc"], epoch
            atomic_save(make_checkpoint(net, optimizer, epoch, best_acc, best_epoch, args),
                        os.path.join(run_dir, "best.pth"))
        atomic_save(make_checkpoint(net, optimizer, epoch, best_acc, best_epoch, args),
                    os.path.join(run_dir, "last.pth"))
        print(f"epoch {epoch + 1}/{args.num_epochs}  lr {lr:.2e}  train loss {tr['train_loss']:.4f} "
              f"acc {tr['train_acc']:.1f}%  |  test loss {te['test_loss']:.4f} acc {te['test_acc']:.1f}% "
              f"NASFR {te['test_nasfr']:.4f}  |  best {best_acc:.1f}% (epoch {best_epoch + 1})  "
              f"{row['epoch_seconds']:.0f}s", flush=True)
    print(f"done: best test accuracy {best_acc:.2f}% at epoch {best_epoch + 1}; metrics in "
          f"{os.path.join(run_dir, 'metrics.csv')}")
    return 0


def main(argv=None) -> int:
    try:
        return run(config.parse_args(argv))
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except NonFiniteLoss as e:
        print(f"error: {e}; stopping (the last good checkpoint is kept)", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        print("interrupted; metrics.csv and the last checkpoint are on disk", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
