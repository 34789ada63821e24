"""Baselines every learned path has to beat, built from the train split only: nearest-drawing
retrieval and the medoid training cloud."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from cad3d.models.refiner import THUMB, ink_thumbnails

log = logging.getLogger(__name__)


THUMBNAIL_SIZE = THUMB  # the refine path retrieves with the same thumbnails
MEDOID_POOL = 64
MEDOID_POINTS = 512


def drawing_thumbnail(drawing: np.ndarray, size: int = THUMBNAIL_SIZE) -> np.ndarray:
    """(H, W) drawing in [0, 1] (1 = paper) -> (size * size,) float32 unit vector of ink (1 - paper),
    area-averaged (`cad3d.models.refiner.ink_thumbnails`); a blank page gives zeros."""
    from PIL import Image

    img = np.clip(np.asarray(drawing, dtype=np.float32), 0.0, 1.0)
    if img.shape[0] % size or img.shape[1] % size:  # whole blocks only: resize the others first
        img = np.asarray(Image.fromarray(img, mode="F").resize((size, size), Image.BOX), dtype=np.float32)
    return ink_thumbnails(torch.from_numpy(np.array(img, dtype=np.float32))[None], size)[0].numpy()


@dataclass
class RetrievalBaseline:
    """Nearest-neighbour retrieval: the training cloud whose drawing looks most like the query.

    ``thumbnails`` (T, S*S) unit ink vectors of the training drawings; ``points`` their cloud files
    (loaded when first retrieved).
    """

    thumbnails: np.ndarray
    points: list[Path]
    stems: list[str]
    _cache: dict = field(default_factory=dict, repr=False)

    @classmethod
    def from_records(cls, records) -> "RetrievalBaseline":
        from cad3d.data.dataset import load_drawing

        thumbs = np.stack([drawing_thumbnail(load_drawing(r.image)) for r in records])  # (T, S*S)
        return cls(thumbs, [r.points for r in records], [r.stem for r in records])

    def nearest(self, drawings: Sequence[np.ndarray]) -> np.ndarray:
        """(B,) index of the most similar training drawing for each query (H, W) drawing."""
        q = np.stack([drawing_thumbnail(d, int(math.isqrt(self.thumbnails.shape[1]))) for d in drawings])  # (B, S*S)
        return np.argmax(q @ self.thumbnails.T, axis=1)  # (B,)

    def cloud(self, index: int) -> np.ndarray:
        from cad3d.data.dataset import load_points

        if index not in self._cache:
            self._cache[index] = load_points(self.points[index])
        return self._cache[index]

    def predict(self, drawings: Sequence[np.ndarray]) -> list[np.ndarray]:
        """The retrieved clouds, (M, 3) each, as stored."""
        return [self.cloud(int(i)) for i in self.nearest(drawings)]


@dataclass
class OracleBaseline:
    """The ceiling: for each scored sample, its own stored surface sample (``pointclouds/``), an
    independent draw from the same surface as the dense ground truth."""

    points: list[Path]

    def predict_indices(self, indices: Sequence[int]) -> list[np.ndarray]:
        from cad3d.data.dataset import load_points

        return [load_points(self.points[i]) for i in indices]


def medoid_index(clouds: Sequence[np.ndarray], *, max_points: int = MEDOID_POINTS, seed: int = 0) -> int:
    """Index of the cloud with the smallest mean Chamfer-L2 to the others (each subsampled to
    ``max_points`` points, seeded). Clouds are (N_i, 3)."""
    from cad3d.data.dataset import choose_points
    from cad3d.geometry.ops import chamfer_distance

    if len(clouds) == 1:
        return 0
    rng = np.random.default_rng(seed)
    pts = torch.from_numpy(np.stack([choose_points(c, max_points, rng) for c in clouds]).astype(np.float32))  # (T, P, 3)
    t = pts.shape[0]
    dist = torch.zeros(t, t)
    with torch.no_grad():
        for i in range(t):
            dist[i] = chamfer_distance(pts[i].expand(t, -1, -1), pts, norm="l2", reduction="none")  # (T,)
    return int(torch.argmin(dist.sum(dim=1) / (t - 1)))


@dataclass
class MeanBaseline:
    """The medoid training cloud (see the module docstring), the same prediction for every drawing."""

    points: np.ndarray  # (M, 3)
    stem: str
    pool: int  # training clouds searched

    @classmethod
    def from_records(cls, records, *, pool: int = MEDOID_POOL, seed: int = 0) -> "MeanBaseline":
        from cad3d.data.dataset import load_points

        rng = np.random.default_rng(seed)
        chosen = sorted(rng.permutation(len(records))[:pool]) if len(records) > pool else range(len(records))
        subset = [records[i] for i in chosen]
        clouds = [load_points(r.points) for r in subset]
        best = medoid_index(clouds, seed=seed)
        return cls(clouds[best], subset[best].stem, len(subset))

    def predict(self, drawings: Sequence[np.ndarray]) -> list[np.ndarray]:
        return [self.points for _ in drawings]
