"""utils/run/allocator.py: train_test.py re-runs itself under mimalloc (or jemalloc), once, and says so."""
import os
import subprocess
import sys

import pytest

from conftest import ROOT
from utils.run import allocator

TINY = ["-dataset", "synthetic", "-synthetic_train", "4", "-synthetic_test", "2", "-T", "4",
        "-reduction", "2", "-batch_size_train", "4", "-batch_size_test", "2", "-clip", "1",
        "-num_work", "0", "-num_epochs", "1"]


def cli(tmp_path, env_changes, *argv):
    env = {k: v for k, v in os.environ.items()
           if k not in ("LD_PRELOAD", allocator.ENV, "ASA_ALLOCATOR_PRELOADED")}
    env.update(env_changes)
    return subprocess.run([sys.executable, str(ROOT / "train_test.py"), *argv, "-modelPath", str(tmp_path)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)


def log_line(stdout: str) -> str:
    return next(line for line in stdout.splitlines() if line.startswith("CPU allocator:"))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="LD_PRELOAD is Linux-only")
def test_the_cli_runs_under_mimalloc_from_requirements(tmp_path):
    """The README's command gets the pip package's mimalloc: the process maps it, the log says so."""
    assert allocator.find("auto")[0] == "mimalloc"           # cmeel-mimalloc is in requirements.txt
    r = cli(tmp_path, {}, *TINY)
    assert r.returncode == 0, r.stderr[-2000:]
    assert log_line(r.stdout).startswith("CPU allocator: mimalloc ") and "ASA_ALLOCATOR=auto" in r.stdout
    assert r.stdout.count("run folder:") == 1 and "note:" not in r.stderr     # re-executed once


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="LD_PRELOAD is Linux-only")
def test_off_keeps_glibc_and_a_user_preload_is_respected(tmp_path):
    r = cli(tmp_path, {allocator.ENV: "off"}, *TINY)
    assert r.returncode == 0 and log_line(r.stdout) == "CPU allocator: glibc malloc (ASA_ALLOCATOR=off)"
    lib = allocator.find("mimalloc")[1]
    r = cli(tmp_path, {"LD_PRELOAD": lib}, *TINY)
    assert r.returncode == 0 and "(preloaded by the user)" in log_line(r.stdout)


def test_a_bad_allocator_name_is_one_error_line(tmp_path):
    r = cli(tmp_path, {allocator.ENV: "hoard"}, *TINY)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.strip().splitlines() == [
        "error: ASA_ALLOCATOR=hoard: expected one of auto, mimalloc, jemalloc, tcmalloc, off"]


def test_a_requested_library_that_is_missing_is_refused(monkeypatch):
    monkeypatch.setitem(allocator.FINDERS, "jemalloc", lambda: None)
    with pytest.raises(allocator.AllocatorError, match=r"ASA_ALLOCATOR=jemalloc: .*not installed"):
        allocator.find("jemalloc")


def test_without_any_library_glibc_is_tuned_with_one_note(monkeypatch, capsys):
    """The fallback: one note, the same command re-executed with glibc's tunables, no LD_PRELOAD."""
    for name in allocator.FINDERS:
        monkeypatch.setitem(allocator.FINDERS, name, lambda: None)
    for var in ("LD_PRELOAD", allocator.ENV, "ASA_ALLOCATOR_PRELOADED", "GLIBC_TUNABLES"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(sys, "platform", "linux")
    calls = []
    monkeypatch.setattr(os, "execve", lambda exe, argv, env: calls.append((exe, argv, env)))
    allocator.reexec_under_allocator()
    (exe, argv, env), = calls
    assert exe == sys.executable and argv[1:] == sys.orig_argv[1:]
    assert "mmap_threshold=4194304" in env["GLIBC_TUNABLES"] and "LD_PRELOAD" not in env
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("note: neither mimalloc nor jemalloc found")
    monkeypatch.setenv("ASA_ALLOCATOR_PRELOADED", "glibc")       # the re-executed process: done
    allocator.reexec_under_allocator()
    assert len(calls) == 1


def test_environment_prepends_the_library_and_keeps_user_settings():
    env = allocator.environment("mimalloc", "/lib/libmimalloc.so.3",
                                {"LD_PRELOAD": "/lib/other.so", "MIMALLOC_PURGE_DELAY": "5"})
    assert env["LD_PRELOAD"] == "/lib/libmimalloc.so.3:/lib/other.so"
    assert env["MIMALLOC_PURGE_DELAY"] == "5"                     # the user's value wins
    assert allocator.environment("mimalloc", "/x.so", {})["MIMALLOC_PURGE_DELAY"] == "100000"
