"""Checkpoints never run code, refuse another architecture, and every bad input is one error line."""
import errno
import os
import subprocess
import sys

import pytest
import torch

import config
from conftest import ROOT
from utils import files
from utils.run import checkpoint
from utils.run.checkpoint import atomic_save, load_checkpoint, make_checkpoint
from utils.errors import UserError

SMALL = ["-dataset", "synthetic", "-synthetic_train", "8", "-synthetic_test", "4", "-T", "4",
         "-reduction", "2", "-clip", "2", "-num_work", "0", "-seed", "1"]


class Payload:
    """Unpickling this object calls open(marker, 'w'): it would create the marker file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def project_checkpoint(path, argv, epoch=0, **extra):
    """A checkpoint of this project for the run described by argv (no training needed)."""
    import train_test
    from models import create_net
    args = config.parse_args(argv)
    net = create_net(args)
    opt = torch.optim.Adam(net.parameters())
    ck = make_checkpoint(net, opt, epoch, 10.0, epoch, args, rng=[checkpoint.rng_state()],
                         metrics={"fields": [], "rows": []}, **extra)
    atomic_save(ck, str(path))
    return train_test, args, net


def test_a_malicious_pickle_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"model": Payload(str(marker))}, tmp_path / "evil.pth")
    with pytest.raises(UserError, match="refused: the file needs code execution"):
        load_checkpoint(str(tmp_path / "evil.pth"), "-pretrained_path")
    assert not marker.exists()


@pytest.mark.parametrize("flags, needle", [
    (["-T", "8"], "checkpoint has -T 4, this run -T 8"),
    (["-num_classes", "11"], "checkpoint has -num_classes 10, this run -num_classes 11"),
    (["-arch", "D"], "checkpoint has -arch A, this run -arch D"),
    (["-attention", "no"], "checkpoint has -attention ASA, this run -attention no"),
    (["-reduction", "1"], "checkpoint has -reduction 2, this run -reduction 1"),
    (["-ds", "4"], "checkpoint has frames 16x16, this run 32x32"),
])
def test_a_checkpoint_of_another_network_is_refused_naming_the_flag(tmp_path, flags, needle):
    train_test, _, _ = project_checkpoint(tmp_path / "a.pth", SMALL)
    argv = SMALL + flags
    args = config.parse_args(argv)
    from models import create_net
    net = create_net(args)
    with pytest.raises(UserError) as e:
        train_test.load_weights(net, str(tmp_path / "a.pth"), args)
    assert needle in str(e.value) and str(tmp_path / "a.pth") in str(e.value)


def test_a_matching_checkpoint_loads(tmp_path):
    train_test, args, net = project_checkpoint(tmp_path / "a.pth", SMALL)
    from models import create_net
    other = create_net(args)
    train_test.load_weights(other, str(tmp_path / "a.pth"), args)
    for k, v in net.state_dict().items():
        assert torch.equal(other.state_dict()[k], v)


def test_a_failed_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "last.pth"
    atomic_save({"v": torch.tensor([1.0])}, str(path))
    real_open = open

    class Full:
        def __init__(self, f):
            self.f = f

        def write(self, data):
            self.f.write(bytes(data)[:100])
            raise OSError(errno.ENOSPC, "No space left on device")

        def __enter__(self):
            return self

        def __exit__(self, *a):
            self.f.close()

    monkeypatch.setattr(files, "open", lambda p, m="r": Full(real_open(p, m)), raising=False)
    with pytest.raises(UserError, match="cannot write checkpoint .*No space left on device.*previous "
                                        "version of the file, if any, is kept.* continue with -resume"):
        atomic_save({"v": torch.tensor([2.0])}, str(path))
    monkeypatch.undo()
    assert load_checkpoint(str(path))["v"].item() == 1.0
    assert not (tmp_path / "last.pth.tmp").exists()


def test_too_little_free_space_fails_at_start(tmp_path, monkeypatch):
    import shutil
    monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10 << 30, 10 << 30, 1 << 20))
    with pytest.raises(UserError, match=r"not enough free disk space .* 9.0 MiB needed, 1.0 MiB free"):
        files.check_free_space(str(tmp_path), 9 << 20)
    files.check_free_space(str(tmp_path), 1 << 19)


def test_a_save_that_hits_a_file_size_limit_is_one_clear_error(tmp_path):
    import resource

    def limit():                    # 1 MiB per file: config.json fits, a checkpoint (9 MB) does not
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))
    r = subprocess.run([sys.executable, str(ROOT / "train_test.py"), *SMALL, "-num_epochs", "1",
                        "-modelPath", str(tmp_path), "-name", "small"], cwd=tmp_path, capture_output=True,
                       text=True, timeout=300, preexec_fn=limit, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert r.returncode == 2, r.stderr[-2000:]
    errors = [line for line in r.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and errors[0].startswith("error: cannot write checkpoint ")
    assert "File too large" in errors[0]
    assert not list((tmp_path / "small").glob("*.tmp")) and not list((tmp_path / "small").glob("*.pth"))


# ---- the bad-input list: every case one 'error: ...' line and a non-zero exit code ----

BAD = {
    "missing -data_path": (["-dataset", "gesture"], "-data_path"),
    "empty train/": (["-dataset", "gesture", "-data_path", "{EMPTY}"], "train"),
    "not hdf5": (["-dataset", "gesture", "-data_path", "{NOTHDF5}"], "not a readable hdf5"),
    "wrong -ps": (["-ps", "0012"], "-ps"),
    "-lam above 1": (["-lam", "1.5"], "-lam"),
    "-lam 0": (["-lam", "0"], "-lam"),
    "-T vs -reduction": (["-T", "3", "-reduction", "4"], "-reduction"),
    "unwritable -modelPath": (["-modelPath", "{FILE}/runs"], "-modelPath"),
    "-resume without a run": (["-resume"], "-resume needs the run"),
    "-resume no folder": (["-resume", "{TMP}/nothing"], "no such run folder"),
    "-resume no checkpoint": (["-resume", "{NOCKPT}"], "no checkpoint (last.pth)"),
    "-resume another -T": (["-resume", "{RUN}", "-T", "8"], "the run was started with -T 4, this command has -T 8"),
    "-resume -eval_only": (["-resume", "{RUN}", "-eval_only", "-pretrained_path", "{RUN}/last.pth"], "-eval_only"),
    "-resume malicious": (["-resume", "{EVILRUN}"], "refused: the file needs code execution"),
    "-pretrained_path malicious": (["-eval_only", "-pretrained_path", "{EVILRUN}/last.pth"], "refused"),
    "-pretrained_path garbage": (["-eval_only", "-pretrained_path", "{FILE}"], "not a readable checkpoint"),
    "-pretrained_path another T": (["-eval_only", "-T", "8", "-pretrained_path", "{RUN}/last.pth"],
                                   "checkpoint has -T 4, this run -T 8"),
}


def test_every_bad_input_is_one_error_line_and_a_nonzero_exit(tmp_path):
    (tmp_path / "EMPTY" / "train").mkdir(parents=True)
    (tmp_path / "EMPTY" / "test").mkdir()
    for split in ("train", "test"):
        (tmp_path / "NOTHDF5" / split).mkdir(parents=True)
        (tmp_path / "NOTHDF5" / split / "a.hdf5").write_text("not hdf5")
    (tmp_path / "file").write_text("a file, not a folder, not a checkpoint")
    (tmp_path / "NOCKPT").mkdir()
    (tmp_path / "RUN").mkdir()
    project_checkpoint(tmp_path / "RUN" / "last.pth", SMALL)
    (tmp_path / "EVILRUN").mkdir()
    marker = tmp_path / "pwned"
    torch.save({"format": checkpoint.FORMAT, "model": Payload(str(marker))}, tmp_path / "EVILRUN" / "last.pth")
    subs = {"{EMPTY}": tmp_path / "EMPTY", "{NOTHDF5}": tmp_path / "NOTHDF5", "{FILE}": tmp_path / "file",
            "{TMP}": tmp_path, "{NOCKPT}": tmp_path / "NOCKPT", "{RUN}": tmp_path / "RUN",
            "{EVILRUN}": tmp_path / "EVILRUN"}

    def fill(a):
        for k, v in subs.items():
            a = a.replace(k, str(v))
        return a
    def start(argv):
        argv = [fill(a) for a in argv]
        if "-modelPath" not in argv:
            argv += ["-modelPath", str(tmp_path / "runs")]
        if not any(a == "-dataset" for a in argv) and "-resume" not in argv:
            argv = SMALL + argv
        return subprocess.Popen([sys.executable, str(ROOT / "train_test.py"), *argv], cwd=tmp_path,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    failures, cases = [], list(BAD.items())
    for i in range(0, len(cases), 6):                # a few at a time: each is mostly start-up time
        running = [(case, start(argv), needle) for case, (argv, needle) in cases[i:i + 6]]
        for case, p, needle in running:
            out, err = p.communicate(timeout=300)
            lines = err.strip().splitlines()
            if p.returncode == 0 or len(lines) != 1 or not lines[0].startswith("error: ") or needle not in lines[0]:
                failures.append(f"{case}: exit {p.returncode}, stderr {err[-600:]!r}")
    assert not failures, "\n".join(failures)
    assert not marker.exists()                        # the payload never ran
    assert not (tmp_path / "runs").exists() or not os.listdir(tmp_path / "runs")   # no half-made run folders
