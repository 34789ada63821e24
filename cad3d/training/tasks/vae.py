"""The point-cloud VAE as a training task: its loss, metrics and checkpoint schema.

    cad3d train vae --data training_data/vae_data --preset tiny

writes ``trained_models/vae/``: ``vae_epoch_N.pth``, ``vae_best.pth``, ``vae_last.pth``,
``vae_epoch_log.json`` (epoch, train_loss, val_loss, kl_weight, parts) and
``vae_training_report.json``; checkpoint keys epoch, state_dict, opt, scheduler, val_loss,
loss_history, last_parts, kl_weight (+ the engine's ``cad3d_meta`` / resume state).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from cad3d.models.vae import PointCloudVAE, VAEConfig, kl_weight_at, vae_loss, vae_presets
from cad3d.training.tasks.base import CheckpointSchema, StepContext, TrainTask, register_task
from cad3d.training.tasks.splits import split_datasets


@register_task
class VAETask(TrainTask):
    name = "vae"
    display_name = "Point Cloud VAE"
    architecture = "PointNet encoder (shared MLP + max pool) -> Gaussian latent -> MLP point decoder"
    config_class = VAEConfig
    schema = CheckpointSchema(
        model="vae",
        module_keys={"model": "state_dict"},
        epoch_file="vae_epoch_{epoch}.pth",
        last_file="vae_last.pth",
        best_file="vae_best.pth",
        optimizer_key="opt",
        scheduler_key="scheduler",
        epoch_log_file="vae_epoch_log.json",
        report_file="vae_training_report.json",
        monitor="val_loss",
        engine_keys={"val_loss": "val_loss", "loss_history": "loss_history"},
    )

    def __init__(self, config: VAEConfig | None = None):
        super().__init__(config)
        self.kl_weight = kl_weight_at(1, self.config)
        self.last_parts: dict[str, Any] = {}  # parts of the latest training step (0-d tensors)

    # -- presets / data ----------------------------------------------------------------
    @classmethod
    def presets(cls) -> dict[str, VAEConfig]:
        return vae_presets()

    @classmethod
    def engine_presets(cls) -> dict[str, dict[str, Any]]:
        return {
            "tiny": {"epochs": 8, "batch_size": 4, "lr": 3e-3, "device": "cpu"},
            "full": {"epochs": 200, "batch_size": 32, "lr": 1e-3},
        }

    def build_datasets(self, data_dir: Path, *, seed: int = 0):
        from cad3d.data.dataset import CAD2D3DDataset

        cfg = self.config
        return split_datasets(data_dir, lambda split, augment: CAD2D3DDataset(
            data_dir, augment=augment, split=split, image_size=cfg.image_size, num_points=cfg.num_points, seed=seed))

    # -- model / steps ------------------------------------------------------------------
    def build_modules(self) -> dict[str, nn.Module]:
        return {"model": PointCloudVAE(self.config)}

    def on_epoch_start(self, epoch: int, total_epochs: int) -> None:
        self.kl_weight = kl_weight_at(epoch, self.config)

    def training_step(self, modules: Mapping[str, nn.Module], batch: Any, ctx: StepContext):
        points = batch[1]  # (B, N, 3); the drawing batch[0] is not used by the VAE
        recon, mu, logvar = modules["model"](points, ctx.generator)  # (B, P, 3), (B, D), (B, D)
        loss, parts = vae_loss(recon.float(), points.float(), mu.float(), logvar.float(), self.kl_weight, self.config)
        self.last_parts = parts
        return loss, parts

    def validation_step(self, modules: Mapping[str, nn.Module], batch: Any, ctx: StepContext) -> dict[str, float]:
        points = batch[1]  # (B, N, 3)
        recon, mu, logvar = modules["model"](points, sample_latent=False)  # decode the mean: deterministic
        loss, parts = vae_loss(recon.float(), points.float(), mu.float(), logvar.float(), self.kl_weight, self.config)
        return {"val_loss": float(loss), **{f"val_{k}": float(v) for k, v in parts.items()}}

    # -- checkpoint / logs --------------------------------------------------------------
    def _plain_parts(self) -> dict[str, float]:
        return {k: float(v) for k, v in self.last_parts.items()}

    def checkpoint_extras(self) -> dict[str, Any]:
        return {"last_parts": self._plain_parts(), "kl_weight": float(self.kl_weight)}

    def load_checkpoint_extras(self, payload: Mapping[str, Any]) -> None:
        self.last_parts = {k: torch.tensor(float(v)) for k, v in (payload.get("last_parts") or {}).items()}
        if payload.get("kl_weight") is not None:
            self.kl_weight = float(payload["kl_weight"])

    def epoch_log_extras(self) -> dict[str, Any]:
        return {"kl_weight": float(self.kl_weight), "last_parts": self._plain_parts()}

    def report_extras(self) -> dict[str, Any]:
        return {"kl_schedule": self.config.kl_schedule, "kl_weight": float(self.kl_weight), "last_parts": self._plain_parts()}

    # -- verification -------------------------------------------------------------------
    def example_batch(self, batch_size: int = 2, generator: torch.Generator | None = None):
        s = self.config.image_size
        images = torch.ones(batch_size, 3, s, s)  # (B, 3, H, W) blank paper
        points = torch.rand(batch_size, self.config.num_points, 3, generator=generator) * 2 - 1  # (B, N, 3)
        return images, points

    def forward_check(self, modules: Mapping[str, nn.Module], batch: Any) -> torch.Tensor:
        model = modules["model"]
        model.eval()
        with torch.no_grad():
            recon, _, _ = model(batch[1], sample_latent=False)  # (B, P, 3)
        return recon
