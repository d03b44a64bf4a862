"""Flag resolution and the bad-input errors of the CLI (each one line, naming the flag)."""
import subprocess
import sys

import pytest

import config
from conftest import DATA, ROOT
from utils.run.engine import reference_lr
from utils.errors import UserError


def test_dataset_presets_fill_unset_flags_only():
    a = config.parse_args(["-dataset", "gesture", "-data_path", str(DATA / "gesture_hdf5")])
    assert (a.num_classes, a.T, a.dt, a.ds, a.frame_size) == (11, 60, 15, 4, (32, 32))
    s = config.parse_args([])
    assert s.dataset == "synthetic" and s.T == 8 and s.num_classes == 10
    s = config.parse_args(["-T", "12", "-num_classes", "12"])
    assert s.T == 12 and s.num_classes == 12 and "T" in s.explicit


def test_boolean_flags_switch_both_ways():
    assert config.parse_args(["-is_spike"]).is_spike is True
    assert config.parse_args(["-is_spike", "true"]).is_spike is True
    a = config.parse_args(["-is_train_Enhanced", "False"])
    assert a.is_train_Enhanced is False and a.augment is False


@pytest.mark.parametrize("argv, needle", [
    (["-dataset", "gesture"], "-data_path"),
    (["-dataset", "gesture", "-data_path", "/nonexistent/x"], "/nonexistent/x"),
    (["-ps", "0011"], "-ps"),
    (["-ps", "00121"], "-ps"),
    (["-lam", "1.0"], "-lam"),
    (["-lam", "0"], "-lam"),
    (["-T", "3", "-reduction", "4"], "-reduction"),
    (["-eval_only"], "-pretrained_path"),
])
def test_bad_flags_raise_one_clear_error(argv, needle):
    with pytest.raises(UserError, match=needle.replace("-", r"\-")):
        config.parse_args(argv)


def run_cli(*argv, cwd):
    return subprocess.run([sys.executable, str(ROOT / "train_test.py"), *argv], cwd=cwd,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("argv, needle", [
    (["-lam", "1.5"], "-lam"),
    (["-dataset", "gesture", "-data_path", "EMPTY"], "train"),
    (["-dataset", "gesture", "-data_path", "NOTHDF5"], "not a readable hdf5"),
])
def test_cli_bad_input_is_one_line_and_nonzero(tmp_path, argv, needle):
    (tmp_path / "EMPTY" / "train").mkdir(parents=True)
    (tmp_path / "EMPTY" / "test").mkdir()
    for split in ("train", "test"):
        (tmp_path / "NOTHDF5" / split).mkdir(parents=True)
        (tmp_path / "NOTHDF5" / split / "a.hdf5").write_text("not hdf5")
    argv = [a.replace("EMPTY", str(tmp_path / "EMPTY")).replace("NOTHDF5", str(tmp_path / "NOTHDF5")) for a in argv]
    r = run_cli(*argv, "-modelPath", str(tmp_path / "runs"), cwd=tmp_path)
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], r.stderr


def test_reference_lr_equals_torch_scheduler_stepped_with_epoch():
    import warnings

    import torch
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.Adam([p], lr=1e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(opt, T_0=7, T_mult=1, eta_min=1e-6)
    for epoch in range(12):
        assert abs(opt.param_groups[0]["lr"] - reference_lr(epoch, 1e-3, 7)) < 1e-15
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            sched.step(epoch)
