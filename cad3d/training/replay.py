"""The replay buffer of continual learning: a uniform reservoir of (drawing, cloud) pairs."""

from __future__ import annotations

from typing import Mapping, Optional

import torch


class ReplayBuffer:
    """Reservoir of (image, cloud) pairs: after ``seen`` offers, each offered pair is kept with
    probability ``capacity / seen`` (Vitter's algorithm R), so the buffer is a uniform sample of
    everything trained on, old data included — the memory for continual learning.

    Images are stored as one grey uint8 channel (1/255 steps; drawings are [0, 1] grey values
    given as C equal channels; channels that differ are averaged) and given back with their C
    channels; clouds as float32; all on the CPU. All decisions come from the buffer's own CPU ``torch.Generator``; `state_dict`
    (tensors only) holds it, so a restored buffer continues exactly.
    """

    def __init__(self, capacity: int, seed: int = 0):
        if capacity < 0:
            raise ValueError(f"replay buffer capacity must be >= 0, got {capacity}")
        self.capacity = int(capacity)
        self.generator = torch.Generator().manual_seed(int(seed))
        self.images: Optional[torch.Tensor] = None  # (capacity, 1, H, W) uint8 grey
        self.channels = 0  # C of the images offered (and sampled)
        self.points: Optional[torch.Tensor] = None  # (capacity, N, 3) float32
        self.size = 0
        self.seen = 0

    def __len__(self) -> int:
        return self.size

    def add(self, images: torch.Tensor, points: torch.Tensor) -> None:
        """Offer a batch: images (B, C, H, W) in [0, 1], points (B, N, 3)."""
        if self.capacity == 0:
            return
        B, C = images.shape[:2]
        if self.images is None:
            self.channels = int(C)
            self.images = torch.zeros((self.capacity, 1, *images.shape[2:]), dtype=torch.uint8)
            self.points = torch.zeros((self.capacity, *points.shape[1:]), dtype=torch.float32)
        elif (C, *images.shape[2:]) != (self.channels, *self.images.shape[2:]) or points.shape[1:] != self.points.shape[1:]:
            raise ValueError(
                f"replay buffer holds images {(self.channels, *self.images.shape[2:])} and clouds {tuple(self.points.shape[1:])}, "
                f"got {tuple(images.shape[1:])} and {tuple(points.shape[1:])}"
            )
        # Slot of each offered sample: the next free one while filling, then a uniform draw in
        # [0, seen] that keeps it if < capacity. A later sample of the batch that draws the same
        # slot overwrites the earlier one, as in the sequential algorithm.
        chosen: dict[int, int] = {}  # slot -> index in the batch
        for i in range(B):
            if self.seen < self.capacity:
                chosen[self.seen] = i
            else:
                j = int(torch.randint(0, self.seen + 1, (1,), generator=self.generator))
                if j < self.capacity:
                    chosen[j] = i
            self.seen += 1
        if chosen:
            dst = torch.tensor(list(chosen.keys()))
            src = torch.tensor(list(chosen.values()))
            self.images[dst] = _grey_uint8(images.detach()[src.to(images.device)])
            self.points[dst] = points.detach()[src.to(points.device)].float().cpu()
        self.size = min(self.capacity, self.seen)

    def sample(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """k pairs drawn uniformly with replacement: images (k, C, H, W) float32 (the grey channel
        repeated), points (k, N, 3)."""
        if self.size == 0:
            raise ValueError("cannot sample an empty replay buffer")
        idx = torch.randint(0, self.size, (k,), generator=self.generator)
        grey = self.images[idx].float() / 255.0  # (k, 1, H, W)
        return grey.expand(-1, self.channels, -1, -1), self.points[idx].clone()

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Tensors only (weights_only loadable)."""
        n = self.size
        return {
            "capacity": torch.tensor(self.capacity),
            "size": torch.tensor(n),
            "seen": torch.tensor(self.seen),
            "generator": self.generator.get_state(),
            "channels": torch.tensor(self.channels),
            "images": self.images[:n].clone() if self.images is not None else torch.zeros(0, dtype=torch.uint8),
            "points": self.points[:n].clone() if self.points is not None else torch.zeros(0),
        }

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        """Restore a `state_dict`. A saved buffer larger than this capacity keeps its first
        ``capacity`` pairs (a uniform sample of a uniform sample). Buffers saved before images
        were kept grey (C uint8 channels) load as grey."""
        n = min(int(state["size"]), self.capacity)
        self.seen = int(state["seen"])
        self.generator.set_state(state["generator"])
        self.size = n
        if n == 0 or state["images"].dim() < 2:
            self.images = self.points = None
            self.size = 0
            return
        images, points = state["images"], state["points"]
        self.channels = int(state["channels"]) if "channels" in state else int(images.shape[1])
        if images.shape[1] != 1:  # an older, colour-channel buffer
            images = _grey_uint8(images[:n].float() / 255.0)
        self.images = torch.zeros((self.capacity, 1, *images.shape[2:]), dtype=torch.uint8)
        self.points = torch.zeros((self.capacity, *points.shape[1:]), dtype=torch.float32)
        self.images[:n] = images[:n]
        self.points[:n] = points[:n].float()


def _grey_uint8(images: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) in [0, 1] -> (B, 1, H, W) uint8 on the CPU: the first channel when all are
    equal (a grey drawing, kept exactly), else their mean."""
    x = images.float().clamp(0, 1)
    grey = x[:, :1] if bool((x == x[:, :1]).all()) else x.mean(dim=1, keepdim=True)
    return (grey * 255).round().to(torch.uint8).cpu()
