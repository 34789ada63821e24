"""`VAEConverter`: encode, decode, reconstruct and sample point clouds with a trained VAE.

    converter = VAEConverter(device="cuda", checkpoint="trained_models/vae/vae_best.pth", num_points=2048)
    z = converter.encode(points)             # (N, 3) -> (latent_dim,)   or (B, N, 3) -> (B, latent_dim)
    cloud = converter.reconstruct(points)    # (N, 3) -> (num_points, 3)
    clouds = converter.sample(4, seed=0)     # (4, num_points, 3)

Without a checkpoint (None, or a file that does not exist) it works with initial weights and
says so in a warning (``converter.trained`` is False). A checkpoint that exists but cannot be
trusted (corrupt, truncated, tampered, foreign, another task) raises `CheckpointError`.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

import numpy as np
import torch

from cad3d.devices import DeviceError, resolve_device
from cad3d.models.vae import PointCloudVAE, VAEConfig
from cad3d.training.loader import load_trained

logger = logging.getLogger(__name__)


class UntrainedModelWarning(UserWarning):
    """A converter running with initial (untrained) weights."""


class VAEConverter:
    """A point-cloud VAE ready for inference (eval mode, no gradients).

    Args:
        device: "cpu", "cuda", "cuda:1", "auto" or None (CUDA when available). CUDA asked for
            where it is not available falls back to CPU with a warning.
        checkpoint: a cad3d VAE checkpoint (``vae_best.pth``, ``vae_last.pth``, ``vae_epoch_N.pth``).
        num_points: points per decoded cloud. A checkpoint fixes it (its decoder was trained for
            its own count); a different request is reported in a warning.
    """

    def __init__(self, device: str | torch.device | None = "auto", checkpoint: str | os.PathLike | None = None, num_points: int = 2048):
        self.device = _resolve_device(device)
        self.checkpoint_path = Path(checkpoint) if checkpoint is not None else None
        self.trained = False
        if self.checkpoint_path is not None and self.checkpoint_path.exists():
            trained = load_trained(self.checkpoint_path, kind="vae")
            config, self.model, self.trained = trained.config, trained.model, True
            if config.num_points != num_points:
                warnings.warn(
                    f"{self.checkpoint_path}: the model decodes {config.num_points} points; num_points={num_points} ignored",
                    UserWarning,
                    stacklevel=2,
                )
            logger.info("VAE weights loaded from %s (epoch %s)", self.checkpoint_path, trained.payload.get("epoch"))
        else:
            config = VAEConfig(num_points=int(num_points))
            with torch.random.fork_rng(devices=[]):  # reproducible initial weights, caller's RNG untouched
                torch.manual_seed(0)
                self.model = PointCloudVAE(config)
            why = "no checkpoint given" if self.checkpoint_path is None else f"checkpoint {self.checkpoint_path} not found"
            warnings.warn(f"VAEConverter: {why}; using initial (untrained) weights", UntrainedModelWarning, stacklevel=2)
        self.model.to(self.device).eval()
        self.config = config

    @property
    def num_points(self) -> int:
        return self.config.num_points

    @property
    def latent_dim(self) -> int:
        return self.config.latent_dim

    @torch.no_grad()
    def encode(self, points) -> torch.Tensor:
        """Latent means of clouds: (N, 3) -> (latent_dim,), (B, N, 3) -> (B, latent_dim); any N.
        ``points`` is a tensor or an array in the normalized object frame; returns CPU float32."""
        x, batched = self._as_batch(points)  # (B, N, 3)
        mu, _ = self.model.encode(x)  # (B, D)
        return _unbatch(mu, batched)

    @torch.no_grad()
    def decode(self, z) -> torch.Tensor:
        """Clouds of latents: (latent_dim,) -> (num_points, 3), (B, latent_dim) -> (B, num_points, 3)."""
        z = torch.as_tensor(np.asarray(z) if not isinstance(z, torch.Tensor) else z, dtype=torch.float32)
        batched = z.dim() == 2
        if z.dim() not in (1, 2) or z.shape[-1] != self.latent_dim:
            raise ValueError(f"z must have shape (latent_dim,) or (B, latent_dim) with latent_dim={self.latent_dim}, got {tuple(z.shape)}")
        out = self.model.decode(z.reshape(-1, self.latent_dim).to(self.device))  # (B, P, 3)
        return _unbatch(out, batched)

    @torch.no_grad()
    def reconstruct(self, points) -> torch.Tensor:
        """Decode the latent mean of each cloud: (N, 3) -> (num_points, 3), (B, N, 3) -> (B, num_points, 3)."""
        x, batched = self._as_batch(points)  # (B, N, 3)
        recon, _, _ = self.model(x, sample_latent=False)  # (B, P, 3)
        return _unbatch(recon, batched)

    @torch.no_grad()
    def sample(self, n: int = 1, seed: int = 0) -> torch.Tensor:
        """``n`` clouds from the prior, (n, num_points, 3); the same ``seed`` gives the same clouds."""
        generator = torch.Generator().manual_seed(int(seed))  # CPU generator: same draws on any device
        return self.model.sample(int(n), generator).float().cpu()

    def _as_batch(self, points) -> tuple[torch.Tensor, bool]:
        x = points if isinstance(points, torch.Tensor) else torch.from_numpy(np.asarray(points))
        if x.dim() not in (2, 3) or x.shape[-1] != 3 or x.shape[-2] == 0:
            raise ValueError(f"points must have shape (N, 3) or (B, N, 3) with N >= 1, got {tuple(x.shape)}")
        batched = x.dim() == 3
        return x.reshape(-1, x.shape[-2], 3).to(self.device, torch.float32), batched


def _unbatch(x: torch.Tensor, batched: bool) -> torch.Tensor:
    x = x.float().cpu()
    return x if batched else x[0]


def _resolve_device(device) -> torch.device:
    # Graceful degradation: a converter asked for CUDA on a CPU machine still works.
    try:
        return resolve_device(device)
    except DeviceError as exc:
        warnings.warn(f"{exc}; using CPU", UserWarning, stacklevel=3)
        return torch.device("cpu")
