"""Image encoders that condition the diffusion model.

One interface: ``encoder(images (B, 3, H, W) in [0, 1], 1 = paper)`` -> `ImageFeatures`
(``vector`` (B, out_dim), ``tokens`` (B, T, token_dim) or None, ``fmap`` (B, fmap_dim, h, w) or
None: a feature map the U-Net samples at each point's projection). `CNNImageEncoder` wraps a
torchvision ResNet (no pretrained weights: nothing is downloaded) or a small CNN;
`ViTImageEncoder` wraps any module with ``forward_features(x) -> (B, 1+P, D)`` (the CAD ViT, for
the hybrid): CLS token = vector, patch tokens = tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, Optional

import torch
from torch import nn

BACKBONES = ("resnet18", "resnet34", "small")


class ImageFeatures(NamedTuple):
    vector: torch.Tensor  # (B, out_dim) global image vector
    tokens: Optional[torch.Tensor]  # (B, T, token_dim) or None
    fmap: Optional[torch.Tensor] = None  # (B, fmap_dim, h, w) or None


class ImageEncoder(nn.Module):
    """Interface: ``forward(images (B, 3, H, W), values in [0, 1], 1 = paper) -> ImageFeatures``.
    ``out_dim`` is the vector size, ``token_dim`` the token size (0 when there are no tokens),
    ``fmap_dim`` the feature map's channels (0 when there is none)."""

    out_dim: int
    token_dim: int
    fmap_dim: int = 0


@dataclass
class ImageEncoderConfig:
    backbone: str = "resnet18"  # resnet18 | resnet34 | small
    out_dim: int = 512
    tokens: bool = False  # also return the final feature map as tokens (for cross-attention)
    small_widths: tuple[int, ...] = (32, 64, 128, 256)  # channels per stride-2 stage of "small"
    fmap_dim: int = 0  # channels of a stride-4 feature map for projection conditioning (0 = none)

    def __post_init__(self) -> None:
        if self.backbone not in BACKBONES:
            raise ValueError(f"backbone must be one of {BACKBONES}, got {self.backbone!r}")
        self.small_widths = tuple(self.small_widths)


class CNNImageEncoder(ImageEncoder):
    """ResNet (torchvision, ``weights=None``) or a small stride-2 CNN; vector = [avg, max] pooled
    final map -> Linear; tokens = the final map's cells (B, h*w, C)."""

    def __init__(self, config: Optional[ImageEncoderConfig] = None):
        super().__init__()
        cfg = self.config = config if config is not None else ImageEncoderConfig()
        if cfg.backbone == "small":
            layers, c_in = [], 3
            for w in cfg.small_widths:
                layers += [nn.Conv2d(c_in, w, 3, stride=2, padding=1), nn.GroupNorm(min(8, w), w), nn.SiLU(),
                           nn.Conv2d(w, w, 3, padding=1), nn.GroupNorm(min(8, w), w), nn.SiLU()]
                c_in = w
            self.features = nn.Sequential(*layers)
            channels = c_in
            self._fmap_after, fmap_in = 12, cfg.small_widths[1]  # end of the second stride-2 stage: stride 4
        else:
            import torchvision

            net = getattr(torchvision.models, cfg.backbone)(weights=None)
            self.features = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool, net.layer1, net.layer2, net.layer3, net.layer4)
            channels = net.fc.in_features
            self._fmap_after, fmap_in = 5, net.layer1[-1].conv1.in_channels  # after layer1: stride 4
        self.proj = nn.Linear(2 * channels, cfg.out_dim)
        self.out_dim = cfg.out_dim
        self.token_dim = channels if cfg.tokens else 0
        self.fmap_dim = cfg.fmap_dim
        self.fmap_proj = nn.Conv2d(fmap_in, cfg.fmap_dim, 1) if cfg.fmap_dim else None

    def forward(self, images: torch.Tensor) -> ImageFeatures:
        h = 1.0 - 2.0 * images  # (B, 3, H, W): lines +1, paper -1
        local = None
        for i, layer in enumerate(self.features):
            h = layer(h)
            if i + 1 == self._fmap_after and self.fmap_proj is not None:
                local = self.fmap_proj(h)  # (B, fmap_dim, H/4, W/4)
        pooled = torch.cat([h.mean(dim=(2, 3)), h.amax(dim=(2, 3))], dim=1)  # (B, 2C)
        tokens = h.flatten(2).transpose(1, 2) if self.token_dim else None  # (B, h*w, C)
        return ImageFeatures(self.proj(pooled), tokens, local)


class ViTImageEncoder(ImageEncoder):
    """Any backbone with ``forward_features(x) -> (B, 1+P, D)`` (first token = CLS)."""

    def __init__(self, backbone: nn.Module, width: int, out_dim: Optional[int] = None, tokens: bool = True,
                 fmap: bool = False):
        super().__init__()
        self.backbone = backbone
        self.proj = nn.Linear(width, out_dim) if out_dim else nn.Identity()
        self.out_dim = out_dim or width
        self.token_dim = width if tokens else 0
        self.fmap_dim = width if fmap else 0  # the patch tokens laid out on their grid

    def forward(self, images: torch.Tensor) -> ImageFeatures:
        feats = self.backbone.forward_features(images)  # (B, 1+P, D)
        patches = feats[:, 1:]  # (B, P, D)
        fmap = None
        if self.fmap_dim:
            g = int(round(patches.shape[1] ** 0.5))
            fmap = patches.transpose(1, 2).reshape(patches.shape[0], -1, g, g)  # (B, D, g, g)
        return ImageFeatures(self.proj(feats[:, 0]), patches if self.token_dim else None, fmap)
