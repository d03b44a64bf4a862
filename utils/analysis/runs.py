"""Finished runs as the analysis tools read them: a run folder's metrics rows and config, its
best epoch, and a checkpoint's network.

Checkpoints are read with the training run's own loader (utils/run/checkpoint.load_checkpoint:
weights only, nothing in a file can run code) and the network is built from the configuration
saved with it (config.from_saved), so a checkpoint evaluates exactly as its run logged it.
"""
from __future__ import annotations

import csv
import json
import os
import statistics

from utils.errors import UserError


def net_from_checkpoint(path: str, config: dict | None = None, flag: str = "checkpoint"):
    """(network with the checkpoint's weights in eval mode, its configuration, its epoch or None).

    ``config`` (e.g. a run folder's config.json) replaces the checkpoint's own, for raw state
    dicts; without either, config.json beside the checkpoint is used."""
    import config as cli
    from models import create_net, load_pretrained
    from utils.run.checkpoint import load_checkpoint
    ckpt = load_checkpoint(path, flag)
    cfg = dict(config or (ckpt.get("config") if isinstance(ckpt, dict) else None) or {})
    if not cfg:
        cfg = read_config(os.path.dirname(os.path.abspath(path)))
    need = ("arch", "T", "num_classes", "frame_size", "attention")
    if any(cfg.get(k) is None for k in need):
        raise UserError(f"{flag} {path}: no usable configuration (needs {', '.join(need)}); pass "
                        f"--config config.json")
    args = cli.from_saved(cfg)
    net = create_net(args)
    try:
        load_pretrained(net, ckpt)
    except ValueError as e:
        raise UserError(f"{flag} {path}: {e}") from None
    return net.eval(), args, (ckpt.get("epoch") if isinstance(ckpt, dict) else None)


def read_metrics(folder: str) -> list[dict]:
    path = os.path.join(folder, "metrics.csv")
    if not os.path.isfile(path):
        return []
    return [r for r in csv_rows(path) if r.get("epoch") not in (None, "")]


def csv_rows(path: str) -> list[dict]:
    """The rows of a metrics.csv as dicts; UserError naming the file if it is not readable text."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            return list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise UserError(f"{path}: not a readable metrics.csv ({type(e).__name__}: {str(e)[:120]})") from None


def read_config(folder: str) -> dict:
    path = os.path.join(folder, "config.json")
    if not os.path.isfile(path):
        return {}
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def best_row(rows: list[dict]) -> dict:
    """The metrics row with the highest test_acc; ties go to the later epoch (as the reference)."""
    best = None
    for r in rows:
        if best is None or float(r["test_acc"]) >= float(best["test_acc"]):
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
