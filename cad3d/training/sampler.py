"""A resumable, distributed sampler: the data order is a pure function of (seed, epoch, rank).

Like `torch.utils.data.DistributedSampler` (same permutation, same padding, same sharding), plus
a start position so a run resumed in the middle of an epoch skips the batches it has already
trained on without loading them.
"""

from __future__ import annotations

from typing import Iterator

import torch
from torch.utils.data import Sampler


class ResumableSampler(Sampler[int]):
    """Indices of one rank's shard of a seeded per-epoch permutation.

    Args:
        length: number of samples in the dataset.
        seed: base seed; epoch ``e`` shuffles with ``seed + e`` (as DistributedSampler does).
        rank, world_size: this process's shard; every rank sees ``ceil(length / world_size)``
            samples (the permutation is padded by repeating its head, as DistributedSampler does).
        shuffle: False keeps dataset order (still sharded).

    Call ``set_epoch(e)`` before each epoch and ``set_start(n)`` to skip the first ``n`` samples of
    this rank's shard (mid-epoch resume); ``set_epoch`` resets the start to 0.
    """

    def __init__(self, length: int, *, seed: int = 0, rank: int = 0, world_size: int = 1, shuffle: bool = True):
        if length <= 0:
            raise ValueError("ResumableSampler needs a non-empty dataset")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world size {world_size}")
        self.length = length
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.shuffle = shuffle
        self.epoch = 0
        self.start = 0
        self.num_samples = -(-length // world_size)  # per rank, padded

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.start = 0

    def set_start(self, start: int) -> None:
        if not 0 <= start <= self.num_samples:
            raise ValueError(f"start {start} outside this rank's {self.num_samples} samples")
        self.start = start

    def shard(self) -> list[int]:
        """This rank's full shard for the current epoch (ignores the start)."""
        if self.shuffle:
            g = torch.Generator()
            g.manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.length, generator=g).tolist()
        else:
            order = list(range(self.length))
        total = self.num_samples * self.world_size
        while len(order) < total:  # pad by repeating the head
            order += order[: total - len(order)]
        return order[self.rank : total : self.world_size]

    def __iter__(self) -> Iterator[int]:
        return iter(self.shard()[self.start :])

    def __len__(self) -> int:
        return self.num_samples - self.start
