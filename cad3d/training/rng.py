"""Random state of a training run: seeding, and every RNG state (python, numpy, torch, CUDA, the
step generator) as tensors and plain values, so checkpoints stay ``weights_only``-loadable and a
resumed run draws exactly what an uninterrupted one would."""

from __future__ import annotations

import logging
import random
from typing import Any, Mapping

import numpy as np
import torch

logger = logging.getLogger(__name__)


def seed_worker(worker_id: int) -> None:
    """DataLoader worker_init_fn: python/numpy seeds from the worker's torch seed, which the
    loader derives from its (per-epoch reseeded) generator — so the same for any resume."""
    s = torch.initial_seed() % 2**32
    random.seed(s)
    np.random.seed(s)


def loader_seed(seed: int, epoch: int, rank: int) -> int:
    return ((seed + 1) * 1_000_003 + epoch * 10_007 + rank) % 2**63


def capture_rng(generator: torch.Generator) -> dict:
    version, internal, gauss = random.getstate()
    np_state = np.random.get_state(legacy=False)
    return {
        "python": [version, list(internal), gauss],
        "numpy": {
            "bit_generator": np_state["bit_generator"],
            "key": [int(x) for x in np_state["state"]["key"]],
            "pos": int(np_state["state"]["pos"]),
            "has_gauss": int(np_state["has_gauss"]),
            "gauss": float(np_state["gauss"]),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else [],
        "step_generator": generator.get_state(),
    }


def restore_rng(state: Mapping[str, Any], generator: torch.Generator) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state(
        {
            "bit_generator": n["bit_generator"],
            "state": {"key": np.asarray(n["key"], dtype=np.uint32), "pos": n["pos"]},
            "has_gauss": n["has_gauss"],
            "gauss": n["gauss"],
        }
    )
    torch.set_rng_state(state["torch"])
    cuda = list(state.get("cuda") or [])
    if cuda and torch.cuda.is_available():
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
        else:
            logger.warning("checkpoint has CUDA RNG states of %d devices, this machine %d: not restored", len(cuda), torch.cuda.device_count())
    generator.set_state(state["step_generator"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
