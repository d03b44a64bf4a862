"""Hostile and careless input: bad flags, bad files, bad paths, busy run folders.

Every case is built on the fly in tmp_path and asserts: the exit code, exactly one 'error:' line
naming the culprit (flag or file), no traceback, no file written outside the folders the command
was given, no existing file changed, and no planted pickle payload run. Commands run in process
(train_test.main, datasets.prepare.main, utils.analysis.energy.main) where that is what the CLI
does; a subprocess only where the process itself matters (a killed lock holder, a torchrun rank)."""
import fcntl
import hashlib
import os
import shutil
import signal
import subprocess
import sys

import h5py
import numpy as np
import pytest
import torch

import config
import train_test
from conftest import ROOT
from event_writers import random_events, write_npz
from utils.run import runlog
from utils.run.fit import check_parameters
from utils.run.engine import NonFiniteLoss

SMALL = ["-dataset", "synthetic", "-T", "4", "-num_epochs", "1", "-synthetic_train", "16",
         "-synthetic_test", "8", "-batch_size_train", "4", "-batch_size_test", "4", "-clip", "1",
         "-num_work", "0"]
QUICK = ["-T", "4", "-num_epochs", "1", "-batch_size_train", "2", "-batch_size_test", "1", "-clip", "1",
         "-num_work", "0"]


class Payload:
    """Unpickling this object calls open(marker, 'w'): it would create the marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


# ---- the checks every case makes ------------------------------------------------------------

def snapshot(root) -> dict:
    out = {}
    for d, _, files in os.walk(root):
        for f in files:
            p = os.path.join(d, f)
            if os.path.isfile(p) and not os.path.islink(p):
                with open(p, "rb") as fh:
                    out[p] = hashlib.sha256(fh.read()).hexdigest()
            else:
                out[p] = "special"
    return out


class Guard:
    """Before/after: existing files unchanged, new files only under ``allowed`` folders, no marker."""

    def __init__(self, root, allowed=()):
        self.root, self.allowed = str(root), [os.path.abspath(a) for a in allowed]
        self.before = snapshot(root)

    def check(self, marker=None):
        after = snapshot(self.root)
        changed = [p for p, h in self.before.items() if after.get(p) != h]
        assert not changed, f"existing files changed or removed: {changed}"
        new = [p for p in after if p not in self.before
               and not any(os.path.commonpath([a, p]) == a for a in self.allowed)]
        assert not new, f"files written outside the named folders: {new}"
        if marker is not None:
            assert not os.path.exists(marker), "the planted payload ran"


def one_error(rc, err, culprit, code=2):
    assert rc == code, err[-2000:]
    lines = [ln for ln in err.splitlines() if "error:" in ln]
    assert len(lines) == 1, err[-2000:]
    assert culprit in lines[0], lines[0]
    assert "Traceback" not in err
    return lines[0]


def cli(argv, capsys):
    """train_test.main in this process: (exit code, stderr)."""
    capsys.readouterr()
    rc = train_test.main([str(a) for a in argv])
    return rc, capsys.readouterr().err


# ---- flags ----------------------------------------------------------------------------------

FLAGS = {
    "-lr inf": (["-lr", "inf"], "-lr"),
    "-lr nan": (["-lr", "nan"], "-lr"),
    "-lr -1": (["-lr", "-1"], "-lr"),
    "-lr 1e38": (["-lr", "1e38"], "-lr"),
    "-weight_decay nan": (["-weight_decay", "nan"], "-weight_decay"),
    "-dt 0.0001": (["-dt", "0.0001"], "-dt"),
    "-dt nan": (["-dt", "nan"], "-dt"),
    "-dt inf": (["-dt", "inf"], "-dt"),
    "-synthetic_train 0": (["-synthetic_train", "0"], "-synthetic_train"),
    "-seed -5": (["-seed", "-5"], "-seed"),
    "-seed 2**40": (["-seed", str(2**40)], "-seed"),
    "-name ../..": (["-name", "../../escaped"], "-name"),
    "-name absolute": (["-name", "{TMP}/abs"], "-name"),
    "-arch B on 2x2 frames": (["-arch", "B", "-ds", "64"], "-arch B"),
    "-T 100000": (["-T", "100000"], "-skip_memory_check"),
    # labels 0..9 with two classes: raised inside a DataLoader worker, printed as one line
    "-num_classes 2 in a worker": (["-num_classes", "2", "-num_work", "2"], "-num_classes 2"),
}


@pytest.mark.parametrize("case", FLAGS)
def test_bad_flags(case, tmp_path, capsys):
    argv, culprit = FLAGS[case]
    runs = tmp_path / "a" / "runs"
    g = Guard(tmp_path, [runs])
    argv = SMALL + [a.replace("{TMP}", str(tmp_path)) for a in argv] + ["-modelPath", runs]
    one_error(*cli(argv, capsys), culprit)
    g.check()


def test_non_finite_weights_stop_the_run_before_anything_is_saved(tmp_path, capsys):
    """-lr 3e37 is finite but blows the weights to inf within an epoch; the loss of a spiking net
    stays finite (no spikes), so only the parameter check sees it."""
    rc, err = cli(SMALL + ["-lr", "3e37", "-synthetic_train", "8", "-batch_size_train", "2",
                           "-synthetic_test", "2", "-modelPath", tmp_path, "-name", "r"], capsys)
    one_error(rc, err, "non-finite values in", code=3)
    assert not (tmp_path / "r" / "best.pth").exists() and not (tmp_path / "r" / "last.pth").exists()
    net = torch.nn.Linear(2, 2)
    check_parameters(net, 0)
    with torch.no_grad():
        net.weight[0, 1] = float("nan")
    with pytest.raises(NonFiniteLoss, match="weight after epoch 0"):
        check_parameters(net, 0)


# ---- your own events (npz) ------------------------------------------------------------------

def events_tree(root, info=True):
    for split in ("train", "test"):
        for c in ("a", "b"):
            for i in range(3):
                t, x, y, p = random_events(100, 32, 32, seed=i + 10 * (c == "b"), span=50_000)
                write_npz(root / split / c / f"s{i}.npz", t, x, y, p)
    if info:
        (root / "info.json").write_text('{"sensor_size": [32, 32]}')


def npz_with(path, **over):
    t, x, y, p = random_events(50, 32, 32, seed=3, span=50_000)
    arrays = dict(t=t, x=x, y=y, p=p)
    arrays.update(over)
    np.savez(path, **arrays)


def plant_npz(path, kind, marker):
    if kind == "zero-byte":
        path.write_bytes(b"")
    elif kind == "random bytes":
        path.write_bytes(np.random.default_rng(1).integers(0, 256, 300, dtype=np.uint8).tobytes())
    elif kind == "truncated":
        npz_with(path)
        path.write_bytes(path.read_bytes()[:120])
    elif kind == "string p":
        npz_with(path, p=np.array(["on"] * 50))
    elif kind == "bool t":
        npz_with(path, t=np.ones(50, dtype=bool))
    elif kind == "pickled payload":
        npz_with(path, t=np.array([Payload(marker)], dtype=object))
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "x off the sensor":
        npz_with(path, x=np.full(50, 40))
    elif kind == "x 60000, no sensor size":
        npz_with(path, x=np.full(50, 60000), y=np.full(50, 60000))


NPZ = {"zero-byte": "empty file", "random bytes": "not an npz file", "truncated": "not a readable npz",
       "string p": "p has dtype", "bool t": "t has dtype bool", "pickled payload": "refused",
       "fifo": "FIFO", "x off the sensor": "outside the 32x32 sensor",
       "x 60000, no sensor size": "-skip_memory_check"}


@pytest.mark.parametrize("kind", NPZ)
def test_bad_event_files(kind, tmp_path, capsys):
    data, runs, marker = tmp_path / "data", tmp_path / "runs", tmp_path / "pwned"
    events_tree(data, info=kind != "x 60000, no sensor size")
    bad = data / "train" / "a" / "s0.npz"
    bad.unlink()
    plant_npz(bad, kind, marker)
    g = Guard(tmp_path, [runs])
    line = one_error(*cli(["-dataset", "events", "-data_path", data, "-modelPath", runs] + QUICK, capsys),
                     NPZ[kind])
    if kind != "x 60000, no sensor size":
        assert str(bad) in line
    g.check(marker)


def test_an_error_in_a_dataloader_worker_is_one_line(tmp_path, capsys):
    data, runs = tmp_path / "data", tmp_path / "runs"
    events_tree(data)
    bad = data / "train" / "b" / "s2.npz"
    npz_with(bad, p=np.array(["on"] * 50))          # not the sample read at start: read by a worker
    args = QUICK[:-1] + ["2"]
    line = one_error(*cli(["-dataset", "events", "-data_path", data, "-modelPath", runs] + args, capsys),
                     "p has dtype")
    assert line.startswith(f"error: {bad}:")


def test_an_error_on_another_torchrun_rank_is_printed_by_that_rank(tmp_path):
    data = tmp_path / "data"
    events_tree(data)
    npz_with(data / "train" / "a" / "s0.npz", p=np.array(["on"] * 50))
    env = dict(os.environ, RANK="1")                 # rank 1 of a launch (no group: the error is first)
    r = subprocess.run([sys.executable, str(ROOT / "train_test.py"), "-dataset", "events", "-data_path",
                        str(data), "-modelPath", str(tmp_path / "runs"), *QUICK], capture_output=True,
                       text=True, timeout=300, env=env, cwd=tmp_path)
    one_error(r.returncode, r.stderr, "p has dtype")
    assert "error: rank 1: " in r.stderr


@pytest.mark.parametrize("kind", ["random bytes", "pickled payload", "strings"])
def test_bad_npy_arrays(kind, tmp_path):
    """The .npy reader (recognition's layout): plain numbers only."""
    from datasets.files import load_npy
    from datasets.recognition import read_npy
    from utils.errors import UserError
    path, marker = tmp_path / "a.npy", tmp_path / "pwned"
    if kind == "random bytes":
        path.write_bytes(np.random.default_rng(2).integers(0, 256, 300, dtype=np.uint8).tobytes())
    elif kind == "pickled payload":
        np.save(path, np.array([Payload(marker)], dtype=object), allow_pickle=True)
    else:
        np.save(path, np.array([["a"] * 5] * 4))
    want = {"random bytes": "not an .npy file", "pickled payload": "refused: it holds pickled",
            "strings": "t has dtype <U1"}[kind]
    with pytest.raises(UserError, match=want):
        read_npy(str(path))
    assert not marker.exists()
    np.save(path, np.arange(4))
    assert load_npy(str(path)).tolist() == [0, 1, 2, 3]        # a plain array reads as it is


# ---- DVS128 Gesture hdf5 ------------------------------------------------------------------

def gesture_file(path, times=None, addrs=None, labels=None, times_group=False):
    t, x, y, p = random_events(200, 128, 128, seed=5, span=400_000)
    with h5py.File(path, "w") as h:
        if times_group:
            h.create_group("times")
        else:
            h["times"] = (t - t[0]).astype(np.uint32) if times is None else times
        h["addrs"] = np.stack([x, y, p], 1).astype(np.uint8) if addrs is None else addrs
        h["labels"] = np.uint8(3) if labels is None else labels


GESTURE = {
    "x = 200": (dict(addrs=np.tile(np.array([[200, 5, 1]], np.uint8), (200, 1))), "outside the 128x128 sensor", []),
    "label 50": (dict(labels=np.uint8(50)), "label 50 is outside 0..10", []),
    "-num_classes 3, label 3": (dict(), "-num_classes 3", ["-num_classes", "3"]),
    "empty labels": (dict(labels=np.zeros(0, np.uint8)), "labels holds 0 value(s)", []),
    "string times": (dict(times=np.array([b"a"] * 200)), "t has dtype", []),
    "times a group": (dict(times_group=True), "'times' is a Group", []),
}


@pytest.mark.parametrize("case", GESTURE)
def test_bad_gesture_hdf5(case, tmp_path, capsys):
    kw, culprit, extra = GESTURE[case]
    data, runs = tmp_path / "data", tmp_path / "runs"
    for split in ("train", "test"):
        (data / split).mkdir(parents=True)
        gesture_file(data / split / "b.hdf5")
    gesture_file(data / "train" / "a.hdf5", **kw)
    g = Guard(tmp_path, [runs])
    line = one_error(*cli(["-dataset", "gesture", "-data_path", data, "-modelPath", runs] + QUICK + extra,
                          capsys), culprit)
    assert str(data / "train" / "a.hdf5") in line
    g.check()


# ---- spikingjelly frames --------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["pickled payload", "zero-byte"])
def test_spikingjelly_frames_never_run_code_and_torn_conversions_are_named(kind, tmp_path, capsys):
    root, runs, marker = tmp_path / "sj", tmp_path / "runs", tmp_path / "pwned"
    frames = root / "frames_number_2_split_by_number"
    for split in ("train", "test"):
        for k in range(11):
            t, x, y, p = random_events(20, 128, 128, seed=k)
            write_npz(root / "events_np" / split / str(k) / "u.npz", t, x, y, p)
            (frames / split / str(k)).mkdir(parents=True)
            np.savez_compressed(frames / split / str(k) / "u.npz", frames=np.zeros((2, 2, 128, 128), np.int16))
    bad = frames / "train" / "0" / "u.npz"
    if kind == "zero-byte":
        bad.write_bytes(b"")
        culprit = f"{frames}: 1 frame file(s) missing or empty"
    else:
        np.savez(bad, frames=np.array([Payload(marker)], dtype=object))
        culprit = f"{bad}: refused"
    g = Guard(tmp_path, [runs])
    one_error(*cli(["-dataset", "gesture_sj", "-data_path", root, "-modelPath", runs] + QUICK + ["-T", "2"], capsys),
              culprit)
    g.check(marker)


# ---- datasets.prepare -----------------------------------------------------------------------

@pytest.mark.parametrize("name", ["gesture", "gesture_sj"])
@pytest.mark.parametrize("listed", ["../../evil.aedat", "{TMP}/elsewhere/evil.aedat"])
def test_prepare_keeps_every_path_inside_its_folders(name, listed, tmp_path, capsys):
    from datasets.prepare import main
    raw, out = tmp_path / "raw" / "DvsGesture", tmp_path / "out"
    raw.mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    listed = listed.replace("{TMP}", str(tmp_path))
    (raw / "trials_to_train.txt").write_text(listed + "\n")
    g = Guard(tmp_path, [out])
    capsys.readouterr()
    rc = main([name, "--raw", str(raw), "--out", str(out)])
    one_error(rc, capsys.readouterr().err, "trials_to_train.txt: lists")
    g.check()


def test_prepare_out_that_cannot_be_a_folder(tmp_path, capsys):
    from datasets.prepare import main
    (tmp_path / "raw").mkdir()
    (tmp_path / "raw" / "trials_to_train.txt").write_text("u.aedat\n")
    (tmp_path / "file").write_text("x")
    g = Guard(tmp_path)
    capsys.readouterr()
    rc = main(["gesture", "--raw", str(tmp_path / "raw"), "--out", str(tmp_path / "file" / "out")])
    one_error(rc, capsys.readouterr().err, "--out")
    g.check()


def test_prepare_on_a_full_out(tmp_path):
    """A file size limit stands in for a full disk: the writability probe fails first, one line."""
    import resource

    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (1024, 1024))
    (tmp_path / "raw").mkdir()
    (tmp_path / "raw" / "trials_to_train.txt").write_text("u.aedat\n")
    g = Guard(tmp_path, [tmp_path / "out"])
    r = subprocess.run([sys.executable, "-m", "datasets.prepare", "gesture", "--raw", str(tmp_path / "raw"),
                        "--out", str(tmp_path / "out")], cwd=ROOT, capture_output=True, text=True,
                       timeout=120, preexec_fn=limit)
    one_error(r.returncode, r.stderr, "--out: cannot write in")
    assert os.listdir(tmp_path / "out") == []                  # the probe file is gone too
    g.check()


# ---- checkpoints and run folders ------------------------------------------------------------

@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """One finished 1-epoch synthetic run (its folder: config.json, metrics.csv, best/last.pth)."""
    runs = tmp_path_factory.mktemp("finished")
    assert train_test.main([str(a) for a in SMALL + ["-modelPath", runs, "-name", "done"]]) == 0
    return runs / "done"


def copy_run(src, dst):
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(".lock"))
    return dst


@pytest.mark.parametrize("kind", ["truncated", "payload", "fifo"])
def test_energy_on_a_bad_checkpoint(kind, finished_run, tmp_path, capsys):
    from utils.analysis.energy import main
    path, marker = tmp_path / "c.pth", tmp_path / "pwned"
    if kind == "truncated":
        path.write_bytes((finished_run / "best.pth").read_bytes()[:5000])
    elif kind == "fifo":
        os.mkfifo(path)
    else:
        torch.save({"model": Payload(marker)}, path)
    g = Guard(tmp_path)
    capsys.readouterr()
    one_error(main([str(path)]), capsys.readouterr().err, str(path))
    g.check(marker)


def test_energy_with_a_non_utf8_metrics_csv(finished_run, tmp_path, capsys):
    from utils.analysis.energy import main
    run = copy_run(finished_run, tmp_path / "run")
    (run / "metrics.csv").write_bytes(b"epoch,test_acc\n\xff\xfe 1,2\n")
    g = Guard(tmp_path)
    capsys.readouterr()
    one_error(main([str(run / "best.pth")]), capsys.readouterr().err, f"{run / 'metrics.csv'}: not a readable")
    g.check()


def test_a_fifo_as_pretrained_path(tmp_path, capsys):
    os.mkfifo(tmp_path / "w.pth")
    one_error(*cli(SMALL + ["-eval_only", "-pretrained_path", tmp_path / "w.pth", "-modelPath", tmp_path / "runs"],
                   capsys), f"-pretrained_path {tmp_path / 'w.pth'}: is a FIFO")


def test_a_run_folder_in_use_is_refused_and_a_killed_holder_does_not_block(finished_run, tmp_path, capsys):
    run = copy_run(finished_run, tmp_path / "run")
    g = Guard(tmp_path, [run / ".lock"])
    with open(run / ".lock", "a") as f:              # another process's lock (flock is per open file)
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        one_error(*cli(["-resume", run], capsys), f"run folder {run} is in use")
    g.check()
    holder = subprocess.Popen([sys.executable, "-c", "import fcntl, sys, time; f = open(sys.argv[1], 'a'); "
                               "fcntl.flock(f, fcntl.LOCK_EX); print('locked', flush=True); time.sleep(120)",
                               str(run / ".lock")], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    rc, err = cli(["-resume", run], capsys)            # the kernel released the killed holder's lock
    assert rc == 0 and "error" not in err, err


def test_a_run_stopped_before_its_first_checkpoint_continues_from_epoch_0(finished_run, tmp_path, capsys):
    """Killed before last.pth: starting it again names -resume, and -resume runs it from epoch 0
    (the same metrics as the uninterrupted run)."""
    args = config.parse_args([str(a) for a in SMALL + ["-modelPath", tmp_path, "-name", "early"]])
    run = runlog.create_run_dir(str(tmp_path), "early", "x")
    runlog.write_json(os.path.join(run, "config.json"), runlog.config_dict(args))   # as the CLI does
    one_error(*cli(SMALL + ["-modelPath", tmp_path, "-name", "early"], capsys), f"-resume {run}")
    rc, err = cli(["-resume", run], capsys)
    assert rc == 0, err
    _, want = runlog.read_metrics_csv(str(finished_run / "metrics.csv"))
    _, got = runlog.read_metrics_csv(os.path.join(run, "metrics.csv"))
    drop = lambda rows: [{k: v for k, v in r.items() if k != "epoch_seconds"} for r in rows]  # noqa: E731
    assert drop(got) == drop(want) and len(want) > 0
    assert os.path.isfile(os.path.join(run, "last.pth"))


def test_a_non_utf8_metrics_csv_on_resume(finished_run, tmp_path, capsys):
    run = copy_run(finished_run, tmp_path / "run")
    (run / "metrics.csv").write_bytes(b"epoch,lr\n\xff\xfe\x00 not text\n")
    g = Guard(tmp_path, [run / ".lock"])
    one_error(*cli(["-resume", run], capsys), f"{run / 'metrics.csv'}: not a readable metrics.csv")
    g.check()


def test_resume_asks_free_space_only_for_what_it_adds(tmp_path):
    assert runlog.checkpoint_space(str(tmp_path), 100) == 300          # a new run: best, last, one .tmp
    (tmp_path / "best.pth").write_bytes(b"x")
    assert runlog.checkpoint_space(str(tmp_path), 100) == 200
    (tmp_path / "last.pth").write_bytes(b"x")
    assert runlog.checkpoint_space(str(tmp_path), 100) == 100          # both replaced: one .tmp at a time
