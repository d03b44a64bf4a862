"""Hostile and careless input, signals and odd names: a stop signal prints one line and leaves no
temporary file; -name, -modelPath or -resume with bytes that are not UTF-8 is refused at argument
time; loader workers that run out of shared memory give one line naming the way out. Same checks as
tests/test_hostile.py: exit code, one 'error:' line naming the culprit, no traceback, nothing written
outside the named folders."""
import os
import shutil
import signal
import subprocess
import sys

import pytest

from conftest import ROOT
from test_hostile import SMALL, Guard, cli, one_error
from test_preempt import ENV, start, stop_lines, wait_for_step


def test_sigint_to_the_process_group_prints_one_line_and_leaves_no_temporary_file(tmp_path):
    """Ctrl-C in a terminal: SIGINT to the run and its loader workers alike."""
    g = Guard(tmp_path, allowed=[tmp_path / "runs"])
    p = start(*SMALL, "-num_work", "2", "-modelPath", str(tmp_path / "runs"), "-name", "run", cwd=tmp_path)
    seen = wait_for_step(p, 0, 1)
    os.killpg(p.pid, signal.SIGINT)
    out, err = p.communicate(timeout=300)
    err = seen.decode() + err.decode()
    assert p.returncode == 75, err[-2000:]
    lines = stop_lines(err)
    assert len(lines) == 1 and lines[0].startswith("stopped by SIGINT at epoch 1, step "), lines
    assert lines[0].endswith(f"continue with: python3 train_test.py -resume {tmp_path / 'runs' / 'run'}")
    assert "Traceback" not in err
    assert not [f for f in (tmp_path / "runs").rglob("*") if "tmp" in f.name]
    g.check()


# ---- names that are not UTF-8 ----

@pytest.mark.parametrize("flag", ["-name", "-modelPath", "-resume"])
def test_a_name_that_is_not_utf8_is_refused_before_any_data_is_read(flag, tmp_path, capsys):
    """What Python makes of argv bytes that are not UTF-8 (surrogates); refused by the flag's name,
    before the data is read and before any folder is made (it used to be a traceback from the
    event-file writer after the data was loaded)."""
    g = Guard(tmp_path)
    bad = os.fsdecode(str(tmp_path).encode() + b"/r\xe9sultats\xff") if flag != "-name" else \
        os.fsdecode(b"run\xff\xfe")
    argv = SMALL + (["-modelPath", str(tmp_path)] if flag != "-modelPath" else []) + [flag, bad]
    line = one_error(*cli(argv, capsys), flag)
    assert "not UTF-8" in line and repr(os.fsencode(bad)) in line
    g.check()
    assert os.listdir(tmp_path) == []


def test_a_name_that_is_not_utf8_on_the_real_command_line(tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / "train_test.py"), *SMALL, "-modelPath", str(tmp_path),
                        "-name", b"run\xff"], capture_output=True, timeout=300, env=ENV, cwd=tmp_path)
    one_error(r.returncode, r.stderr.decode(errors="replace"), "-name b'run\\xff'")
    assert os.listdir(tmp_path) == []


# ---- loader workers without shared memory ----

def can_mount_a_small_shm() -> bool:
    unshare = shutil.which("unshare")
    if not unshare:
        return False
    r = subprocess.run([unshare, "-m", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /dev/shm"],
                       capture_output=True)
    return r.returncode == 0


@pytest.mark.skipif(not can_mount_a_small_shm(), reason="needs unshare -m and mount (root in a "
                    "private mount namespace) to give the run a 64 KiB /dev/shm")
def test_workers_with_a_full_dev_shm_give_one_line_naming_the_way_out(tmp_path):
    """A real full /dev/shm: the run gets a 64 KiB tmpfs of its own (a private mount namespace, so
    nothing else on the machine sees it); torch's workers fail to put a batch into it."""
    g = Guard(tmp_path, allowed=[tmp_path / "runs"])
    cmd = " ".join([sys.executable, str(ROOT / "train_test.py"), *SMALL, "-num_work", "2", "-modelPath",
                    str(tmp_path / "runs")])
    r = subprocess.run(["unshare", "-m", "sh", "-c", f"mount -t tmpfs -o size=64k tmpfs /dev/shm && exec {cmd}"],
                       capture_output=True, text=True, timeout=300, env=ENV, cwd=tmp_path)
    line = one_error(r.returncode, r.stderr, "-num_work")
    assert "shared memory" in line and "-num_work 0" in line and "/dev/shm" in line
    g.check()


def test_a_worker_killed_by_a_bus_error_gives_the_same_line(tmp_path, capsys, monkeypatch):
    """The other way torch reports it: a full /dev/shm found only when a page is first touched
    kills the worker with SIGBUS (here the worker raises SIGBUS itself; torch's own handlers and
    messages do the rest)."""
    from torch.utils.data import get_worker_info

    from datasets.frame_dataset import EventFrameDataset
    real = EventFrameDataset.__getitem__

    def touch_a_missing_page(self, i):
        if get_worker_info() is not None:
            os.kill(os.getpid(), signal.SIGBUS)
        return real(self, i)

    monkeypatch.setattr(EventFrameDataset, "__getitem__", touch_a_missing_page)
    g = Guard(tmp_path, allowed=[tmp_path / "runs"])
    line = one_error(*cli(SMALL + ["-num_work", "2", "-modelPath", tmp_path / "runs"], capsys), "-num_work")
    assert "shared memory" in line and "-num_work 0" in line
    g.check()


def test_other_worker_errors_are_not_mistaken_for_shared_memory():
    from utils.run.loaders import shared_memory_error
    assert shared_memory_error(RuntimeError("DataLoader worker (pid(s) 12) exited unexpectedly")) is None
    assert shared_memory_error(RuntimeError("CUDA out of memory")) is None
    assert shared_memory_error(RuntimeError(
        "unable to allocate shared memory(shm) for file </torch_1_2_0>: No space left on device (28)")) is not None
