"""Hostile input beyond tests/test_hostile.py: declared sizes, planted links, checkpoint content,
broken run folders for the analysis tools, and valid files the readers must not refuse.

Built on the fly with test_hostile's helpers (Guard: existing files unchanged and new files only in
the named folders; one_error: the exit code, exactly one 'error:' line naming the culprit, no
traceback). The memory case runs the real CLI in a subprocess, re-executed under mimalloc as a user
gets it, under an address-space limit, and measures its peak resident memory."""
import json
import os
import resource
import shutil
import struct
import subprocess
import sys
import time
import zipfile

import h5py
import numpy as np
import pytest
import torch

from conftest import ROOT
from event_writers import davis_address, random_events, write_aedat2, write_npz
from test_hostile import QUICK, SMALL, Guard, cli, copy_run, events_tree, finished_run, one_error  # noqa: F401
from utils.files import atomic_write

GIB = 2**30


# ---- 1. declared sizes are checked before anything is allocated --------------------------------

def forged_npy(declared_shape, data: bytes, dtype="<i8") -> bytes:
    """An .npy whose header declares ``declared_shape`` but which holds only ``data``."""
    header = {"descr": dtype, "fortran_order": False, "shape": tuple(declared_shape)}
    import io
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, header)
    return buf.getvalue() + data


def forged_npz(path, **members):
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for k, v in members.items():
            z.writestr(f"{k}.npy", v)


def plant_declared(kind, data):
    """Replace data/train/a's first sample with a small file that declares far more than it holds."""
    if kind.startswith("hdf5"):
        for split in ("train", "test"):
            (data / split).mkdir(parents=True, exist_ok=True)
            with h5py.File(data / split / "b.hdf5", "w") as h:
                h["times"] = np.arange(50, dtype=np.uint32) * 1000
                h["addrs"] = np.ones((50, 3), np.uint8)
                h["labels"] = np.uint8(1)
        bad = data / "train" / "a.hdf5"
        with h5py.File(bad, "w") as h:
            if kind == "hdf5 never written":
                h.create_dataset("times", shape=(10**12,), dtype="u4")          # 2 KB on disk
                h.create_dataset("addrs", shape=(10**12, 3), dtype="u1")
            else:                                                                # one chunk of 10^9
                h.create_dataset("times", shape=(10**12,), dtype="u4", chunks=(1000,))
                h["times"][:10] = 1
                h.create_dataset("addrs", shape=(10**12, 3), dtype="u1", chunks=(1000, 3))
                h["addrs"][:10] = 1
            h["labels"] = np.uint8(1)
        return bad
    events_tree(data)
    bad = data / "train" / "a" / "s0.npz"
    t, x, y, p = random_events(50, 32, 32, seed=1)
    cols = {k: np.lib.format.header_data_from_array_1_0 and _npy(v) for k, v in zip("txyp", (t, x, y, p))}
    if kind == "npz declares 10^12 events":
        cols["t"] = forged_npy((10**12,), t.astype("<i8").tobytes())
    elif kind == "npz columns of other lengths":
        cols["x"] = _npy(np.zeros(10**6, np.uint16))           # compresses to a few KB
    elif kind == "npz member declares 4 GiB":
        forged_npz(bad, **cols)
        raw = bytearray(bad.read_bytes())
        cd = raw.index(b"PK\x01\x02")                            # the first central directory entry
        raw[cd + 24:cd + 28] = struct.pack("<I", 0xFFFFFFF0)     # its uncompressed size
        bad.write_bytes(bytes(raw))
        return bad
    forged_npz(bad, **cols)
    return bad


def _npy(a) -> bytes:
    import io
    buf = io.BytesIO()
    np.save(buf, np.asarray(a))
    return buf.getvalue()


DECLARED = {"hdf5 never written": "was never written", "hdf5 one chunk of 10^9": "stores 1",
            "npz declares 10^12 events": "t.npy declares shape (1000000000000,)",
            "npz columns of other lengths": "t, x, y, p differ in length (50, 1000000, 50, 50)",
            "npz member declares 4 GiB": "declares"}


def run_measured(argv, cwd, as_limit=4 * GIB, timeout=120):
    """(exit code, stderr, peak RSS in bytes, seconds) of ``python3 train_test.py argv``, run as a
    user runs it (the CLI re-executes itself under mimalloc) under an address-space limit, so that a
    regression fails this test instead of the machine. The peak is the child's own: a wrapper
    process waits for it and reads RUSAGE_CHILDREN."""
    wrapper = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:]); "
               "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr); "
               "sys.exit(r.returncode)")

    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (as_limit, as_limit))
    t0 = time.time()
    r = subprocess.run([sys.executable, "-c", wrapper, sys.executable, str(ROOT / "train_test.py"),
                        *map(str, argv)], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                       preexec_fn=limit, env=dict(os.environ, ASA_ALLOCATOR="mimalloc", OMP_NUM_THREADS="1"))
    *err, peak = r.stderr.strip().splitlines()
    return r.returncode, "\n".join(err), int(peak) * 1024, time.time() - t0


@pytest.mark.parametrize("kind", DECLARED)
def test_declared_sizes_are_refused_before_anything_is_allocated(kind, tmp_path):
    data, runs = tmp_path / "data", tmp_path / "runs"
    bad = plant_declared(kind, data)
    assert bad.stat().st_size < 64 * 1024                      # a small file, whatever it declares
    g = Guard(tmp_path, [runs])
    dataset = ["-dataset", "gesture"] if kind.startswith("hdf5") else ["-dataset", "events"]
    rc, err, peak, seconds = run_measured(dataset + ["-data_path", data, "-modelPath", runs] + QUICK, tmp_path)
    line = one_error(rc, err, DECLARED[kind])
    assert str(bad) in line
    assert peak < 1.5 * GIB, f"peak RSS {peak / GIB:.2f} GiB"  # the CLI alone: about 0.7 GiB
    assert seconds < 60
    g.check()


def test_a_checkpoints_stored_settings_are_checked_before_anything_is_built(finished_run, tmp_path, capsys):
    """-T 10^9 in a last.pth whose tensors are of a -T 4 network: refused naming the file, before
    the data is read or a network is made (one built from them would need exabytes); a setting of
    the wrong type names the setting."""
    for value, culprit in ((10**9, "describe another network than its weights"),
                           ("4", "setting 'T' is str '4', expected an integer of at least 1"),
                           (0, "setting 'T' is int 0")):
        run = copy_run(finished_run, tmp_path / f"run{value}")
        ck = torch.load(run / "last.pth", weights_only=True)
        ck["config"]["T"] = value
        torch.save(ck, run / "last.pth")
        cfg = json.loads((run / "config.json").read_text())          # both forged alike
        (run / "config.json").write_text(json.dumps(dict(cfg, T=value)))
        g = Guard(tmp_path, [run / ".lock"])
        t0 = time.time()
        line = one_error(*cli(["-resume", run], capsys), culprit)
        assert f"-resume {run / 'last.pth'}" in line and time.time() - t0 < 30
        g.check()
    from utils.analysis.energy import main as energy          # the analysis tools build it too
    capsys.readouterr()
    run = tmp_path / f"run{10**9}"
    one_error(energy([str(run / "last.pth")]), capsys.readouterr().err,
              f"{run / 'last.pth'}: its stored settings (-arch A, -T 1000000000, ...) describe another network")


def test_a_zip_member_is_bounded_by_the_memory_available(tmp_path, monkeypatch):
    """The members' declared sizes are compared with what this process may allocate (here a
    pretend 1 MiB) before a byte is decompressed."""
    from datasets.files import load_npz
    from utils import files
    from utils.errors import UserError
    path = tmp_path / "z.npz"
    np.savez_compressed(path, t=np.zeros(10**6, np.int64))     # 8 MB of zeros in a few KB
    monkeypatch.setattr(files, "available_memory", lambda: 2**20)
    with pytest.raises(UserError, match=r"z.npz: its zip directory declares 8,000,\d+ bytes"):
        load_npz(str(path))
    monkeypatch.undo()
    assert load_npz(str(path))["t"].shape == (10**6,)


# ---- 2. a run folder's files are never followed through links --------------------------------

@pytest.fixture(scope="module")
def unfinished_run(finished_run, tmp_path_factory):
    """The finished 1-epoch run as a 2-epoch run stopped after its first epoch: -resume trains one
    more epoch (TensorBoard's writers, metrics.csv's append, both checkpoints)."""
    run = copy_run(finished_run, tmp_path_factory.mktemp("unfinished") / "run")
    for name in ("last.pth", "best.pth"):
        ck = torch.load(run / name, weights_only=True)
        ck["config"]["num_epochs"] = 2
        torch.save(ck, run / name)
    cfg = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps(dict(cfg, num_epochs=2)))
    return run


LINKS = {   # name planted in the run folder -> (what it points to, culprit or None: the run goes on)
    ".lock": ("file", ".lock: is a symbolic link; refused"),
    ".lock hard link": ("hardlink", ".lock: has 2 hard links"),
    "metrics.csv": ("file", None),             # rewritten atomically from last.pth: the link is replaced
    "last.pth.tmp": ("file", None),            # the old predictable temporary name: never used
    "best.pth": ("file", None),
    "steps": ("dir", "steps is a symbolic link or not a folder; refused"),
}


@pytest.mark.parametrize("name", LINKS)
def test_links_planted_in_a_run_folder_are_never_followed(name, unfinished_run, tmp_path, capsys):
    target, culprit = LINKS[name]
    run = copy_run(unfinished_run, tmp_path / "run")
    outside = tmp_path / "outside"
    outside.mkdir()
    victim = outside / "victim"
    victim.write_text("precious\n")
    planted = run / name.split()[0]
    if planted.is_dir():
        shutil.rmtree(planted)
    planted.unlink(missing_ok=True)
    if target == "hardlink":
        os.link(victim, planted)
    else:
        os.symlink(outside if target == "dir" else victim, planted)
    g = Guard(outside)
    rc, err = cli(["-resume", run], capsys)
    if culprit:
        line = one_error(rc, err, culprit)
        assert str(run) in line
    else:
        assert rc == 0, err[-2000:]
        assert not planted.is_symlink() or name == "last.pth.tmp"
    g.check()                                    # nothing outside the run folder written or truncated
    assert victim.read_text() == "precious\n"
    assert not list(run.glob("*.tmp")) or name == "last.pth.tmp"


def test_atomic_writes_never_follow_a_link(tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("precious")
    folder = tmp_path / "run"
    folder.mkdir()
    os.symlink(victim, folder / "config.json")              # the target itself is a link
    os.symlink(victim, folder / "config.json.tmp")          # and the old temporary name
    atomic_write(str(folder / "config.json"), "{}")
    assert victim.read_text() == "precious"
    assert not (folder / "config.json").is_symlink() and (folder / "config.json").read_text() == "{}"
    assert sorted(os.listdir(folder)) == ["config.json", "config.json.tmp"]   # no temporary file left
    mask = os.umask(0o022)
    os.umask(mask)
    assert (folder / "config.json").stat().st_mode & 0o777 == 0o666 & ~mask  # not mkstemp's 0600


# ---- 5. a checkpoint's content is validated before use --------------------------------------

def edit_checkpoint(ck, kind):
    if kind == "inf weight":
        ck["model"]["ConvAttLIFs.0.conv.0.weight"] = ck["model"]["ConvAttLIFs.0.conv.0.weight"].clone()
        ck["model"]["ConvAttLIFs.0.conv.0.weight"][0, 0, 0, 0] = float("inf")
    elif kind == "NaN Adam moment":
        ck["optimizer"]["state"][0]["exp_avg"][0] = float("nan")
    elif kind == "no optimizer":
        del ck["optimizer"]
    elif kind == "epoch a string":
        ck["epoch"] = "0"
    elif kind == "rng of another shape":
        ck["rng"][0]["numpy"] = ("MT19937", [1, 2, 3], 0, 0, 0.0)
    elif kind == "python rng a string":
        ck["rng"][0]["python"] = "state"
    elif kind == "Adam moment of another shape":
        ck["optimizer"]["state"][0]["exp_avg"] = torch.zeros(3)
    elif kind == "metrics rows not strings":
        ck["metrics"]["rows"] = [[1.0, 2.0]]


CONTENT = {"inf weight": "non-finite values (inf or NaN) in model.ConvAttLIFs.0.conv.0.weight",
           "NaN Adam moment": "non-finite values (inf or NaN) in optimizer.state.0.exp_avg",
           "no optimizer": "field 'optimizer' is missing",
           "epoch a string": "field 'epoch' is str '0'",
           "rng of another shape": "field 'rng[0]' is not a random-generator state",
           "python rng a string": "field 'rng[0]'",
           "Adam moment of another shape": "field 'optimizer.state.0.exp_avg' is (3,)",
           "metrics rows not strings": "field 'metrics'"}


@pytest.mark.parametrize("kind", CONTENT)
def test_a_damaged_checkpoint_is_refused_at_load_naming_the_field(kind, finished_run, tmp_path, capsys):
    run = copy_run(finished_run, tmp_path / "run")
    ck = torch.load(run / "last.pth", weights_only=True)
    assert "ConvAttLIFs.0.conv.0.weight" in ck["model"]
    edit_checkpoint(ck, kind)
    torch.save(ck, run / "last.pth")
    g = Guard(tmp_path, [run / ".lock"])
    line = one_error(*cli(["-resume", run], capsys), CONTENT[kind])
    assert f"-resume {run / 'last.pth'}" in line and "-lr" not in line
    g.check()


def test_another_architectures_checkpoint_in_a_run_folder_is_refused(finished_run, tmp_path, capsys):
    other = tmp_path / "other"
    assert train_test_main(SMALL + ["-arch", "D", "-modelPath", other, "-name", "d"]) == 0
    run = copy_run(finished_run, tmp_path / "run")
    shutil.copy(other / "d" / "last.pth", run / "last.pth")
    g = Guard(tmp_path, [run / ".lock"])
    one_error(*cli(["-resume", run], capsys),
              f"-resume {run / 'last.pth'}: checkpoint has -arch D, the run folder's {run / 'config.json'} -arch A")
    g.check()


def test_non_finite_weights_are_refused_by_eval_only_and_the_analysis_tools(finished_run, tmp_path, capsys):
    from utils.analysis.energy import main as energy
    run = copy_run(finished_run, tmp_path / "run")
    ck = torch.load(run / "best.pth", weights_only=True)
    ck["model"]["FCs.1.linear.0.weight"] = torch.full_like(ck["model"]["FCs.1.linear.0.weight"], float("nan"))
    torch.save(ck, run / "best.pth")
    g = Guard(tmp_path, [tmp_path / "runs"])
    one_error(*cli(SMALL + ["-eval_only", "-pretrained_path", run / "best.pth", "-modelPath", tmp_path / "runs"],
                   capsys), f"-pretrained_path {run / 'best.pth'}: non-finite values (inf or NaN) in model.FCs.1.linear.0.weight")
    capsys.readouterr()
    one_error(energy([str(run / "best.pth")]), capsys.readouterr().err, f"{run / 'best.pth'}: non-finite")
    g.check()


def train_test_main(argv):
    import train_test
    return train_test.main([str(a) for a in argv])


# ---- 6. the analysis tools on broken run folders ---------------------------------------------

def break_folder(run, kind):
    m, c = run / "metrics.csv", run / "config.json"
    text = m.read_text()
    if kind == "missing column":
        m.write_text("\n".join(",".join(f for i, f in enumerate(ln.split(",")) if i != 5)
                               for ln in text.splitlines()) + "\n")
    elif kind == "short metrics.csv":
        m.write_text(text[:len(text.splitlines()[0]) + 12])
    elif kind == "binary metrics.csv":
        m.write_bytes(b"epoch,test_acc,test_nasfr\n\x00\x01\x02")
    elif kind == "NaN in a row":
        head, row = text.splitlines()[:2]
        vals = row.split(",")
        vals[head.split(",").index("test_acc")] = "nan"
        m.write_text(head + "\n" + ",".join(vals) + "\n")
    elif kind == "config.json a list":
        c.write_text("[1, 2]")
    elif kind == "num_epochs a string":
        c.write_text(json.dumps(dict(json.loads(c.read_text()), num_epochs="ten")))
    return c if kind.startswith(("config", "num_epochs")) else m


BROKEN = ["missing column", "short metrics.csv", "binary metrics.csv", "NaN in a row", "config.json a list",
          "num_epochs a string"]


@pytest.mark.parametrize("kind", BROKEN)
def test_analysis_tools_on_a_broken_run_folder(kind, finished_run, tmp_path, capsys):
    """Seed 0 is whole, seed 1 broken: the table and the curves are written from seed 0 and name the
    broken file in a note; the planner and the energy tool say one line naming it."""
    from utils.analysis.curves import main as curves
    from utils.analysis.energy import main as energy
    from utils.analysis.table import main as table
    runs, out = tmp_path / "runs", tmp_path / "out"
    for name in ("demo_synthetic_no", "demo_synthetic_ASA", "demo_synthetic_no_s1", "demo_synthetic_ASA_s1"):
        copy_run(finished_run, runs / name)
    bad = break_folder(runs / "demo_synthetic_ASA_s1", kind)
    g = Guard(tmp_path, [out])
    capsys.readouterr()
    assert table([str(runs), "--out", str(out), "--seeds", "0", "1", "--no-energy"]) == 0
    err = capsys.readouterr().err
    assert "Traceback" not in err and "error:" not in err
    md = (out / "table.md").read_text()
    assert f"left out: {bad}" in md
    assert not [ln for ln in md.splitlines() if ln.startswith("| ") and "nan" in ln.lower().replace("nasfr", "")]
    with open(out / "table.csv") as f:
        rec = next(__import__("csv").DictReader(f))
    assert rec["n_no"] == "2" and rec["n_asa"] == "1" and rec["acc_asa"] not in ("", "nan")
    assert curves([str(runs), "--out", str(out), "--seeds", "0", "1"]) == 0
    err = capsys.readouterr().err
    assert f"note: left out: {bad}" in err and "Traceback" not in err and (out / "curves_demo_synthetic.png").exists()
    if bad.name == "metrics.csv":
        one_error(energy([str(runs / "demo_synthetic_ASA_s1" / "best.pth")]), capsys.readouterr().err, str(bad))
    env = dict(os.environ, RUNS_DIR=str(runs), SEEDS="0 1")
    r = subprocess.run([sys.executable, "-m", "utils.analysis.table", "--plan", "demo_synthetic"], cwd=ROOT,
                       env=env, capture_output=True, text=True, timeout=120)
    # the planner leaves the broken folder alone with a note naming the file (final.sh counts the
    # run as unfinished) and plans the others
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr[-2000:]
    plan = [ln for ln in r.stdout.splitlines() if not ln.startswith(("--", "final.sh:"))]
    broken = [ln for ln in plan if "demo_synthetic_ASA_s1" in ln]
    assert len(plan) == 4 and len(broken) == 1 and broken[0].startswith("other") and str(bad) in broken[0], r.stdout
    g.check()


# ---- 7. readers never refuse a valid file ----------------------------------------------------

def test_a_jaer_file_whose_first_record_begins_with_hash_is_read_whole(tmp_path, capsys):
    """A DAVIS event in rows 140-143 has the address byte 0x23 ('#') first: the header ends at
    '#End Of ASCII Header', so that record is data. A rule of 'the first byte that is not #' (the
    reference's) would take it and everything up to the next 0x0A byte for a header line."""
    from datasets.prepare import main
    from datasets.readers import read_aedat2
    raw, out = tmp_path / "raw", tmp_path / "out"
    t, x, y, p = random_events(60, 346, 260, seed=4, t0=10**8)
    y[0], x[1] = 140, 345 - 0x0A                       # '#' first; a 0x0A byte in the second record
    records = [(davis_address(a, b, c), int(d)) for a, b, c, d in zip(x, y, p, t)]
    assert struct.pack(">I", records[0][0])[:1] == b"#"
    for cls in ("waving", "kicking"):
        for i in range(2):
            write_aedat2(raw / cls / f"{cls}{i}.aedat", records, chip="eu.seebetter.ini.chips.davis.DAVIS346B")
    header, addr, ts = read_aedat2(str(raw / "waving" / "waving0.aedat"))
    assert header[-1] == "#End Of ASCII Header" and addr.tolist() == [a for a, _ in records]
    capsys.readouterr()
    assert main(["recognition", "--raw", str(raw), "--out", str(out), "--train_fraction", "0.5"]) == 0
    a = np.load(out / "train" / "waving" / "waving0.npy")
    order = np.argsort(t, kind="stable")
    for row, v in zip(a, (t, x, y, p)):
        np.testing.assert_array_equal(row, np.asarray(v)[order])
    # without the end line (older jAER files) the header still ends at the first non-'#' line start
    buf = (raw / "waving" / "waving0.aedat").read_bytes().replace(b"#End Of ASCII Header\r\n", b"")
    (tmp_path / "old.aedat").write_bytes(b"#!AER-DAT2.0\r\n" + buf.split(b"\r\n", 1)[1].split(b"#", 1)[0]
                                         + b"".join(struct.pack(">II", a, d) for a, d in records[2:]))
    assert read_aedat2(str(tmp_path / "old.aedat"))[1].tolist() == [a for a, _ in records[2:]]


@pytest.mark.parametrize("value", ["inf", "1e30", "nan", "99999999999999999999", "1.5"])
def test_a_label_file_with_a_number_that_is_not_an_int64_is_one_line(value, tmp_path, capsys):
    from datasets.prepare import main
    raw, out = tmp_path / "raw", tmp_path / "out"
    raw.mkdir()
    (raw / "trials_to_train.txt").write_text("user01_lab.aedat\n")
    (raw / "user01_lab_labels.csv").write_text(f"class,startTime_usec,endTime_usec\n1,100,200\n2,300,{value}\n")
    g = Guard(tmp_path, [out])
    capsys.readouterr()
    line = one_error(main(["gesture", "--raw", str(raw), "--out", str(out)]), capsys.readouterr().err,
                     f"{raw / 'user01_lab_labels.csv'}: line 3: endTime_usec is '{value}', expected an integer")
    assert line
    g.check()
