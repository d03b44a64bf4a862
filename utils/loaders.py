"""DataLoaders whose order depends only on (seed, epoch): reproducible and resumable."""
from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Sampler


class EpochShuffle(Sampler):
    """A random permutation per epoch drawn from a generator seeded with (seed, epoch)."""

    def __init__(self, n: int, seed: int):
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int):
        self.epoch = epoch

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 100003 + self.epoch)
        return iter(torch.randperm(self.n, generator=g).tolist())

    def __len__(self):
        return self.n


def make_loaders(args, train_set, test_set, device: torch.device):
    pin = device.type == "cuda"
    common = dict(num_workers=args.num_work, pin_memory=pin,
                  persistent_workers=False, prefetch_factor=2 if args.num_work > 0 else None)
    train_sampler = EpochShuffle(len(train_set), args.seed)
    train = DataLoader(train_set, batch_size=args.batch_size_train, sampler=train_sampler,
                       drop_last=False, **common)
    test = DataLoader(test_set, batch_size=args.batch_size_test, shuffle=False, **common)
    return train, test, train_sampler
