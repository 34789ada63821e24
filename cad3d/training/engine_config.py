"""How the engine trains: `EngineConfig` and the engine's own error types."""

from __future__ import annotations

import dataclasses
import logging
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional

import torch

from cad3d.config import config_from_dict
from cad3d.errors import Cad3dError

logger = logging.getLogger(__name__)

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


class TrainingConfigError(Cad3dError, ValueError):
    """An `EngineConfig` (or CLI flag) that cannot work: names the field and the cause."""


class TrainingInterrupted(Cad3dError):
    """Training stopped by SIGTERM/SIGINT after saving a resumable checkpoint.

    ``path`` is the checkpoint written (None on non-writer ranks), ``signal_number`` the signal.
    The CLI exits with ``128 + signal_number`` (130 for SIGINT, 143 for SIGTERM).
    """

    def __init__(self, path: Optional[Path], signal_number: int, epoch: int, global_step: int):
        self.path = path
        self.signal_number = signal_number
        self.epoch = epoch
        self.global_step = global_step
        name = signal.Signals(signal_number).name
        where = f"saved {path}" if path else "checkpoint saved by rank 0"
        super().__init__(
            f"training interrupted by {name} in epoch {epoch} after step {global_step}; {where}; "
            "continue with --resume auto"
        )


@dataclass
class EngineConfig:
    """How to train (the model's own settings live in the task's config).

    ``batch_size`` is per process: under torchrun the global batch is ``batch_size * world_size``.
    ``grad_clip`` None or 0 disables clipping. ``resume``: None (fresh: ``out_dir`` must not hold
    checkpoints of this model yet, unless ``overwrite``), "auto" (newest valid checkpoint in
    ``out_dir``; fresh when it holds none of this model; an error listing why when it holds some
    but none can be resumed) or a checkpoint path. ``overwrite`` (fresh runs only): first delete
    ``out_dir``'s checkpoints, epoch log and report of this model. ``keep_last`` None keeps every
    epoch file.
    ``max_steps`` stops after that many optimizer steps in total (see the module doc).
    ``ema_decay`` keeps an exponential moving average of the weights (`cad3d.training.ema`;
    None or 0: none), saved in every checkpoint under ``ema_state`` and used for validation.
    """

    epochs: int = 10
    batch_size: int = 8
    lr: float = 1e-3
    weight_decay: float = 0.0
    grad_clip: Optional[float] = 1.0
    precision: str = "fp32"  # fp32 | bf16 | fp16
    device: str = "auto"  # auto | cpu | cuda
    compile: bool = False
    seed: int = 0
    num_workers: int = 0
    keep_last: Optional[int] = None
    resume: Optional[str] = None
    overwrite: bool = False
    out_dir: str = "trained_models"
    log_every: int = 10  # steps between loss updates of the bar / TensorBoard
    tensorboard: bool = False  # scalars under out_dir/tensorboard
    scheduler: str = "cosine"  # cosine | none (after warm-up)
    warmup_steps: int = 0
    min_lr_ratio: float = 0.0  # cosine floor, as a fraction of lr
    max_steps: Optional[int] = None
    shuffle: bool = True
    drop_last: bool = False
    progress: bool = True  # tqdm bars (rank 0 only)
    handle_signals: bool = True  # SIGTERM/SIGINT save `last` (main thread only)
    ema_decay: Optional[float] = None  # e.g. 0.999; None or 0 = no EMA

    def __post_init__(self) -> None:
        def need(ok: bool, what: str) -> None:
            if not ok:
                raise TrainingConfigError(f"invalid training config: {what}")

        need(self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}")
        need(self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}")
        need(self.lr > 0, f"lr must be > 0, got {self.lr}")
        need(self.precision in PRECISIONS, f"precision must be one of {sorted(PRECISIONS)}, got {self.precision!r}")
        need(self.device in ("auto", "cpu", "cuda"), f"device must be auto, cpu or cuda, got {self.device!r}")
        need(self.num_workers >= 0, f"num_workers must be >= 0, got {self.num_workers}")
        need(self.keep_last is None or self.keep_last >= 0, f"keep_last must be >= 0, got {self.keep_last}")
        need(self.scheduler in ("cosine", "none"), f"scheduler must be cosine or none, got {self.scheduler!r}")
        need(self.warmup_steps >= 0, f"warmup_steps must be >= 0, got {self.warmup_steps}")
        need(self.max_steps is None or self.max_steps >= 1, f"max_steps must be >= 1, got {self.max_steps}")
        need(self.log_every >= 1, f"log_every must be >= 1, got {self.log_every}")
        need(self.ema_decay is None or 0.0 <= self.ema_decay < 1.0, f"ema_decay must be in [0, 1), got {self.ema_decay}")
        need(not (self.overwrite and self.resume), f"overwrite (start fresh) contradicts resume={self.resume!r}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "EngineConfig":
        return config_from_dict(cls, d)
