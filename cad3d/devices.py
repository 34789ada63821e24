"""Which torch device a user's device name means: one answer for training, conversion and the
converters."""

from __future__ import annotations

import torch

from cad3d.errors import Cad3dError


class DeviceError(Cad3dError, ValueError):
    """A device that this machine does not have."""


def resolve_device(name: str | torch.device | None = "auto", *, local_rank: int = 0) -> torch.device:
    """``"auto"`` (or None): this process's GPU (``cuda:local_rank``) when CUDA is available, else
    the CPU; ``"cpu"``; ``"cuda"`` / ``"cuda:N"``: that GPU, or DeviceError without CUDA."""
    if name is None or str(name) == "auto":
        return torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"device {str(name)!r} was asked for but CUDA is not available on this machine")
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", local_rank)
    return device
