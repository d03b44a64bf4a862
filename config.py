"""Command-line configuration: ``parse_args(argv)`` returns the fully resolved run configuration.

The authors' single-dash flag names are kept so their command lines (final.sh) work unchanged.
Resolution order for every flag: what the user typed > the dataset's preset (datasets.DATASETS) >
the global default shown in -h. ``args.explicit`` records which flags the user typed.
Boolean flags accept ``-flag`` (true), ``-flag true|false|1|0`` (the authors' ``type=bool`` flags
could only be switched on).
"""
from __future__ import annotations

import argparse
import math
import os
import sys

from datasets import DATASETS
from datasets.framing import frame_shape
from datasets.options import add_dataset_arguments
from models import ARCHITECTURES, architecture
from models.lif_snn import parse_ps
from models.fused import BACKENDS
from utils.errors import UserError
from utils.files import check_regular_file


def str2bool(v) -> bool:
    if isinstance(v, bool):
        return v
    s = str(v).strip().lower()
    if s in ("1", "true", "yes", "y", "on"):
        return True
    if s in ("0", "false", "no", "n", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {v!r}")


def _bool_flag(group, name, default, help):
    group.add_argument(name, type=str2bool, nargs="?", const=True, default=default, metavar="BOOL",
                       help=f"{help} (default {str(default).lower()}; '{name}' alone means true)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="train_test.py",
        description="Train and evaluate LIF-SNNs with or without ASA (Advance Spatial Attention) on "
                    "event-camera data, logging accuracy and NASFR (network average spike firing "
                    "rate) every epoch. Defaults reproduce the authors' code (docs/reference.md); a dataset "
                    "preset fills in what a flag leaves unset.",
        epilog="Several processes: torchrun --nproc_per_node=N train_test.py ... (DistributedDataParallel, "
               "NCCL on GPUs, Gloo on CPU). -batch_size_train is the global batch, split over the "
               "processes; -batch_size_test is the size of one test forward pass, whole test batches "
               "are dealt to the processes; metrics and NASFR are summed over all processes; only "
               "rank 0 prints and writes. Details: utils/run/distributed.py. "
               "Stopping: SIGTERM, SIGINT (Ctrl-C) or SIGUSR1 finishes the training step in progress, "
               "writes last.pth at that position inside the epoch, prints one line 'stopped by SIGTERM "
               "at epoch E, step S/N; continue with: python3 train_test.py -resume RUN_DIR' and exits "
               "with code 75 (EX_TEMPFAIL); under torchrun every process stops after the same step. "
               "Exit codes: 0 done, 2 an error (one 'error:' line), 3 a non-finite loss, 75 stopped by "
               "a signal (continue with -resume).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)

    d = p.add_argument_group("data")
    d.add_argument("-dataset", default="synthetic", choices=sorted(DATASETS),
                   help="dataset: " + "; ".join(f"{k}: {v.help}" for k, v in sorted(DATASETS.items())))
    d.add_argument("-data_path", default=None, metavar="DIR",
                   help="dataset root folder (layouts in docs/datasets.md); not needed for synthetic")
    d.add_argument("-T", type=int, default=60, help="time steps (frames) per sample")
    d.add_argument("-dt", type=float, default=15, help="frame length in milliseconds")
    d.add_argument("-ds", type=int, default=4, help="spatial downsampling factor (128 -> 128/ds)")
    d.add_argument("-clip", type=int, default=10,
                   help="test windows per test sample; a sample is correct when more than half are")
    _bool_flag(d, "-is_train_Enhanced", True,
               "random consecutive slice (RCS) training windows; false starts every window at time 0")
    _bool_flag(d, "-is_spike", False, "binarise frames (count > 0 -> 1)")
    _bool_flag(d, "-interval_scaling", False, "divide each window's frames by their maximum count (a "
               "training item, and each test clip on its own, as the authors' readers do)")
    d.add_argument("-num_work", type=int, default=2, help="DataLoader worker processes")
    add_dataset_arguments(d)

    m = p.add_argument_group("model")
    m.add_argument("-arch", default="A", choices=sorted(ARCHITECTURES),
                   help="; ".join(f"{k}: {ARCHITECTURES[k].help}" for k in sorted(ARCHITECTURES)))
    m.add_argument("-attention", default="ASA", choices=("ASA", "no"),
                   help="ASA on the membrane-potential input of every conv layer, or none")
    m.add_argument("-asa_mask", default="reference", choices=("reference", "per_sample"),
                   help="reference: the authors' batch-union masks (a sample depends on its batch); "
                        "per_sample: each sample its own masks, as the paper describes")
    m.add_argument("-reduction", type=int, default=4,
                   help="ASA's temporal fc reduction r: Linear(T, T//r) -> ReLU -> Linear(T//r, T); "
                        "1 = one Linear(T, T). Arch B/C always use 1")
    m.add_argument("-lam", type=float, default=0.5,
                   help="ASA split ratio lambda in (0, 1): top-k = int(C*lam) channels, int(T*lam) steps")
    m.add_argument("-ps", default="00111",
                   help="dropout switches, 5 digits of 0/1 for conv1, conv2, conv3, fc1, fc2 (arch A/D)")
    m.add_argument("-backend", default="fused", choices=BACKENDS,
                   help="how every spiking layer and ASA is computed: fused (one autograd node per "
                        "layer, models/fused: less memory, faster) or eager (the step-by-step "
                        "definition under plain autograd, the reference's way); the same values")
    m.add_argument("-num_classes", type=int, default=None,
                   help="number of classes (default: the dataset's)")
    m.add_argument("-pretrained_path", default=None, metavar="FILE",
                   help="start from this checkpoint (this project's or an authors' state_dict)")

    t = p.add_argument_group("training")
    t.add_argument("-batch_size_train", type=int, default=32,
                   help="training batch size (the global batch: torchrun splits it over the processes)")
    t.add_argument("-batch_size_test", type=int, default=4,
                   help="test batch size in samples; each forward pass holds this many x -clip clips")
    t.add_argument("-num_epochs", type=int, default=200, help="epochs (also the cosine period T_0)")
    t.add_argument("-lr", type=float, default=1e-4, help="Adam learning rate")
    t.add_argument("-weight_decay", type=float, default=1e-4, help="Adam weight decay")
    t.add_argument("-seed", type=int, default=118, help="random seed")
    t.add_argument("-device", default="auto", help="auto (CUDA when present), cpu, cuda or cuda:N")
    _bool_flag(t, "-amp", False, "mixed precision: float16 autocast + GradScaler on CUDA; bfloat16 autocast on "
               "CPUs with native bfloat16 (avx512_bf16/AMX; elsewhere a note and float32), with the "
               "first and output layers, ASA, the neurons and the loss in float32 (off by default: "
               "it can change results)")
    _bool_flag(t, "-eval_only", False, "only evaluate -pretrained_path on the test set (writes eval.json)")
    t.add_argument("-resume", nargs="?", const=True, default=None, metavar="RUN_DIR",
                   help="continue a run from its last.pth: '-resume RUN_DIR' (the run folder; "
                        "RUN_DIR/last.pth works too), or '-resume -name RUN' for -modelPath/RUN. "
                        "The run's own settings are used (flags "
                        "typed now must agree with them, except -device, -num_work, -data_path, "
                        "-deterministic, -sync_bn, -backend, -tensorboard); model, optimizer, epoch, best accuracy, "
                        "random-generator states and metrics.csv continue where the checkpoint was "
                        "written (metrics.csv rows newer than it are dropped and recomputed), so the "
                        "finished run equals an uninterrupted one with the same seed (bitwise on CPU "
                        "with the same thread and process count). A run stopped by a signal (exit 75, "
                        "see below) continues inside its epoch, at the step after the last one it finished")
    _bool_flag(t, "-deterministic", False,
               "seed everything and ask PyTorch for deterministic algorithms (cuDNN deterministic, no "
               "benchmark, torch.use_deterministic_algorithms, CUBLAS_WORKSPACE_CONFIG); prints what "
               "cannot be made deterministic on this device. Seeds are always set")
    _bool_flag(t, "-sync_bn", True,
               "with several CUDA processes (torchrun), use SyncBatchNorm: batch statistics over the "
               "global batch, as in a one-GPU run. PyTorch has no CPU SyncBatchNorm: on CPU each "
               "process normalises with its own part of the batch")

    o = p.add_argument_group("output")
    o.add_argument("-modelPath", default="runs", metavar="DIR",
                   help="parent folder of run folders (metrics.csv, config.json, checkpoints)")
    o.add_argument("-name", default=None,
                   help="run folder name, one plain folder name inside -modelPath (default: "
                        "<dataset>_<arch>_<attention>_T<T>_seed<seed>_<time>); an existing folder is "
                        "never overwritten (continue one with -resume)")
    _bool_flag(o, "-skip_memory_check", False,
               "start even when the estimated memory of one training step (printed in the refusal) "
               "exceeds the memory available on this machine")
    _bool_flag(o, "-tensorboard", True,
               "write TensorBoard event files into the run folder (per epoch: lr, losses, accuracies, "
               "NASFR, each layer's firing rate; per step: the training loss; the hyper-parameters "
               "with the final metrics); view with 'tensorboard --logdir runs'")
    return p


def explicit_flags(parser: argparse.ArgumentParser, argv) -> set[str]:
    """Names of the flags the user actually typed (parse again with every default suppressed)."""
    saved = {a.dest: a.default for a in parser._actions}
    try:
        for a in parser._actions:
            a.default = argparse.SUPPRESS
        ns, _ = parser.parse_known_args(argv)
    finally:
        for a in parser._actions:
            a.default = saved[a.dest]
    return set(vars(ns))


def resolve(args: argparse.Namespace, explicit: set[str], parser=None) -> argparse.Namespace:
    """Fill dataset presets into flags the user left unset, derive sizes, validate."""
    check_utf8_paths(args)
    info = DATASETS[args.dataset]
    for k, v in info.defaults.items():
        if k not in explicit:
            setattr(args, k, v)
    if args.num_classes is None:
        args.num_classes = info.num_classes
    args.sensor_size = info.sensor_size
    if float(args.dt).is_integer():
        args.dt = int(args.dt)
    args.augment = args.is_train_Enhanced
    args.frame_size = frame_shape(args.sensor_size, args.ds) if args.sensor_size and args.ds >= 1 else None
    args.explicit = sorted(explicit)
    if args.resume is not None:
        args = resume_config(args, explicit, parser or build_parser())
        info = DATASETS[args.dataset]
    validate(args, info)
    return args


# What each setting is to the code that reads a run's settings back: resume (which flags a resumed
# run may change), TensorBoard's HParams (which settings it shows, utils/run/tblog.py) and
# final.sh's planner (which of a row's flags a run folder must match, utils/analysis/rows.py).
# Every setting not listed here "computes": it changes what the run computes, so a resumed run keeps
# it, HParams shows it and the planner compares it.
#   "how": where or how fast the run computes, not what: a resumed run may change it
#   "run": which run, where its files are and where it reads from: resume sets these itself
FLAG_KINDS = {
    **dict.fromkeys(("device", "num_work", "deterministic", "sync_bn", "backend", "tensorboard",
                     "skip_memory_check"), "how"),
    **dict.fromkeys(("data_path", "modelPath", "name", "run_dir", "resume", "resume_checkpoint",
                     "pretrained_path", "explicit", "eval_only"), "run"),
}


def flag_kind(key: str) -> str:
    """"computes", "how" or "run" (:data:`FLAG_KINDS`)."""
    return FLAG_KINDS.get(key, "computes")


def hyperparameters(args) -> dict:
    """The settings that change what a run computes, as TensorBoard's HParams view shows them
    (bool, int, float, str; sizes as "32x32")."""
    out = {}
    for k, v in sorted(vars(args).items()):
        if flag_kind(k) != "computes" or v is None:
            continue
        if isinstance(v, (list, tuple)):
            v = "x".join(str(x) for x in v)
        if isinstance(v, (bool, int, float, str)):
            out[k] = v
    return out
# Settings derived from the data or flags that the checkpoint's config records.
RESUME_DERIVED = ("num_classes", "sensor_size", "augment", "frame_size", "dt")


def _same(a, b) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        try:
            return abs(float(a) - float(b)) <= 1e-12 * max(1.0, abs(float(a)))
        except (TypeError, ValueError):
            return False
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return list(a) == list(b)
    return a == b


def resume_run_dir(args, explicit) -> str:
    if args.resume is True:
        if not args.name:
            raise UserError("-resume needs the run to continue: -resume RUN_DIR, or -resume -name RUN "
                            "(looked up under -modelPath)")
        check_run_name(args.name)
        return os.path.join(args.modelPath, args.name)
    path = str(args.resume)
    if os.path.isfile(path):                      # -resume RUN_DIR/last.pth names the folder too
        path = os.path.dirname(os.path.abspath(path))
    if "name" in explicit and os.path.basename(os.path.normpath(path)) != args.name:
        raise UserError(f"-resume {args.resume} and -name {args.name} name different runs; give one of them")
    return path


def resume_config(args, explicit, parser):
    """The configuration of the run to continue: its checkpoint's, with the free flags typed now."""
    from utils.run.checkpoint import (check_same_run, check_weights_fit,     # torch only when resuming
                                      load_resume_checkpoint)

    if args.eval_only:
        raise UserError("-resume continues training; it cannot be combined with -eval_only")
    if "pretrained_path" in explicit:
        raise UserError("-resume takes the weights from the run's last.pth; drop -pretrained_path")
    run_dir = resume_run_dir(args, explicit)
    if not os.path.isdir(run_dir):
        raise UserError(f"-resume {run_dir}: no such run folder")
    path = os.path.join(run_dir, "last.pth")
    ckpt = None
    if os.path.isfile(path):
        ckpt = load_resume_checkpoint(path)
        cfg = ckpt["config"]
        check_saved(cfg, f"-resume {path}")
        check_same_run(ckpt, path, run_dir)
    else:
        cfg = unstarted_run_config(run_dir)
        path = None
    dests = {a.dest for a in parser._actions} - {"help", "resume", "modelPath", "name"}
    for key in sorted(dests):
        if key not in cfg:
            continue
        if key in explicit:
            if flag_kind(key) != "computes":      # data_path, pretrained_path: the run's own
                continue
            if not _same(getattr(args, key), cfg[key]):
                raise UserError(f"-resume {run_dir}: the run was started with -{key} {cfg[key]}, this "
                                f"command has -{key} {getattr(args, key)}; drop -{key} (the run's own "
                                f"settings are used) or start a new run")
        setattr(args, key, cfg[key])
    for key in RESUME_DERIVED:
        if key in cfg:
            v = cfg[key]
            setattr(args, key, tuple(v) if isinstance(v, list) else v)
    args.pretrained_path = None if path else cfg.get("pretrained_path")   # the weights: last.pth
    args.eval_only = False
    args.run_dir = os.path.abspath(run_dir)
    args.resume = args.run_dir
    args.resume_checkpoint = path            # None: the run stopped before its first checkpoint
    args.modelPath, args.name = os.path.split(args.run_dir)
    if ckpt is not None:
        check_weights_fit(ckpt, args, path)
    return args


def unstarted_run_config(run_dir: str) -> dict:
    """The config.json of a run folder without last.pth (stopped before its first checkpoint):
    -resume starts that run again from epoch 0 in the same folder, with its own settings; a
    metrics.csv row or best.pth of that first epoch is recomputed and replaced, as a resumed run
    replaces whatever is newer than its checkpoint."""
    import json
    cfg_path = os.path.join(run_dir, "config.json")
    if not os.path.isfile(cfg_path):
        raise UserError(f"-resume {run_dir}: no checkpoint (last.pth) and no config.json in it: not a "
                        f"run folder of this project, or one that stopped before it was set up; "
                        f"remove it and start the run again")
    try:
        with open(cfg_path, encoding="utf-8") as f:
            cfg = json.load(f)
    except (OSError, ValueError) as e:
        raise UserError(f"-resume {cfg_path}: not a readable config.json ({e})") from None
    check_saved(cfg, f"-resume {cfg_path}")
    if cfg.get("eval_only"):
        raise UserError(f"-resume {run_dir}: an -eval_only run (no training to continue)")
    return cfg


# settings that count something: at least 1
COUNTS = ("T", "ds", "clip", "batch_size_train", "batch_size_test", "num_epochs", "reduction",
          "synthetic_train", "synthetic_test")
# settings derived from the data, recorded in a saved run: (width, height) in pixels
SIZES = ("frame_size", "sensor_size")


def check_saved(cfg, where: str) -> None:
    """UserError naming ``where`` (the file) and the setting when a saved run's settings (its
    config.json, a checkpoint's config) are not a JSON object, or hold a value its flag cannot
    take: another type, a choice the flag does not offer, a count below 1, a number that is not
    finite, a frame size that is not two positive integers. Values a saved run predates are left
    to the CLI's defaults (from_saved)."""
    if not isinstance(cfg, dict):
        raise UserError(f"{where}: expected a JSON object of the run's settings, found {type(cfg).__name__}")
    def bad(key, expected):
        raise UserError(f"{where}: setting '{key}' is {type(cfg[key]).__name__} {cfg[key]!r:.60}, "
                        f"expected {expected}")
    is_int = lambda v: isinstance(v, int) and not isinstance(v, bool)
    for a in build_parser()._actions:
        key, v = a.dest, cfg.get(a.dest)
        if key not in cfg or key in ("help", "resume") or (v is None and (a.default is None or a.nargs == 2)):
            continue
        if a.choices and v not in a.choices:
            bad(key, f"one of {', '.join(map(str, a.choices))}")
        elif a.type is str2bool and not isinstance(v, bool):
            bad(key, "true or false")
        elif a.type is int and a.nargs == 2 and not (isinstance(v, (list, tuple)) and len(v) == 2 and all(map(is_int, v))):
            bad(key, "two integers")
        elif a.type is int and a.nargs is None and not (is_int(v) and (key not in COUNTS or v >= 1)):
            bad(key, "an integer" + (" of at least 1" if key in COUNTS else ""))
        elif a.type is float and not (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)):
            bad(key, "a finite number")
        elif a.type is None and not a.choices and not isinstance(v, str):
            bad(key, "a string")
    for key in SIZES:
        v = cfg.get(key)
        if v is not None and not (isinstance(v, (list, tuple)) and len(v) == 2 and all(is_int(n) and n >= 1 for n in v)):
            bad(key, "two positive integers (width, height)")


SEED_MAX = 2**32 - 1        # numpy's and torch's seeds are unsigned 32-bit
LR_MAX = 3.4e37             # Adam's first step, lr / (1 - beta1), must fit a float32


def validate(args, info):
    """Every flag against what it means: counts at least 1, real numbers finite (and positive where
    a zero or a negative value means nothing), a frame window of at least 1 microsecond, a run name
    that stays inside -modelPath. Runs before any file is read or written."""
    def bad(msg):
        raise UserError(msg)
    for name in COUNTS:
        if getattr(args, name) < 1:
            bad(f"-{name} must be at least 1, got {getattr(args, name)}")
    for name, positive in (("dt", True), ("lr", False), ("weight_decay", False), ("lam", True)):
        v = float(getattr(args, name))
        if not math.isfinite(v):
            bad(f"-{name} must be a finite number, got {getattr(args, name)}")
        if v < 0 or (positive and v == 0):
            bad(f"-{name} must be {'positive' if positive else '0 or more'}, got {getattr(args, name)}")
    if float(args.lr) > LR_MAX:
        bad(f"-lr {args.lr} is too large: Adam's first step lr / (1 - 0.9) must be a float32 number "
            f"(-lr at most {LR_MAX:.1e})")
    if round(float(args.dt) * 1000) < 1:
        bad(f"-dt {args.dt} ms is shorter than the 1 us resolution of event times (frames would be "
            f"empty); use at least 0.001")
    if not 0 <= args.seed <= SEED_MAX:
        bad(f"-seed must lie in 0..{SEED_MAX} (an unsigned 32-bit seed), got {args.seed}")
    if args.num_work < 0:
        bad(f"-num_work must be 0 or more, got {args.num_work}")
    try:
        parse_ps(args.ps)
    except ValueError as e:
        bad(f"-{e}")
    if not 0 < args.lam < 1:
        bad(f"-lam must lie strictly between 0 and 1, got {args.lam}")
    # the ASA settings the network really uses: an architecture may fix some (models/registry.py)
    asa = {"reduction": args.reduction, "lam": args.lam, **architecture(args.arch).fixed_asa}
    if args.attention == "ASA" and args.T // asa["reduction"] < 1:
        bad(f"-T {args.T} is not compatible with -reduction {args.reduction}: ASA's fc needs "
            f"T // reduction >= 1")
    if args.attention == "ASA" and int(args.T * asa["lam"]) < 1:
        bad(f"-T {args.T} with -lam {asa['lam']} selects no time step (int(T*lam) = 0)")
    if args.num_classes is not None and args.num_classes < 2:
        bad(f"-num_classes must be at least 2, got {args.num_classes}")
    if args.name is not None and args.resume is None:
        check_run_name(args.name)
    if info.needs_path:
        if not args.data_path:
            bad(f"-dataset {args.dataset} needs -data_path DIR")
        if not os.path.isdir(args.data_path):
            bad(f"-data_path {args.data_path}: no such folder")
    if args.eval_only and not args.pretrained_path:
        bad("-eval_only needs -pretrained_path FILE (the checkpoint to evaluate)")
    if args.pretrained_path and not os.path.exists(args.pretrained_path):
        bad(f"-pretrained_path {args.pretrained_path}: no such file")
    if args.pretrained_path:
        check_regular_file(args.pretrained_path, "a checkpoint file", "-pretrained_path")
    if args.device != "auto" and not (args.device == "cpu" or args.device.startswith("cuda")):
        bad(f"-device must be auto, cpu, cuda or cuda:N, got {args.device!r}")


def check_utf8_paths(args) -> None:
    """-name, -modelPath and -resume name the run folder, whose path goes into text: TensorBoard's
    event files (which refuse a path that is not UTF-8), config.json, the messages. Bytes that are
    not UTF-8 (Python keeps them as surrogates) are refused before anything is read or written."""
    for flag in ("name", "modelPath", "resume"):
        v = getattr(args, flag, None)
        if not isinstance(v, str):
            continue
        try:
            v.encode("utf-8")
        except UnicodeEncodeError:
            raw = os.fsencode(v)
            raise UserError(f"-{flag} {raw!r}: contains bytes that are not UTF-8; the run folder's path "
                            f"is written into TensorBoard's event files and config.json, which need "
                            f"UTF-8: choose a name in UTF-8 (or rename the folder)") from None


def check_run_name(name: str) -> None:
    """-name is one folder name inside -modelPath: no separator, not '.', '..' or empty."""
    if name in ("", ".", "..") or "/" in name or os.sep in name or (os.altsep and os.altsep in name) \
            or "\0" in name:
        raise UserError(f"-name {name!r}: must be one plain folder name inside -modelPath (no '/', "
                        f"not '.' or '..'); put the parent folder in -modelPath")


def from_saved(cfg: dict) -> argparse.Namespace:
    """The configuration of a saved run (its config.json, or a checkpoint's "config"): its own
    values, and the CLI's defaults for settings the run predates."""
    args = build_parser().parse_args([])
    for key, value in cfg.items():
        setattr(args, key, tuple(value) if key in ("frame_size", "sensor_size") and value else value)
    return args


def parse_args(argv=None) -> argparse.Namespace:
    """Parse and resolve a command line (argv without the program name; None = sys.argv[1:])."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    return resolve(args, explicit_flags(parser, argv), parser)
