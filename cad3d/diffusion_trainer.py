"""Training the diffusion model (seed-000 facade) and the dataset helpers users import from here.

    from cad3d.diffusion_3d_model import create_diffusion_model
    from cad3d.diffusion_trainer import DiffusionTrainer, create_synthetic_training_data, CAD2D3DDataset

    model = create_diffusion_model(num_points=4096, device="cuda")
    trainer = DiffusionTrainer(model=model, device="cuda")
    trainer.train("training_data/diffusion_synthetic", epochs=50)     # trained_models/diffusion/
    trainer.load_checkpoint("trained_models/diffusion/diffusion_best.pth")
    clouds = trainer.sample(images, steps=50, guidance=2.0, seed=0)   # (B, 4096, 3)

Training runs through the one engine (`cad3d.training.engine.Engine`) with
`cad3d.training.diffusion_task.DiffusionTask`; ``train`` continues from the trainer's current
weights (fresh, loaded or trained before) and its replay buffer, so ``train(new_data,
replay_ratio=0.25)`` after ``load_checkpoint`` fine-tunes on new data while replaying old pairs.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Mapping, Optional

import torch

from cad3d.data.dataset import CAD2D3DDataset
from cad3d.data.synth import create_synthetic_training_data
from cad3d.diffusion_3d_model import Diffusion3DModel, DiffusionConfig, create_diffusion_model
from cad3d.training.diffusion_task import DiffusionTask, DiffusionTaskConfig, ReplayBuffer

logger = logging.getLogger(__name__)


class DiffusionTrainer:
    """Seed-000 ``DiffusionTrainer(model=..., device=...)`` over the training engine.

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
        from cad3d.devices import resolve_device

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
        """Load a diffusion checkpoint into ``self.model`` (rebuilt when the file's
        ``model_config`` differs) and ``self.replay_buffer``; ``epoch``, ``global_step``,
        ``best_loss`` and ``loss_history`` follow the file. Returns the payload. Raises
        `cad3d.errors.CheckpointError` naming the file (weights_only loading, hash-checked)."""
        from cad3d.training.checkpoint import load_checkpoint, load_state_dict_strict

        schema = DiffusionTask.schema
        payload = load_checkpoint(path, map_location=map_location, expected_task=DiffusionTask.name)
        if isinstance(payload.get("model_config"), Mapping):
            config = DiffusionConfig.from_dict(payload["model_config"])
            if config != self.model.config:
                logger.info("%s: model_config differs from the trainer's model; rebuilding it from the checkpoint", path)
                self.model = Diffusion3DModel(config)
        for name, key in schema.module_keys.items():
            load_state_dict_strict(getattr(self.model, name), payload.get(key), path=path, key=key)
        self.model.to(self._torch_device())
        if payload.get("replay_buffer") is not None:
            self.replay_buffer.load_state_dict(payload["replay_buffer"])
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


__all__ = ["CAD2D3DDataset", "DiffusionTrainer", "create_synthetic_training_data"]
