"""utils/analysis/curves.py: per-epoch mean and sample std over seeds from hand-made metrics.csv
files, and the figure written for the collector's rows."""
import csv

import pytest

from utils.analysis import curves


def metrics(folder, rows):
    folder.mkdir(parents=True)
    with open(folder / "metrics.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["epoch", "test_acc", "test_nasfr"])
        w.writerows(rows)
    return str(folder)


def test_epoch_series_mean_and_sample_std(tmp_path):
    a = metrics(tmp_path / "a", [(0, 10.0, 0.3), (1, 20.0, 0.2), (2, 40.0, 0.1)])
    # a resumed run may repeat an epoch: its last row counts
    b = metrics(tmp_path / "b", [(0, 30.0, 0.5), (1, 99.0, 0.9), (1, 40.0, 0.4)])
    x, mean, sd, n = curves.epoch_series([a, b], "test_acc")
    assert x == [1, 2, 3] and n == [2, 2, 1]
    assert mean == pytest.approx([20.0, 30.0, 40.0])
    assert sd[:2] == pytest.approx([(2 * 10.0 ** 2) ** 0.5] * 2) and sd[2] is None      # ddof 1
    x, mean, sd, n = curves.epoch_series([a], "test_nasfr")
    assert mean == pytest.approx([0.3, 0.2, 0.1]) and sd == [None] * 3


def test_cli_draws_a_png_per_row(tmp_path, capsys):
    runs = tmp_path / "runs"
    for name in ("demo_synthetic_no", "demo_synthetic_no_s1", "demo_synthetic_ASA"):
        metrics(runs / name, [(0, 10.0, 0.3), (1, 20.0, 0.2)])
    assert curves.main([str(runs), "--out", str(tmp_path / "out")]) == 0
    png = tmp_path / "out" / "curves_demo_synthetic.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"wrote {png}" in capsys.readouterr().out
    assert curves.main([str(tmp_path / "missing"), "--out", str(tmp_path / "out")]) == 2
