"""The image-conditioned diffusion model as a training task (its loss, metrics, checkpoint schema).

    cad3d train diffusion --data training_data/diffusion_synthetic --preset tiny

writes ``trained_models/diffusion/``: ``diffusion_epoch_N.pth`` every ``save_every`` epochs,
``diffusion_best.pth`` (lowest train loss: the reference layout's ``best_loss``), ``diffusion_last.pth`` (each
epoch, for resume) and ``training_report.json`` (model "3D Diffusion Model", architecture "DDPM
with U-Net + PointNet++", replay_buffer_size, hyperparameters with timesteps, num_points,
learning_rate, ...). Checkpoint keys: epoch, global_step, image_encoder_state, unet_state,
optimizer_state, scheduler_state, loss, best_loss, loss_history (reference layout), plus ``model_config``
(plain dict) and the engine's ``cad3d_meta``/``cad3d_resume``. The replay buffer (grey uint8
drawings) is run state: one ``diffusion_replay_step_N.state`` file per run folder that the
checkpoints refer to (`cad3d.training.run_files`), not a copy in every checkpoint; files of
older versions and ``continuous_learning.pth`` carry it under ``replay_buffer``.

Randomness of a step (timesteps, noise, condition dropout) comes from ``ctx.generator``; the
replay buffer has its own CPU generator whose state is saved with it, so a resumed run is
bit-identical to an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional

import numpy as np
import torch
from torch import nn

from cad3d.config import config_from_dict
from cad3d.models.diffusion import NoiseSchedule
from cad3d.geometry.ops import chamfer_distance
from cad3d.models.diffusion_model import (Diffusion3DModel, DiffusionConfig, denoising_loss, diffusion_presets, image_projection,
                                          iso_projection)
from cad3d.training.replay import ReplayBuffer
from cad3d.training.tasks.base import CheckpointSchema, StepContext, TrainTask, register_task
from cad3d.training.tasks.splits import split_datasets


class CameraDataset(torch.utils.data.Dataset):
    """`CAD2D3DDataset` samples with their drawing's cameras, for projection conditioning:
    ``(image (3, H, W), points (N, 3), cams (MAX_VIEWS, 2, 4), views (MAX_VIEWS,) bool)`` (see
    `cad3d.geometry.camera.grid_projections`); samples without recorded cameras are iso views."""

    def __init__(self, base):
        self.base = base
        self._cams: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def __len__(self) -> int:
        return len(self.base)

    @property
    def records(self):
        return self.base.records

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.base, "set_epoch"):
            self.base.set_epoch(epoch)

    def cameras(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        if i not in self._cams:
            from cad3d.data.dataset import load_meta
            from cad3d.geometry.camera import OrthoCamera, grid_projections, iso_camera

            rec = self.records[i]
            meta = load_meta(rec.meta) if rec.meta is not None else {}
            cams = [OrthoCamera.from_dict(c) for c in (meta.get("cameras") or [])] or [iso_camera((64, 64))]
            grid, views = grid_projections(cams)
            self._cams[i] = torch.from_numpy(grid), torch.from_numpy(views)
        return self._cams[i]

    def __getitem__(self, i: int):
        image, points = self.base[i]
        return (image, points) + self.cameras(i)


@dataclass
class DiffusionTaskConfig:
    """The model and the training choices around it.

    ``replay_size``: capacity of the replay buffer (0: none). ``replay_ratio``: replayed pairs
    added to each batch, as a fraction of the batch size (0 for ordinary training; > 0 when
    fine-tuning on new data, so old data is not forgotten). ``save_every``: epochs between
    ``diffusion_epoch_N.pth`` files."""

    model: DiffusionConfig = field(default_factory=DiffusionConfig)
    augment: bool = True
    replay_size: int = 800
    replay_ratio: float = 0.0
    replay_seed: int = 0
    save_every: int = 10
    offer_to_replay: bool = True  # offer every training batch to the buffer (off when the caller adds)
    val_samples: int = 8  # val drawings sampled each epoch for val_chamfer (0: loss only)
    val_steps: int = 10  # DDIM steps of those samples
    guidance_grid: tuple = (1.0, 2.0, 3.0)  # guidance scales tried on them; the best is stored
    # The hybrid: a ViT (this VisionTransformerConfig dict) encodes the drawing instead of the CNN;
    # its patch tokens are the feature map each point reads at its projection. ``vit_checkpoint``:
    # a trained ViT whose weights it starts from (training only; a checkpoint of the hybrid holds
    # the whole encoder).
    vit_encoder: Optional[dict] = None
    vit_checkpoint: Optional[str] = None

    def __post_init__(self) -> None:
        if isinstance(self.model, Mapping):
            self.model = DiffusionConfig.from_dict(self.model)
        if self.replay_ratio < 0:
            raise ValueError(f"replay_ratio must be >= 0, got {self.replay_ratio}")
        if self.save_every < 1:
            raise ValueError(f"save_every must be >= 1, got {self.save_every}")
        self.guidance_grid = tuple(float(g) for g in self.guidance_grid)
        if not self.guidance_grid:
            raise ValueError("guidance_grid needs at least one scale")


@register_task
class DiffusionTask(TrainTask):
    """The diffusion model for the training engine (``cad3d train diffusion``)."""

    name = "diffusion"
    display_name = "3D Diffusion Model"
    architecture = "DDPM with U-Net + PointNet++"
    model_config_class = DiffusionConfig
    config_class = DiffusionTaskConfig
    schema = CheckpointSchema(
        model="diffusion",
        module_keys={"image_encoder": "image_encoder_state", "unet": "unet_state"},
        epoch_file="diffusion_epoch_{epoch}.pth",
        last_file="diffusion_last.pth",
        best_file="diffusion_best.pth",
        every_n_epochs=10,
        report_file="training_report.json",
        monitor="val_chamfer",  # sampled clouds against the truth: what conversion is judged by
        engine_keys={"loss": "train_loss", "best_loss": "best_metric", "loss_history": "loss_history"},
        run_state_file="diffusion_replay_step_{step}.state",
    )

    def __init__(self, config: DiffusionTaskConfig | None = None, *, model: Diffusion3DModel | None = None,
                 replay_buffer: ReplayBuffer | None = None):
        """``model``: train these modules (e.g. loaded weights, for fine-tuning) instead of fresh
        ones; ``replay_buffer``: continue this buffer."""
        super().__init__(config)
        if self.config.save_every != type(self).schema.every_n_epochs:
            self.schema = dataclasses.replace(type(self).schema, every_n_epochs=self.config.save_every)
        self.model = model
        self.replay_buffer = replay_buffer if replay_buffer is not None else ReplayBuffer(self.config.replay_size, self.config.replay_seed)
        self._schedule: Optional[NoiseSchedule] = None

    # -- config ------------------------------------------------------------------------
    def config_dict(self) -> dict:
        """The config as a plain dict, plus ``timesteps`` and ``num_points`` at the top (the
        report's hyperparameters in the reference layout)."""
        d = dataclasses.asdict(self.config)
        d["timesteps"] = self.config.model.schedule.timesteps
        d["num_points"] = self.config.model.num_points
        return d

    @classmethod
    def from_config_dict(cls, d: Mapping[str, Any]) -> "DiffusionTask":
        return cls(config_from_dict(DiffusionTaskConfig, d))


    @classmethod
    def presets(cls) -> dict[str, DiffusionTaskConfig]:
        p = diffusion_presets()
        return {
            "tiny": DiffusionTaskConfig(model=p["tiny"], replay_size=64, save_every=1, val_samples=4, val_steps=8,
                                        guidance_grid=(1.0, 2.0)),
            "full": DiffusionTaskConfig(model=p["full"], replay_size=800, save_every=10, val_samples=16, val_steps=25,
                                        guidance_grid=(1.0, 1.5, 2.0, 3.0)),
        }

    @classmethod
    def engine_presets(cls) -> dict[str, dict[str, Any]]:
        return {
            # Sampling uses the EMA of the weights (`load_trained`); tiny runs are short, so a faster one.
            "tiny": {"epochs": 4, "batch_size": 8, "lr": 1e-3, "device": "cpu", "ema_decay": 0.99},
            "full": {"epochs": 200, "batch_size": 32, "lr": 1e-4, "weight_decay": 0.0, "warmup_steps": 1000, "precision": "bf16",
                     "ema_decay": 0.999},
        }

    # -- data --------------------------------------------------------------------------
    def build_datasets(self, data_dir: Path, *, seed: int = 0):
        from cad3d.data.dataset import CAD2D3DDataset

        m = self.config.model
        return split_datasets(data_dir, lambda split, augment: CameraDataset(CAD2D3DDataset(
            data_dir, augment=augment and self.config.augment, split=split, image_size=m.image_size,
            num_points=m.num_points, seed=seed)))

    # -- model -------------------------------------------------------------------------
    @classmethod
    def from_checkpoint(cls, payload: Mapping[str, Any]) -> "DiffusionTask":
        task = super().from_checkpoint(payload)
        task.config.vit_checkpoint = None  # the checkpoint holds the encoder's trained weights
        return task

    def _vit_encoder(self) -> nn.Module:
        from cad3d.models.image_encoders import ViTImageEncoder
        from cad3d.models.vit import VisionTransformer, VisionTransformerConfig

        vit = VisionTransformer(VisionTransformerConfig.from_dict(self.config.vit_encoder))
        if self.config.vit_checkpoint:
            from cad3d.training.loader import load_trained

            vit.load_state_dict(load_trained(self.config.vit_checkpoint, kind="vit", weights="raw").model.state_dict())
        return ViTImageEncoder(vit, vit.config.width, out_dim=self.config.model.encoder.out_dim, tokens=False, fmap=True)

    def build_modules(self) -> dict[str, nn.Module]:
        if self.model is None:
            encoder = self._vit_encoder() if self.config.vit_encoder else None
            self.model = Diffusion3DModel(self.config.model, image_encoder=encoder)
        return {"image_encoder": self.model.image_encoder, "unet": self.model.unet}

    def inference_model(self, modules: Mapping[str, nn.Module]) -> Diffusion3DModel:
        """The `Diffusion3DModel` around ``modules`` (the networks `build_modules` made)."""
        if self.model is None or self.model.unet is not modules["unet"] or self.model.image_encoder is not modules["image_encoder"]:
            raise ValueError("inference_model needs the modules this task built")
        return self.model

    def schedule(self, device: torch.device) -> NoiseSchedule:
        if self._schedule is None or self._schedule.betas.device != torch.device(device):
            self._schedule = NoiseSchedule(self.config.model.schedule).to(device)
        return self._schedule

    # -- steps -------------------------------------------------------------------------
    def _mix_replay(self, images: torch.Tensor, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch plus round(replay_ratio * B) pairs from the buffer (before this batch joins it)."""
        k = int(round(self.config.replay_ratio * images.shape[0]))
        if k == 0 or len(self.replay_buffer) == 0:
            return images, points
        old_images, old_points = self.replay_buffer.sample(k)  # (k, C, H, W), (k, N, 3)
        if old_images.shape[1:] != images.shape[1:] or old_points.shape[1:] != points.shape[1:]:
            raise ValueError(
                f"replay buffer pairs {tuple(old_images.shape[1:])}/{tuple(old_points.shape[1:])} do not match the "
                f"batch {tuple(images.shape[1:])}/{tuple(points.shape[1:])}: same image_size and num_points needed"
            )
        images = torch.cat([images, old_images.to(images.device, images.dtype)])  # (B+k, C, H, W)
        points = torch.cat([points, old_points.to(points.device, points.dtype)])  # (B+k, N, 3)
        return images, points

    @staticmethod
    def _cameras(batch: Any, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch's cameras (B, V, 2, 4) and views (B, V), or iso for (image, points) batches."""
        if len(batch) >= 4:
            return batch[2], batch[3]
        return iso_projection(images.shape[0], images.device)

    def training_step(self, modules: Mapping[str, nn.Module], batch: Any, ctx: StepContext):
        images, points = batch[0], batch[1]  # (B, 3, H, W), (B, N, 3)
        cams, views = self._cameras(batch, images)
        mixed_images, mixed_points = self._mix_replay(images, points)
        if len(mixed_images) > len(images):  # replayed pairs were drawn as single iso views
            extra_cams, extra_views = iso_projection(len(mixed_images) - len(images), images.device)
            cams, views = torch.cat([cams, extra_cams.to(cams.dtype)]), torch.cat([views, extra_views])
        if self.config.offer_to_replay:
            self.replay_buffer.add(images, points)
        return denoising_loss(
            modules["image_encoder"], modules["unet"], self.schedule(ctx.device), mixed_images, mixed_points,
            ctx.generator, self.config.model.cond_drop_prob, cams, views,
        )

    def on_epoch_start(self, epoch: int, total_epochs: int) -> None:
        self._val_sampled = 0  # val drawings sampled so far this epoch
        self._val_by_guidance: dict[float, list[float]] = {}

    def validation_step(self, modules: Mapping[str, nn.Module], batch: Any, ctx: StepContext) -> dict[str, float]:
        images, points = batch[0], batch[1]
        cams, views = self._cameras(batch, images)
        loss, _ = denoising_loss(modules["image_encoder"], modules["unet"], self.schedule(ctx.device), images, points,
                                 ctx.generator, 0.0, cams, views)
        metrics = {"val_loss": float(loss)}
        k = min(len(images), self.config.val_samples - getattr(self, "_val_sampled", 0))
        if k > 0:  # sample a few val drawings at each guidance scale: the score conversion is judged by
            self._val_sampled = getattr(self, "_val_sampled", 0) + k
            model = self.inference_model(modules)
            noise = torch.randn(points[:k].shape, generator=ctx.generator, device=ctx.generator.device).to(points.device)
            for g in self.config.guidance_grid:
                clouds = model.sample(images[:k], self.config.val_steps, g, x_T=noise, cams=cams[:k], views=views[:k])
                cd = chamfer_distance(clouds.float(), points[:k].float(), reduction="none")  # (k,)
                self._val_by_guidance.setdefault(g, []).extend(cd.tolist())
                metrics[f"val_chamfer_g{g:g}"] = float(cd.mean())
            best = min(self._val_by_guidance, key=lambda g: np.mean(self._val_by_guidance[g]))
            self.config.model.guidance_scale = best  # stored with the weights (model_config)
            metrics["val_chamfer"] = float(np.mean(self._val_by_guidance[best]))
            metrics["guidance_scale"] = best
        return metrics

    # -- checkpoint / logs --------------------------------------------------------------
    def checkpoint_extras(self) -> dict[str, Any]:
        return {"model_config": self.config.model.to_dict()}

    def load_checkpoint_extras(self, payload: Mapping[str, Any]) -> None:
        if payload.get("replay_buffer") is not None:  # a file that carries its own buffer
            self.replay_buffer.load_state_dict(payload["replay_buffer"])

    def run_state(self) -> Optional[dict[str, Any]]:
        return {"replay_buffer": self.replay_buffer.state_dict()} if self.replay_buffer.capacity else None

    def load_run_state(self, state: Mapping[str, Any]) -> None:
        if state.get("replay_buffer") is not None:
            self.replay_buffer.load_state_dict(state["replay_buffer"])

    @classmethod
    def replay_state(cls, path: Path, payload: Mapping[str, Any]) -> Optional[dict]:
        """The replay buffer state of the checkpoint ``payload`` read from ``path``: its own copy,
        else the run-state file of its folder; None when there is none."""
        from cad3d.training.run_files import load_run_state

        if payload.get("replay_buffer") is not None:
            return payload["replay_buffer"]
        state = load_run_state(Path(path), payload, cls.schema.run_state_file)
        return (state or {}).get("replay_buffer")

    def epoch_log_extras(self) -> dict[str, Any]:
        return {"replay_buffer_size": len(self.replay_buffer)}

    def report_extras(self) -> dict[str, Any]:
        return {"replay_buffer_size": len(self.replay_buffer), "replay_buffer_capacity": self.replay_buffer.capacity}

    # -- verification -------------------------------------------------------------------
    def example_batch(self, batch_size: int = 2, generator: torch.Generator | None = None):
        m = self.config.model
        images = torch.ones(batch_size, 3, m.image_size, m.image_size)  # (B, 3, H, W) blank paper
        points = torch.rand(batch_size, m.num_points, 3, generator=generator) * 2 - 1  # (B, N, 3)
        return images, points

    def forward_check(self, modules: Mapping[str, nn.Module], batch: Any) -> torch.Tensor:
        images, points = batch[0], batch[1]
        for m in modules.values():
            m.eval()
        with torch.no_grad():
            feats = modules["image_encoder"](images)
            t = torch.full((points.shape[0],), self.config.model.schedule.timesteps // 2, dtype=torch.long)
            # A projection-conditioned U-Net reads the drawings as iso views.
            return modules["unet"](points, t, feats.vector, feats.tokens, None, image_projection(feats))  # (B, N, 3)


__all__ = ["DiffusionTask", "DiffusionTaskConfig"]
