"""DataLoaders whose order depends only on (seed, epoch): reproducible, resumable, shardable.

Training: one permutation per epoch from a generator seeded with (seed, epoch); consecutive
slices of ``-batch_size_train`` indices are the global batches (the last one may be smaller: no
sample is dropped or repeated). With several processes each global batch is split into
near-equal contiguous parts, part r going to rank r, so the ranks see disjoint samples and the
union of a step over the ranks is exactly the batch a single process sees. When the last global
batch has fewer samples than there are ranks, a rank left without a sample receives one sample of
that batch as a stand-in: it runs forward and backward with loss weight 0 (no gradient, not counted
in any metric) so that every rank takes part in the step's gradient all-reduce. Rank 0 always gets
the first part, so the stand-in never touches the BatchNorm running statistics that are kept (rank
0's); with SyncBatchNorm (CUDA) it does enter that one step's batch statistics.

Test: batches of ``-batch_size_test`` samples in dataset order, dealt round-robin (batch k to rank
k % world): every sample is evaluated once, in the same forward-pass group as in one process.
"""
from __future__ import annotations

import random
import shutil

import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler

from utils.errors import UserError
from utils.run.distributed import split_sizes
from utils.run.preempt import ignore_in_worker


def epoch_permutation(n: int, seed: int, epoch: int) -> list[int]:
    g = torch.Generator().manual_seed(seed * 100003 + epoch)
    return torch.randperm(n, generator=g).tolist()


class EpochShuffle(Sampler):
    """A random permutation per epoch drawn from a generator seeded with (seed, epoch)."""

    def __init__(self, n: int, seed: int):
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int):
        self.epoch = epoch

    def __iter__(self):
        return iter(epoch_permutation(self.n, self.seed, self.epoch))

    def __len__(self):
        return self.n


class ShardedBatchSampler(Sampler):
    """Global batches of an (seed, epoch) permutation, split over ``world`` ranks (see module doc).

    Yields this rank's index list per step; ``plan()`` gives, per step, (samples of this rank that
    count, samples of the global batch) for the loss weighting of utils/run/engine.py."""

    def __init__(self, n: int, batch_size: int, seed: int, rank: int = 0, world: int = 1):
        if n < 1:
            raise ValueError("ShardedBatchSampler needs at least one sample")
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.rank, self.world, self.epoch = rank, world, 0
        self.first_step, self.saved_order = 0, None

    def set_epoch(self, epoch: int, first_step: int = 0, order: list[int] | None = None):
        """Iterate epoch ``epoch`` from step ``first_step`` on (a run resumed inside the epoch),
        with ``order``, the epoch's sample order as the stopped run saved it (default: the
        (seed, epoch) permutation, which it equals)."""
        if order is not None and sorted(order) != list(range(self.n)):
            raise ValueError(f"a saved sample order is not a permutation of the {self.n} samples")
        if not 0 <= first_step <= self.steps_per_epoch:
            raise ValueError(f"step {first_step} is outside the epoch's {self.steps_per_epoch} steps")
        self.epoch, self.first_step, self.saved_order = epoch, first_step, order

    def order(self) -> list[int]:
        """The epoch's sample order (global; every rank's batches are slices of it)."""
        return list(self.saved_order) if self.saved_order is not None else \
            epoch_permutation(self.n, self.seed, self.epoch)

    def _steps(self):
        order = self.order()
        for s in range(0, self.n, self.batch_size):
            batch = order[s:s + self.batch_size]
            sizes = split_sizes(len(batch), self.world)
            start = sum(sizes[:self.rank])
            mine = batch[start:start + sizes[self.rank]]
            yield (mine if mine else batch[:1]), len(mine), len(batch)

    def __iter__(self):
        """This rank's index lists from step ``first_step`` on."""
        return (idx for k, (idx, _, _) in enumerate(self._steps()) if k >= self.first_step)

    def plan(self) -> list[tuple[int, int]]:
        """[(counted samples on this rank, global batch size)] for every step of the epoch (all of
        them, indexed by the step, also when the epoch starts at a later step)."""
        return [(real, glob) for _, real, glob in self._steps()]

    @property
    def steps_per_epoch(self) -> int:
        return -(-self.n // self.batch_size)

    def __len__(self):
        """The steps still to come in this epoch (all of them unless resumed inside it)."""
        return self.steps_per_epoch - self.first_step


class ShardedTestBatches(Sampler):
    """Test batches in dataset order, batch k to rank k % world."""

    def __init__(self, n: int, batch_size: int, rank: int = 0, world: int = 1):
        self.n, self.batch_size, self.rank, self.world = n, batch_size, rank, world

    def __iter__(self):
        starts = range(0, self.n, self.batch_size)
        for k, s in enumerate(starts):
            if k % self.world == self.rank:
                yield list(range(s, min(s + self.batch_size, self.n)))

    def __len__(self):
        batches = -(-self.n // self.batch_size)
        return len(range(self.rank, batches, self.world))

    def rounds(self) -> int:
        """How many test batches every rank has (the ranks may take part in a collective that often)."""
        return -(-self.n // self.batch_size) // self.world


def _seed_worker(worker_id: int):
    """Workers get python/numpy seeds derived from torch's per-worker seed (itself from the
    loader's base seed, drawn from the seeded global generator). The datasets draw their own
    randomness from (seed, epoch, index), so this only guards third-party transforms, and a run
    resumed inside an epoch (whose workers get other seeds) gets the same samples. Workers leave
    the stop signals to the main process (utils/run/preempt.py)."""
    ignore_in_worker()
    s = torch.initial_seed() % 2**32
    random.seed(s)
    np.random.seed(s)


def make_loaders(args, train_set, test_set, device: torch.device, rank: int = 0, world: int = 1):
    """(train loader, test loader, train batch sampler). With world = 1 the batches are those of
    DataLoader(sampler=EpochShuffle, batch_size=B, drop_last=False)."""
    pin = device.type == "cuda"
    common = dict(num_workers=args.num_work, pin_memory=pin, worker_init_fn=_seed_worker,
                  persistent_workers=False, prefetch_factor=2 if args.num_work > 0 else None)
    train_sampler = ShardedBatchSampler(len(train_set), args.batch_size_train, args.seed, rank, world)
    train = DataLoader(train_set, batch_sampler=train_sampler, **common)
    test = DataLoader(test_set, batch_sampler=ShardedTestBatches(len(test_set), args.batch_size_test, rank, world),
                      **common)
    return train, test, train_sampler


def batch_plan_text(args, world: int) -> str:
    """One line for the run log: what a training step and a test forward pass hold."""
    if world == 1:
        return (f"batch: train {args.batch_size_train} samples; test forward pass {args.batch_size_test} "
                f"samples x {args.clip} clips")
    sizes = split_sizes(args.batch_size_train, world)
    per = str(sizes[0]) if min(sizes) == max(sizes) else f"{min(sizes)}-{max(sizes)}"
    return (f"batch: global train batch {args.batch_size_train} = {world} process(es) x {per} per process; "
            f"test forward pass {args.batch_size_test} samples x {args.clip} clips, test batches dealt "
            f"round-robin to the processes")


# What torch says when its workers cannot put a batch into shared memory: a RuntimeError re-raised
# from the worker ("unable to allocate shared memory(shm) for file </torch_...>: No space left on
# device (28)"; older versions "unable to write to file </torch_...>"), or, when the kernel only
# finds out on first touch, the worker killed by SIGBUS ("... is killed by signal: Bus error. It is
# possible that dataloader's workers are out of shared memory ...").
_SHM_FAILURES = ("unable to allocate shared memory", "unable to write to file </torch_",
                 "unable to open shared memory object", "out of shared memory")
SHM_DIR = "/dev/shm"


def shared_memory_error(e: BaseException) -> UserError | None:
    """A UserError naming the way out when ``e`` is torch's report of DataLoader workers running
    out of shared memory; None for any other error. The chain is searched: torch's SIGCHLD
    handler raises the bus error while the main process waits for the batch, and the wait then
    raises "worker exited unexpectedly" on top of it."""
    chain = []
    while e is not None and e not in chain:
        chain.append(e)
        e = e.__cause__ or e.__context__
    if not any(sign in str(x) for x in chain for sign in _SHM_FAILURES):
        return None
    try:
        u = shutil.disk_usage(SHM_DIR)
        room = f" ({SHM_DIR}: {u.free / 2**20:.1f} MiB free of {u.total / 2**20:.1f} MiB)"
    except OSError:
        room = ""
    return UserError(f"-num_work: the DataLoader worker processes ran out of shared memory{room}, "
                     f"where they hand batches to the training process; pass -num_work 0 (no worker "
                     f"processes), or give {SHM_DIR} more room (docker run --shm-size=8g, or a larger "
                     f"tmpfs) and continue with -resume")
