"""Trainer facades of the reference API over the one engine: `DiffusionTrainer` and
`VisionTransformerTrainer` (with its `TrainingConfig`).

    trainer = DiffusionTrainer(model=create_diffusion_model(num_points=4096), device="cuda")
    trainer.train("training_data/diffusion_synthetic", epochs=50)     # trained_models/diffusion/
    trainer.load_checkpoint("trained_models/diffusion/diffusion_best.pth")

    trainer = VisionTransformerTrainer(VisionTransformerConfig(), TrainingConfig(num_epochs=50))
    trainer.fit("training_data/diffusion_synthetic")                   # trained_models/vit/

Both train through `cad3d.training.engine.Engine` with their task and load through
`cad3d.training.loader.load_trained`. ``DiffusionTrainer.train`` continues from the trainer's
current weights and replay buffer, so ``train(new_data, replay_ratio=0.25)`` after
``load_checkpoint`` fine-tunes on new data while replaying old pairs.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional

import torch

from cad3d.config import config_from_dict, field_names
from cad3d.devices import resolve_device
from cad3d.models.diffusion_model import Diffusion3DModel, create_diffusion_model
from cad3d.models.vit import VisionTransformer, VisionTransformerConfig
from cad3d.training.checkpoint_io import META_KEY
from cad3d.training.loader import load_trained
from cad3d.training.replay import ReplayBuffer
from cad3d.training.tasks.diffusion import DiffusionTask, DiffusionTaskConfig
from cad3d.training.tasks.vit import ViTTask, ViTTaskConfig

logger = logging.getLogger(__name__)


class DiffusionTrainer:
    """``DiffusionTrainer(model=..., device=...)`` over the training engine.

    Loop settings (``learning_rate``, ``batch_size``, ``epochs``, ``save_dir``, ...) are the
    defaults of `train`; ``engine_kw`` passes other `EngineConfig` fields (precision, seed,
    keep_last, grad_clip, ...).
    """

    def __init__(
        self,
        model: Optional[Diffusion3DModel] = None,
        device: str | torch.device = "auto",
        *,
        learning_rate: float = 1e-4,
        batch_size: int = 8,
        epochs: int = 50,
        save_dir: str | os.PathLike = "trained_models/diffusion",
        replay_buffer_size: int = 800,
        replay_ratio: float = 0.0,
        save_every: int = 10,
        augment: bool = True,
        progress: bool = True,
        **engine_kw: Any,
    ):
        self.model = model if model is not None else create_diffusion_model(device="cpu")
        self.device = str(device)
        self.learning_rate = learning_rate
        self.batch_size = batch_size
        self.epochs = epochs
        self.save_dir = Path(save_dir)
        self.replay_ratio = replay_ratio
        self.save_every = save_every
        self.augment = augment
        self.progress = progress
        self.engine_kw = engine_kw
        self.replay_buffer = ReplayBuffer(replay_buffer_size, engine_kw.get("seed", 0))
        self.epoch = 0
        self.global_step = 0
        self.best_loss: Optional[float] = None
        self.loss_history: list[float] = []
        self.report: Optional[dict] = None
        if self.device != "auto":
            self.model.to(self._torch_device())

    def _torch_device(self) -> torch.device:
        return resolve_device(self.device)

    def make_task(self, replay_ratio: Optional[float] = None, offer_to_replay: bool = True) -> DiffusionTask:
        config = DiffusionTaskConfig(
            model=self.model.config,
            augment=self.augment,
            replay_size=self.replay_buffer.capacity,
            replay_ratio=self.replay_ratio if replay_ratio is None else replay_ratio,
            save_every=self.save_every,
            offer_to_replay=offer_to_replay,
        )
        return DiffusionTask(config, model=self.model, replay_buffer=self.replay_buffer)

    def train(
        self,
        data,
        val_dataset=None,
        *,
        epochs: Optional[int] = None,
        resume: str | os.PathLike | None = None,
        max_steps: Optional[int] = None,
        replay_ratio: Optional[float] = None,
        offer_to_replay: bool = True,
        **engine_overrides: Any,
    ) -> dict:
        """Train; returns the training report (also written to ``save_dir/training_report.json``).

        ``data``: a dataset folder (its train/val splits) or a dataset of (image, points);
        ``resume``: None, "auto" or a checkpoint path (restores weights, optimizer, RNG, data
        order and the replay buffer); ``offer_to_replay=False``: training batches are not added to
        the replay buffer (the caller adds what it wants kept). Afterwards ``self.model`` holds the trained weights (on
        the training device)."""
        from cad3d.training.engine import Engine, EngineConfig

        task = self.make_task(replay_ratio, offer_to_replay)
        if isinstance(data, (str, os.PathLike)):
            train, val = task.build_datasets(Path(data), seed=self.engine_kw.get("seed", 0))
        else:
            train, val = data, val_dataset
        values = dict(
            epochs=epochs or self.epochs, batch_size=self.batch_size, lr=self.learning_rate, device=self.device,
            out_dir=str(self.save_dir), progress=self.progress, resume=str(resume) if resume else None, max_steps=max_steps,
        )
        values.update(self.engine_kw)
        values.update(engine_overrides)
        engine = Engine(task, train, val, EngineConfig(**values))
        self.report = engine.fit()
        self.replay_buffer = task.replay_buffer
        self.epoch = int(self.report.get("total_epochs") or 0)
        self.global_step = int(self.report.get("total_steps") or 0)
        self.best_loss = self.report.get("best_loss")
        self.loss_history = list(self.report.get("loss_history") or [])
        return self.report

    def load_checkpoint(self, path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
        """Load a diffusion checkpoint: ``self.model`` becomes its model (architecture from the
        file) and ``self.replay_buffer`` its buffer; ``epoch``, ``global_step``, ``best_loss`` and
        ``loss_history`` follow the file. Returns the payload. Raises `CheckpointError` naming
        the file (weights_only loading, hash-checked)."""
        trained = load_trained(path, kind=DiffusionTask.name, map_location=map_location)
        payload = trained.payload
        self.model = trained.model.to(self._torch_device())
        replay = DiffusionTask.replay_state(trained.path, payload)
        if replay is not None:
            self.replay_buffer.load_state_dict(replay)
        schema = DiffusionTask.schema
        self.epoch = int(payload.get(schema.epoch_key, 0))
        self.global_step = int(payload.get(schema.step_key, 0) or 0)
        self.best_loss = payload.get("best_loss")
        self.loss_history = list(payload.get("loss_history") or [])
        return payload

    @torch.no_grad()
    def sample(self, images: torch.Tensor, steps: Optional[int] = None, guidance: Optional[float] = None,
               seed: Optional[int] = 0, **kw: Any) -> torch.Tensor:
        """Point clouds (B, N, 3) for drawings (B, 3, H, W) (or one (3, H, W)) in [0, 1]; see
        `Diffusion3DModel.sample` (``sampler``, ``eta``, ``generator``, ``x_T``, ...)."""
        dev = next(self.model.parameters()).device
        single = images.dim() == 3
        batch = images.unsqueeze(0) if single else images
        out = self.model.sample(batch.to(dev), steps, guidance, seed=seed, **kw)
        return out[0] if single else out


@dataclass
class TrainingConfig:
    """Training settings of the ViT facade, saved in checkpoints as ``train_config``.

    The loop settings map onto the engine's `EngineConfig` (`engine_config`); the loss and data
    settings go to the task (`ViTTaskConfig`).
    """

    batch_size: int = 16
    learning_rate: float = 3e-4
    weight_decay: float = 0.05
    num_epochs: int = 100
    warmup_steps: int = 0
    grad_clip: Optional[float] = 1.0
    family_loss_weight: float = 0.1
    augment: bool = True
    checkpoint_dir: str = "trained_models/vit"
    device: str = "auto"  # auto | cpu | cuda
    precision: str = "fp32"  # fp32 | bf16 | fp16
    seed: int = 0
    num_workers: int = 0
    keep_last: Optional[int] = None
    progress: bool = True

    # EngineConfig field -> TrainingConfig field, where the names differ.
    _ENGINE_NAMES = {"lr": "learning_rate", "epochs": "num_epochs", "out_dir": "checkpoint_dir"}

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "TrainingConfig":
        """From `to_dict` output, or from an `EngineConfig` dict (checkpoints of ``cad3d train``)."""
        return config_from_dict(cls, {cls._ENGINE_NAMES.get(k, k): v for k, v in d.items()})

    def engine_config(self, **overrides):
        """The `EngineConfig` of these settings (``overrides``: other engine fields, e.g. resume)."""
        from cad3d.training.engine import EngineConfig

        own = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        fields = field_names(EngineConfig)
        inverse = {v: k for k, v in self._ENGINE_NAMES.items()}
        values = {inverse.get(k, k): v for k, v in own.items() if inverse.get(k, k) in fields}
        values.update(overrides)
        return EngineConfig(**values)




class VisionTransformerTrainer:
    """``VisionTransformerTrainer(config, train_config)`` over the engine: ``fit`` trains,
    ``load_checkpoint`` loads (weights_only, hash-checked) into ``self.model``."""

    def __init__(self, config: VisionTransformerConfig | None = None, train_config: TrainingConfig | None = None):
        self.config = config if config is not None else VisionTransformerConfig()
        self.train_config = train_config if train_config is not None else TrainingConfig()
        self.model = VisionTransformer(self.config)
        self.history: list[dict] = []
        self.best_val_loss: float | None = None
        self.epoch = 0
        self.report: dict | None = None

    @property
    def checkpoint_dir(self) -> Path:
        return Path(self.train_config.checkpoint_dir)

    def make_task(self) -> ViTTask:
        tc = self.train_config
        task_config = ViTTaskConfig(model=self.config, family_loss_weight=tc.family_loss_weight, augment=tc.augment)
        return ViTTask(task_config, train_config=tc)

    def fit(self, data, val_dataset=None, *, resume: str | os.PathLike | None = None, max_steps: int | None = None) -> dict:
        """Train; returns the engine's report.

        ``data``: a dataset folder (its train/val splits), or a train dataset of
        ``(image, points, family)`` samples (see `FamilyLabeledDataset`) with ``val_dataset``.
        ``resume``: None (fresh), "auto" or a checkpoint path. Afterwards ``self.model`` holds
        the trained weights and ``self.history`` the epoch log.
        """
        from cad3d.training.engine import Engine

        task = self.make_task()
        if isinstance(data, (str, os.PathLike)):
            train, val = task.build_datasets(Path(data), seed=self.train_config.seed)
        else:
            train, val = data, val_dataset
        engine = Engine(task, train, val, self.train_config.engine_config(resume=str(resume) if resume else None, max_steps=max_steps))
        self.report = engine.fit()
        self.model = engine.modules["model"].cpu()
        log = self.checkpoint_dir / task.schema.epoch_log_file
        if log.is_file():
            self.history = json.loads(log.read_text())
        self.best_val_loss = self.report.get("best_loss")
        self.epoch = self.report.get("total_epochs", 0)
        return self.report

    def load_checkpoint(self, path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
        """Load a ViT checkpoint: ``self.model`` becomes its model (architecture from the file);
        ``self.config``/``train_config``/``epoch``/``best_val_loss`` follow the file. Returns the
        payload. Raises `CheckpointError` naming the file."""
        trained = load_trained(path, kind=ViTTask.name, map_location=map_location)
        payload = trained.payload
        self.config, self.model = trained.config.model, trained.model
        if isinstance(payload.get("train_config"), Mapping):
            train = dict(payload["train_config"])
            if "family_loss_weight" not in train:  # an EngineConfig dict (`cad3d train vit`)
                task_config = ((payload.get(META_KEY) or {}).get("config") or {}).get("task") or {}
                train.update({k: task_config[k] for k in ("family_loss_weight", "augment") if k in task_config})
            self.train_config = TrainingConfig.from_dict(train)
        self.epoch = int(payload.get(ViTTask.schema.epoch_key, 0))
        self.best_val_loss = payload.get("best_val_loss")
        return payload

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, map_location: str | torch.device = "cpu") -> "VisionTransformerTrainer":
        """A trainer whose configs and model come from the checkpoint at ``path``."""
        trainer = cls()
        trainer.load_checkpoint(path, map_location=map_location)
        return trainer

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """Point clouds (B, N, 3) of drawings (B, 3, H, W) in [0, 1]."""
        return self.model.predict_points(images)


__all__ = ["DiffusionTrainer", "TrainingConfig", "VisionTransformerTrainer"]
