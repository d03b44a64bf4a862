"""Multi-process training with ``torchrun`` (DistributedDataParallel); a no-op in a plain run.

    torchrun --nproc_per_node=4 train_test.py -dataset gesture -data_path DIR ...

Design (docs: ``train_test.py -h`` and the module docstrings of utils/run/loaders.py):

- Launch: when torchrun's environment (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``) is present the
  run joins a process group, even with ``--nproc_per_node=1``; otherwise it is a plain process.
  Backend: NCCL when the run uses CUDA (rank r drives ``cuda:LOCAL_RANK``), Gloo on CPU.
- Batch: ``-batch_size_train`` is the GLOBAL batch (the optimisation does not change with the
  number of processes); each global batch is split over the ranks in near-equal parts and the
  per-rank loss is weighted so that DDP's gradient average equals the mean over the global batch
  (utils/run/engine.py). ``-batch_size_test`` stays the size of one forward pass; whole test batches
  are dealt round-robin to the ranks, so each test forward groups exactly the clips it groups in a
  single process (the reference ASA masks pool over that group: reference-mode test results do not
  depend on the number of processes). During training the reference masks pool over the part of
  the global batch a rank holds.
- Metrics: every process returns raw sums ([loss_sum, correct, seen] and per-layer spike counts);
  they are summed with ``all_reduce`` and divided once, so accuracy, firing rates and NASFR are exact
  (no sample is counted twice, none is dropped).
- BatchNorm: ``-sync_bn`` (default true) converts BatchNorm to SyncBatchNorm on CUDA, so the batch
  statistics are those of the global batch as in a one-GPU run. PyTorch has no CPU SyncBatchNorm:
  on CPU each rank normalises with its own part of the batch (stated at start). Running statistics
  are rank 0's (DDP broadcasts rank 0's buffers at every training forward, and before every test
  pass), so the checkpoint rank 0 writes evaluates exactly as the logged test metrics.
- Output: only rank 0 prints, writes files and shows progress bars; a step that only rank 0 does
  (creating the run folder, saving) reports its success or its error to every rank.
"""
from __future__ import annotations

import gc
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from utils.errors import UserError


class RelayedError(UserError):
    """Rank 0's error, raised on the other ranks so that they stop too; rank 0 prints it."""


def launched_by_torchrun() -> bool:
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ


def env_rank() -> int:
    """This process's rank from the launcher's environment (0 in a plain run)."""
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0


@dataclass
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    active: bool = False          # a process group is initialised
    backend: str | None = None

    def say(self, *args, **kwargs) -> None:
        """print, on rank 0 only."""
        if self.is_main:
            print(*args, **kwargs)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # ---- collectives (identity in a plain run) ----
    def _comm_device(self, t: torch.Tensor) -> torch.device:
        return torch.device("cuda", torch.cuda.current_device()) if self.backend == "nccl" else torch.device("cpu")

    def all_reduce_sum(self, t: torch.Tensor) -> torch.Tensor:
        """Sum of ``t`` over ranks (a new tensor on t's device; t itself is untouched)."""
        if not self.active:
            return t.clone()
        buf = t.detach().to(self._comm_device(t), copy=True)
        dist.all_reduce(buf, op=dist.ReduceOp.SUM)
        return buf.to(t.device)

    def all_true(self, flag: bool) -> bool:
        """True when ``flag`` is true on every rank."""
        if not self.active:
            return bool(flag)
        t = torch.tensor([1 if flag else 0], dtype=torch.int32)
        return bool(self.all_reduce_sum(t).item() == self.world_size)

    def any_true(self, flag: bool) -> bool:
        """True when ``flag`` is true on some rank (a stop request: every rank stops at the same step)."""
        if not self.active:
            return bool(flag)
        t = torch.tensor([1 if flag else 0], dtype=torch.int32)
        return bool(self.all_reduce_sum(t).item() > 0)

    def gather_objects(self, obj) -> list:
        """[obj of rank 0, obj of rank 1, ...] on every rank."""
        if not self.active:
            return [obj]
        out = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def broadcast_buffers(self, module: torch.nn.Module) -> None:
        """Copy rank 0's buffers (BatchNorm running statistics) to every rank."""
        if not self.active:
            return
        for b in module.buffers():
            buf = b.detach().to(self._comm_device(b), copy=True)
            dist.broadcast(buf, src=0)
            b.data.copy_(buf.to(b.device))

    def on_main(self, fn, *args, **kwargs):
        """Run ``fn`` on rank 0 only (its result there, None elsewhere); a UserError or OSError
        raised there is raised on every rank, so no rank waits forever for a failed one."""
        return self._main_only(fn, args, kwargs, share=False)

    def from_main(self, fn, *args, **kwargs):
        """As on_main, and every rank receives rank 0's result (which must be picklable)."""
        return self._main_only(fn, args, kwargs, share=True)

    def _main_only(self, fn, args, kwargs, share: bool):
        if not self.active:
            return fn(*args, **kwargs)
        payload, value = [None], None
        if self.is_main:
            try:
                value = fn(*args, **kwargs)
                payload[0] = ("ok", value if share else None)
            except UserError as e:
                payload[0] = ("error", str(e))
            except OSError as e:
                name = getattr(e, "filename", None)
                payload[0] = ("error", f"{name + ': ' if name else ''}{e.strerror or e}")
        dist.broadcast_object_list(payload, src=0)
        status, shared = payload[0]
        if status == "error":
            raise UserError(shared) if self.is_main else RelayedError(shared)
        return value if self.is_main else shared

    def close(self):
        """Leave the process group. Call it after the DDP wrapper went out of scope: a DDP reducer
        (kept alive by reference cycles) that outlives its Gloo group is destroyed at interpreter
        exit and aborts the process now and then ("terminate called without an active exception",
        ~1 exit in 10 on a loaded 2-core machine), hence the collection first."""
        if self.active and dist.is_initialized():
            gc.collect()
            dist.destroy_process_group()
            self.active = False


def pick_device(name: str) -> torch.device:
    """-device: auto (CUDA when present), cpu, cuda or cuda:N."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"-device {name}: CUDA is not available on this machine (use -device cpu)")
    return torch.device(name)


def setup(device_flag: str) -> tuple[Dist, torch.device]:
    """Join torchrun's process group when launched by it. Returns (Dist, the device to use).

    ``device_flag`` is -device: with several processes on CUDA, each rank takes cuda:LOCAL_RANK."""
    if not launched_by_torchrun():
        return Dist(), pick_device(device_flag)
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local = int(os.environ.get("LOCAL_RANK", rank))
    want_cuda = device_flag.startswith("cuda") or (device_flag == "auto" and torch.cuda.is_available())
    if want_cuda:
        if not torch.cuda.is_available():
            raise UserError(f"-device {device_flag}: CUDA is not available on this machine (use -device cpu)")
        if device_flag.startswith("cuda:") and world > 1:
            raise UserError(f"-device {device_flag}: with torchrun every process takes cuda:LOCAL_RANK; "
                            f"pass -device cuda (or auto) and choose GPUs with CUDA_VISIBLE_DEVICES")
        if local >= torch.cuda.device_count():
            raise UserError(f"torchrun started local rank {local} but only {torch.cuda.device_count()} "
                            f"GPU(s) are visible; lower --nproc_per_node")
        torch.cuda.set_device(local)
        device, backend = f"cuda:{local}", "nccl"
    else:
        device, backend = "cpu", "gloo"
    kwargs = {"device_id": torch.device(device)} if backend == "nccl" else {}
    dist.init_process_group(backend=backend, rank=rank, world_size=world, **kwargs)
    return Dist(rank=rank, world_size=world, local_rank=local, active=True, backend=backend), torch.device(device)


def wrap(net: torch.nn.Module, device: torch.device, context: Dist) -> torch.nn.Module:
    """``net`` for training: DistributedDataParallel in a process group, ``net`` itself otherwise.

    static_graph: ASA's alpha, beta and fc never get a gradient (docs/reference.md, dead
    parameters); DDP then leaves their .grad None, exactly as a single process does. Buffers are
    rank 0's at every training forward."""
    if not context.active:
        return net
    import inspect
    from torch.nn.parallel import DistributedDataParallel as DDP
    sync = ({"forward_sync_buffers": True} if "forward_sync_buffers" in inspect.signature(DDP).parameters
            else {"broadcast_buffers": True})
    return DDP(net, device_ids=[device.index] if device.type == "cuda" else None, static_graph=True, **sync)


def batch_norm_plan(net: torch.nn.Module, device: torch.device, context: Dist, sync_bn: bool, say) -> torch.nn.Module:
    """SyncBatchNorm over the global batch with several CUDA processes (-sync_bn); otherwise say
    how BatchNorm normalises. Returns the network to train."""
    if not context.active or context.world_size == 1:
        return net
    if device.type == "cuda" and sync_bn:
        say("BatchNorm: SyncBatchNorm (statistics over the global batch)")
        return torch.nn.SyncBatchNorm.convert_sync_batchnorm(net)
    why = "-sync_bn false" if device.type == "cuda" else "PyTorch has no SyncBatchNorm on CPU"
    say(f"BatchNorm: each process normalises with its own part of the batch ({why}); running "
        f"statistics are rank 0's")
    return net


def split_sizes(n: int, parts: int) -> list[int]:
    """n items in ``parts`` near-equal contiguous parts (the first n % parts one larger)."""
    q, r = divmod(n, parts)
    return [q + (1 if i < r else 0) for i in range(parts)]
