"""A compact U-Net that maps a drawing to relative inverse depth (MiDaS convention) and, with
``layers`` K > 0, to layered depth: the first K surface crossings of each pixel's ray.

    net = DepthNet(DepthNetConfig(layers=4))
    inv = net(images)                          # images (B, 3, H, W) RGB in [0, 1] -> (B, H, W)
    inv, depth, logits = net.forward_all(images)   # + (B, K, H, W) relative depth, presence logits

The output is *relative inverse depth*: larger = closer to the eye, defined only up to an
unknown positive scale and shift on the part (foreground) pixels, and pushed to <= 0 on the
background (paper) and >= 1 on the part, so thresholding at 0.5 gives a foreground mask. The
loss that gives it this meaning lives in `cad3d.training.tasks.depth`; the ONNX contract in
`cad3d.models.depth_contract`. Layered depth is the camera depth ``c_z - EYE_DISTANCE`` of each
crossing in the units of the normalized part (the drawing's camera frames the unit sphere), with a
logit that the crossing exists (`cad3d.data.layers` makes the targets).

Architecture: ``levels`` stride-2 encoder stages (two 3x3 conv + GroupNorm + ReLU each, channels
doubling from ``base_channels`` up to ``max_channels``), a mirrored decoder with bilinear
upsampling and skip concatenation, and a 1x1 head. Every op exports to ONNX opset 17.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class DepthNetConfig:
    in_channels: int = 3  # RGB (drawings are gray, repeated over the channels)
    base_channels: int = 32  # channels of the full-resolution stage
    max_channels: int = 256  # channel cap of the deeper stages
    levels: int = 4  # stride-2 downsamplings (input H and W need not be multiples of 2**levels)
    image_size: int = 256  # resolution the network is trained at (H = W), pixels
    layers: int = 0  # layered depth outputs K (0: relative inverse depth only)


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(8, channels), channels)


class ConvBlock(nn.Sequential):
    """Two (3x3 conv, GroupNorm, ReLU): (B, C_in, H, W) -> (B, C_out, H, W)."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__(
            nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
            _norm(c_out),
            nn.ReLU(inplace=True),
            nn.Conv2d(c_out, c_out, 3, padding=1, bias=False),
            _norm(c_out),
            nn.ReLU(inplace=True),
        )


class DepthNet(nn.Module):
    """Image (B, 3, H, W) in [0, 1] -> relative inverse depth (B, H, W); see the module doc."""

    def __init__(self, config: DepthNetConfig | None = None):
        super().__init__()
        self.config = config = config if config is not None else DepthNetConfig()
        widths = [min(config.base_channels * 2**i, config.max_channels) for i in range(config.levels + 1)]
        self.stem = ConvBlock(config.in_channels, widths[0])
        self.down = nn.ModuleList(
            nn.Sequential(nn.Conv2d(widths[i], widths[i], 3, stride=2, padding=1, bias=False), _norm(widths[i]), nn.ReLU(inplace=True), ConvBlock(widths[i], widths[i + 1]))
            for i in range(config.levels)
        )
        self.up = nn.ModuleList(ConvBlock(widths[i + 1] + widths[i], widths[i]) for i in reversed(range(config.levels)))
        self.head = nn.Conv2d(widths[0], 1 + 2 * config.layers, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Relative inverse depth (B, H, W) of drawings x (B, 3, H, W)."""
        return self._trunk(x)[:, 0]

    def forward_all(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(inverse depth (B, H, W), layered depth (B, K, H, W), presence logits (B, K, H, W))."""
        out = self._trunk(x)  # (B, 1 + 2K, H, W)
        k = self.config.layers
        return out[:, 0], out[:, 1 : 1 + k], out[:, 1 + k :]

    def _trunk(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x)  # (B, C0, H, W)
        skips = [h]
        for down in self.down:
            h = down(h)  # (B, C_{i+1}, H / 2^(i+1), W / 2^(i+1))
            skips.append(h)
        skips.pop()  # the bottleneck is h itself
        for up in self.up:
            skip = skips.pop()  # (B, C_i, H_i, W_i)
            h = F.interpolate(h, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            h = up(torch.cat([h, skip], dim=1))  # (B, C_i, H_i, W_i)
        return self.head(h)  # (B, 1 + 2K, H, W)


def depth_presets() -> dict[str, DepthNetConfig]:
    """"tiny": a CPU network of minutes (128 px, 4 levels, 16-64 channels); "full": the GPU one
    (256 px, 32-256 channels). Both predict 4 depth layers besides the inverse depth."""
    return {
        "tiny": DepthNetConfig(base_channels=16, max_channels=64, levels=4, image_size=128, layers=4),
        "full": DepthNetConfig(layers=4),
    }
