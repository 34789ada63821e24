"""The ViT as a training task (``cad3d train vit``): its loss, metrics and checkpoint schema.

Loss: Chamfer (CD-L2, `cad3d.geometry.ops.chamfer_distance`) between the predicted and
ground-truth clouds plus ``family_loss_weight`` x cross-entropy of the part family (samples of
unknown family are left out of that term).

Files in the run folder: ``checkpoint_epoch_N.pth`` every 5 epochs, ``final_model.pth``,
``training_history.json`` (one entry per epoch), plus ``checkpoint_last.pth`` every epoch for
resume. Keys: epoch, model_state_dict, optimizer_state_dict, scheduler_state_dict,
best_val_loss, model_config, train_config (plain dicts), and the engine's
``cad3d_meta``/``cad3d_resume``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from cad3d.config import config_from_dict
from cad3d.data.families import FAMILIES
from cad3d.geometry.ops import chamfer_distance, f_score
from cad3d.models.vit import VisionTransformer, VisionTransformerConfig, vit_presets
from cad3d.training.tasks.base import CheckpointSchema, StepContext, TrainTask, register_task
from cad3d.training.tasks.splits import split_datasets

logger = logging.getLogger(__name__)

IGNORE_FAMILY = -100  # family index of samples whose family is unknown (cross-entropy skips them)


@dataclass
class ViTTaskConfig:
    """What the task needs besides the loop settings: the architecture and the loss/data choices."""

    model: VisionTransformerConfig = field(default_factory=VisionTransformerConfig)
    family_loss_weight: float = 0.1
    augment: bool = True


class FamilyLabeledDataset(torch.utils.data.Dataset):
    """`CAD2D3DDataset` samples with the family index: ``(image (3,H,W), points (N,3), family)``.

    ``family`` is a 0-d int64 tensor, the index in ``cad3d.data.families.FAMILIES`` (or
    `IGNORE_FAMILY` when the sample's family is unknown, e.g. imported meshes).
    """

    def __init__(self, base):
        self.base = base
        families = FAMILIES
        self.family_index = [
            families.index(r.family) if r.family in families else IGNORE_FAMILY for r in base.records
        ]

    def __len__(self) -> int:
        return len(self.base)

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.base, "set_epoch"):
            self.base.set_epoch(epoch)

    @property
    def records(self):
        return self.base.records

    def __getitem__(self, i: int):
        image, points = self.base[i]
        return image, points, torch.tensor(self.family_index[i], dtype=torch.long)


def family_cross_entropy(logits: torch.Tensor, family: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over samples of known family; 0 when there are none (no NaN).

    logits (B, F), family (B,) int64 with `IGNORE_FAMILY` for unknown.
    """
    known = family != IGNORE_FAMILY  # (B,)
    total = F.cross_entropy(logits.float(), family, ignore_index=IGNORE_FAMILY, reduction="sum")
    return total / known.sum().clamp(min=1)


@register_task
class ViTTask(TrainTask):
    """The ViT for the training engine (``cad3d train vit``)."""

    name = "vit"
    display_name = "Vision Transformer CAD"
    architecture = "ViT (patch embedding, pre-norm SDPA blocks) with point-set and part-family heads"
    model_config_class = VisionTransformerConfig
    config_class = ViTTaskConfig
    schema = CheckpointSchema(
        model="vit",
        module_keys={"model": "model_state_dict"},
        epoch_file="checkpoint_epoch_{epoch}.pth",
        last_file="checkpoint_last.pth",
        final_file="final_model.pth",
        every_n_epochs=5,
        optimizer_key="optimizer_state_dict",
        scheduler_key="scheduler_state_dict",
        epoch_log_file="training_history.json",
        monitor="val_loss",
        mode="min",
        # train_config: the EngineConfig dict for `cad3d train`; the trainer facade's
        # `TrainingConfig` replaces it through checkpoint_extras.
        engine_keys={"best_val_loss": "best_metric", "train_config": "engine_config"},
    )

    def __init__(self, config: ViTTaskConfig | None = None, train_config=None):
        super().__init__(config)
        self.train_config = train_config

    # -- config ------------------------------------------------------------------------
    @classmethod
    def from_config_dict(cls, d: Mapping[str, Any]) -> "ViTTask":
        d = dict(d)
        return cls(config_from_dict(ViTTaskConfig, d, model=VisionTransformerConfig.from_dict(d.pop("model", {}))))


    @classmethod
    def presets(cls) -> dict[str, ViTTaskConfig]:
        return {name: ViTTaskConfig(model=config) for name, config in vit_presets().items()}

    @classmethod
    def engine_presets(cls) -> dict[str, dict[str, Any]]:
        return {
            "tiny": {"epochs": 5, "batch_size": 8, "lr": 1e-3, "weight_decay": 0.0},
            "full": {"epochs": 100, "batch_size": 32, "lr": 3e-4, "weight_decay": 0.05, "warmup_steps": 500},
        }

    # -- data --------------------------------------------------------------------------
    def build_datasets(self, data_dir: Path, *, seed: int = 0):
        """Train split (augmented) and val split of ``data_dir`` as (image, points, family)."""
        from cad3d.data.dataset import CAD2D3DDataset

        m = self.config.model
        return split_datasets(data_dir, lambda split, augment: FamilyLabeledDataset(CAD2D3DDataset(
            data_dir, augment=augment and self.config.augment, split=split, image_size=m.image_size,
            num_points=m.num_points, seed=seed)))

    # -- model -------------------------------------------------------------------------
    def build_modules(self) -> dict[str, nn.Module]:
        return {"model": VisionTransformer(self.config.model)}

    def _loss(self, out: Mapping[str, torch.Tensor], points: torch.Tensor, family: torch.Tensor):
        chamfer = chamfer_distance(out["points"].float(), points.float(), norm="l2")  # scalar
        loss = chamfer
        parts = {"chamfer": chamfer.detach()}
        if "family_logits" in out:
            ce = family_cross_entropy(out["family_logits"], family)
            loss = loss + self.config.family_loss_weight * ce
            parts["family_ce"] = ce.detach()
        return loss, parts

    # -- steps -------------------------------------------------------------------------
    def training_step(self, modules, batch, ctx: StepContext):
        image, points, family = batch  # (B, 3, H, W), (B, N, 3), (B,)
        out = modules["model"](image)
        return self._loss(out, points, family)

    def validation_step(self, modules, batch, ctx: StepContext) -> dict[str, float]:
        image, points, family = batch
        out = modules["model"](image)
        loss, parts = self._loss(out, points, family)
        fscore, _, _ = f_score(out["points"].float(), points.float(), tau_rel=0.01)  # (B,)
        metrics = {"val_loss": float(loss), "val_chamfer": float(parts["chamfer"]), "fscore_1pct": float(fscore.mean())}
        known = family != IGNORE_FAMILY  # (B,)
        if "family_logits" in out and bool(known.any()):
            correct = (out["family_logits"].argmax(dim=-1) == family) & known
            metrics["family_acc"] = float(correct.sum()) / int(known.sum())
        return metrics

    # -- checkpoint extras -------------------------------------------------------------
    def checkpoint_extras(self) -> dict[str, Any]:
        extras: dict[str, Any] = {"model_config": self.config.model.to_dict()}
        if self.train_config is not None:
            extras["train_config"] = self.train_config.to_dict()
        return extras

    # -- verification ------------------------------------------------------------------
    def example_batch(self, batch_size: int = 2, generator: torch.Generator | None = None):
        m = self.config.model
        image = torch.rand(batch_size, m.in_channels, m.image_size, m.image_size, generator=generator)
        points = torch.rand(batch_size, m.num_points, 3, generator=generator) - 0.5
        family = torch.zeros(batch_size, dtype=torch.long)
        return image, points, family

    def forward_check(self, modules, batch) -> torch.Tensor:
        model = modules["model"]
        model.eval()
        with torch.no_grad():
            return model(batch[0])["points"]


__all__ = ["ViTTask", "ViTTaskConfig", "FamilyLabeledDataset"]
