"""What a model adds to the training engine: its modules, loss, metrics and checkpoint schema.

The engine (`cad3d.training.engine`) owns the loop, precision, devices, distribution, logs and
checkpoints. A trainer for a new model is a `TrainTask` subclass registered under a name:

    @register_task
    class VAETask(TrainTask):
        name = "vae"
        schema = CheckpointSchema(model="vae", module_keys={"model": "state_dict"}, ...)
        ...

`cad3d.training.loader.load_trained` finds the task of a checkpoint through the registry (the
checkpoint's metadata names it) to rebuild its modules for inference, fine-tuning and
`cad3d ckpt verify`.

What a model engineer writes (a screen of code):

- ``name``, ``schema``, ``config_class`` (a dataclass), optionally ``display_name`` and
  ``architecture`` (the "model" and "architecture" fields of the training report);
- ``build_modules``, ``training_step``, ``validation_step`` (and ``configure_optimizer`` when
  AdamW over all parameters is not right);
- ``build_datasets(data_dir, seed=...)``: how ``cad3d train NAME --data DIR`` gets its
  (train, val) datasets; val may be None. Datasets that augment should draw their randomness
  from (seed, epoch, index) and may define ``set_epoch(epoch)``, which the engine calls before
  every epoch: then the data are the same whatever the number of workers, and resume is exact;
- ``presets()``: task configs by preset name ("tiny", "full"), and ``engine_presets()``:
  `EngineConfig` field overrides by preset name (epochs, batch size, lr...); CLI flags given
  explicitly override both;
- checkpoint extras (reference-layout keys owned by the model, e.g. ``kl_weight``), log and report
  extras;
- ``inference_model(modules)``: the module that converts (default: the only one);
- ``example_batch`` and ``forward_check`` for ``cad3d ckpt verify``.

Engine-owned values that the reference checkpoint layout stores under model-specific keys (``val_loss``, ``loss``,
``best_loss``, ``loss_history``, ``best_val_loss``, ``model_config``, ``train_config``) are named
in ``CheckpointSchema.engine_keys``; the engine fills them.

Plugins: ``CAD3D_TASK_MODULES`` (comma-separated module names) are imported like the built-in
task modules, so a task outside the package can be trained with ``cad3d train``.
"""

from __future__ import annotations

import abc
import logging
import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Mapping, Optional

import torch
from torch import nn

from cad3d.config import config_from_dict
from cad3d.errors import Cad3dError
from cad3d.training.checkpoint_io import META_KEY

_logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CheckpointSchema:
    """File names and key names of one model's checkpoints (the reference layout users' tools read).

    File names are format strings with ``{epoch}``. The keys map engine roles to the key
    names users' tools read, e.g. VAE ``module_keys={"model": "state_dict"}``,
    ``optimizer_key="opt"``; diffusion ``module_keys={"image_encoder": "image_encoder_state",
    "unet": "unet_state"}``, ``optimizer_key="optimizer_state"``.
    """

    model: str  # "vae", "diffusion", "vit", "depth", ...
    module_keys: Mapping[str, str]  # module name -> checkpoint key of its state_dict
    epoch_file: str  # e.g. "vae_epoch_{epoch}.pth"
    last_file: str  # e.g. "vae_last.pth" (written every epoch; resume)
    best_file: str | None = None  # e.g. "vae_best.pth"
    final_file: str | None = None  # e.g. "final_model.pth" (ViT)
    every_n_epochs: int = 1  # epoch files every N epochs (ViT: 5)
    optimizer_key: str = "optimizer_state"
    scheduler_key: str = "scheduler_state"
    epoch_key: str = "epoch"
    step_key: str = "global_step"
    epoch_log_file: str | None = None  # JSON list, one entry per epoch
    report_file: str | None = None  # JSON written at the end of training
    monitor: str = "val_loss"  # metric that decides "best"
    mode: str = "min"  # "min" or "max"
    # Checkpoint key -> engine value, for reference-layout keys that hold engine state. Values:
    # "loss_history" (train loss per epoch), "best_metric" (best ``monitor`` so far), "task_config",
    # "engine_config", or a metric name of the epoch ("train_loss", "val_loss", ...; None
    # mid-epoch). E.g. diffusion {"loss": "train_loss", "best_loss": "best_metric",
    # "loss_history": "loss_history"}.
    engine_keys: Mapping[str, str] = field(default_factory=dict)
    # Name template with {step} of the run-state file (`TrainTask.run_state`, e.g. a replay
    # buffer): kept once per run folder, not in every checkpoint (`cad3d.training.run_files`).
    run_state_file: str | None = None

    def epoch_name(self, epoch: int) -> str:
        return self.epoch_file.format(epoch=epoch)


@dataclass
class StepContext:
    """What the engine tells a task during a step (read-only for the task)."""

    epoch: int  # 1-based epoch being trained
    global_step: int  # optimizer steps done before this one
    device: torch.device
    generator: torch.Generator  # the only source of randomness a task may use in a step
    precision: str = "fp32"
    world_size: int = 1
    rank: int = 0


class TrainEndError(Cad3dError):
    """`TrainTask.on_train_end` failed (the checkpoints are saved); ``report`` says what failed."""

    def __init__(self, message: str, report: Mapping[str, Any] | None = None):
        super().__init__(message)
        self.report = dict(report or {})


class TrainTask(abc.ABC):
    """One model's part of training. Configs are dataclasses; checkpoints store them as dicts."""

    name: ClassVar[str]
    schema: ClassVar[CheckpointSchema]
    config_class: ClassVar[type]
    display_name: ClassVar[str] = ""  # training report "model", e.g. "3D Diffusion Model"
    # Class of ``config.model`` for tasks whose checkpoints also carry it as "model_config" (the
    # reference layout of the ViT and diffusion files); that copy wins when loading.
    model_config_class: ClassVar[Optional[type]] = None
    architecture: ClassVar[str] = ""  # training report "architecture"

    def __init__(self, config: Any = None):
        self.config = config if config is not None else self.config_class()

    # -- config ------------------------------------------------------------------------
    def config_dict(self) -> dict:
        return dataclasses.asdict(self.config)

    @classmethod
    def from_config_dict(cls, d: Mapping[str, Any]) -> "TrainTask":
        return cls(config_from_dict(cls.config_class, d))

    @classmethod
    def from_checkpoint(cls, payload: Mapping[str, Any]) -> "TrainTask":
        """The task a checkpoint was trained with, from the config in its metadata (the engine
        stores ``{"task": ..., "engine": ...}``; migrated files store the task config itself).
        A "model_config" key (see `model_config_class`) gives the architecture."""
        task = cls.from_config_dict(task_config(payload.get(META_KEY) or {}))
        if cls.model_config_class is not None and isinstance(payload.get("model_config"), Mapping):
            task.config.model = cls.model_config_class.from_dict(payload["model_config"])
        return task

    @classmethod
    def presets(cls) -> dict[str, Any]:
        """Task configs by preset name; ``cad3d train --preset NAME`` picks one (default "full").
        Override to make "tiny" small enough for a laptop CPU run of a few minutes."""
        return {"tiny": cls.config_class(), "full": cls.config_class()}

    @classmethod
    def engine_presets(cls) -> dict[str, dict[str, Any]]:
        """`EngineConfig` field overrides by preset name (e.g. ``{"tiny": {"epochs": 2}}``)."""
        return {"tiny": {"epochs": 2, "batch_size": 4}, "full": {}}

    # -- data --------------------------------------------------------------------------
    def build_datasets(self, data_dir: Path, *, seed: int = 0) -> tuple[Any, Optional[Any]]:
        """(train, val) map-style datasets read from ``data_dir``; val may be None.

        Raise `cad3d.errors.DatasetError` naming the file for bad data. ``seed`` is the run's seed,
        for augmentation drawn per (seed, epoch, index)."""
        raise NotImplementedError(f"task {self.name!r} does not read datasets from a directory")

    def collate(self, samples: list[Any]) -> Any:
        """Turn a list of samples into a batch (default: torch's default_collate)."""
        from torch.utils.data import default_collate

        return default_collate(samples)

    # -- model -------------------------------------------------------------------------
    @abc.abstractmethod
    def build_modules(self) -> dict[str, nn.Module]:
        """The trainable modules by name (keys of ``schema.module_keys``)."""

    def configure_optimizer(self, modules: Mapping[str, nn.Module], lr: float, weight_decay: float) -> torch.optim.Optimizer:
        params = [p for m in modules.values() for p in m.parameters() if p.requires_grad]
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)

    def inference_model(self, modules: Mapping[str, nn.Module]) -> nn.Module:
        """The module that converts, built from the trained ``modules`` (default: the only one)."""
        if len(modules) != 1:
            raise NotImplementedError(f"task {self.name!r} has modules {sorted(modules)}: say which one converts")
        return next(iter(modules.values()))

    # -- steps -------------------------------------------------------------------------
    def batch_size_of(self, batch: Any) -> int:
        """Number of samples in a batch (weights the epoch means); default: the first tensor's
        leading dimension."""
        if isinstance(batch, torch.Tensor):
            return int(batch.shape[0])
        items = batch.values() if isinstance(batch, Mapping) else batch if isinstance(batch, (list, tuple)) else ()
        for item in items:
            n = self.batch_size_of(item)
            if n:
                return n
        return 0

    def to_device(self, batch: Any, device: torch.device) -> Any:
        """Move a batch to the training device (tensors inside dicts/lists/tuples)."""
        if isinstance(batch, torch.Tensor):
            return batch.to(device, non_blocking=True)
        if isinstance(batch, Mapping):
            return {k: self.to_device(v, device) for k, v in batch.items()}
        if isinstance(batch, (list, tuple)):
            return type(batch)(self.to_device(v, device) for v in batch)
        return batch

    @abc.abstractmethod
    def training_step(self, modules: Mapping[str, nn.Module], batch: Any, ctx: StepContext) -> tuple[torch.Tensor, dict[str, float]]:
        """Loss (scalar tensor, with grad) and its named parts for the logs (floats or 0-d
        tensors; tensors are preferred on GPU — the engine averages them without a sync per step).
        Randomness only from ``ctx.generator``; the engine handles autocast, backward, clipping."""

    @abc.abstractmethod
    def validation_step(self, modules: Mapping[str, nn.Module], batch: Any, ctx: StepContext) -> dict[str, float]:
        """Metrics of one validation batch; the engine averages them weighted by batch size.
        Must include ``schema.monitor`` unless the monitor is a training metric."""

    def on_epoch_start(self, epoch: int, total_epochs: int) -> None:
        """Hook for schedules that follow epochs (e.g. KL annealing). Called again for the same
        epoch when a run resumes in its middle, so it must be a pure function of ``epoch``."""

    # -- checkpoint extras -------------------------------------------------------------
    def checkpoint_extras(self) -> dict[str, Any]:
        """Model-specific keys of the reference layout (e.g. ``kl_weight``, ``last_parts``) and task state
        (e.g. a replay buffer) — plain values or tensors only (loaded with weights_only)."""
        return {}

    def load_checkpoint_extras(self, payload: Mapping[str, Any]) -> None:
        """Restore what ``checkpoint_extras`` saved."""

    def run_state(self) -> Optional[dict[str, Any]]:
        """Task state of the run that is too large for every checkpoint (e.g. a replay buffer;
        tensors and plain values): saved once per run folder in ``schema.run_state_file`` and
        put back by `load_run_state` on resume. None: nothing."""
        return None

    def load_run_state(self, state: Mapping[str, Any]) -> None:
        """Restore what ``run_state`` saved."""

    def epoch_log_extras(self) -> dict[str, Any]:
        """Extra fields of this epoch's entry in the epoch log (e.g. ``kl_weight``)."""
        return {}

    def report_extras(self) -> dict[str, Any]:
        """Extra fields of the final training report."""
        return {}

    def on_train_end(self, out_dir: Path, completed: bool, metrics: Mapping[str, float]) -> dict[str, Any]:
        """Rank 0, once, after the run's checkpoints are saved (``completed`` False: stopped at
        ``max_steps`` before the last epoch): work on the trained modules, e.g. an export.
        ``metrics``: the last logged epoch's metrics (all ranks; a resumed finished run's too).
        Returns report fields; raise `TrainEndError` (with its report fields) to fail the run."""
        return {}

    # -- verification (cad3d ckpt verify) ------------------------------------------------
    @abc.abstractmethod
    def example_batch(self, batch_size: int = 2, generator: torch.Generator | None = None) -> Any:
        """A small synthetic batch of the right shapes, on CPU."""

    @abc.abstractmethod
    def forward_check(self, modules: Mapping[str, nn.Module], batch: Any) -> torch.Tensor:
        """A forward pass in eval mode; the output must be finite."""


_REGISTRY: dict[str, type[TrainTask]] = {}


def register_task(cls: type[TrainTask]) -> type[TrainTask]:
    """Class decorator: make a task findable by its ``name`` (checkpoint metadata ``task``)."""
    _REGISTRY[cls.name] = cls
    return cls


def get_task_class(name: str) -> type[TrainTask]:
    _import_builtin_tasks()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown training task {name!r}; known: {sorted(_REGISTRY)}") from None


def find_task_class(name: str | None) -> "type[TrainTask] | None":
    """The registered task class, or None when unknown (or its module fails to import)."""
    if not name:
        return None
    try:
        return get_task_class(name)
    except (KeyError, ImportError) as exc:
        _logger.debug("task %r not available: %s", name, exc)
        return None


def known_tasks() -> list[str]:
    _import_builtin_tasks()
    return sorted(_REGISTRY)


# Modules that register the built-in tasks when imported. Model issues append theirs here.
BUILTIN_TASK_MODULES: list[str] = [f"cad3d.training.tasks.{name}" for name in ("vae", "vit", "diffusion", "depth", "refine")]


def _import_builtin_tasks() -> None:
    import importlib

    plugins = [m.strip() for m in os.environ.get("CAD3D_TASK_MODULES", "").split(",") if m.strip()]
    for module in BUILTIN_TASK_MODULES + plugins:
        importlib.import_module(module)


def task_config(meta: Mapping[str, Any]) -> dict:
    """The task's config dict in a checkpoint's metadata ``meta``."""
    config = meta.get("config") or {}
    if isinstance(config.get("task"), Mapping):
        return dict(config["task"])
    return dict(config)
