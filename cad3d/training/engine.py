"""The training engine: one loop for every model (a `TrainTask` adds the model, loss and metrics).

    engine = Engine(task, train_dataset, val_dataset, EngineConfig(epochs=10, out_dir="trained_models/vae"))
    report = engine.fit()

The engine owns: epochs and steps, AdamW (or the task's optimizer) with a per-step LR schedule
(linear warm-up, then cosine or constant), gradient clipping, bf16/fp16 autocast (GradScaler for
fp16), optional torch.compile, seeding, tqdm bars (rank 0), the JSON epoch log (atomic, every
epoch), optional TensorBoard scalars, the final report, checkpoints through `CheckpointManager`,
exact resume, SIGTERM/SIGINT handling and DDP under torchrun.

Reproducibility. Model initialisation uses ``seed``; then every rank seeds python, numpy and torch
with ``seed + rank``. A task's step randomness comes from ``StepContext.generator`` (seeded the
same way); the data order is `ResumableSampler`'s permutation of (seed, epoch); DataLoader workers
get seeds derived from (seed, epoch, rank). A checkpoint stores all of these states (as tensors
and plain values), the position in the epoch and the epoch's running sums, so a CPU run that is
interrupted and resumed — at an epoch boundary or mid-epoch — ends bit-identical to one that was
not.

Interruption. SIGTERM/SIGINT set a flag; after the current step the engine saves ``last``
(``epoch_complete`` False) and `fit` raises `TrainingInterrupted` naming the file (a second signal
stops at once with KeyboardInterrupt). ``max_steps`` stops the same way but `fit` returns the
report: mid-epoch it saves ``last``; when the limit falls on an epoch's last step the epoch is
finished first (validation, log, epoch checkpoints).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import random
import signal
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from cad3d.devices import resolve_device
from cad3d.errors import Cad3dError, CheckpointError
from cad3d.training import distributed as D
from cad3d.training.checkpoint import (
    CheckpointManager,
    META_KEY,
    RESUME_KEY,
    atomic_write_json,
    build_metadata,
    load_checkpoint,
    load_state_dict_strict,
)
from cad3d.training.sampler import ResumableSampler
from cad3d.training.task import StepContext, TrainTask

logger = logging.getLogger(__name__)

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
RESUME_FORMAT = 1


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
    ``out_dir``, else fresh) or a checkpoint path. ``overwrite`` (fresh runs only): first delete
    ``out_dir``'s checkpoints, epoch log and report of this model. ``keep_last`` None keeps every
    epoch file.
    ``max_steps`` stops after that many optimizer steps in total (see the module doc).
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
        need(not (self.overwrite and self.resume), f"overwrite (start fresh) contradicts resume={self.resume!r}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "EngineConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def _seed_worker(worker_id: int) -> None:
    """DataLoader worker_init_fn: python/numpy seeds from the worker's torch seed, which the
    loader derives from its (per-epoch reseeded) generator — so the same for any resume."""
    s = torch.initial_seed() % 2**32
    random.seed(s)
    np.random.seed(s)


def _loader_seed(seed: int, epoch: int, rank: int) -> int:
    return ((seed + 1) * 1_000_003 + epoch * 10_007 + rank) % 2**63


# -- RNG states as tensors and plain values (weights_only-loadable) ---------------------------
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


def make_grad_scaler(device: torch.device, precision: str):
    """GradScaler, enabled for fp16 only. On a torch without a GradScaler for this device, a
    disabled one (bf16/fp32 need none; fp16 then trains unscaled, with a warning)."""
    enabled = precision == "fp16"
    try:
        return torch.amp.GradScaler(device.type, enabled=enabled)
    except (AttributeError, RuntimeError, TypeError, ValueError) as exc:
        if enabled:
            logger.warning("no GradScaler for %s on torch %s (%s): fp16 trains without loss scaling", device.type, torch.__version__, exc)
        return torch.amp.GradScaler("cuda", enabled=False)


class _EpochSums:
    """Sample-weighted running sums of the train loss and its parts (on the device, float64)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.loss = torch.zeros((), dtype=torch.float64, device=device)
        self.count = torch.zeros((), dtype=torch.float64, device=device)
        self.parts: dict[str, torch.Tensor] = {}

    def add(self, loss: torch.Tensor, parts: Mapping[str, Any], n: int) -> None:
        self.loss += loss.detach().to(torch.float64) * n
        self.count += n
        for k, v in parts.items():
            v = v.detach().to(torch.float64) if isinstance(v, torch.Tensor) else torch.tensor(float(v), dtype=torch.float64)
            self.parts[k] = self.parts.get(k, torch.zeros((), dtype=torch.float64, device=self.device)) + v.to(self.device) * n

    def state(self) -> dict:
        return {"loss": self.loss.cpu(), "count": self.count.cpu(), "parts": {k: v.cpu() for k, v in self.parts.items()}}

    def load(self, state: Mapping[str, Any]) -> None:
        self.loss = state["loss"].to(self.device)
        self.count = state["count"].to(self.device)
        self.parts = {k: v.to(self.device) for k, v in state["parts"].items()}

    def means(self, info: D.DistInfo) -> tuple[float, dict[str, float]]:
        """(mean loss, mean parts) over all ranks."""
        names = sorted(self.parts)
        flat = torch.stack([self.loss, self.count] + [self.parts[k] for k in names])
        D.all_reduce_sum(flat, info)
        count = max(float(flat[1]), 1.0)
        values = flat.tolist()
        return values[0] / count, {k: values[2 + i] / count for i, k in enumerate(names)}


@dataclass
class _Progress:
    """Where training is: ``epoch`` is the epoch in progress or next to start (1-based)."""

    epoch: int = 1
    batch_in_epoch: int = 0
    global_step: int = 0
    best_metric: Optional[float] = None
    elapsed: float = 0.0  # training seconds over all runs of this training
    epoch_elapsed: float = 0.0  # seconds spent in the current epoch before this run
    epoch_log: list = dataclasses.field(default_factory=list)
    loss_history: list = dataclasses.field(default_factory=list)


class Engine:
    """Trains ``task`` on ``train_dataset`` (validated on ``val_dataset`` each epoch, if given)."""

    def __init__(self, task: TrainTask, train_dataset, val_dataset=None, config: Optional[EngineConfig] = None):
        self.task = task
        self.train_dataset = train_dataset
        self.val_dataset = val_dataset
        self.config = config if config is not None else EngineConfig()
        self.out_dir = Path(self.config.out_dir)
        self._stop_signal: Optional[int] = None
        self._previous_handlers: dict[int, Any] = {}

    # -- public ---------------------------------------------------------------------------
    def fit(self) -> dict:
        """Train to ``config.epochs`` (or ``max_steps``); returns the training report.

        Raises `TrainingInterrupted` after SIGTERM/SIGINT (a resumable ``last`` is saved)."""
        cfg = self.config
        device_type = resolve_device(cfg.device).type
        self.dist = D.init_distributed(device_type)
        try:
            self.device = resolve_device(cfg.device, local_rank=self.dist.local_rank)
            self._install_signal_handlers()
            try:
                return self._fit()
            finally:
                self._restore_signal_handlers()
                if getattr(self, "_tb", None) is not None:
                    self._tb.close()
        finally:
            D.destroy_distributed(self.dist)

    # -- set-up ---------------------------------------------------------------------------
    def _setup(self) -> None:
        cfg, task, info = self.config, self.task, self.dist
        if len(self.train_dataset) == 0:
            raise TrainingConfigError("the training set is empty")
        seed_everything(cfg.seed)  # same initial weights on every rank (and as a 1-process run)
        self.modules: dict[str, nn.Module] = {k: m.to(self.device) for k, m in task.build_modules().items()}
        unknown = set(self.modules) - set(task.schema.module_keys)
        if unknown:
            raise TrainingConfigError(f"task {task.name!r} builds modules {sorted(unknown)} that schema.module_keys does not name")
        self.optimizer = task.configure_optimizer(self.modules, cfg.lr, cfg.weight_decay)

        self.sampler = ResumableSampler(len(self.train_dataset), seed=cfg.seed, rank=info.rank, world_size=info.world_size, shuffle=cfg.shuffle)
        per_rank = self.sampler.num_samples
        self.steps_per_epoch = per_rank // cfg.batch_size if cfg.drop_last else -(-per_rank // cfg.batch_size)
        if self.steps_per_epoch == 0:
            raise TrainingConfigError(f"{per_rank} training samples per process give no full batch of {cfg.batch_size} (drop_last)")
        self.total_steps = cfg.epochs * self.steps_per_epoch
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self._lr_factor)
        self.scaler = make_grad_scaler(self.device, cfg.precision)
        self.generator = torch.Generator(device=self.device)
        self.manager = CheckpointManager(self.out_dir, task.schema, keep_last=cfg.keep_last, is_writer=info.is_main)
        if not cfg.resume:
            self._prepare_fresh_out_dir()  # before anything is written to out_dir
        self.loader = self._loader(self.train_dataset, self.sampler, cfg.drop_last)
        self.val_loader = None
        if self.val_dataset is not None and len(self.val_dataset) > 0:
            val_sampler = ResumableSampler(len(self.val_dataset), rank=info.rank, world_size=info.world_size, shuffle=False)
            self.val_loader = self._loader(self.val_dataset, val_sampler, False)
        self._tb = None
        if cfg.tensorboard and info.is_main:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as exc:
                raise TrainingConfigError(f"tensorboard=True needs the tensorboard package (pip install tensorboard): {exc}") from None
            self._tb = SummaryWriter(log_dir=str(self.out_dir / "tensorboard"))

    def _loader(self, dataset, sampler: ResumableSampler, drop_last: bool) -> DataLoader:
        cfg = self.config
        return DataLoader(
            dataset,
            batch_size=cfg.batch_size,
            sampler=sampler,
            num_workers=cfg.num_workers,
            collate_fn=self.task.collate,
            drop_last=drop_last,
            pin_memory=self.device.type == "cuda",
            worker_init_fn=_seed_worker,
            generator=torch.Generator(),  # reseeded per epoch: worker seeds independent of resume
        )

    def _lr_factor(self, step: int) -> float:
        cfg = self.config
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        if cfg.scheduler == "none":
            return 1.0
        progress = min(1.0, (step - cfg.warmup_steps) / max(1, self.total_steps - cfg.warmup_steps))
        return cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    def _wrap(self) -> dict[str, nn.Module]:
        """The modules a training step calls: DDP-wrapped (if distributed and trainable), then
        compiled (if asked). Checkpoints always use the plain modules."""
        wrapped = {}
        for name, m in self.modules.items():
            w: nn.Module = m
            if self.dist.distributed and any(p.requires_grad for p in m.parameters()):
                ids = [self.device.index] if self.device.type == "cuda" else None
                w = nn.parallel.DistributedDataParallel(m, device_ids=ids)
            if self.config.compile:
                w = torch.compile(w)
            wrapped[name] = w
        return wrapped

    # -- fresh start and resume -------------------------------------------------------------
    def _prepare_fresh_out_dir(self) -> None:
        """A fresh run must not mix with an earlier one in ``out_dir``: checkpoints of this model
        there are an error, or deleted first with ``overwrite`` (with the epoch log, the report and
        the manifest's best). Rank 0 deletes; every rank waits for it."""
        cfg, info, task = self.config, self.dist, self.task
        existing = self.manager.existing_files()
        if D.any_rank(bool(existing) and not cfg.overwrite, info, self.device):
            newest = f"; newest: {existing[-1].name}" if existing else ""
            raise TrainingConfigError(
                f"{self.out_dir} already holds {len(existing) or 'some'} checkpoint file(s) of {task.name}{newest}. "
                "Continue that run with --resume auto (resume='auto'), choose another --out, or pass --overwrite "
                "(overwrite=True) to delete them and start fresh"
            )
        if info.is_main:
            removed = self.manager.clear()
            if existing:
                logger.warning("overwrite: deleted %d earlier file(s) of %s in %s", len(removed), task.name, self.out_dir)
        D.barrier(info)

    def _resume_path(self) -> Optional[Path]:
        resume = self.config.resume
        if not resume:
            return None
        if resume == "auto":
            path = self.manager.find_resume()
            if path is None:
                logger.info("no checkpoint to resume in %s: starting fresh", self.out_dir)
            return path
        path = Path(resume)
        if not path.is_file():
            raise TrainingConfigError(f"resume checkpoint {path} does not exist")
        return path

    def _restore(self, path: Path, progress: _Progress, sums: _EpochSums) -> None:
        task, schema, cfg = self.task, self.task.schema, self.config
        payload = load_checkpoint(path, map_location="cpu", expected_task=task.name)
        for name, module in self.modules.items():
            key = schema.module_keys[name]
            load_state_dict_strict(module, payload.get(key), path=path, key=key)
        try:
            self.optimizer.load_state_dict(payload[schema.optimizer_key])
            if payload.get(schema.scheduler_key) is not None:
                self.scheduler.load_state_dict(payload[schema.scheduler_key])
        except (KeyError, ValueError) as exc:
            raise CheckpointError(f"{path}: optimizer/scheduler state ({schema.optimizer_key!r}, {schema.scheduler_key!r}) does not fit this run: {exc}") from None
        task.load_checkpoint_extras(payload)
        state = payload.get(RESUME_KEY)
        if state is None:  # a weights-and-optimizer file of another trainer: continue after it
            progress.epoch = int(payload.get(schema.epoch_key, 0)) + 1
            progress.global_step = int(payload.get(schema.step_key, 0) or 0)
            logger.warning("%s has no resume state: continuing from epoch %d with fresh RNG and data order", path, progress.epoch)
            return
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        progress.epoch = state["epoch"]
        progress.batch_in_epoch = state["batch_in_epoch"]
        progress.global_step = state["global_step"]
        progress.best_metric = state["best_metric"]
        progress.elapsed = state["elapsed"]
        progress.epoch_elapsed = state["epoch_elapsed"]
        progress.epoch_log = list(state["epoch_log"])
        progress.loss_history = list(state["loss_history"])
        self._warn_if_epochs_changed(path, payload, progress)
        data = state["data"]
        if (data["batch_size"], data["world_size"], data["seed"]) != (cfg.batch_size, self.dist.world_size, cfg.seed):
            logger.warning(
                "resuming with batch size/world size/seed %s instead of %s: the data order and RNG streams differ from the interrupted run",
                (cfg.batch_size, self.dist.world_size, cfg.seed),
                (data["batch_size"], data["world_size"], data["seed"]),
            )
            if progress.batch_in_epoch * cfg.batch_size > self.sampler.num_samples:
                progress.batch_in_epoch = self.steps_per_epoch
        ranks = state["ranks"]
        if len(ranks) == self.dist.world_size:
            mine = ranks[self.dist.rank]
            restore_rng(mine["rng"], self.generator)
            sums.load(mine["sums"])
        else:
            seed_everything(cfg.seed + progress.global_step + self.dist.rank)
            self.generator.manual_seed(cfg.seed + progress.global_step + self.dist.rank)
        logger.info("resumed from %s: epoch %d, batch %d, step %d", path, progress.epoch, progress.batch_in_epoch, progress.global_step)

    def _warn_if_epochs_changed(self, path: Path, payload: Mapping[str, Any], progress: _Progress) -> None:
        """Resuming with another ``epochs`` than the checkpoint's run: say what that does."""
        if not self.dist.is_main:
            return
        meta = payload.get(META_KEY) or {}
        engine = (meta.get("config") or {}).get("engine") or {}
        before, now = engine.get("epochs"), self.config.epochs
        if not isinstance(before, int) or before == now:
            return
        done = progress.epoch - 1  # complete epochs
        logger.warning(
            "%s was saved by a run of %d epochs; resuming with epochs=%d: the LR schedule is rebuilt for the new "
            "total of %d epochs (%d steps)", path, before, now, now, self.total_steps,
        )
        if progress.epoch > now:  # the loop will not run
            partial = f" and part of epoch {progress.epoch}" if progress.batch_in_epoch > 0 else ""
            logger.warning("%s already has %d complete epoch(s)%s; epochs=%d asks for no more: nothing to train",
                           path, done, partial, now)

    # -- checkpoints ----------------------------------------------------------------------
    def _payload(self, progress: _Progress, sums: _EpochSums, *, epoch: int, complete: bool, metrics: Mapping[str, float]) -> dict:
        """The checkpoint dict (all ranks take part: per-rank RNG states are gathered)."""
        task, schema, cfg = self.task, self.task.schema, self.config
        rank_state = {"rng": capture_rng(self.generator), "sums": sums.state()}
        ranks = D.gather_objects(rank_state, self.dist)
        engine_values = {
            "loss_history": list(progress.loss_history),
            "best_metric": progress.best_metric,
            "task_config": task.config_dict(),
            "engine_config": cfg.to_dict(),
        }
        payload: dict[str, Any] = {schema.epoch_key: epoch, schema.step_key: progress.global_step}
        for name, module in self.modules.items():
            payload[schema.module_keys[name]] = module.state_dict()
        payload[schema.optimizer_key] = self.optimizer.state_dict()
        payload[schema.scheduler_key] = self.scheduler.state_dict()
        for key, source in schema.engine_keys.items():
            payload[key] = engine_values[source] if source in engine_values else metrics.get(source)
        payload.update(task.checkpoint_extras())
        payload[META_KEY] = build_metadata(
            task=task.name,
            epoch=epoch,
            global_step=progress.global_step,
            epoch_complete=complete,
            metrics=dict(metrics),
            device=self.device.type,
            precision=cfg.precision,
            world_size=self.dist.world_size,
            seed=cfg.seed,
            config={"task": task.config_dict(), "engine": cfg.to_dict()},
        )
        payload[RESUME_KEY] = {
            "format": RESUME_FORMAT,
            "epoch": progress.epoch,
            "batch_in_epoch": progress.batch_in_epoch,
            "global_step": progress.global_step,
            "best_metric": progress.best_metric,
            "elapsed": progress.elapsed,
            "epoch_elapsed": progress.epoch_elapsed,
            "epoch_log": list(progress.epoch_log),
            "loss_history": list(progress.loss_history),
            "scaler": self.scaler.state_dict(),
            "data": {
                "seed": cfg.seed,
                "epoch": progress.epoch,
                "start": progress.batch_in_epoch * cfg.batch_size,
                "batch_size": cfg.batch_size,
                "world_size": self.dist.world_size,
            },
            "ranks": ranks,
        }
        return payload

    # -- the loop -------------------------------------------------------------------------
    def _fit(self) -> dict:
        cfg, task, info = self.config, self.task, self.dist
        self._setup()
        progress = _Progress()
        sums = _EpochSums(self.device)
        resume_path = self._resume_path()
        if resume_path is not None:
            self._restore(resume_path, progress, sums)
        else:
            seed_everything(cfg.seed + info.rank)
            self.generator.manual_seed(cfg.seed + info.rank)
        modules = self._wrap()
        autocast_dtype = PRECISIONS[cfg.precision]
        params = [p for group in self.optimizer.param_groups for p in group["params"]]
        self._last_tick = time.time()
        if info.is_main:
            logger.info(
                "training %s on %s (%s, world size %d): epochs %d, %d steps/epoch, batch %d/process",
                task.name, self.device, cfg.precision, info.world_size, cfg.epochs, self.steps_per_epoch, cfg.batch_size,
            )

        completed = False
        at_limit = cfg.max_steps is not None and progress.global_step >= cfg.max_steps
        if at_limit:
            logger.info("max_steps=%d already reached at step %d: nothing to train", cfg.max_steps, progress.global_step)
        while progress.epoch <= cfg.epochs and not at_limit:
            epoch = progress.epoch
            epoch_start = time.time() - progress.epoch_elapsed
            task.on_epoch_start(epoch, cfg.epochs)
            if hasattr(self.train_dataset, "set_epoch"):
                self.train_dataset.set_epoch(epoch)
            self.sampler.set_epoch(epoch)
            self.sampler.set_start(min(progress.batch_in_epoch * cfg.batch_size, self.sampler.num_samples))
            self.loader.generator.manual_seed(_loader_seed(cfg.seed, epoch, info.rank))
            for m in self.modules.values():
                m.train()
            bar = tqdm(
                total=self.steps_per_epoch,
                initial=progress.batch_in_epoch,
                desc=f"{task.name} epoch {epoch}/{cfg.epochs}",
                disable=not (cfg.progress and info.is_main),
                leave=False,
                dynamic_ncols=True,
            )
            stop = None
            batches = iter(self.loader) if progress.batch_in_epoch < self.steps_per_epoch else iter(())
            for batch in batches:
                ctx = StepContext(epoch, progress.global_step, self.device, self.generator, cfg.precision, info.world_size, info.rank)
                batch = task.to_device(batch, self.device)
                with torch.amp.autocast(device_type=self.device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
                    loss, parts = task.training_step(modules, batch, ctx)
                self.optimizer.zero_grad(set_to_none=True)
                self.scaler.scale(loss).backward()
                if cfg.grad_clip:
                    self.scaler.unscale_(self.optimizer)
                    nn.utils.clip_grad_norm_(params, cfg.grad_clip)
                self.scaler.step(self.optimizer)
                self.scaler.update()
                with warnings.catch_warnings():  # fp16: a step skipped for inf grads still counts
                    warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step", category=UserWarning)
                    self.scheduler.step()
                sums.add(loss, parts, task.batch_size_of(batch))
                progress.batch_in_epoch += 1
                progress.global_step += 1
                bar.update(1)
                if progress.global_step % cfg.log_every == 0 and info.is_main:
                    value = float(loss.detach())
                    bar.set_postfix(loss=f"{value:.4g}", lr=f"{self.scheduler.get_last_lr()[0]:.3g}")
                    if self._tb is not None:
                        self._tb.add_scalar("train/loss_step", value, progress.global_step)
                        self._tb.add_scalar("train/lr", self.scheduler.get_last_lr()[0], progress.global_step)
                stop = self._stop_reason(progress)
                if stop == "signal" or (stop == "max_steps" and progress.batch_in_epoch < self.steps_per_epoch):
                    break
            bar.close()
            if stop == "signal" or (stop == "max_steps" and progress.batch_in_epoch < self.steps_per_epoch):
                progress.epoch_elapsed = time.time() - epoch_start
                self._tick(progress)
                payload = self._payload(progress, sums, epoch=epoch, complete=False, metrics={})
                path = self.manager.save_last(payload, epoch=epoch, global_step=progress.global_step)
                D.barrier(info)
                if stop == "signal":
                    if info.is_main:
                        logger.warning("stopped by %s after step %d; saved %s", signal.Signals(self._stop_signal).name, progress.global_step, path)
                    raise TrainingInterrupted(path, self._stop_signal, epoch, progress.global_step)
                if info.is_main:
                    logger.info("reached max_steps=%d in epoch %d; saved %s", cfg.max_steps, epoch, path)
                break

            # -- epoch end: validate, log, checkpoint --
            train_loss, parts = sums.means(info)
            metrics = {"train_loss": train_loss, **self._validate(epoch)}
            monitor = metrics.get(task.schema.monitor)
            if monitor is not None and not math.isnan(monitor):
                better = progress.best_metric is None or (monitor < progress.best_metric if task.schema.mode == "min" else monitor > progress.best_metric)
                if better:
                    progress.best_metric = float(monitor)
            lr = self.scheduler.get_last_lr()[0]
            entry = {"epoch": epoch, "global_step": progress.global_step, **metrics, "parts": parts, "lr": lr,
                     "time": time.time() - epoch_start, **task.epoch_log_extras()}
            progress.epoch_log.append(entry)
            progress.loss_history.append(train_loss)
            progress.epoch += 1
            progress.batch_in_epoch = 0
            progress.epoch_elapsed = 0.0
            sums = _EpochSums(self.device)
            if info.is_main:
                self._log_epoch(entry, progress.epoch_log)
            self._tick(progress)
            payload = self._payload(progress, sums, epoch=epoch, complete=True, metrics=metrics)
            self.manager.save_epoch(payload, epoch=epoch, global_step=progress.global_step, metrics=metrics)
            D.barrier(info)
            stop = self._stop_reason(progress)  # also a signal that came during validation
            if stop == "signal":
                path = self.out_dir / task.schema.last_file if info.is_main else None
                if info.is_main:
                    logger.warning("stopped by %s at the end of epoch %d; saved %s", signal.Signals(self._stop_signal).name, epoch, path)
                raise TrainingInterrupted(path, self._stop_signal, epoch, progress.global_step)
            if stop == "max_steps":
                logger.info("reached max_steps=%d at the end of epoch %d", cfg.max_steps, epoch)
                break
        else:
            completed = not at_limit

        self._tick(progress)
        report = self._report(progress, completed)
        if completed:
            final = self._payload(progress, sums, epoch=progress.epoch - 1, complete=True, metrics=self._last_metrics(progress))
            self.manager.save_final(final)
            if info.is_main and task.schema.report_file:
                atomic_write_json(self.out_dir / task.schema.report_file, report)
            D.barrier(info)
        return report

    def _tick(self, progress: _Progress) -> None:
        now = time.time()
        progress.elapsed += now - self._last_tick
        self._last_tick = now

    def _stop_reason(self, progress: _Progress) -> Optional[str]:
        signalled = D.any_rank(self._stop_signal is not None, self.dist, self.device)
        if signalled:
            if self._stop_signal is None:  # another rank got it
                self._stop_signal = signal.SIGTERM
            return "signal"
        if self.config.max_steps is not None and progress.global_step >= self.config.max_steps:
            return "max_steps"
        return None

    def _last_metrics(self, progress: _Progress) -> dict[str, float]:
        if not progress.epoch_log:
            return {}
        return {k: v for k, v in progress.epoch_log[-1].items() if isinstance(v, float) and k not in ("lr", "time")}

    @torch.no_grad()
    def _validate(self, epoch: int) -> dict[str, float]:
        """Sample-weighted means of the task's validation metrics over all ranks."""
        if self.val_loader is None:
            return {}
        cfg, task = self.config, self.task
        for m in self.modules.values():
            m.eval()
        generator = torch.Generator(device=self.device)
        generator.manual_seed(_loader_seed(cfg.seed, epoch, self.dist.rank) + 1)  # the same in any run
        self.val_loader.generator.manual_seed(_loader_seed(cfg.seed, epoch, self.dist.rank) + 2)
        dtype = PRECISIONS[cfg.precision]
        sums: dict[str, float] = {}
        count = 0
        for batch in self.val_loader:
            batch = task.to_device(batch, self.device)
            ctx = StepContext(epoch, 0, self.device, generator, cfg.precision, self.dist.world_size, self.dist.rank)
            with torch.amp.autocast(device_type=self.device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
                values = task.validation_step(self.modules, batch, ctx)
            n = task.batch_size_of(batch)
            count += n
            for k, v in values.items():
                sums[k] = sums.get(k, 0.0) + float(v) * n
        for m in self.modules.values():
            m.train()
        names = sorted(sums)
        flat = torch.tensor([float(count)] + [sums[k] for k in names], dtype=torch.float64, device=self.device)
        D.all_reduce_sum(flat, self.dist)
        values = flat.tolist()
        return {k: values[1 + i] / max(values[0], 1.0) for i, k in enumerate(names)}

    def _log_epoch(self, entry: dict, epoch_log: list) -> None:
        """Write the whole epoch log atomically; TensorBoard scalars; one log line."""
        task = self.task
        if task.schema.epoch_log_file:
            atomic_write_json(self.out_dir / task.schema.epoch_log_file, epoch_log)
        if self._tb is not None:
            for k, v in entry.items():
                if isinstance(v, float) and k != "time":
                    self._tb.add_scalar(f"epoch/{k}", v, entry["epoch"])
            for k, v in entry["parts"].items():
                self._tb.add_scalar(f"parts/{k}", v, entry["epoch"])
            self._tb.flush()
        shown = ", ".join(f"{k}={v:.4g}" for k, v in entry.items() if isinstance(v, float) and k != "time")
        logger.info("epoch %d: %s (%.1fs)", entry["epoch"], shown, entry["time"])

    def _report(self, progress: _Progress, completed: bool) -> dict:
        cfg, task = self.config, self.task
        report = {
            "model": task.display_name or task.name,
            "architecture": task.architecture,
            "total_epochs": len(progress.epoch_log),
            "total_steps": progress.global_step,
            "best_loss": progress.best_metric,
            "final_loss": progress.loss_history[-1] if progress.loss_history else None,
            "training_time_hours": progress.elapsed / 3600.0,
            "loss_history": list(progress.loss_history),
            "device": self.device.type,
            "hyperparameters": {
                **task.config_dict(),
                "learning_rate": cfg.lr,
                "batch_size": cfg.batch_size,
                "global_batch_size": cfg.batch_size * self.dist.world_size,
                "epochs": cfg.epochs,
                "weight_decay": cfg.weight_decay,
                "grad_clip": cfg.grad_clip,
                "precision": cfg.precision,
                "scheduler": cfg.scheduler,
                "warmup_steps": cfg.warmup_steps,
                "seed": cfg.seed,
                "world_size": self.dist.world_size,
            },
            "monitor": task.schema.monitor,
            "completed": completed,
        }
        report.update(task.report_extras())
        return report

    # -- signals --------------------------------------------------------------------------
    def _install_signal_handlers(self) -> None:
        self._stop_signal = None
        self._previous_handlers = {}
        if not self.config.handle_signals or threading.current_thread() is not threading.main_thread():
            return
        self._handler_pid = os.getpid()
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous_handlers[sig] = signal.getsignal(sig)
            signal.signal(sig, self._on_signal)

    def _restore_signal_handlers(self) -> None:
        for sig, handler in self._previous_handlers.items():
            signal.signal(sig, handler)
        self._previous_handlers = {}

    def _on_signal(self, signum, frame) -> None:
        if os.getpid() != self._handler_pid:
            return  # a forked DataLoader worker (it inherits the handler): the main process decides
        if self._stop_signal is not None:
            raise KeyboardInterrupt  # a second signal: stop now
        self._stop_signal = signum
        logger.warning("received %s: saving a checkpoint after this step, then stopping", signal.Signals(signum).name)


def train_model(model: str, data_dir: str | os.PathLike, *, preset: str = "tiny", out_dir: str | os.PathLike | None = None,
                task_overrides: Mapping[str, Any] | None = None, **engine_fields: Any) -> dict:
    """Train the registered task ``model`` on a dataset folder with its preset — what `cad3d train`
    and the demo run. ``engine_fields`` (EngineConfig fields; None = the preset's) override the
    preset's engine settings, ``task_overrides`` fields of the task's config (a dataclass);
    ``out_dir`` defaults to ``trained_models/<model>``. Returns the training report."""
    from cad3d.errors import DatasetError
    from cad3d.training.task import get_task_class

    task_cls = get_task_class(model)
    presets = task_cls.presets()
    if preset not in presets:
        raise TrainingConfigError(f"{model} has no preset {preset!r}; presets: {', '.join(presets)}")
    task = task_cls(dataclasses.replace(presets[preset], **dict(task_overrides or {})))
    fields = dict(task_cls.engine_presets().get(preset, {}))
    fields.update({k: v for k, v in engine_fields.items() if v is not None})
    fields["out_dir"] = str(out_dir if out_dir is not None else Path("trained_models") / model)
    config = EngineConfig(**fields)
    data = Path(data_dir)
    if not data.is_dir():
        raise DatasetError(f"{data}: data folder not found")
    train_set, val_set = task.build_datasets(data, seed=config.seed)
    return Engine(task, train_set, val_set, config).fit()
