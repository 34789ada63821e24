"""Training the ViT: its task for the engine (model, loss, metrics, checkpoint schema) and the
seed-000 facade `VisionTransformerTrainer(config, train_config)`.

    from cad3d.vit_trainer import VisionTransformerTrainer, TrainingConfig
    from cad3d.vision_transformer_cad import VisionTransformerConfig

    trainer = VisionTransformerTrainer(VisionTransformerConfig(), TrainingConfig(num_epochs=50))
    trainer.fit("training_data/diffusion_synthetic")   # trained_models/vit/
    trainer.load_checkpoint("trained_models/vit/final_model.pth")

Loss: Chamfer (CD-L2, `cad3d.geometry.ops.chamfer_distance`) between the predicted and
ground-truth clouds plus ``family_loss_weight`` x cross-entropy of the part family (samples of
unknown family are left out of that term).

Files in ``checkpoint_dir`` (seed 000): ``checkpoint_epoch_N.pth`` every 5 epochs,
``final_model.pth``, ``training_history.json`` (one entry per epoch), plus
``checkpoint_last.pth`` every epoch for resume. Keys: epoch, model_state_dict,
optimizer_state_dict, scheduler_state_dict, best_val_loss, model_config, train_config (plain
dicts), and the engine's ``cad3d_meta``/``cad3d_resume``.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional

import torch
import torch.nn.functional as F
from torch import nn

from cad3d.errors import DatasetError
from cad3d.geometry.ops import chamfer_distance, f_score
from cad3d.training.task import CheckpointSchema, StepContext, TrainTask, register_task
from cad3d.vision_transformer_cad import VisionTransformer, VisionTransformerConfig

logger = logging.getLogger(__name__)

IGNORE_FAMILY = -100  # family index of samples whose family is unknown (cross-entropy skips them)


def _families() -> tuple[str, ...]:
    from cad3d.data.parts import FAMILIES

    return FAMILIES


@dataclass
class TrainingConfig:
    """Seed-000 training settings of the ViT, saved in checkpoints as ``train_config``.

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
        d = {cls._ENGINE_NAMES.get(k, k): v for k, v in d.items()}
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def engine_config(self, **overrides):
        """The `EngineConfig` of these settings (``overrides``: other engine fields, e.g. resume)."""
        from cad3d.training.engine import EngineConfig

        own = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        fields = {f.name for f in dataclasses.fields(EngineConfig)}
        inverse = {v: k for k, v in self._ENGINE_NAMES.items()}
        values = {inverse.get(k, k): v for k, v in own.items() if inverse.get(k, k) in fields}
        values.update(overrides)
        return EngineConfig(**values)


@dataclass
class ViTTaskConfig:
    """What the task needs besides the loop settings: the architecture and the loss/data choices."""

    model: VisionTransformerConfig = field(default_factory=VisionTransformerConfig)
    family_loss_weight: float = 0.1
    augment: bool = True


class FamilyLabeledDataset(torch.utils.data.Dataset):
    """`CAD2D3DDataset` samples with the family index: ``(image (3,H,W), points (N,3), family)``.

    ``family`` is a 0-d int64 tensor, the index in ``cad3d.data.parts.FAMILIES`` (or
    `IGNORE_FAMILY` when the sample's family is unknown, e.g. imported meshes).
    """

    def __init__(self, base):
        self.base = base
        families = _families()
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
        # train_config: the EngineConfig dict for `cad3d train`; the facade's `TrainingConfig`
        # replaces it through checkpoint_extras.
        engine_keys={"best_val_loss": "best_metric", "train_config": "engine_config"},
    )

    def __init__(self, config: ViTTaskConfig | None = None, train_config: TrainingConfig | None = None):
        super().__init__(config)
        self.train_config = train_config

    # -- config ------------------------------------------------------------------------
    @classmethod
    def from_config_dict(cls, d: Mapping[str, Any]) -> "ViTTask":
        d = dict(d)
        model = VisionTransformerConfig.from_dict(d.pop("model", {}))
        names = {f.name for f in dataclasses.fields(ViTTaskConfig)}
        return cls(ViTTaskConfig(model=model, **{k: v for k, v in d.items() if k in names}))

    @classmethod
    def presets(cls) -> dict[str, ViTTaskConfig]:
        tiny = VisionTransformerConfig(
            image_size=64, patch_size=8, width=64, depth=2, num_heads=4, num_points=512, head_hidden=256
        )
        full = VisionTransformerConfig(
            image_size=256, patch_size=16, width=384, depth=8, num_heads=6, num_points=2048, head_hidden=1024
        )
        return {"tiny": ViTTaskConfig(model=tiny), "full": ViTTaskConfig(model=full)}

    @classmethod
    def engine_presets(cls) -> dict[str, dict[str, Any]]:
        return {
            "tiny": {"epochs": 5, "batch_size": 8, "lr": 1e-3, "weight_decay": 0.0},
            "full": {"epochs": 100, "batch_size": 32, "lr": 3e-4, "weight_decay": 0.05, "warmup_steps": 500},
        }

    # -- data --------------------------------------------------------------------------
    def build_datasets(self, data_dir: Path, *, seed: int = 0):
        """Train split (augmented) and val split of ``data_dir`` as (image, points, family).

        A folder without a manifest has no splits: all of it trains and there is no val set."""
        from cad3d.data.dataset import CAD2D3DDataset, read_manifests

        m = self.config.model
        kw = dict(image_size=m.image_size, num_points=m.num_points, seed=seed)
        if read_manifests(Path(data_dir)) is None:
            return FamilyLabeledDataset(CAD2D3DDataset(data_dir, augment=self.config.augment, split=None, **kw)), None
        train = CAD2D3DDataset(data_dir, augment=self.config.augment, split="train", **kw)
        try:
            val = CAD2D3DDataset(data_dir, augment=False, split="val", **kw)
        except DatasetError as exc:
            if "no samples" not in str(exc):
                raise
            logger.warning("%s has no val split: training without validation", data_dir)
            return FamilyLabeledDataset(train), None
        return FamilyLabeledDataset(train), FamilyLabeledDataset(val)

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
        metrics = {"val_loss": float(loss), "chamfer": float(parts["chamfer"]), "fscore_1pct": float(fscore.mean())}
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


class VisionTransformerTrainer:
    """Seed-000 facade: ``VisionTransformerTrainer(config, train_config)`` over the engine.

    ``fit`` trains with `cad3d.training.engine.Engine`; ``load_checkpoint`` reads a checkpoint
    through the checkpoint module (weights_only, hash-checked) into ``self.model``.
    """

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
            import json

            self.history = json.loads(log.read_text())
        self.best_val_loss = self.report.get("best_loss")
        self.epoch = self.report.get("total_epochs", 0)
        return self.report

    def load_checkpoint(self, path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
        """Load a ViT checkpoint into ``self.model`` (rebuilt when its ``model_config`` differs
        from ``self.config``); ``self.config``/``train_config``/``epoch``/``best_val_loss``
        follow the file. Returns the payload. Raises `CheckpointError` naming the file."""
        from cad3d.training.checkpoint import META_KEY, load_checkpoint, load_state_dict_strict

        schema = ViTTask.schema
        payload = load_checkpoint(path, map_location=map_location, expected_task=ViTTask.name)
        if isinstance(payload.get("model_config"), Mapping):
            config = VisionTransformerConfig.from_dict(payload["model_config"])
            if config != self.config:
                logger.info("%s: model_config differs from the trainer's; rebuilding the model from the checkpoint", path)
                self.config = config
                self.model = VisionTransformer(config)
        if isinstance(payload.get("train_config"), Mapping):
            train = dict(payload["train_config"])
            if "family_loss_weight" not in train:  # an EngineConfig dict (`cad3d train vit`)
                task_config = ((payload.get(META_KEY) or {}).get("config") or {}).get("task") or {}
                train.update({k: task_config[k] for k in ("family_loss_weight", "augment") if k in task_config})
            self.train_config = TrainingConfig.from_dict(train)
        load_state_dict_strict(self.model, payload.get(schema.module_keys["model"]), path=path, key=schema.module_keys["model"])
        self.epoch = int(payload.get(schema.epoch_key, 0))
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


__all__ = [
    "TrainingConfig",
    "ViTTaskConfig",
    "ViTTask",
    "FamilyLabeledDataset",
    "VisionTransformerTrainer",
    "VisionTransformerConfig",
]
