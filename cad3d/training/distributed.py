"""Distributed helpers: process group set-up from torchrun's environment and small collectives.

A plain `python -m cad3d train ...` is a world of one: every helper here is then a no-op, so the
engine has one code path. Under `torchrun --nproc-per-node G -m cad3d train ...` the process group
is created from the environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``...):
NCCL when training on CUDA, gloo on CPU.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any, Callable, Optional, TypeVar

import torch
import torch.distributed as dist

from cad3d.errors import Cad3dError

T = TypeVar("T")

logger = logging.getLogger(__name__)


class RankFailed(Cad3dError):
    """Another rank failed at a point where all ranks must agree; this rank stops cleanly too."""


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in the job."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    created_group: bool = False  # True when `init_distributed` created it (and must destroy it)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def env_world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def init_distributed(device_type: str) -> DistInfo:
    """Join the torchrun job described by the environment, if any.

    ``device_type`` is "cuda" or "cpu" and picks the backend (nccl / gloo). An already initialised
    process group is used as it is (and left for its creator to destroy).
    """
    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), int(os.environ.get("LOCAL_RANK", "0")), dist.get_world_size(), False)
    world_size = env_world_size()
    if world_size <= 1:
        return DistInfo()
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    backend = "nccl" if device_type == "cuda" else "gloo"
    if device_type == "cuda":
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend=backend, init_method="env://")
    logger.info("joined process group: rank %d of %d (%s)", rank, world_size, backend)
    return DistInfo(rank, local_rank, world_size, True)


def destroy_distributed(info: DistInfo) -> None:
    if info.created_group and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.distributed:
        dist.barrier()


def all_reduce_sum(tensor: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Sum ``tensor`` over ranks, in place; returns it."""
    if info.distributed:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def any_rank(flag: bool, info: DistInfo, device: torch.device) -> bool:
    """True on every rank if ``flag`` is true on any rank (so all ranks stop at the same step)."""
    if not info.distributed:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def gather_objects(obj: Any, info: DistInfo) -> list[Any]:
    """Every rank's ``obj``, in rank order (a list of one in a world of one)."""
    if not info.distributed:
        return [obj]
    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, info: DistInfo, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank (``obj`` itself in a world of one)."""
    if not info.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def on_main(fn: Callable[[], T], info: DistInfo, what: str) -> T:
    """Run ``fn`` on rank 0 only and give every rank its result (a collective: it also waits for
    rank 0, like a barrier). If it fails, rank 0 raises its error and the other ranks raise
    `RankFailed` naming it: all stop at once instead of waiting in the next collective."""
    result: Any = None
    error: Optional[BaseException] = None
    if info.is_main:
        try:
            result = fn()
        except Exception as exc:  # noqa: BLE001 - re-raised below, after the other ranks know
            error = exc
    outcome = broadcast_object((None, result) if error is None else (f"{type(error).__name__}: {error}", None), info)
    if error is not None:
        raise error
    if outcome[0] is not None:
        raise RankFailed(f"rank 0 failed {what}: {outcome[0]}")
    return outcome[1]


def on_all(fn: Callable[[], T], info: DistInfo, what: str) -> T:
    """Run ``fn`` on every rank; if it fails on any, every rank raises (its own error, or
    `RankFailed` naming the first rank that failed and why)."""
    result: Any = None
    error: Optional[BaseException] = None
    try:
        result = fn()
    except Exception as exc:  # noqa: BLE001 - re-raised below, after the other ranks know
        error = exc
    failures = gather_objects(None if error is None else f"{type(error).__name__}: {error}", info)
    if error is not None:
        raise error
    for rank, failure in enumerate(failures):
        if failure is not None:
            raise RankFailed(f"rank {rank} failed {what}: {failure}")
    return result
