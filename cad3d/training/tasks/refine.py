"""Retrieve-then-refine as a training task (``cad3d train refine``): `RetrievalRefiner`.

The train split becomes the model's index (its drawings and clouds are buffers of the weights).
Each training pair is a training drawing and one of its ``num_candidates`` nearest *other*
training drawings (by the same ink-thumbnail similarity the model retrieves with), drawn per
``(seed, epoch, index)``; the loss is the squared error of the predicted scores against the log
Chamfer-L1 the candidate reaches as retrieved and as stretched to the measured dimensions.

Validation converts each val drawing as the converter would (retrieve, measure, score) and reports
``val_chamfer`` (CD-L2 at ``val_points`` points: what `--method auto` compares), ``fscore_1pct``
the same Chamfer of plain retrieval (``val_chamfer_retrieval``) beside it, and how often each
option was chosen (``share_retrieved`` ...).

Files in the run folder: ``refine_epoch_N.pth`` every 5 epochs, ``refine_last.pth`` every epoch,
``refine_best.pth`` (lowest val_chamfer; what the converter loads), ``training_history.json``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cad3d.config import config_from_dict
from cad3d.errors import DatasetError
from cad3d.geometry.ops import chamfer_distance, f_score
from cad3d.models.refiner import OPTIONS, RefinerConfig, RetrievalRefiner, refiner_presets
from cad3d.training.tasks.base import CheckpointSchema, StepContext, TrainTask, register_task

logger = logging.getLogger(__name__)


@dataclass
class RefineTaskConfig:
    model: RefinerConfig = field(default_factory=RefinerConfig)
    loss_points: int = 1024  # points of each cloud when scoring the options in training
    # Share of training pairs whose candidates come from the query's nearest parts of *other*
    # families: what a part of a family the index lacks meets at conversion time.
    foreign_pairs: float = 0.3
    val_points: int = 2048

    def __post_init__(self) -> None:
        if isinstance(self.model, Mapping):
            self.model = RefinerConfig.from_dict(self.model)


def _subset(n_have: int, n: int, generator: torch.Generator, device) -> torch.Tensor:
    """(n,) random point indices below ``n_have`` (with repeats only when there are too few)."""
    if n_have >= n:
        return torch.randperm(n_have, generator=generator)[:n].to(device)
    return torch.randint(n_have, (n,), generator=generator).to(device)


class RefinePairs(torch.utils.data.Dataset):
    """Train: ``(query drawing (H, W), candidate index (), query index ())``, the candidate drawn per
    (seed, epoch, i) among the query's nearest other training parts (``neighbours`` (T, K)), or
    with probability ``foreign`` among its nearest parts of other families (``foreign_neighbours``).
    Val: ``(drawing (H, W), cloud (P, 3))`` of parts outside the index."""

    def __init__(self, drawings: torch.Tensor, clouds: torch.Tensor | None, neighbours: torch.Tensor | None,
                 records, seed: int = 0, foreign_neighbours: torch.Tensor | None = None, foreign: float = 0.0):
        self.drawings, self.clouds, self.neighbours = drawings, clouds, neighbours
        self.foreign_neighbours, self.foreign = foreign_neighbours, float(foreign)
        self.records, self.seed, self.epoch = records, int(seed), 0

    def __len__(self) -> int:
        return len(self.drawings)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __getitem__(self, i: int):
        if self.neighbours is None:
            return self.drawings[i], self.clouds[i]
        rng = np.random.default_rng([self.seed, self.epoch, i])
        pool = self.neighbours
        if self.foreign_neighbours is not None and rng.random() < self.foreign:
            pool = self.foreign_neighbours
        return self.drawings[i], pool[i, int(rng.integers(pool.shape[1]))], torch.tensor(i)


def _nearest(model: RetrievalRefiner, drawings: torch.Tensor, k: int, leave_out) -> torch.Tensor:
    """(T, k) each drawing's nearest indexed drawings, in chunks of 256 queries; ``leave_out(rows)``
    gives the (b, T) bool mask of what the queries ``rows`` (a slice) must not retrieve."""
    with torch.no_grad():
        return torch.cat([model.retrieve(drawings[i:i + 256], k, leave_out=leave_out(slice(i, i + 256)))
                          for i in range(0, len(drawings), 256)])


def read_split(data_dir: Path, split: str | None, image_size: int, num_points: int, seed: int):
    """(records, drawings (T, H, W) float32, clouds (T, P, 3) float32) of one split; each cloud a
    seeded subset of the stored sample, P = ``num_points`` or the smallest stored count if less."""
    from cad3d.data.dataset import choose_points, index_dataset, load_drawing, load_points

    records = index_dataset(data_dir, split)
    drawings = [load_drawing(r.image, image_size) for r in records]
    clouds = [load_points(r.points) for r in records]
    n = min([num_points] + [len(c) for c in clouds])
    clouds = [choose_points(c, n, np.random.default_rng([seed, i])) for i, c in enumerate(clouds)]
    if not records:
        return records, torch.zeros(0, image_size, image_size), torch.zeros(0, n, 3)
    return records, torch.from_numpy(np.stack(drawings)), torch.from_numpy(np.stack(clouds).astype(np.float32))


@register_task
class RefineTask(TrainTask):
    """`RetrievalRefiner` for the training engine (``cad3d train refine``)."""

    name = "refine"
    display_name = "Retrieve-then-refine"
    architecture = "ink-thumbnail retrieval, dimensions measured on the drawing, pair CNN scoring the candidates"
    model_config_class = RefinerConfig
    config_class = RefineTaskConfig
    schema = CheckpointSchema(
        model="refine",
        module_keys={"model": "model_state_dict"},
        epoch_file="refine_epoch_{epoch}.pth",
        last_file="refine_last.pth",
        best_file="refine_best.pth",
        every_n_epochs=5,
        optimizer_key="optimizer_state_dict",
        scheduler_key="scheduler_state_dict",
        epoch_log_file="training_history.json",
        monitor="val_chamfer",
        mode="min",
        engine_keys={"best_val_chamfer": "best_metric", "train_config": "engine_config"},
    )

    def __init__(self, config: RefineTaskConfig | None = None):
        super().__init__(config)
        self._index: tuple[torch.Tensor, torch.Tensor] | None = None

    @classmethod
    def from_config_dict(cls, d: Mapping[str, Any]) -> "RefineTask":
        return cls(config_from_dict(RefineTaskConfig, d))

    @classmethod
    def presets(cls) -> dict[str, RefineTaskConfig]:
        return {name: RefineTaskConfig(model=config) for name, config in refiner_presets().items()}

    @classmethod
    def engine_presets(cls) -> dict[str, dict[str, Any]]:
        return {
            "tiny": {"epochs": 6, "batch_size": 16, "lr": 1e-3, "weight_decay": 1e-4},
            "full": {"epochs": 60, "batch_size": 32, "lr": 3e-4, "weight_decay": 1e-4, "warmup_steps": 300,
                     "precision": "bf16"},
        }

    # -- data --------------------------------------------------------------------------
    def build_datasets(self, data_dir: Path, *, seed: int = 0):
        """The train split is read whole (it becomes the index); val parts are queries only."""
        from cad3d.data.dataset import read_manifests

        m = self.config.model
        has_splits = read_manifests(Path(data_dir)) is not None
        records, drawings, clouds = read_split(Path(data_dir), "train" if has_splits else None, m.image_size,
                                               m.index_points, seed)
        if len(records) < 2:
            raise DatasetError(f"{data_dir}: the refiner needs at least 2 training parts, found {len(records)}")
        m.index_size, m.index_points = len(records), clouds.shape[1]
        self._index = (drawings, clouds)
        probe = RetrievalRefiner(m)
        probe.set_index(drawings, clouds)
        rows = torch.arange(len(drawings))
        neighbours = _nearest(probe, drawings, m.num_candidates, lambda s: rows[s, None] == rows[None, :])
        foreign = None
        families = [r.family for r in records]
        if self.config.foreign_pairs > 0 and len(set(families)) > 1:
            # Each part's nearest parts of other families (parts of unknown family count as their
            # own family; its own family's only when there are too few others).
            labels = {f: i for i, f in enumerate(dict.fromkeys(families))}
            fam = torch.tensor([labels[f] if f is not None else len(labels) + i for i, f in enumerate(families)])
            foreign = _nearest(probe, drawings, m.num_candidates, lambda s: fam[s, None] == fam[None, :])
        train = RefinePairs(drawings, None, neighbours, records, seed, foreign, self.config.foreign_pairs)
        val = None
        if has_splits:
            val_records, val_drawings, val_clouds = read_split(Path(data_dir), "val", m.image_size, self.config.val_points, seed)
            val = RefinePairs(val_drawings, val_clouds, None, val_records) if val_records else None
        return train, val

    # -- model -------------------------------------------------------------------------
    def build_modules(self) -> dict[str, nn.Module]:
        model = RetrievalRefiner(self.config.model)
        if self._index is not None:
            model.set_index(*self._index)
        return {"model": model}

    @staticmethod
    def _chamfer(a: torch.Tensor, b: torch.Tensor, norm: str = "l1") -> torch.Tensor:
        return chamfer_distance(a.float(), b.float(), norm=norm, reduction="none")  # (B,)

    def training_step(self, modules, batch, ctx: StepContext):
        model = modules["model"]
        query, cand, target_idx = batch  # (B, H, W), (B,), (B,)
        n_idx = model.index_clouds.shape[1]
        pts = _subset(n_idx, self.config.loss_points, ctx.generator, query.device)
        tgt = _subset(n_idx, self.config.loss_points, ctx.generator, query.device)
        scores, ratio = model.score(query, cand)
        with torch.no_grad():  # what each option reaches; normalized as whole clouds, then subsampled
            opts = model.options(model.index_cloud(cand), ratio)[:, :, pts]  # (B, options, L, 3)
            target = model.index_cloud(target_idx)[:, tgt]  # (B, L, 3)
            reached = torch.stack([self._chamfer(opts[:, i], target) for i in range(opts.shape[1])], dim=1)
        loss = F.mse_loss(scores.float(), torch.log(reached + 1e-4))
        return loss, {"score_mse": loss.detach(), "chamfer_retrieved": reached[:, 0].mean(),
                      "chamfer_measured": reached[:, 1].mean()}

    def validation_step(self, modules, batch, ctx: StepContext) -> dict[str, float]:
        model = modules["model"]
        query, target = batch  # (B, H, W), (B, V, 3)
        n = target.shape[1]
        out = model(query)
        pts = _subset(out["points"].shape[1], n, ctx.generator, query.device)
        pred = out["points"][:, pts]
        plain = model.index_cloud(model.retrieve(query, 1)[:, 0])[:, pts]
        cd = self._chamfer(pred, target, "l2")
        fscore, _, _ = f_score(pred.float(), target.float(), tau_rel=0.01)
        metrics = {"val_chamfer": float(cd.mean()), "fscore_1pct": float(fscore.mean()),
                   "val_chamfer_retrieval": float(self._chamfer(plain, target, "l2").mean())}
        for i, name in enumerate(OPTIONS):
            metrics[f"share_{name}"] = float((out["option"] == i).float().mean())
        return metrics

    def checkpoint_extras(self) -> dict[str, Any]:
        return {"model_config": self.config.model.to_dict()}

    # -- verification ------------------------------------------------------------------
    def example_batch(self, batch_size: int = 2, generator: torch.Generator | None = None):
        m = self.config.model
        query = torch.rand(batch_size, m.image_size, m.image_size, generator=generator)
        n = max(m.index_size, 1)
        return query, torch.randint(n, (batch_size,), generator=generator), torch.randint(n, (batch_size,), generator=generator)

    def forward_check(self, modules, batch) -> torch.Tensor:
        model = modules["model"]
        model.eval()
        with torch.no_grad():
            return torch.cat(model.score(batch[0], batch[1]), dim=1)  # (B, options + 3)


__all__ = ["RefineTask", "RefineTaskConfig", "RefinePairs"]
