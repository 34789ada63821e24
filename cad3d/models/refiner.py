"""Retrieve, then refine: the training parts whose drawings look most like the query lend their
clouds, stretched to the dimensions measured on the query's drawing, and a learned network
scores which candidate (as retrieved or stretched) comes closest.

Retrieval alone (the evaluation's ``retrieval`` baseline) is hard to beat on parts like the
training ones but cannot change a single dimension: a part 20% longer than its nearest training
part comes back 20% short. `RetrievalRefiner` keeps an index of the training set (drawings as
uint8, clouds as int16 in the unit sphere: buffers of the model, so a checkpoint is a complete
converter) and, for a query drawing,

1. retrieves the ``num_candidates`` training drawings with the most similar ink thumbnails
   (cosine of 64 px area-averaged ink, as the baseline: candidate 0 is the baseline's answer);
2. measures both drawings (`measure_extents`): the widths of the ink along 12 image directions
   are those of the part's box under the iso camera, so least squares gives the part's three
   extents; the candidate's cloud is stretched by the ratio per axis and normalized like every
   ground-truth cloud (``measured``);
3. reads each (query, candidate) pair with a small CNN (both drawings stacked with two
   coordinate channels, strided convolutions, flattened; beside it what was measured of the pair:
   the three ratios, the thumbnails' similarity at three scales, both parts' extents) that predicts, for each of `OPTIONS`, the
   log Chamfer-L1 the candidate would reach;
4. answers with the option of lowest predicted score among all candidates.

The score head starts at zero, so an untrained model answers with the first candidate as
retrieved (all scores equal). Training (`cad3d.training.tasks.refine`): pairs of a training
drawing and one of its nearest *other* training drawings, the scores regressed on the Chamfer
each option reaches.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping, Optional

import torch
import torch.nn.functional as F
from torch import nn

from cad3d.config import config_from_dict
from cad3d.geometry.camera import iso_camera
from cad3d.geometry.transforms import normalize

THUMB = 64  # retrieval thumbnail side (px), as the evaluation's retrieval baseline
POINT_SCALE = 32767.0  # int16 quantization of unit-sphere coordinates (step 3e-5)
OPTIONS = ("retrieved", "measured")  # what each candidate can be answered as
MAX_STRETCH = 2.0  # measured per-axis ratios are clipped to [1/2, 2]
# What the scorer reads of a pair besides its pixels: the log of the 3 measured ratios and their
# total size, the thumbnails' cosine at 64, 32 and 16 px, and both parts' log extents.
PAIR_FEATURES = 13


@dataclass
class RefinerConfig:
    """Architecture and index size (the index itself lives in the weights)."""

    image_size: int = 128  # drawings are read at this size (the index's and the query's)
    width: int = 32  # channels of the first stage (x1, 2, 4, 4, 8 over five stride-2 stages)
    hidden: int = 256
    num_candidates: int = 4  # K retrieved candidates scored per query
    pool: str = "mean"  # the CNN's map -> features: "mean" (global average), "flatten", "none" (no CNN)
    index_size: int = 0  # training parts in the index (set from the data when training starts)
    index_points: int = 8192  # points kept per indexed cloud

    def __post_init__(self):
        if self.image_size < 32 or self.image_size % 32:
            raise ValueError(f"image_size must be a multiple of 32 (>= 32), got {self.image_size}")
        if self.pool not in ("mean", "flatten", "none"):
            raise ValueError(f"pool must be mean, flatten or none, got {self.pool!r}")
        if self.num_candidates < 1:
            raise ValueError(f"num_candidates must be >= 1, got {self.num_candidates}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "RefinerConfig":
        """Inverse of `to_dict`; unknown keys are an error (a config from another model)."""
        return config_from_dict(cls, d, strict=True)


def refiner_presets() -> dict[str, RefinerConfig]:
    return {"tiny": RefinerConfig(image_size=128, width=16, hidden=128, num_candidates=8),
            "full": RefinerConfig(image_size=256, width=32, hidden=256, num_candidates=8)}


def ink_thumbnails(drawings: torch.Tensor, size: int = THUMB) -> torch.Tensor:
    """(B, H, W) drawings in [0, 1] (1 = paper) -> (B, size*size) unit ink vectors (zeros for a
    blank page); H and W multiples of ``size`` are area-averaged exactly like a PIL BOX resize.
    The evaluation's retrieval baseline reads drawings through it too."""
    ink = 1.0 - drawings.float().clamp(0, 1)
    thumb = F.adaptive_avg_pool2d(ink[:, None], size).flatten(1)  # (B, size*size)
    return thumb / thumb.norm(dim=1, keepdim=True).clamp(min=1e-12)


def thumbnail_similarities(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine of paired `ink_thumbnails` (B, THUMB*THUMB) at THUMB, THUMB/2 and THUMB/4 px -> (B, 3)
    (the coarser ones forgive small shifts and line weights)."""
    sims = []
    for f in (1, 2, 4):
        pa, pb = (F.avg_pool2d(t.view(-1, 1, THUMB, THUMB), f).flatten(1) if f > 1 else t for t in (a, b))
        sims.append(F.cosine_similarity(pa, pb, dim=1, eps=1e-12))
    return torch.stack(sims, dim=1)


def _extent_solver(image_size: int, directions: int = 12) -> tuple[torch.Tensor, torch.Tensor]:
    """(D, 2) unit image directions and the (3, D) least-squares map from the ink's widths along
    them (pixels) to the part's extents along the world axes, under the iso camera."""
    cam = iso_camera((image_size, image_size))
    axes = torch.tensor([[cam.R[0, j], -cam.R[1, j]] for j in range(3)], dtype=torch.float64) * cam.scale  # (3, 2)
    ang = torch.arange(directions, dtype=torch.float64) * torch.pi / directions
    dirs = torch.stack([ang.cos(), ang.sin()], dim=1)  # (D, 2)
    widths_of_box = (dirs @ axes.T).abs()  # (D, 3): a box's width along each direction per unit extent
    return dirs.float(), torch.linalg.pinv(widths_of_box).float()


def measure_extents(drawings: torch.Tensor, ink_threshold: float = 0.5) -> torch.Tensor:
    """(B, H, W) single-view iso drawings in [0, 1] -> (B, 3) the part's box extents along x, y, z
    as the ink's extreme widths say (in the drawing's normalized units; a blank page gives 0).
    The widths of any shape's outline are those of its box for a box; for other shapes the
    estimate is biased the same way for similar parts, so ratios of two are what to use."""
    b, h, w = drawings.shape
    dirs, solve = _extent_solver(h)
    dirs, solve = dirs.to(drawings.device), solve.to(drawings.device)
    ys, xs = torch.meshgrid(torch.arange(h, device=drawings.device, dtype=torch.float32),
                            torch.arange(w, device=drawings.device, dtype=torch.float32), indexing="ij")
    proj = torch.stack([xs.flatten(), ys.flatten()], dim=1) @ dirs.T  # (H*W, D)
    ink = (drawings.reshape(b, -1) < ink_threshold)[..., None]  # (B, H*W, 1)
    hi = torch.where(ink, proj, torch.full_like(proj, -1e9)).amax(dim=1)  # (B, D)
    lo = torch.where(ink, proj, torch.full_like(proj, 1e9)).amin(dim=1)
    widths = torch.where(ink.any(dim=1), hi - lo + 1.0, torch.zeros_like(hi))  # (B, D), +1: pixel size
    return (widths @ solve.T).clamp(min=0.0)  # (B, 3)


def stretch(clouds: torch.Tensor, ratio: torch.Tensor) -> torch.Tensor:
    """clouds (B, N, 3) stretched by per-axis ``ratio`` (B, 3) and normalized (bounding-box
    centre, unit sphere) like the ground truth."""
    return normalize(clouds * ratio[:, None])[0]


class PairEncoder(nn.Module):
    """(query, candidate) drawings and what was measured of them -> a score per option."""

    def __init__(self, c: RefinerConfig):
        super().__init__()
        widths = [4, c.width, 2 * c.width, 4 * c.width, 4 * c.width, 8 * c.width]
        layers: list[nn.Module] = []
        for a, b in zip(widths, widths[1:]):
            layers += [nn.Conv2d(a, b, 3, 2, 1), nn.GroupNorm(8, b), nn.SiLU(),
                       nn.Conv2d(b, b, 3, 1, 1), nn.GroupNorm(8, b), nn.SiLU()]
        self.pool = c.pool
        self.cnn = nn.Sequential(*layers) if c.pool != "none" else None
        side = c.image_size // 32
        feats = {"mean": widths[-1], "flatten": widths[-1] * side * side, "none": 0}[c.pool]
        self.head = nn.Sequential(nn.Linear(feats + PAIR_FEATURES, c.hidden), nn.SiLU(),
                                  nn.Linear(c.hidden, len(OPTIONS)))
        nn.init.zeros_(self.head[-1].weight)  # equal scores: retrieval's answer to start from
        nn.init.zeros_(self.head[-1].bias)

    def forward(self, query: torch.Tensor, cand: torch.Tensor, pair: torch.Tensor):
        """query, cand (B, H, W) in [0, 1], ``pair`` (B, PAIR_FEATURES) what was measured of the
        pair -> predicted log Chamfer-L1 per option (B, len(OPTIONS))."""
        if self.cnn is None:
            return self.head(pair)
        b, h, w = query.shape
        yy, xx = torch.meshgrid(torch.linspace(-1, 1, h, device=query.device),
                                torch.linspace(-1, 1, w, device=query.device), indexing="ij")
        x = torch.stack([1 - query, 1 - cand, xx.expand(b, h, w), yy.expand(b, h, w)], dim=1)
        fmap = self.cnn(x)  # (B, C, H/32, W/32)
        feats = fmap.mean(dim=(2, 3)) if self.pool == "mean" else fmap.flatten(1)
        return self.head(torch.cat([feats, pair], dim=1))  # (B, options)


class RetrievalRefiner(nn.Module):
    """See the module docstring. ``index_drawings`` (T, H, W) uint8 (255 = paper) and
    ``index_clouds`` (T, P, 3) int16 are filled by `set_index` (training) or the checkpoint."""

    def __init__(self, config: RefinerConfig):
        super().__init__()
        self.config = config
        s, t = config.image_size, max(config.index_size, 0)
        self.register_buffer("index_drawings", torch.full((t, s, s), 255, dtype=torch.uint8))
        self.register_buffer("index_clouds", torch.zeros((t, config.index_points, 3), dtype=torch.int16))
        self.encoder = PairEncoder(config)
        self._thumbs: Optional[torch.Tensor] = None
        self._extents: Optional[torch.Tensor] = None  # measured extents of the index's parts

    # -- the index -------------------------------------------------------------------------
    def set_index(self, drawings: torch.Tensor, clouds: torch.Tensor) -> None:
        """drawings (T, H, W) in [0, 1], clouds (T, P, 3) in the unit sphere (as the config says)."""
        if drawings.shape != self.index_drawings.shape or clouds.shape != self.index_clouds.shape:
            raise ValueError(f"index of shape {tuple(drawings.shape)}/{tuple(clouds.shape)} does not fit the "
                             f"config's {tuple(self.index_drawings.shape)}/{tuple(self.index_clouds.shape)}")
        self.index_drawings.copy_((drawings.clamp(0, 1) * 255).round().to(torch.uint8))
        self.index_clouds.copy_((clouds.clamp(-1, 1) * POINT_SCALE).round().to(torch.int16))
        self._thumbs = self._extents = None

    def _load_from_state_dict(self, *args, **kwargs):
        self._thumbs = self._extents = None  # a new index: recomputed when first needed
        super()._load_from_state_dict(*args, **kwargs)

    def index_drawing(self, idx: torch.Tensor) -> torch.Tensor:
        """(...,) indices -> (..., H, W) float drawings in [0, 1]."""
        return self.index_drawings[idx].float() / 255.0

    def index_cloud(self, idx: torch.Tensor) -> torch.Tensor:
        """(...,) indices -> (..., P, 3) float clouds."""
        return self.index_clouds[idx].float() / POINT_SCALE

    def _index_stats(self, device) -> None:
        """Thumbnails and measured extents of the indexed drawings, computed once per device."""
        if self._thumbs is not None and self._thumbs.device == device:
            return
        thumbs, extents = [], []
        for i in range(0, len(self.index_drawings), 256):
            d = self.index_drawing(torch.arange(i, min(i + 256, len(self.index_drawings)), device=device))
            thumbs.append(ink_thumbnails(d))
            extents.append(measure_extents(d))
        self._thumbs, self._extents = torch.cat(thumbs), torch.cat(extents)

    def retrieve(self, query: torch.Tensor, k: int, leave_out: Optional[torch.Tensor] = None) -> torch.Tensor:
        """query (B, H, W) -> (B, k) indices of the most similar indexed drawings, best first;
        ``leave_out`` (B, T) bool, indexed drawings to rank last (in training: the query itself,
        or its own family)."""
        if self.index_drawings.shape[0] == 0:
            raise RuntimeError("the refiner's index is empty: it was never trained on data")
        self._index_stats(query.device)
        sim = ink_thumbnails(query) @ self._thumbs.T  # (B, T)
        if leave_out is not None:
            sim = sim.masked_fill(leave_out, -2.0)
        return sim.topk(min(k, sim.shape[1]), dim=1).indices

    # -- alignment -------------------------------------------------------------------------
    def score(self, query: torch.Tensor, cand_idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """query (B, H, W), cand_idx (B,) -> predicted scores (B, len(OPTIONS)) and the measured
        per-axis ratio (B, 3) of the query's part to the candidate's."""
        self._index_stats(query.device)
        ext_q = measure_extents(query)
        ext_c = self._extents[cand_idx]
        log_ratio = (ext_q / ext_c.clamp(min=1e-3)).clamp(1.0 / MAX_STRETCH, MAX_STRETCH).log()
        sims = thumbnail_similarities(ink_thumbnails(query), self._thumbs[cand_idx])  # (B, 3)
        pair = torch.cat([log_ratio, log_ratio.abs().sum(dim=1, keepdim=True), sims,
                          ext_q.clamp(min=1e-3).log(), ext_c.clamp(min=1e-3).log()], dim=1)  # (B, PAIR_FEATURES)
        return self.encoder(query, self.index_drawing(cand_idx), pair), log_ratio.exp()

    @staticmethod
    def options(clouds: torch.Tensor, ratio: torch.Tensor) -> torch.Tensor:
        """Candidate ``clouds`` (B, N, 3) as each of `OPTIONS` given the measured ``ratio`` (B, 3)
        -> (B, len(OPTIONS), N, 3)."""
        return torch.stack([clouds, stretch(clouds, ratio)], dim=1)

    @torch.no_grad()
    def forward(self, query: torch.Tensor) -> dict[str, torch.Tensor]:
        """query (B, H, W) drawings in [0, 1] at the config's size -> ``points`` (B, P, 3), the
        ``candidate`` (B,) index used and the ``option`` (B,) index in `OPTIONS` it was answered as."""
        b, n_opt = query.shape[0], len(OPTIONS)
        cands = self.retrieve(query, self.config.num_candidates)  # (B, k)
        k = cands.shape[1]
        queries = query.repeat_interleave(k, 0)
        scores, ratio = self.score(queries, cands.reshape(-1))  # (B*k, options), (B*k, 3)
        best = scores.reshape(b, k * n_opt).argmin(dim=1)  # (B,)
        rows = torch.arange(b, device=query.device) * k + best // n_opt
        option = best % n_opt
        chosen = cands.reshape(-1)[rows]  # (B,)
        opts = self.options(self.index_cloud(chosen), ratio[rows])  # (B, options, P, 3)
        return {"points": opts[torch.arange(b, device=query.device), option], "candidate": chosen, "option": option}


__all__ = ["OPTIONS", "RefinerConfig", "RetrievalRefiner", "ink_thumbnails", "measure_extents", "refiner_presets",
           "stretch"]
