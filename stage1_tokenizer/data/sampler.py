"""A resumable shuffling sampler: epoch e's order depends only on (seed, e)."""

from __future__ import annotations

from typing import Iterator

import torch
from torch.utils.data import Sampler


class EpochShuffleSampler(Sampler[int]):
    """Shuffles ``n`` indices with a generator seeded by ``seed + epoch``.

    Call ``set_epoch(e)`` before iterating; together with skipping the batches a
    run already consumed, a resumed run sees exactly the batches an
    uninterrupted one would.
    """

    def __init__(self, n: int, seed: int):
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(torch.randperm(self.n, generator=g).tolist())
