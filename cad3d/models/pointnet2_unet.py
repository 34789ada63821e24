"""PointNet++ U-Net noise predictor: eps_hat = unet(x_t, t, condition).

    down: SA_1 .. SA_L   farthest point sampling -> ball query / kNN grouping -> shared MLP -> max pool
    up:   FP_L .. FP_1   inverse-distance interpolation over 3 NN + skip features -> shared MLP
    head: per-point MLP -> (B, N, 3)

Every block is modulated (FiLM: ``h * (1 + scale) + shift``) by one embedding per sample, the sum
of a sinusoidal timestep embedding (through an MLP) and the projected global image vector. With
``cross_attention`` the coarsest levels also attend to image tokens (B, T, D_tok). With
``proj_dim`` > 0 (projection conditioning, as in PC^2, Melas-Kyriazi et al. 2023) every level's
points also read the image feature map at their projection under the drawing's camera(s).
Classifier-free guidance: samples whose condition is dropped (``drop`` mask) use a learned null
image vector (and a learned null token); ``drop=None`` keeps every condition.

All ops are batched (B, N, C) channel-last tensors; the only Python loop runs over levels
(farthest point sampling and the neighbourhood queries are compiled kernels). Neighbourhoods are found under no_grad by
`cad3d.geometry.ops` (the one geometry module); they depend on the points alone, so passes over
the same points share them (`PointNet2UNet.geometry`). They cannot be kept across sampling
steps: the points move at every step.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Mapping, Optional

import torch
import torch.nn.functional as F
from torch import nn

from cad3d.geometry.ops import ball_query, farthest_point_sample, group_points, knn
from cad3d.config import config_from_dict

GROUPINGS = ("knn", "ball")


@dataclass
class PointNet2UNetConfig:
    """Architecture of the U-Net. Level i keeps ``sa_ratios[i]`` of the points of level i-1
    (rounded, at least ``min_points``), groups ``sa_neighbors[i]`` neighbours (kNN, or a ball of
    ``sa_radii[i]`` in cloud units) and outputs ``sa_widths[i]`` channels; ``fp_widths[i]`` is the
    width of the feature-propagation block that brings level i+1 back to level i (index 0 = the
    input points)."""

    sa_ratios: tuple[float, ...] = (0.25, 0.25, 0.25, 0.25)
    sa_neighbors: tuple[int, ...] = (32, 32, 32, 16)
    sa_radii: tuple[float, ...] = (0.1, 0.2, 0.4, 0.8)
    sa_widths: tuple[int, ...] = (128, 256, 512, 512)
    fp_widths: tuple[int, ...] = (128, 256, 256, 512)
    in_width: int = 64  # per-point embedding of x_t before SA_1
    grouping: str = "knn"  # knn | ball
    time_dim: int = 128  # sinusoidal features of t
    emb_dim: int = 512  # FiLM embedding (time + image)
    cond_dim: int = 512  # global image vector coming in
    token_dim: int = 0  # image tokens coming in (cross-attention); 0 = none
    cross_attention_levels: int = 0  # the coarsest N SA levels attend to image tokens
    attn_heads: int = 4
    min_points: int = 8
    proj_dim: int = 0  # channels of the image feature map sampled at each point's projection; 0 = off

    def __post_init__(self) -> None:
        n = len(self.sa_ratios)
        for name in ("sa_neighbors", "sa_radii", "sa_widths", "fp_widths"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"{name} needs {n} entries (one per level), got {len(getattr(self, name))}")
        if self.grouping not in GROUPINGS:
            raise ValueError(f"grouping must be one of {GROUPINGS}, got {self.grouping!r}")
        if not 0 <= self.cross_attention_levels <= n:
            raise ValueError(f"cross_attention_levels must be in [0, {n}], got {self.cross_attention_levels}")
        # JSON round trips give lists; keep tuples so configs compare equal.
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if isinstance(v, list):
                setattr(self, f.name, tuple(v))

    def level_sizes(self, num_points: int) -> list[int]:
        """Number of points at each level, input first: [N, N_1, ..., N_L]."""
        sizes = [num_points]
        for r in self.sa_ratios:
            sizes.append(max(min(self.min_points, sizes[-1]), int(round(sizes[-1] * r))))
        return sizes

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "PointNet2UNetConfig":
        return config_from_dict(cls, d)


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal features of timesteps t (B,) -> (B, dim) float32 (Vaswani et al. / DDPM)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)  # (half,)
    args = t.float().unsqueeze(1) * freqs.unsqueeze(0)  # (B, half)
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb  # (B, dim)


class FiLMMLP(nn.Module):
    """Shared MLP over the last dim with FiLM after the first layer: in -> width -> width.

    x (B, ..., C_in), emb (B, E) -> (B, ..., width)."""

    def __init__(self, in_dim: int, width: int, emb_dim: int):
        super().__init__()
        self.fc1 = nn.Linear(in_dim, width)
        self.norm1 = nn.LayerNorm(width)
        self.film = nn.Linear(emb_dim, 2 * width)
        self.fc2 = nn.Linear(width, width)
        self.norm2 = nn.LayerNorm(width)
        nn.init.zeros_(self.film.weight)  # start as the identity modulation
        nn.init.zeros_(self.film.bias)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.norm1(self.fc1(x))  # (B, ..., W)
        scale, shift = self.film(emb).chunk(2, dim=-1)  # (B, W) each
        shape = (h.shape[0],) + (1,) * (h.dim() - 2) + (h.shape[-1],)
        h = F.silu(h * (1 + scale.view(shape)) + shift.view(shape))
        return F.silu(self.norm2(self.fc2(h)))


class CrossAttention(nn.Module):
    """Points attend to image tokens: x (B, S, C), tokens (B, T, D) -> x + attn (B, S, C)."""

    def __init__(self, dim: int, token_dim: int, heads: int):
        super().__init__()
        if dim % heads:
            raise ValueError(f"width {dim} is not divisible by attn_heads {heads}")
        self.heads = heads
        self.norm = nn.LayerNorm(dim)
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(token_dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        B, S, C = x.shape
        h, d = self.heads, C // self.heads
        q = self.q(self.norm(x)).view(B, S, h, d).transpose(1, 2)  # (B, h, S, d)
        k, v = self.kv(tokens).view(B, tokens.shape[1], 2, h, d).permute(2, 0, 3, 1, 4).unbind(0)  # (B, h, T, d)
        y = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, S, C)  # (B, S, C)
        return x + self.proj(y)


class SetAbstraction(nn.Module):
    """FPS centres, neighbourhood grouping, shared MLP on [relative xyz, features], max pool."""

    def __init__(self, in_dim: int, width: int, num_neighbors: int, radius: float, grouping: str, emb_dim: int):
        super().__init__()
        self.k, self.radius, self.grouping = num_neighbors, radius, grouping
        self.mlp = FiLMMLP(in_dim + 3, width, emb_dim)

    @torch.no_grad()
    def neighbourhood(self, xyz: torch.Tensor, num_centres: int) -> tuple[torch.Tensor, torch.Tensor]:
        """xyz (B, N, 3) -> FPS centre indices (B, S) and their neighbours' indices (B, S, K)."""
        xyz_f = xyz.float()
        centre_idx = farthest_point_sample(xyz_f, num_centres)  # (B, S)
        centres = group_points(xyz_f, centre_idx)  # (B, S, 3)
        k = min(self.k, xyz.shape[1])
        if self.grouping == "ball":
            return centre_idx, ball_query(centres, xyz_f, self.radius, k)  # (B, S, K)
        return centre_idx, knn(centres, xyz_f, k)[1]  # (B, S, K)

    def forward(self, xyz: torch.Tensor, feats: torch.Tensor, num_centres: int, emb: torch.Tensor,
                hood: Optional[tuple[torch.Tensor, torch.Tensor]] = None):
        """xyz (B, N, 3), feats (B, N, C), emb (B, E) -> centres (B, S, 3), features (B, S, width).
        ``hood``: this level's `neighbourhood` of xyz, when already found."""
        centre_idx, idx = hood if hood is not None else self.neighbourhood(xyz, num_centres)
        centres = group_points(xyz, centre_idx)  # (B, S, 3)
        rel = group_points(xyz, idx) - centres.unsqueeze(2)  # (B, S, K, 3)
        if self.grouping == "ball":
            rel = rel / self.radius
        grouped = torch.cat([rel.to(feats.dtype), group_points(feats, idx)], dim=-1)  # (B, S, K, 3+C)
        h = self.mlp(grouped, emb)  # (B, S, K, W)
        return centres, h.amax(dim=2)  # (B, S, 3), (B, S, W)


class FeaturePropagation(nn.Module):
    """Interpolate coarse features to fine points (inverse squared distance over 3 NN), concat the
    skip features, shared MLP."""

    def __init__(self, coarse_dim: int, skip_dim: int, width: int, emb_dim: int):
        super().__init__()
        self.mlp = FiLMMLP(coarse_dim + skip_dim, width, emb_dim)

    @staticmethod
    @torch.no_grad()
    def weights(fine_xyz: torch.Tensor, coarse_xyz: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Indices (B, N, k) of the k <= 3 nearest coarse points of each fine point, and their
        normalized inverse squared distances (B, N, k)."""
        sq, idx = knn(fine_xyz.float(), coarse_xyz.float(), min(3, coarse_xyz.shape[1]))  # (B, N, k)
        w = 1.0 / (sq + 1e-8)
        return idx, w / w.sum(dim=-1, keepdim=True)

    def forward(self, fine_xyz, coarse_xyz, coarse_feats, skip_feats, emb, interp_weights=None):
        """fine_xyz (B, N, 3), coarse_xyz (B, S, 3), coarse_feats (B, S, C), skip_feats (B, N, C_s)
        -> (B, N, width). ``interp_weights``: `weights` of these points, when already found."""
        idx, w = interp_weights if interp_weights is not None else self.weights(fine_xyz, coarse_xyz)
        interp = (group_points(coarse_feats, idx) * w.unsqueeze(-1).to(coarse_feats.dtype)).sum(dim=2)  # (B, N, C)
        return self.mlp(torch.cat([interp, skip_feats], dim=-1), emb)


def project_features(fmap: torch.Tensor, cams: torch.Tensor, views: torch.Tensor, xyz: torch.Tensor) -> torch.Tensor:
    """Image features at each point's projection, averaged over the drawing's views.

    fmap (B, C, h, w); cams (B, V, 2, 4) grid projections (`OrthoCamera.grid_projection`); views
    (B, V) bool, which views exist; xyz (B, N, 3) -> (B, N, C). Points projecting outside the image
    read zeros."""
    B, N, _ = xyz.shape
    V = cams.shape[1]
    homo = torch.cat([xyz, torch.ones_like(xyz[..., :1])], dim=-1).to(fmap.dtype)  # (B, N, 4)
    grid = torch.einsum("bvij,bnj->bvni", cams.to(fmap.dtype), homo)  # (B, V, N, 2)
    sampled = F.grid_sample(fmap, grid.reshape(B, V * N, 1, 2), mode="bilinear", padding_mode="zeros", align_corners=False)
    sampled = sampled.view(B, -1, V, N)  # (B, C, V, N)
    w = views.to(fmap.dtype).view(B, 1, V, 1)
    return ((sampled * w).sum(dim=2) / w.sum(dim=2).clamp_min(1.0)).transpose(1, 2)  # (B, N, C)


class PointNet2UNet(nn.Module):
    """eps_hat (B, N, 3) = forward(x_t (B, N, 3), t (B,), cond (B, cond_dim), tokens, drop)."""

    def __init__(self, config: Optional[PointNet2UNetConfig] = None):
        super().__init__()
        cfg = self.config = config if config is not None else PointNet2UNetConfig()
        if cfg.cross_attention_levels and cfg.token_dim <= 0:
            raise ValueError("cross_attention_levels > 0 needs image tokens: token_dim > 0")
        E = cfg.emb_dim
        self.time_mlp = nn.Sequential(nn.Linear(cfg.time_dim, E), nn.SiLU(), nn.Linear(E, E))
        self.cond_mlp = nn.Sequential(nn.Linear(cfg.cond_dim, E), nn.SiLU(), nn.Linear(E, E))
        self.null_cond = nn.Parameter(torch.zeros(cfg.cond_dim))  # (cond_dim,) the dropped condition
        self.null_token = nn.Parameter(torch.zeros(max(cfg.token_dim, 1))) if cfg.cross_attention_levels else None
        self.in_proj = nn.Linear(3, cfg.in_width)
        L = len(cfg.sa_ratios)
        dims = [cfg.in_width] + list(cfg.sa_widths)
        self.down = nn.ModuleList(
            SetAbstraction(dims[i], dims[i + 1], cfg.sa_neighbors[i], cfg.sa_radii[i], cfg.grouping, E) for i in range(L)
        )
        self.attn = nn.ModuleDict(
            {str(i): CrossAttention(dims[i + 1], cfg.token_dim, cfg.attn_heads) for i in range(L - cfg.cross_attention_levels, L)}
        )
        # up[i] brings level i+1 to level i; the coarse input of the deepest one is SA_L's output.
        self.up = nn.ModuleList()
        for i in reversed(range(L)):
            coarse = dims[L] if i == L - 1 else cfg.fp_widths[i + 1]
            self.up.append(FeaturePropagation(coarse, dims[i], cfg.fp_widths[i], E))
        if cfg.proj_dim:  # projected image features into every level: input, each SA, each FP
            widths = [dims[0]] + list(cfg.sa_widths) + [cfg.fp_widths[i] for i in reversed(range(L))]
            self.img_in = nn.ModuleList(nn.Linear(cfg.proj_dim, w) for w in widths)
        else:
            self.img_in = None
        self.head = nn.Sequential(nn.Linear(cfg.fp_widths[0], cfg.fp_widths[0]), nn.SiLU(), nn.Linear(cfg.fp_widths[0], 3))
        nn.init.zeros_(self.head[-1].weight)
        nn.init.zeros_(self.head[-1].bias)

    def condition(self, cond: torch.Tensor, tokens: Optional[torch.Tensor], drop: Optional[torch.Tensor]):
        """Replace the dropped samples' condition (drop (B,) bool) by the null embeddings."""
        if drop is None:
            return cond, tokens
        keep = (~drop).to(cond.dtype).unsqueeze(1)  # (B, 1)
        cond = cond * keep + self.null_cond.to(cond.dtype).unsqueeze(0) * (1 - keep)  # (B, cond_dim)
        if tokens is not None and self.null_token is not None:
            k3 = keep.unsqueeze(2).to(tokens.dtype)  # (B, 1, 1)
            tokens = tokens * k3 + self.null_token.to(tokens.dtype).view(1, 1, -1) * (1 - k3)  # (B, T, D_tok)
        return cond, tokens

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        cond: torch.Tensor,
        tokens: Optional[torch.Tensor] = None,
        drop: Optional[torch.Tensor] = None,
        projection: Optional[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = None,
        geometry: Optional[list] = None,
    ) -> torch.Tensor:
        """x (B, N, 3) noisy points, t (B,) timesteps, cond (B, cond_dim) global image vector,
        tokens (B, T, token_dim) or None, drop (B,) bool or None, projection (fmap (B, proj_dim,
        h, w), cams (B, V, 2, 4), views (B, V) bool; see `project_features`) when ``proj_dim`` > 0
        -> predicted noise (B, N, 3). ``geometry``: `geometry` of x when already found (e.g.
        shared by guided passes)."""
        cfg = self.config
        cond, tokens = self.condition(cond, tokens, drop)
        if self.img_in is not None and projection is None:
            raise ValueError("this U-Net is projection-conditioned: pass projection=(fmap, cams, views)")
        keep = None if drop is None else (~drop).to(cond.dtype).view(-1, 1, 1)  # dropped: no image features
        level = iter(self.img_in or ())

        def with_image(xyz_l: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
            if self.img_in is None:
                return f
            g = next(level)(project_features(projection[0], projection[1], projection[2], xyz_l).to(f.dtype))  # (B, N_l, C_l)
            return f + (g if keep is None else g * keep.to(f.dtype))

        emb = self.time_mlp(timestep_embedding(t, cfg.time_dim).to(cond.dtype)) + self.cond_mlp(cond)  # (B, E)
        emb = F.silu(emb)
        if self.attn and tokens is None:
            raise ValueError("this U-Net cross-attends to image tokens: pass tokens (B, T, token_dim)")
        sizes = cfg.level_sizes(x.shape[1])
        geo = geometry if geometry is not None else [None] * (2 * len(self.down))
        xyz = [x]  # level i coordinates (B, N_i, 3)
        feats = [with_image(x, F.silu(self.in_proj(x)))]  # level i features (B, N_i, C_i)
        for i, sa in enumerate(self.down):
            c, f = sa(xyz[-1], feats[-1], sizes[i + 1], emb, geo[i])
            f = with_image(c, f)
            if str(i) in self.attn:
                f = self.attn[str(i)](f, tokens)
            xyz.append(c)
            feats.append(f)
        h = feats[-1]
        L = len(self.down)
        for j, fp in enumerate(self.up):
            i = L - 1 - j  # to level i from level i+1
            h = with_image(xyz[i], fp(xyz[i], xyz[i + 1], h, feats[i], emb, geo[L + i]))  # (B, N_i, fp_widths[i])
        return self.head(h)  # (B, N, 3)

    @torch.no_grad()
    def geometry(self, x: torch.Tensor, repeat: int = 1) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Every neighbourhood the forward pass of points x (B, N, 3) uses — a function of the
        points alone: per SA level (centre indices, neighbour indices), then per FP level
        (indices, interpolation weights) — each repeated ``repeat`` times along the batch (for a
        batch that holds the same points several times, e.g. guided sampling's two passes)."""
        sizes = self.config.level_sizes(x.shape[1])
        xyz, out = [x], []
        for i, sa in enumerate(self.down):
            hood = sa.neighbourhood(xyz[-1], sizes[i + 1])
            out.append(hood)
            xyz.append(group_points(xyz[-1], hood[0]))
        out += [FeaturePropagation.weights(xyz[i], xyz[i + 1]) for i in range(len(self.down))]
        return [tuple(t.repeat(repeat, *([1] * (t.dim() - 1))) for t in pair) for pair in out]


__all__ = [
    "PointNet2UNet", "PointNet2UNetConfig", "SetAbstraction", "FeaturePropagation", "CrossAttention", "project_features",
    "timestep_embedding",
]
