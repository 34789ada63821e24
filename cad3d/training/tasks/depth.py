"""The depth network as a training task: drawing -> relative inverse depth (MiDaS convention).

    cad3d train depth --data training_data/diffusion_synthetic --preset tiny

writes ``trained_models/depth/``: ``depth_epoch_N.pth``, ``depth_best.pth`` (lowest val_loss),
``depth_last.pth``, ``depth_epoch_log.json`` and ``depth_training_report.json``; checkpoint keys
epoch, global_step, model_state, optimizer_state, scheduler_state, val_loss, loss_history,
model_config (+ the engine's ``cad3d_meta`` / resume state). When training completes, the final
network is exported to ONNX under the run's folder (``OUT/cad3d_depth_256.onnx`` and its sidecar,
with the MiDaS v2.1 small contract; see `cad3d.models.depth_contract`) and, with
``config.publish_onnx`` (``--publish-onnx``), also published there (e.g.
``models/cad3d_depth_256.onnx``, where the converter looks). A run stopped by ``--max-steps``
before its last epoch exports nothing (its weights are not the trained model); resuming it
exports at the end. A failed export fails the run (exit 1) after the checkpoints are saved. The
report's ``onnx`` field says what happened.

Target and loss. MiDaS-style models output relative inverse depth (larger = closer, unknown scale
and shift), so ours learns the same thing from the rendered camera depth ``c_z`` (world units,
0 = background) of each drawing:

* ``ssi`` — scale-and-shift-invariant loss on the part's pixels (MiDaS, Ranftl et al. 2020):
  prediction and target inverse depth ``1 / c_z`` are each normalized per image by their median
  and mean absolute deviation from it, then compared by mean absolute error. A constant
  prediction scores exactly 1; a perfect (affine) one 0. The normalization divides by a positive
  spread, so the sign is fixed: larger output = closer.
* ``fg`` — foreground/background hinge: ``relu(out)^2`` on paper and ``relu(1 - out)^2`` on the
  part (the two means averaged), which pins the free scale/shift so that background <= 0 < 0.5 <
  1 <= part, as MiDaS gives far background small values.

``loss = ssi + fg_weight * fg``; validation reports ``val_loss`` and its two parts.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cad3d.config import config_from_dict
from cad3d.data.dataset import index_dataset, load_depth, load_drawing, load_layers
from cad3d.geometry.camera import EYE_DISTANCE
from cad3d.errors import DatasetError
from cad3d.models.depth_net import DepthNet, DepthNetConfig, depth_presets
from cad3d.training.tasks.base import CheckpointSchema, StepContext, TrainEndError, TrainTask, register_task
from cad3d.training.tasks.splits import split_datasets

logger = logging.getLogger(__name__)


class DrawingDepthDataset(torch.utils.data.Dataset):
    """(drawing, camera depth[, layered depth]) of a dataset folder.

    ``dataset[i]`` is ``(image (3, S, S) float32 RGB in [0, 1], depth (S, S) float32 c_z in world
    units, 0 = background)``, both at ``image_size`` S (drawing resized bilinearly, depth by
    nearest neighbour so no pixel mixes part and paper), plus with ``layers`` K > 0 the layered
    depth (K, S, S) of ``layers/<stem>.npy`` (nearest neighbour, 0 = no crossing). With
    ``augment``, a left-right mirror (a mirrored part seen by a mirrored camera: still a valid
    drawing/depth pair) drawn from ``(seed, epoch, i)``. Missing files are errors naming them.
    """

    def __init__(self, data_dir, image_size: int = 256, augment: bool = False, split: str | None = None, seed: int = 0,
                 layers: int = 0):
        self.data_dir = Path(data_dir)
        self.layers = int(layers)
        self.image_size = int(image_size)
        self.augment = bool(augment)
        self.seed = int(seed)
        self.epoch = 0
        self.records = index_dataset(self.data_dir, split)
        for rec in self.records:
            if rec.depth is None:
                raise DatasetError(f"{self.data_dir / 'depth' / (rec.stem + '.npy')}: missing depth map of sample {rec.stem} (the depth task needs depth/)")

    def __len__(self) -> int:
        return len(self.records)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, ...]:
        rec = self.records[i]
        s = self.image_size
        gray = torch.from_numpy(load_drawing(rec.image, s))  # (S, S)
        maps = [torch.from_numpy(load_depth(rec.depth))[None]]  # (1, h, w)
        if self.layers:
            stack = torch.from_numpy(load_layers(self.data_dir / "layers" / f"{rec.stem}.npy"))[: self.layers]  # (k, h, w)
            if stack.shape[0] < self.layers:  # fewer crossings stored than the model predicts
                stack = torch.cat([stack, stack.new_zeros(self.layers - stack.shape[0], *stack.shape[1:])])
            maps.append(stack)
        maps = [m if tuple(m.shape[-2:]) == (s, s) else F.interpolate(m[None], size=(s, s), mode="nearest")[0] for m in maps]
        if self.augment and np.random.default_rng([self.seed, self.epoch, i]).random() < 0.5:
            gray, maps = gray.flip(-1), [m.flip(-1) for m in maps]
        image = gray.unsqueeze(0).expand(3, -1, -1).contiguous()
        return (image, maps[0][0].contiguous()) + tuple(m.contiguous() for m in maps[1:])


@dataclass
class DepthTaskConfig:
    model: DepthNetConfig = field(default_factory=DepthNetConfig)
    fg_weight: float = 1.0  # weight of the foreground/background hinge
    layer_weight: float = 1.0  # weight of the layered-depth terms (model.layers > 0)
    augment: bool = True
    export_onnx: bool = True  # at the end of a completed run: OUT/cad3d_depth_256.onnx
    publish_onnx: Optional[str] = None  # and a copy here (e.g. models/cad3d_depth_256.onnx)


def inverse_depth_target(depth: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """depth (B, H, W) c_z (0 = background) -> (inverse depth (B, H, W), 0 off the part; mask)."""
    mask = depth > 0  # (B, H, W)
    inv = torch.where(mask, 1.0 / depth.clamp_min(1e-6), torch.zeros_like(depth))
    return inv, mask


def _median_mad(x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image median and mean |x - median| over the mask: x, mask (B, H, W) -> (B,), (B,)."""
    b = x.shape[0]
    flat, m = x.reshape(b, -1), mask.reshape(b, -1)
    filled = torch.where(m, flat, torch.full_like(flat, float("inf")))
    count = m.sum(1).clamp_min(1)  # (B,)
    # The lower median of the masked values (inf padding sorts last).
    med = filled.sort(dim=1).values.gather(1, ((count - 1) // 2).unsqueeze(1)).squeeze(1)  # (B,)
    med = torch.where(m.any(1), med, torch.zeros_like(med))
    mad = ((flat - med[:, None]).abs() * m).sum(1) / count  # (B,)
    return med, mad


def ssi_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Scale-and-shift-invariant MAE (MiDaS) over the masked pixels, mean over images with any.

    pred, target (B, H, W); mask (B, H, W) bool. Each of pred and target is normalized per image
    to median 0 and mean absolute deviation 1 (a constant prediction normalizes to 0 and scores 1)."""
    pm, ps = _median_mad(pred, mask)
    tm, ts = _median_mad(target, mask)
    pn = (pred - pm[:, None, None]) / (ps[:, None, None] + eps)  # (B, H, W)
    tn = (target - tm[:, None, None]) / (ts[:, None, None] + eps)
    count = mask.flatten(1).sum(1)  # (B,)
    per_image = ((pn - tn).abs() * mask).flatten(1).sum(1) / count.clamp_min(1)  # (B,)
    valid = count > 0
    return per_image[valid].mean() if valid.any() else pred.sum() * 0.0


def foreground_loss(pred: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Hinge: relu(pred)^2 on background, relu(1 - pred)^2 on the part; class means averaged."""
    bg, fg = ~mask, mask
    bg_term = (F.relu(pred) ** 2 * bg).sum() / bg.sum().clamp_min(1)
    fg_term = (F.relu(1.0 - pred) ** 2 * fg).sum() / fg.sum().clamp_min(1)
    return 0.5 * (bg_term + fg_term)


def layered_depth_loss(depth_pred: torch.Tensor, logits: torch.Tensor, layers: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(L1 of the predicted relative depth on the crossings that exist, BCE of the presence
    logits): depth_pred, logits (B, K, H, W); layers (B, K, H, W) camera depth c_z, 0 = none."""
    present = layers > 0
    rel = torch.where(present, layers - EYE_DISTANCE, torch.zeros_like(layers))
    l1 = ((depth_pred.float() - rel).abs() * present).sum() / present.sum().clamp_min(1)
    bce = F.binary_cross_entropy_with_logits(logits.float(), present.float())
    return l1, bce


def predicted_layers(depth_pred: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """Camera depth c_z (..., K, H, W) of the crossings the network says exist, 0 elsewhere."""
    return torch.where(logits > 0, depth_pred.float() + EYE_DISTANCE, torch.zeros_like(depth_pred, dtype=torch.float32))


def layered_chamfer(depth_pred: torch.Tensor, logits: torch.Tensor, layers: torch.Tensor, num_points: int = 1024) -> float:
    """Mean Chamfer-L2 between the clouds lifted from predicted and true layered depth (B, K, H, W),
    through the iso camera of the image size (exact for single-view drawings; a proxy for sheets)."""
    from cad3d.data.layers import sample_layers
    from cad3d.geometry.camera import iso_camera
    from cad3d.geometry.ops import chamfer_distance

    cam = iso_camera(tuple(layers.shape[-2:]))
    pred = predicted_layers(depth_pred, logits).cpu().numpy()
    true = layers.float().cpu().numpy()
    scores = []
    for i in range(len(true)):
        rng = np.random.default_rng(i)
        try:
            a = sample_layers(pred[i], [cam], num_points, rng)
        except ValueError:  # nothing predicted: as far off as a cloud at the origin
            a = np.zeros((num_points, 3), dtype=np.float32)
        b = sample_layers(true[i], [cam], num_points, rng)
        scores.append(float(chamfer_distance(torch.from_numpy(a)[None], torch.from_numpy(b)[None])))
    return float(np.mean(scores))


def depth_loss(pred: torch.Tensor, depth: torch.Tensor, fg_weight: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """pred (B, H, W) network output; depth (B, H, W) camera depth c_z (0 = background)."""
    target, mask = inverse_depth_target(depth.float())
    ssi = ssi_loss(pred.float(), target, mask)
    fg = foreground_loss(pred.float(), mask)
    return ssi + fg_weight * fg, {"ssi": ssi.detach(), "fg": fg.detach()}


@register_task
class DepthTask(TrainTask):
    name = "depth"
    display_name = "Depth network (relative inverse depth)"
    architecture = "U-Net (GroupNorm, bilinear up, skips) -> relative inverse depth; ONNX with the MiDaS v2.1 small contract"
    config_class = DepthTaskConfig
    schema = CheckpointSchema(
        model="depth",
        module_keys={"model": "model_state"},
        epoch_file="depth_epoch_{epoch}.pth",
        last_file="depth_last.pth",
        best_file="depth_best.pth",
        epoch_log_file="depth_epoch_log.json",
        report_file="depth_training_report.json",
        monitor="val_loss",
        engine_keys={"val_loss": "val_loss", "loss_history": "loss_history", "model_config": "task_config"},
    )

    def __init__(self, config: DepthTaskConfig | None = None):
        super().__init__(config)
        self._model: nn.Module | None = None  # the module built for the engine (exported at the end)

    @classmethod
    def from_config_dict(cls, d: Mapping[str, Any]) -> "DepthTask":
        d = dict(d)
        if isinstance(d.get("model"), Mapping):
            d["model"] = config_from_dict(DepthNetConfig, d["model"])
        return cls(config_from_dict(DepthTaskConfig, d))

    # -- presets / data ----------------------------------------------------------------
    @classmethod
    def presets(cls) -> dict[str, DepthTaskConfig]:
        return {name: DepthTaskConfig(model=config) for name, config in depth_presets().items()}

    @classmethod
    def engine_presets(cls) -> dict[str, dict[str, Any]]:
        return {
            "tiny": {"epochs": 10, "batch_size": 4, "lr": 3e-3, "device": "cpu"},
            "full": {"epochs": 100, "batch_size": 16, "lr": 1e-3, "weight_decay": 1e-4},
        }

    def build_datasets(self, data_dir: Path, *, seed: int = 0):
        """(train, val): the folder's train/val splits, or all samples and no val without a manifest."""
        cfg = self.config
        return split_datasets(data_dir, lambda split, augment: DrawingDepthDataset(
            data_dir, image_size=cfg.model.image_size, augment=augment and cfg.augment, split=split, seed=seed,
            layers=cfg.model.layers))

    # -- model / steps ------------------------------------------------------------------
    def build_modules(self) -> dict[str, nn.Module]:
        self._model = DepthNet(self.config.model)
        return {"model": self._model}

    def _loss(self, model: nn.Module, batch: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor], Any]:
        images, depth = batch[0], batch[1]  # (B, 3, S, S), (B, S, S)
        if not self.config.model.layers:
            loss, parts = depth_loss(model(images), depth, self.config.fg_weight)
            return loss, parts, None
        inv, layer_depth, logits = model.forward_all(images)  # (B, S, S), (B, K, S, S) x2
        loss, parts = depth_loss(inv, depth, self.config.fg_weight)
        l1, bce = layered_depth_loss(layer_depth, logits, batch[2])
        parts.update(layer_l1=l1.detach(), presence=bce.detach())
        return loss + self.config.layer_weight * (l1 + bce), parts, (layer_depth, logits)

    def training_step(self, modules: Mapping[str, nn.Module], batch: Any, ctx: StepContext):
        loss, parts, _ = self._loss(modules["model"], batch)
        return loss, parts

    def validation_step(self, modules: Mapping[str, nn.Module], batch: Any, ctx: StepContext) -> dict[str, float]:
        loss, parts, layered = self._loss(modules["model"], batch)
        metrics = {"val_loss": float(loss), **{f"val_{k}": float(v) for k, v in parts.items()}}
        if layered is not None:
            metrics["val_chamfer"] = layered_chamfer(*layered, batch[2])
        return metrics

    # -- end of training: ONNX ---------------------------------------------------------
    def on_train_end(self, out_dir: Path, completed: bool, metrics: Mapping[str, float]) -> dict[str, Any]:
        """Export the final network to ``out_dir/cad3d_depth_256.onnx`` (then publish it to
        ``config.publish_onnx``) when training completed, with the last validation's val_chamfer
        (what the converter's `auto` compares); say why not otherwise. A failed export
        raises `TrainEndError` (the checkpoints are saved: export again later with
        `cad3d.training.depth_export.export_depth_checkpoint` on ``depth_best.pth``)."""
        from cad3d.models.depth_contract import OUR_MODEL_NAME
        from cad3d.training.depth_export import export_depth_onnx, publish_export

        if not self.config.export_onnx or self._model is None:
            return {"onnx": None}
        if not completed:
            why = ("not exported: training stopped at max_steps before its last epoch; resume it with --resume auto "
                   "(it exports when done) or export depth_best.pth with export_depth_checkpoint")
            logger.info("ONNX %s", why)
            return {"onnx": {"skipped": why}}
        path = Path(out_dir) / OUR_MODEL_NAME
        try:
            info: dict[str, Any] = {"task_config": self.config_dict()}
            if "val_chamfer" in metrics:
                info["val_chamfer"] = float(metrics["val_chamfer"])
            result = export_depth_onnx(self._model, path, extra_info=info)
            published = publish_export(result, self.config.publish_onnx) if self.config.publish_onnx else None
        except Exception as exc:  # noqa: BLE001 - the exporter and onnxruntime fail in many ways
            target = self.config.publish_onnx if path.is_file() else path
            raise TrainEndError(
                f"ONNX export to {target} failed ({exc}); the checkpoints in {out_dir} are saved: export "
                f"{Path(out_dir) / self.schema.best_file} with cad3d.training.depth_export.export_depth_checkpoint",
                {"onnx": {"path": str(path), "error": str(exc)}},
            ) from None
        logger.info("exported %s (max |onnx - torch| %.2g)%s", result.path, result.max_abs_diff,
                    f"; published {published}" if published else "")
        return {"onnx": {"path": str(result.path), "sidecar": str(result.sidecar), "max_abs_diff": result.max_abs_diff,
                         "published": str(published) if published else None}}

    # -- verification -------------------------------------------------------------------
    def example_batch(self, batch_size: int = 2, generator: torch.Generator | None = None):
        s = self.config.model.image_size
        images = torch.rand(batch_size, 3, s, s, generator=generator)  # (B, 3, S, S)
        depth = torch.zeros(batch_size, s, s)  # (B, S, S): a square part at depth 2.5..3.5
        q = s // 4
        depth[:, q : 3 * q, q : 3 * q] = 2.5 + torch.rand(batch_size, 2 * q, 2 * q, generator=generator)
        if not self.config.model.layers:
            return images, depth
        layers = torch.zeros(batch_size, self.config.model.layers, s, s)  # (B, K, S, S): entered, then left
        layers[:, 0] = depth
        layers[:, 1] = torch.where(depth > 0, depth + 0.5, depth)
        return images, depth, layers

    def forward_check(self, modules: Mapping[str, nn.Module], batch: Any) -> torch.Tensor:
        model = modules["model"]
        model.eval()
        with torch.no_grad():
            return model(batch[0])  # (B, S, S)
