"""Figures like the paper's Figure 1(c): membrane potentials and spiking features, LIF-SNN vs + ASA.

    python3 -m utils.analysis.plots --lif results/runs/demo_synthetic_no --asa results/runs/demo_synthetic_ASA --out img/
    python3 -m utils.analysis.plots --asa runs/<run>/best.pth --samples 8 --out figs/        # one net alone

--lif / --asa take a checkpoint or a run folder (its best.pth). A few test samples (the first clip of
each of the first --samples test recordings, from the dataset in the checkpoint's config) go through
each net; forward hooks on the spiking layers record their input current, from which the membrane
potential right before the spike decision is rebuilt with the layer's own equations:

    LIF (arch A/D, models/module/lif.py):   u[t] = h[t-1] + I[t], spike when u >= Vth = 0.3
    PLIF / LIFNode (arch B/C, sew18):        H[t] = V[t-1] + (I[t] - V[t-1]) * k, spike when H >= 1

Two PNGs are written (matplotlib):
  <prefix>membrane_potential.png  per spiking layer (rows), one histogram per net (columns) of the
                                  membrane potentials of all neurons and steps, threshold dashed,
                                  the share of values at or above it (= firing rate) in the title;
  <prefix>spike_features.png      for the first sample: the input events, then per spiking conv
                                  layer its spikes averaged over channels and steps (an H x W map)
                                  and over space (a T x C map), per net.
"""
from __future__ import annotations

import argparse
import os
import sys
from types import SimpleNamespace

import numpy as np
import torch

from models.module import spiking_layers
from utils.analysis import wrote

MAX_LAYERS = 8                 # deeper nets: evenly spaced layers, first and last included
MAX_VALUES = 200_000           # histogram subsample per panel


def membrane_and_threshold(module, current: torch.Tensor):
    """(membrane potential [N, T, ...] before the spike decision, threshold) of a spiking layer:
    the neuron's own definition replayed on its input current."""
    return module.membrane_potential(current.detach())


@torch.no_grad()
def record(net, x: torch.Tensor) -> dict:
    """{spiking layer name: dict(u=membrane [N,T,...], spikes=[N,T,...], vth=float)} for input x."""
    rec, hooks = {}, []
    for name, m in spiking_layers(net):
        def hook(module, inputs, output, name=name):
            u, vth = membrane_and_threshold(module, inputs[0])
            rec[name] = dict(u=u, spikes=output.detach().float(), vth=vth)
        hooks.append(m.register_forward_hook(hook))
    was = net.training
    net.eval()
    try:
        net(x)
    finally:
        for h in hooks:
            h.remove()
        net.train(was)
    return rec


def _pick(names: list[str], k: int = MAX_LAYERS) -> list[str]:
    if len(names) <= k:
        return names
    idx = np.unique(np.linspace(0, len(names) - 1, k).round().astype(int))
    return [names[i] for i in idx]


def _sample(values: torch.Tensor, n: int = MAX_VALUES, seed: int = 0) -> np.ndarray:
    v = values.flatten()
    if v.numel() > n:
        g = torch.Generator().manual_seed(seed)
        v = v[torch.randperm(v.numel(), generator=g)[:n]]
    return v.numpy()


def plot_membrane(records: dict, path: str) -> str:
    """Histograms of membrane potentials: rows = layers, columns = nets (``records``: {label: record})."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    labels = list(records)
    layers = _pick([n for n in records[labels[0]]])
    palette = ["#4C72B0", "#DD8452", "#55A868", "#C44E52"]           # seaborn's "deep" colours
    with plt.style.context(["seaborn-v0_8-whitegrid", {"font.size": 8}]):
        fig, axes = plt.subplots(len(layers), len(labels), figsize=(4.2 * len(labels), 1.9 * len(layers) + 0.6),
                                 squeeze=False)
        for r, layer in enumerate(layers):
            vals = {lab: _sample(records[lab][layer]["u"]) for lab in labels if layer in records[lab]}
            allv = np.concatenate(list(vals.values()))
            lo, hi = np.percentile(allv, [0.5, 99.5])
            vth = records[labels[0]][layer]["vth"]
            lo, hi = min(lo, 0.0, vth) - 0.05, max(hi, vth) + 0.05
            for c, lab in enumerate(labels):
                ax = axes[r, c]
                if lab not in vals:
                    ax.axis("off")
                    continue
                v = vals[lab][(vals[lab] >= lo) & (vals[lab] <= hi)]         # the central 99%
                ax.hist(v, bins=60, range=(lo, hi), weights=np.full(len(v), 1 / max(len(v), 1)),
                        color=palette[c % len(palette)])                    # each bar: a share of the values
                ax.set_yscale("log")
                ax.axvline(vth, color="crimson", ls="--", lw=1.2, label=f"threshold {vth:g}")
                above = float((records[lab][layer]["u"] >= vth).float().mean())
                ax.set_title(f"{lab} · {layer} · {100 * above:.1f}% >= threshold", fontsize=8)
                ax.set_xlabel("membrane potential" if r == len(layers) - 1 else "")
                ax.set_ylabel("share (log)" if c == 0 else "")
                if r == 0 and c == 0:
                    ax.legend(loc="upper right", fontsize=7)
        fig.suptitle("Membrane potential distribution per spiking layer (test samples, all neurons and steps; "
                     "central 99% of the values)", fontsize=10)
        fig.tight_layout()
        fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def heatmap(ax, data: np.ndarray, cmap: str, vmax: float | None = None, rows: list[str] | None = None) -> None:
    """``data`` [rows, columns] as cells, row 0 at the top, with a colour bar; rates start at 0 when
    ``vmax`` is given. matplotlib's imshow: seaborn's heatmap draws the whole figure once per call
    to lay out its tick labels, which took most of the figure's time (seaborn is not needed)."""
    im = ax.imshow(data, cmap=cmap, vmin=0 if vmax is not None else None, vmax=vmax, aspect="auto",
                   interpolation="nearest")
    ax.figure.colorbar(im, ax=ax)
    ax.set_xticks([])
    ax.set_yticks(range(len(rows)) if rows else [], rows or [])


def plot_features(records: dict, frames: torch.Tensor, path: str) -> str:
    """Spiking features of the first sample: H x W and T x C maps per conv spiking layer and net."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    labels = list(records)
    conv_layers = _pick([n for n, v in records[labels[0]].items() if v["spikes"].dim() == 5])
    with plt.rc_context({"font.size": 7}):
        ncol = 2 * len(labels)
        fig, axes = plt.subplots(len(conv_layers) + 1, ncol, figsize=(3.0 * ncol, 2.5 * (len(conv_layers) + 1)),
                                 squeeze=False)
        ev = frames[0].float().sum(dim=(0, 1)).numpy()                      # [X, Y] events of sample 0
        heatmap(axes[0, 0], ev.T, "magma")
        axes[0, 0].set_title("input events (sum over T)", fontsize=8)
        tc_in = frames[0].float().sum(dim=(2, 3)).numpy()                   # [T, 2]
        heatmap(axes[0, 1], tc_in.T, "magma", rows=["OFF", "ON"])
        axes[0, 1].set_xticks(range(tc_in.shape[0]))
        axes[0, 1].set_title("input events per step", fontsize=8)
        axes[0, 1].set_xlabel("time step")
        for c in range(2, ncol):
            axes[0, c].axis("off")
        for r, layer in enumerate(conv_layers, start=1):
            maps = {lab: records[lab][layer]["spikes"][0] for lab in labels if layer in records[lab]}  # [T,C,H,W]
            hw = {lab: s.mean(dim=(0, 1)).numpy() for lab, s in maps.items()}
            tc = {lab: s.mean(dim=(2, 3)).numpy() for lab, s in maps.items()}
            vmax_hw = max(float(m.max()) for m in hw.values()) or 1.0
            vmax_tc = max(float(m.max()) for m in tc.values()) or 1.0
            for i, lab in enumerate(labels):
                ax_hw, ax_tc = axes[r, i], axes[r, len(labels) + i]
                if lab not in maps:
                    ax_hw.axis("off")
                    ax_tc.axis("off")
                    continue
                rate = float(maps[lab].mean())
                heatmap(ax_hw, hw[lab].T, "viridis", vmax=vmax_hw)
                ax_hw.set_title(f"{lab} · {layer}\nrate per pixel (mean {rate:.3f})", fontsize=8)
                heatmap(ax_tc, tc[lab].T, "viridis", vmax=vmax_tc)
                ax_tc.set_title(f"{lab} · {layer}\nrate per step (x) and channel (y)", fontsize=8)
        fig.suptitle("Spiking features of one test sample: LIF-SNN vs + ASA", fontsize=10)
        fig.tight_layout()
        fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def make_figures(nets: dict, x: torch.Tensor, out_dir: str, prefix: str = "") -> list[str]:
    """Write both figures for ``nets`` ({column label: net}) on input frames ``x`` [N, T, 2, X, Y]."""
    os.makedirs(out_dir or ".", exist_ok=True)
    records = {lab: record(net, x) for lab, net in nets.items()}
    return [plot_membrane(records, os.path.join(out_dir, f"{prefix}membrane_potential.png")),
            plot_features(records, x, os.path.join(out_dir, f"{prefix}spike_features.png"))]


def _checkpoint(path: str) -> str:
    return os.path.join(path, "best.pth") if os.path.isdir(path) else path


def test_samples(cfg: SimpleNamespace, n: int) -> torch.Tensor:
    """The first clip of each of the first ``n`` test recordings of the checkpoint's dataset."""
    from datasets import create_dataset
    _, test_set = create_dataset(cfg)
    xs = []
    for i in range(min(n, len(test_set))):
        frames = torch.as_tensor(np.asarray(test_set[i][0]))
        xs.append(frames[0] if frames.dim() == 5 else frames)
    return torch.stack(xs).float()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python3 -m utils.analysis.plots",
                                description="Membrane-potential histograms and spiking-feature heatmaps "
                                            "(paper Figure 1(c)) for a LIF-SNN and/or a + ASA checkpoint.")
    p.add_argument("--lif", metavar="CKPT", help="LIF-SNN (-attention no) checkpoint or run folder")
    p.add_argument("--asa", metavar="CKPT", help="+ ASA checkpoint or run folder")
    p.add_argument("--samples", type=int, default=4, help="test samples to run (default 4)")
    p.add_argument("--out", default="img", help="output folder (default img/)")
    p.add_argument("--prefix", default="", help="file name prefix")
    a = p.parse_args(argv)
    if not (a.lif or a.asa):
        p.error("give --lif and/or --asa")
    from utils.analysis.runs import net_from_checkpoint
    try:
        nets, cfg = {}, None
        for label, path in (("LIF-SNN", a.lif), ("+ ASA", a.asa)):
            if path:
                net, args, _ = net_from_checkpoint(_checkpoint(path), flag="--lif" if label == "LIF-SNN" else "--asa")
                nets[label] = net
                cfg = cfg or args
        cfg.num_work = 0
        x = test_samples(cfg, a.samples)
        paths = make_figures(nets, x, a.out, a.prefix)
    except Exception as e:
        print(f"error: {type(e).__name__}: {e}", file=sys.stderr)
        return 2
    return wrote(paths)


if __name__ == "__main__":
    sys.exit(main())
