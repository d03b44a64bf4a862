"""Finished runs as the analysis tools read them: a run folder's metrics rows and config, its
best epoch, and a checkpoint's network.

Checkpoints are read with the training run's own loader (utils/run/checkpoint.load_checkpoint:
weights only, nothing in a file can run code) and the network is built from the configuration
saved with it (config.from_saved), so a checkpoint evaluates exactly as its run logged it.
"""
from __future__ import annotations

import json
import math
import os
import statistics

from utils.errors import UserError
from utils.run.runlog import read_metrics_csv


def net_from_checkpoint(path: str, config: dict | None = None, flag: str = "checkpoint"):
    """(network with the checkpoint's weights in eval mode, its configuration, its epoch or None).

    ``config`` (e.g. a run folder's config.json) replaces the checkpoint's own, for raw state
    dicts; without either, config.json beside the checkpoint is used."""
    import config as cli
    from models import create_net, load_pretrained
    from models.weights import state_dict_of
    from utils.files import check_declared_size
    from utils.run.checkpoint import check_finite, check_weights_fit, load_checkpoint
    from utils.run.memory import conv_output_values
    ckpt = load_checkpoint(path, flag)
    cfg = config or (ckpt.get("config") if isinstance(ckpt, dict) else None) or {}
    cli.check_saved(cfg, f"{flag} {path}" if config is None else "--config")
    if not cfg:
        cfg = read_config(os.path.dirname(os.path.abspath(path)))
    if isinstance(ckpt, dict):
        check_finite(state_dict_of(ckpt), path, flag)
    need = ("arch", "T", "num_classes", "frame_size", "attention")
    if any(cfg.get(k) is None for k in need):
        raise UserError(f"{flag} {path}: no usable configuration (needs {', '.join(need)}); pass "
                        f"--config config.json")
    args = cli.from_saved(cfg)
    check_weights_fit(ckpt, args, path, flag)           # shapes only: nothing allocated yet
    X, Y = args.frame_size
    check_declared_size(4 * args.T * (2 * X * Y + sum(conv_output_values(args))), path,
                        f"the network of its settings (-arch {args.arch}, -T {args.T}, frames {X}x{Y}) for one sample")
    net = create_net(args)
    try:
        load_pretrained(net, ckpt)
    except ValueError as e:
        raise UserError(f"{flag} {path}: {e}") from None
    return net.eval(), args, (ckpt.get("epoch") if isinstance(ckpt, dict) else None)


# the columns the analysis tools read from every metrics.csv row
NEEDED = ("epoch", "test_acc", "test_nasfr")


def read_metrics(folder: str) -> list[dict]:
    """The checked rows of a run folder's metrics.csv (:func:`csv_rows`); [] without one."""
    path = os.path.join(folder, "metrics.csv")
    if not os.path.isfile(path):
        return []
    return [r for r in csv_rows(path) if r.get("epoch") not in (None, "")]


def csv_rows(path: str) -> list[dict]:
    """The rows of a metrics.csv as dicts of strings, checked (utils/run/runlog.read_metrics_csv)
    so that every value the tools use is a number; one UserError naming the file otherwise."""
    return read_metrics_csv(path, NEEDED)[1]


def read_config(folder: str, name: str = "config.json") -> dict:
    """A run folder's config.json ({} without one); UserError naming the file when it is not
    JSON, not an object, or holds a setting of a type its flag cannot take (config.check_saved)."""
    import config as cli
    path = os.path.join(folder, name)
    if not os.path.isfile(path):
        return {}
    try:
        with open(path, encoding="utf-8") as f:
            cfg = json.load(f)
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: not a readable config.json ({type(e).__name__}: {str(e)[:120]})") from None
    cli.check_saved(cfg, path)
    return cfg


def readable_runs(folders: list[str]) -> tuple[list[str], list[str]]:
    """(the folders whose metrics.csv and config.json read, a note for each one that does not):
    a broken run folder is left out of a table or a figure with its reason, never stops it."""
    ok, notes = [], []
    for folder in folders:
        try:
            read_metrics(folder)
            read_config(folder)
            ok.append(folder)
        except UserError as e:
            notes.append(f"left out: {e}")
    return ok, notes


def best_row(rows: list[dict]) -> dict:
    """The metrics row with the highest test_acc; ties go to the later epoch (as the reference)."""
    from utils.run.metrics import is_better     # torch comes with it: final.sh's launcher needs none
    best = None
    for r in rows:
        if best is None or is_better(float(r["test_acc"]), float(best["test_acc"])):
            best = r
    return best


def rates_from_metrics(path: str, epoch: int | None = None) -> tuple[dict, int]:
    """({layer: rate}, epoch) from metrics.csv: the row of ``epoch``, or of the best epoch
    (highest test_acc, ties: the later epoch) when ``epoch`` is None."""
    rows = csv_rows(path)
    if not rows:
        raise UserError(f"{path}: no epochs logged")
    try:
        if epoch is None:
            row = best_row(rows)
        else:
            hits = [r for r in rows if int(r["epoch"]) == int(epoch)]
            if not hits:
                raise UserError(f"{path}: no row for epoch {epoch}")
            row = hits[-1]
        return layer_rates(row), int(row["epoch"])
    except (TypeError, ValueError, KeyError) as e:
        raise UserError(f"{path}: a row that is not numbers ({e})") from None


def rates_from_json(path: str) -> dict:
    """{layer: rate} of an eval.json's 'firing_rates'; UserError naming the file unless it is a
    JSON object whose 'firing_rates' maps layer names to finite numbers."""
    try:
        with open(path, encoding="utf-8") as f:
            obj = json.load(f)
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: not a readable JSON file ({type(e).__name__}: {str(e)[:120]})") from None
    rates = obj.get("firing_rates") if isinstance(obj, dict) else None
    if not isinstance(rates, dict) or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                              and math.isfinite(v) for v in rates.values()):
        raise UserError(f"{path}: expected a JSON object whose 'firing_rates' maps each spiking layer "
                        f"to a finite number")
    return rates


def layer_rates(row: dict) -> dict:
    """{spiking layer: firing rate} of a metrics row (its fr_<layer> columns)."""
    return {k[3:]: float(v) for k, v in row.items() if k.startswith("fr_") and v != ""}


def spread(values: list) -> tuple:
    """(mean, sample standard deviation with ddof = 1, n) of the values that are not None;
    the deviation is None for fewer than two values, everything None for none. Seeds are
    summarised this way in the table and in the curves."""
    v = [x for x in values if x is not None]
    if not v:
        return None, None, 0
    return statistics.fmean(v), (statistics.stdev(v) if len(v) > 1 else None), len(v)
