"""utils/memory.py (policy choice, re-execution, fallbacks) and utils/block_cache.py (the caching
CPU allocator). Allocator behaviour is checked in fresh subprocesses, so that the counters start
at zero and the layout of free ranges is known."""
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from utils import block_cache, memory

ROOT = Path(__file__).resolve().parents[1]
CLEAN_ENV = {k: v for k, v in os.environ.items()
             if k not in ("GLIBC_TUNABLES", "ASA_MALLOC_REEXECED", "ASA_MALLOC", "ASA_KEEP_FREED_MEMORY")}
HUGE_PAGES = (sys.platform.startswith("linux") and (memory.glibc_version() or (0, 0)) >= (2, 35)
              and memory.thp_available())
needs_cache = pytest.mark.skipif(not sys.platform.startswith("linux") or block_cache.compiler() is None,
                                 reason="the block cache needs Linux and a C++ compiler")


def run_main(tmp_path, body: str, env: dict, *args: str) -> subprocess.CompletedProcess:
    """Run ``body`` as a __main__ script (the way train_test.py calls keep_freed_memory)."""
    script = tmp_path / "main.py"
    script.write_text(f"import os, sys\nsys.path.insert(0, {str(ROOT)!r})\nprint('start', flush=True)\n"
                      + textwrap.dedent(body))
    return subprocess.run([sys.executable, str(script), *args], env=env, capture_output=True,
                          text=True, timeout=300)


POLICY_SCRIPT = """
from utils import memory
memory.keep_freed_memory()
print(memory.applied_policy, memory.huge_pages_active(), sys.argv[1:])
"""


def test_bad_policy_names_are_refused_and_default_changes_nothing(monkeypatch):
    monkeypatch.delenv("ASA_KEEP_FREED_MEMORY", raising=False)
    with pytest.raises(ValueError, match="ASA_MALLOC"):
        memory.keep_freed_memory(policy="nope")
    assert memory.keep_freed_memory(policy="default") is False
    assert memory.applied_policy is None


@needs_cache
def test_default_policy_is_the_block_cache_without_reexecution(tmp_path):
    p = run_main(tmp_path, POLICY_SCRIPT, {**CLEAN_ENV, "ASA_BUILD_DIR": str(tmp_path / "build")}, "x")
    assert p.returncode == 0, p.stderr
    assert p.stdout.split("\n")[:2] == ["start", "cache False ['x']"]
    assert "built the CPU block cache" in p.stderr            # a fresh build dir: compiled once
    assert len(list((tmp_path / "build").glob("block_cache-*.so"))) == 1
    again = run_main(tmp_path, POLICY_SCRIPT, {**CLEAN_ENV, "ASA_BUILD_DIR": str(tmp_path / "build")})
    assert again.stdout.split("\n")[:2] == ["start", "cache False []"]
    assert "built" not in again.stderr                        # reused, not rebuilt


def test_thp_policy_reexecutes_the_main_script_once(tmp_path):
    p = run_main(tmp_path, POLICY_SCRIPT, {**CLEAN_ENV, "ASA_MALLOC": "thp"}, "x", "-y")
    out = p.stdout.split("\n")
    if HUGE_PAGES:
        assert out[:3] == ["start", "start", "thp True ['x', '-y']"]
    elif sys.platform.startswith("linux"):
        assert out[:2] == ["start", "heap False ['x', '-y']"]
    off = run_main(tmp_path, POLICY_SCRIPT, {**CLEAN_ENV, "ASA_KEEP_FREED_MEMORY": "0"})
    assert off.stdout.split("\n")[:2] == ["start", "None False []"]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="policies are Linux-only")
def test_cache_policy_without_a_compiler_falls_back_with_one_note(tmp_path):
    env = {**CLEAN_ENV, "CXX": str(tmp_path / "no-such-compiler"), "ASA_BUILD_DIR": str(tmp_path / "b")}
    p = run_main(tmp_path, POLICY_SCRIPT, env)
    assert p.returncode == 0, p.stderr
    notes = [ln for ln in p.stderr.splitlines() if ln.startswith("note:")]
    assert len(notes) == 1 and "block cache unavailable" in notes[0] and "no-such-compiler" in notes[0]
    expected = "thp True []" if HUGE_PAGES else "heap False []"
    assert p.stdout.split("\n")[-2] == expected


@needs_cache
def test_cache_is_refused_between_numpy_and_torch_imports(tmp_path):
    """Loading the library after numpy and before torch crashed torch's import on a CUDA machine
    (torch 2.11, numpy 2.5.2): there the policy falls back, with one note saying why."""
    body = "import numpy\n" + POLICY_SCRIPT + "import torch\nprint(float(torch.ones(3).sum()))\n"
    p = run_main(tmp_path, body, {**CLEAN_ENV, "ASA_BUILD_DIR": str(tmp_path / "b")})
    assert p.returncode == 0, p.stderr[-2000:]
    notes = [ln for ln in p.stderr.splitlines() if ln.startswith("note:")]
    assert len(notes) == 1 and "numpy was imported before the block cache" in notes[0]
    out = p.stdout.split("\n")
    assert out[-3] == ("thp True []" if HUGE_PAGES else "heap False []") and out[-2] == "3.0"
    assert not (tmp_path / "b").exists()                      # nothing was built or loaded


ALLOCATOR_SCRIPT = """
from utils import block_cache
assert block_cache.install(), block_cache.last_error
import torch
MiB = 1 << 20
s = block_cache.stats
def f32(mib):                                  # a float tensor of exactly `mib` MiB
    return torch.empty(mib * MiB // 4)

# below 4 MiB: the default allocator
small = torch.ones(MiB // 4)
assert s()["live_bytes"] == 0 and s()["fresh"] == 0

# rounding to whole 2 MiB pages; free keeps the block; the same size reuses it
a = torch.empty(5 * MiB, dtype=torch.uint8)
assert s()["live_bytes"] == 6 * MiB and s()["fresh_bytes"] == 6 * MiB
pa = a.data_ptr(); del a
assert s()["live_bytes"] == 0 and s()["free_bytes"] == 6 * MiB
b = f32(6)
assert b.data_ptr() == pa and s()["reused"] == 1 and s()["fresh_bytes"] == 6 * MiB
del b

# a smaller request splits the free range
c = f32(4)
assert c.data_ptr() == pa and s()["free_bytes"] == 2 * MiB
del c                                          # coalesces back into one 6 MiB range

# glue: two separate free ranges serve one bigger request; pages move with their contents
r = f32(24); del r                             # one 24 MiB range, then carved in address order:
first, mid, second, last = f32(8), f32(4), f32(8), f32(4)
assert mid.data_ptr() == first.data_ptr() + 8 * MiB and second.data_ptr() == first.data_ptr() + 12 * MiB
first.fill_(1.0); second.fill_(2.0)
before = s()
del first, second                              # 16 MiB free, in two ranges split by `mid`
assert s()["free_bytes"] == before["free_bytes"] + 16 * MiB == 16 * MiB
z = f32(16)                                    # fits neither range alone
st = s()
assert st["glued"] == before["glued"] + 1 and st["fresh_bytes"] == before["fresh_bytes"], st
assert st["moved_bytes"] == before["moved_bytes"] + 16 * MiB and st["free_bytes"] == 0
halves = z.view(2, -1)[:, ::4096].clone()      # small samples: no big temporaries here
assert sorted(halves[:, 0].tolist()) == [1.0, 2.0]   # the old pages, not new zeroed memory
assert bool((halves == halves[:, :1]).all())   # each 8 MiB range moved whole
z.fill_(3.0); assert float(z.sum()) == 3.0 * z.numel()

# only the part no free range covers is new memory; mapped memory = live high-water mark
del z                                          # 16 MiB free
w = f32(20)
st = s()
assert st["fresh_bytes"] == before["fresh_bytes"] + 4 * MiB, st
assert st["mapped_peak_bytes"] == st["high_water_bytes"]
w.fill_(5.0); w[-1] = 6.0
assert bool(w[:-1].eq(5.0).all()) and float(w[-1]) == 6.0

# release gives the free ranges back; live tensors stay intact
del w
free_now = s()["free_bytes"]
assert free_now >= 20 * MiB and block_cache.release() == free_now and s()["free_bytes"] == 0
assert float(mid.fill_(7.0).sum()) == 7.0 * mid.numel() and float(last.sum()) == float(last.sum())
print("ok", s()["installed"])
"""


@needs_cache
def test_block_cache_reuses_splits_and_glues_freed_memory(tmp_path):
    p = run_main(tmp_path, ALLOCATOR_SCRIPT, CLEAN_ENV)
    assert p.returncode == 0, p.stderr[-2000:]
    assert p.stdout.split("\n")[1] == "ok 1"


TRAINING_SCRIPT = """
from utils import memory
memory.keep_freed_memory(policy=os.environ["POLICY"])
import torch
sys.path.insert(0, os.path.join({root!r}, "bench"))
from reference_step import build_net, make_batch, make_step
torch.manual_seed(0)
torch.set_num_threads(2)
net = build_net("A", "fused", T=8, size=32)
x, y = make_batch(8, (32, 32), 4)
step = make_step(net, x, y)
losses = [float(step()) for _ in range(3)]
loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(64, 2 << 20)),
                                     batch_size=8, num_workers=2)
total = sum(float(b[0].sum()) for b in loader)   # forked workers allocate big tensors too
from utils import block_cache
st = block_cache.stats()
print(memory.applied_policy, repr(losses), round(total, 1), st and st["reused"] > 0)
""".format(root=str(ROOT))


@needs_cache
def test_training_with_the_block_cache_equals_the_default_allocator(tmp_path):
    """Same losses bit for bit (the allocator must never change a value), DataLoader workers
    (forked while the cache holds memory) work, and the cache actually served reuses."""
    outs = {}
    for policy in ("cache", "default"):
        p = run_main(tmp_path, TRAINING_SCRIPT, {**CLEAN_ENV, "POLICY": policy})
        assert p.returncode == 0, p.stderr[-2000:]
        outs[policy] = p.stdout.split("\n")[1].split(" ", 1)
    assert outs["cache"][0] == "cache" and outs["cache"][1].endswith("True")
    assert outs["default"][0] == "None" and outs["default"][1].endswith("None")
    assert outs["cache"][1].rsplit(" ", 1)[0] == outs["default"][1].rsplit(" ", 1)[0]
