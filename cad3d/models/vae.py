"""Point-cloud VAE: a PointNet encoder, a Gaussian latent and an MLP point decoder.

Three small pieces, each readable alone:

- `kl_weight_at`: the KL annealing schedule (pure math of the epoch);
- `PointCloudVAE`: the network (``encode`` -> ``reparameterize`` -> ``decode``, ``sample``);
- `vae_loss`: the loss and its logged parts (chamfer, kl, voxel, smooth).

All randomness goes through torch generators, so runs are reproducible.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from cad3d.geometry import ops
from cad3d.geometry.transforms import soft_voxelize

KL_SCHEDULES = ("linear", "cyclic", "constant")


@dataclass
class VAEConfig:
    num_points: int = 2048  # points per decoded cloud
    latent_dim: int = 128
    init_logvar: float = -6.0  # start nearly deterministic (an auto-encoder): unit noise at init drowns the code
    encoder_dims: tuple[int, ...] = (64, 128, 256, 512)  # shared per-point MLP widths
    decoder_dims: tuple[int, ...] = (256, 512, 1024)  # MLP widths before the (num_points * 3) output
    image_size: int = 64  # drawings are loaded with the clouds but unused by the VAE: keep them small
    # loss weights
    chamfer_weight: float = 1.0
    kl_weight_max: float = 1e-3  # Chamfer values are ~1e-3..1e-2: a larger KL weight collapses the latent
    kl_schedule: str = "linear"  # "linear" warm-up, "cyclic" (repeated warm-ups) or "constant"
    kl_warmup_epochs: int = 10  # linear: epochs to reach kl_weight_max
    kl_cycle_epochs: int = 10  # cyclic: length of one cycle
    kl_cycle_ratio: float = 0.5  # cyclic: fraction of a cycle spent ramping up
    voxel_weight: float = 0.1
    voxel_resolution: int = 16  # soft occupancy grid per side over the normalized cube
    voxel_sigma: float | None = None  # Gaussian splat std in cloud units; None: half a voxel edge
    smooth_weight: float = 0.01
    smooth_k: int = 8  # neighbours of the local smoothness term
    smooth_queries: int = 256  # points per cloud the smoothness term looks at (kNN is the costly part)

    def __post_init__(self):
        # JSON round trips turn tuples into lists.
        self.encoder_dims = tuple(int(d) for d in self.encoder_dims)
        self.decoder_dims = tuple(int(d) for d in self.decoder_dims)
        if self.kl_schedule not in KL_SCHEDULES:
            raise ValueError(f"kl_schedule must be one of {KL_SCHEDULES}, got {self.kl_schedule!r}")


def kl_weight_at(epoch: int, config: VAEConfig) -> float:
    """KL weight of a 1-based ``epoch``.

    linear: ``max * min(1, epoch / warmup)``; cyclic: the same ramp restarted every
    ``kl_cycle_epochs``, reaching the max after ``kl_cycle_ratio`` of the cycle; constant: ``max``.
    """
    w = config.kl_weight_max
    if config.kl_schedule == "constant":
        return w
    if config.kl_schedule == "linear":
        return w * min(1.0, epoch / max(1, config.kl_warmup_epochs))
    cycle = max(1, config.kl_cycle_epochs)
    ramp = max(1.0, config.kl_cycle_ratio * cycle)
    pos = (epoch - 1) % cycle + 1  # 1..cycle
    return w * min(1.0, pos / ramp)


class PointNetEncoder(nn.Module):
    """Shared per-point MLP + max pool -> (mu, logvar). Order-invariant in the points."""

    def __init__(self, dims: tuple[int, ...], latent_dim: int, init_logvar: float = 0.0):
        super().__init__()
        layers, c_in = [], 3
        for c in dims:
            layers += [nn.Conv1d(c_in, c, 1), nn.ReLU()]
            c_in = c
        self.mlp = nn.Sequential(*layers)
        self.mu = nn.Linear(c_in, latent_dim)
        self.logvar = nn.Linear(c_in, latent_dim)
        nn.init.zeros_(self.logvar.weight)
        nn.init.constant_(self.logvar.bias, init_logvar)

    def forward(self, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """points (B, N, 3) -> mu, logvar (B, latent_dim)."""
        h = self.mlp(points.transpose(1, 2))  # (B, C, N)
        h = h.max(dim=2).values  # (B, C)
        return self.mu(h), self.logvar(h)


class MLPDecoder(nn.Module):
    """Latent -> MLP -> (num_points, 3), tanh-bounded to the normalized cube [-1, 1]^3."""

    def __init__(self, latent_dim: int, dims: tuple[int, ...], num_points: int):
        super().__init__()
        layers, c_in = [], latent_dim
        for c in dims:
            layers += [nn.Linear(c_in, c), nn.ReLU()]
            c_in = c
        self.mlp = nn.Sequential(*layers)
        self.out = nn.Linear(c_in, num_points * 3)
        self.num_points = num_points

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """z (B, latent_dim) -> points (B, num_points, 3)."""
        h = self.mlp(z)  # (B, C)
        return torch.tanh(self.out(h)).view(z.shape[0], self.num_points, 3)  # (B, N, 3)


class PointCloudVAE(nn.Module):
    """Variational auto-encoder of point clouds (B, N, 3) in the normalized object frame."""

    def __init__(self, config: VAEConfig):
        super().__init__()
        self.config = config
        self.encoder = PointNetEncoder(config.encoder_dims, config.latent_dim, config.init_logvar)
        self.decoder = MLPDecoder(config.latent_dim, config.decoder_dims, config.num_points)

    def encode(self, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """points (B, N, 3), any N -> mu, logvar (B, latent_dim)."""
        return self.encoder(points)

    @staticmethod
    def reparameterize(mu: torch.Tensor, logvar: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """z = mu + exp(logvar / 2) * eps, eps ~ N(0, I) drawn from ``generator``; (B, latent_dim)."""
        eps = _randn(mu.shape, generator, mu)  # (B, D)
        return mu + torch.exp(0.5 * logvar) * eps

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """z (B, latent_dim) -> points (B, num_points, 3)."""
        return self.decoder(z)

    def forward(
        self, points: torch.Tensor, generator: torch.Generator | None = None, sample_latent: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """points (B, N, 3) -> (recon (B, num_points, 3), mu, logvar (B, latent_dim)).

        ``sample_latent=False`` decodes the mean (deterministic, for validation)."""
        mu, logvar = self.encode(points)  # (B, D), (B, D)
        z = self.reparameterize(mu, logvar, generator) if sample_latent else mu
        return self.decode(z), mu, logvar

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` clouds decoded from z ~ N(0, I): (n, num_points, 3)."""
        p = next(self.parameters())
        z = _randn((n, self.config.latent_dim), generator, p)  # (n, D)
        return self.decode(z)


def _randn(shape, generator: torch.Generator | None, like: torch.Tensor) -> torch.Tensor:
    # Draw on the generator's device (a CPU generator cannot fill a CUDA tensor), then move.
    device = generator.device if generator is not None else like.device
    return torch.randn(shape, generator=generator, device=device, dtype=like.dtype).to(like.device)


def kl_divergence(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)) summed over latent dims, averaged over the batch; scalar."""
    return (-0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(dim=1)).mean()


def voxel_loss(pred: torch.Tensor, target: torch.Tensor, resolution: int, sigma: float | None) -> torch.Tensor:
    """Mean squared difference of soft occupancy grids of pred and target (B, N, 3); scalar."""
    occ_pred = soft_voxelize(pred, resolution, sigma)  # (B, R, R, R)
    with torch.no_grad():
        occ_target = soft_voxelize(target, resolution, sigma)  # (B, R, R, R)
    return F.mse_loss(occ_pred, occ_target)


def smoothness_loss(points: torch.Tensor, k: int, queries: int | None = None) -> torch.Tensor:
    """Mean squared distance of a point to the centroid of its ``k`` nearest neighbours (a
    discrete Laplacian of the decoded cloud (B, N, 3)); scalar.

    ``queries``: evaluate it at every ``N // queries``-th point only (all points when None);
    the decoder's point order carries no meaning, so a strided subset is an unbiased sample.
    """
    n = points.shape[1]
    stride = max(1, n // queries) if queries else 1
    query = points[:, ::stride]  # (B, S, 3)
    with torch.no_grad():  # neighbours are chosen without gradient; distances keep it below
        _, idx = ops.knn(query.detach(), points.detach(), k + 1)  # (B, S, k + 1), self first
    idx = idx[..., 1:]  # (B, S, k)
    b = torch.arange(points.shape[0], device=points.device)[:, None, None]  # (B, 1, 1)
    centroid = points[b, idx].mean(dim=2)  # (B, S, 3)
    return (query - centroid).pow(2).sum(dim=-1).mean()


def vae_loss(
    recon: torch.Tensor,
    target: torch.Tensor,
    mu: torch.Tensor,
    logvar: torch.Tensor,
    kl_weight: float,
    config: VAEConfig,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Weighted sum of the loss parts and the parts themselves (unweighted, detached 0-d tensors).

    recon (B, P, 3), target (B, N, 3), mu/logvar (B, D). Terms with weight 0 are not computed.
    """
    zero = recon.new_zeros(())
    chamfer = ops.chamfer_distance(recon, target, reduction="mean")
    kl = kl_divergence(mu, logvar)
    voxel = voxel_loss(recon, target, config.voxel_resolution, config.voxel_sigma) if config.voxel_weight else zero
    smooth = smoothness_loss(recon, config.smooth_k, config.smooth_queries) if config.smooth_weight else zero
    loss = (
        config.chamfer_weight * chamfer
        + kl_weight * kl
        + config.voxel_weight * voxel
        + config.smooth_weight * smooth
    )
    parts = {"chamfer": chamfer, "kl": kl, "voxel": voxel, "smooth": smooth}
    return loss, {k: v.detach() for k, v in parts.items()}


def vae_presets() -> dict[str, VAEConfig]:
    """"tiny": a CPU model of minutes (512 points, 32-d latent); "full": the default config."""
    tiny = VAEConfig(
        num_points=512,
        latent_dim=32,
        encoder_dims=(32, 64, 128),
        decoder_dims=(128, 256),
        image_size=32,
        kl_weight_max=1e-4,
        kl_warmup_epochs=4,
        kl_cycle_epochs=4,
        voxel_resolution=8,
        smooth_queries=128,
    )
    return {"tiny": tiny, "full": VAEConfig()}


__all__ = [
    "VAEConfig",
    "PointCloudVAE",
    "kl_weight_at",
    "kl_divergence",
    "voxel_loss",
    "smoothness_loss",
    "vae_loss",
    "vae_presets",
]
