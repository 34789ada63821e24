"""Vision Transformer that reads a CAD drawing and predicts its point cloud; its config and presets.

One configurable `VisionTransformer`, split like timm's: `forward_features` gives the token
sequence (reused to condition the diffusion model in the hybrid converter), `forward_head`
turns it into the outputs:

* ``points``: the point cloud, ``num_points`` x 3 predicted directly (trained with Chamfer);
* ``family_logits``: the part family (auxiliary classifier, indices of
  ``cad3d.data.families.FAMILIES``).

Input drawings are (B, 3, H, W) float in [0, 1] with 1 = white paper, as `CAD2D3DDataset`
returns them.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from cad3d.config import config_from_dict
from cad3d.data.families import FAMILIES

NUM_PART_FAMILIES = len(FAMILIES)


@dataclass
class VisionTransformerConfig:
    """Architecture of the ViT. Saved in checkpoints as a plain dict (``model_config``)."""

    image_size: int = 256  # input drawings are image_size x image_size
    patch_size: int = 16
    in_channels: int = 3
    width: int = 384  # token dimension
    depth: int = 8  # transformer blocks
    num_heads: int = 6
    mlp_ratio: float = 4.0
    dropout: float = 0.0  # on MLP outputs and the residual branches
    attn_dropout: float = 0.0
    num_points: int = 2048  # points predicted per drawing
    head_hidden: int = 1024  # hidden width of the point-set head ("mlp")
    point_head: str = "mlp"  # "mlp": pooled tokens -> all points; "queries": one query per point
    decoder_depth: int = 2  # cross-attention blocks of the "queries" head
    num_families: int = NUM_PART_FAMILIES  # classes of the family head (0 disables it)

    def __post_init__(self):
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        if self.width % self.num_heads:
            raise ValueError(f"width {self.width} is not a multiple of num_heads {self.num_heads}")
        if self.num_points < 1:
            raise ValueError(f"num_points must be positive, got {self.num_points}")
        if self.point_head not in ("mlp", "queries"):
            raise ValueError(f"point_head must be 'mlp' or 'queries', got {self.point_head!r}")

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "VisionTransformerConfig":
        """Inverse of `to_dict`; unknown keys are an error (a config from another model)."""
        return config_from_dict(cls, d, strict=True)


class PatchEmbed(nn.Module):
    """Non-overlapping patches to tokens: (B, C, H, W) -> (B, P, D)."""

    def __init__(self, config: VisionTransformerConfig):
        super().__init__()
        self.proj = nn.Conv2d(config.in_channels, config.width, config.patch_size, stride=config.patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)  # (B, P, D)


class Attention(nn.Module):
    """Multi-head self-attention through `F.scaled_dot_product_attention` (fused kernels)."""

    def __init__(self, config: VisionTransformerConfig):
        super().__init__()
        self.num_heads = config.num_heads
        self.qkv = nn.Linear(config.width, 3 * config.width)
        self.proj = nn.Linear(config.width, config.width)
        self.attn_dropout = config.attn_dropout
        self.proj_drop = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, D = x.shape
        qkv = self.qkv(x).view(B, T, 3, self.num_heads, D // self.num_heads)  # (B, T, 3, h, d)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, h, T, d)
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_dropout if self.training else 0.0)
        y = y.transpose(1, 2).reshape(B, T, D)  # (B, T, D)
        return self.proj_drop(self.proj(y))


class MLP(nn.Module):
    def __init__(self, config: VisionTransformerConfig):
        super().__init__()
        hidden = int(config.width * config.mlp_ratio)
        self.fc1 = nn.Linear(config.width, hidden)
        self.fc2 = nn.Linear(hidden, config.width)
        self.drop = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(F.gelu(self.fc1(x))))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, config: VisionTransformerConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.width)
        self.attn = Attention(config)
        self.ln_2 = nn.LayerNorm(config.width)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class QueryBlock(nn.Module):
    """Point queries read the drawing: q + cross-attention(ln(q), tokens), then q + mlp(ln(q))."""

    def __init__(self, config: VisionTransformerConfig):
        super().__init__()
        self.num_heads = config.num_heads
        self.ln_q = nn.LayerNorm(config.width)
        self.q = nn.Linear(config.width, config.width)
        self.kv = nn.Linear(config.width, 2 * config.width)
        self.proj = nn.Linear(config.width, config.width)
        self.ln_2 = nn.LayerNorm(config.width)
        self.mlp = MLP(config)

    def forward(self, queries: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        B, N, D = queries.shape
        h = self.num_heads
        q = self.q(self.ln_q(queries)).view(B, N, h, D // h).transpose(1, 2)  # (B, h, N, d)
        k, v = self.kv(tokens).view(B, tokens.shape[1], 2, h, D // h).permute(2, 0, 3, 1, 4).unbind(0)  # (B, h, T, d)
        y = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, N, D)  # (B, N, D)
        queries = queries + self.proj(y)
        return queries + self.mlp(self.ln_2(queries))


class PointQueryHead(nn.Module):
    """One query per output point: a fixed anchor in the unit ball (seeded, so every model of a
    config has the same ones) embedded by Fourier features and an MLP, then cross-attention blocks
    over the drawing's tokens, then xyz. Points are predicted natively, none repeated.

    tokens (B, 1+P, D) -> points (B, num_points, 3)."""

    def __init__(self, config: VisionTransformerConfig, num_frequencies: int = 8):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        anchors = torch.randn(config.num_points, 3, generator=g)
        anchors = anchors / anchors.norm(dim=1, keepdim=True) * torch.rand(config.num_points, 1, generator=g) ** (1 / 3)
        freqs = 2.0 ** torch.arange(num_frequencies, dtype=torch.float32) * math.pi  # (F,)
        self.register_buffer("anchors", anchors, persistent=False)  # (N, 3)
        self.register_buffer("freqs", freqs, persistent=False)
        self.embed = nn.Sequential(nn.Linear(3 + 6 * num_frequencies, config.width), nn.GELU(), nn.Linear(config.width, config.width))
        self.blocks = nn.ModuleList(QueryBlock(config) for _ in range(config.decoder_depth))
        self.norm = nn.LayerNorm(config.width)
        self.out = nn.Linear(config.width, 3)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        a = self.anchors  # (N, 3)
        ang = a.unsqueeze(-1) * self.freqs  # (N, 3, F)
        feats = torch.cat([a, ang.sin().flatten(1), ang.cos().flatten(1)], dim=1)  # (N, 3 + 6F)
        q = self.embed(feats).unsqueeze(0).expand(tokens.shape[0], -1, -1)  # (B, N, D)
        for block in self.blocks:
            q = block(q, tokens)
        return self.anchors + self.out(self.norm(q))  # (B, N, 3): offsets from the anchors


class VisionTransformer(nn.Module):
    """Drawing (B, 3, H, W) in [0, 1] -> point cloud (B, num_points, 3) and family logits."""

    def __init__(self, config: VisionTransformerConfig | None = None):
        super().__init__()
        self.config = config = config if config is not None else VisionTransformerConfig()
        self.patch_embed = PatchEmbed(config)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, config.width))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + config.num_patches, config.width))
        self.pos_drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList([Block(config) for _ in range(config.depth)])
        self.norm = nn.LayerNorm(config.width)
        # The mlp head and the family head read the cls token and the mean patch token side by side.
        if config.point_head == "queries":
            self.point_head = PointQueryHead(config)
        else:
            self.point_head = nn.Sequential(
                nn.Linear(2 * config.width, config.head_hidden),
                nn.GELU(),
                nn.Linear(config.head_hidden, config.num_points * 3),
            )
        self.family_head = nn.Linear(2 * config.width, config.num_families) if config.num_families > 0 else None
        self.apply(self._init_weights)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        # Start from a spread-out template cloud rather than one point: Chamfer gradients of a
        # collapsed cloud all pull the same way and training stalls.
        if config.point_head == "mlp":
            with torch.no_grad():
                self.point_head[-1].bias.uniform_(-0.5, 0.5)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    @property
    def num_families(self) -> int:
        return self.config.num_families

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Tokens of a drawing: (B, 3, H, W) in [0, 1] -> (B, 1 + P, D), cls token first, normed.

        P = (image_size / patch_size)^2, D = width. This is what conditions the diffusion model.
        """
        c = self.config
        if x.dim() != 4 or x.shape[1] != c.in_channels or x.shape[-2:] != (c.image_size, c.image_size):
            raise ValueError(
                f"expected drawings of shape (B, {c.in_channels}, {c.image_size}, {c.image_size}), got {tuple(x.shape)}"
            )
        x = 1.0 - x  # ink = 1, paper = 0: empty patches give zero input
        tokens = self.patch_embed(x)  # (B, P, D)
        cls = self.cls_token.expand(tokens.shape[0], -1, -1)  # (B, 1, D)
        tokens = self.pos_drop(torch.cat([cls, tokens], dim=1) + self.pos_embed)  # (B, 1+P, D)
        for block in self.blocks:
            tokens = block(tokens)
        return self.norm(tokens)  # (B, 1+P, D)

    def pool(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, 1+P, D) -> (B, 2D): cls token beside the mean patch token."""
        return torch.cat([tokens[:, 0], tokens[:, 1:].mean(dim=1)], dim=-1)

    def forward_head(self, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
        """Tokens (B, 1+P, D) -> ``points`` (B, num_points, 3), ``family_logits`` (B, F)."""
        pooled = self.pool(tokens)  # (B, 2D)
        if self.config.point_head == "queries":
            points = self.point_head(tokens)  # (B, N, 3)
        else:
            points = self.point_head(pooled).view(-1, self.config.num_points, 3)  # (B, N, 3)
        out = {"points": points}
        if self.family_head is not None:
            out["family_logits"] = self.family_head(pooled)  # (B, F)
        return out

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Drawings (B, 3, H, W) -> dict(points (B, N, 3), family_logits (B, F))."""
        return self.forward_head(self.forward_features(x))

    @torch.no_grad()
    def predict_points(self, x: torch.Tensor) -> torch.Tensor:
        """Point clouds (B, N, 3) of drawings (B, 3, H, W), in eval mode without gradients."""
        was_training = self.training
        self.eval()
        try:
            return self.forward(x)["points"]
        finally:
            self.train(was_training)


def vit_presets() -> dict[str, VisionTransformerConfig]:
    """"tiny": a CPU model of minutes (64 px, 2 blocks); "full": the GPU model (256 px, 8 blocks).
    Both predict their points natively through one query per point (2048 and 4096)."""
    return {
        "tiny": VisionTransformerConfig(image_size=64, patch_size=8, width=64, depth=2, num_heads=4, num_points=2048,
                                        point_head="queries", decoder_depth=2),
        "full": VisionTransformerConfig(image_size=256, patch_size=16, width=384, depth=8, num_heads=6, num_points=4096,
                                        point_head="queries", decoder_depth=4),
    }


__all__ = ["VisionTransformerConfig", "VisionTransformer", "vit_presets", "NUM_PART_FAMILIES"]
