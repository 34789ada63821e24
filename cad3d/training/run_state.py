"""What a checkpoint holds of a run besides the weights, and how it is put back: progress, running
sums, AMP scaler, RNG states and data position (``cad3d_resume``), so a resumed run continues
exactly where the interrupted one stopped."""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional

import torch

from cad3d.errors import CheckpointError
from cad3d.training import distributed as D
from cad3d.training.checkpoint_io import EMA_KEY, META_KEY, RESUME_KEY, RUN_STATE_KEY, build_metadata, load_checkpoint, load_state_dict_strict
from cad3d.training.rng import capture_rng, restore_rng, seed_everything
from cad3d.training.run_files import load_run_state, save_run_state


logger = logging.getLogger(__name__)

RESUME_FORMAT = 1


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


class EpochSums:
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
class Progress:
    """Where training is: ``epoch`` is the epoch in progress or next to start (1-based)."""

    epoch: int = 1
    batch_in_epoch: int = 0
    global_step: int = 0
    best_metric: Optional[float] = None
    elapsed: float = 0.0  # training seconds over all runs of this training
    epoch_elapsed: float = 0.0  # seconds spent in the current epoch before this run
    epoch_log: list = dataclasses.field(default_factory=list)
    loss_history: list = dataclasses.field(default_factory=list)


def restore_run(self, path: Path, progress: Progress, sums: EpochSums) -> None:
    """Put a checkpoint's weights, optimizer, scheduler, scaler, task extras, progress, RNG and
    running sums back into the engine ``self`` (``--resume``)."""
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
    run_state = load_run_state(path, payload, schema.run_state_file)
    if run_state is not None:
        task.load_run_state(run_state)
    state = payload.get(RESUME_KEY)
    _restore_ema(self, path, payload, state)
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
    _warn_if_epochs_changed(self, path, payload, progress)
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

def _restore_ema(self, path: Path, payload: Mapping[str, Any], state: Optional[Mapping[str, Any]]) -> None:
    """The EMA weights and update count of the checkpoint; a file without them starts the EMA
    from the restored weights."""
    if self.ema is None:
        return
    saved = payload.get(EMA_KEY)
    if saved is None:
        logger.warning("%s has no EMA weights: the EMA starts from its weights", path)
        self.ema.load({role: m.state_dict() for role, m in self.modules.items()})
        return
    try:
        self.ema.load(saved, (state or {}).get("ema"))
    except (KeyError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: EMA weights ({EMA_KEY!r}) do not fit this run: {exc}") from None


def _warn_if_epochs_changed(self, path: Path, payload: Mapping[str, Any], progress: Progress) -> None:
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

def run_payload(self, progress: Progress, sums: EpochSums, *, epoch: int, complete: bool, metrics: Mapping[str, float]) -> dict:
    """The checkpoint dict of the engine ``self`` (all ranks take part: per-rank RNG states are
    gathered)."""
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
    if self.ema is not None:
        payload[EMA_KEY] = self.ema.state_dicts()
    payload[schema.scheduler_key] = self.scheduler.state_dict()
    for key, source in schema.engine_keys.items():
        payload[key] = engine_values[source] if source in engine_values else metrics.get(source)
    payload.update(task.checkpoint_extras())
    run_state = task.run_state() if schema.run_state_file else None
    if run_state is not None:
        ref = save_run_state(self.manager, task.name, run_state, progress.global_step)  # before the checkpoints
        if ref is not None:
            payload[RUN_STATE_KEY] = ref
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
        "ema": self.ema.state() if self.ema is not None else None,
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
