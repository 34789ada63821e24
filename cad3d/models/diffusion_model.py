"""The image-conditioned point-cloud diffusion model: its config, presets and wrapper.

    model = create_diffusion_model(num_points=4096, device="cuda")          # "full" architecture
    loss, parts = model.get_loss(images, points, generator=g)               # (B,3,H,W), (B,N,3)
    clouds = model.sample(images, steps=50, guidance=2.0, seed=0)          # (B, N, 3), DDIM

Three pieces, as in luost26/diffusion-point-cloud: the schedule (`cad3d.models.diffusion`), the
networks (an image encoder of `cad3d.models.image_encoders` and
`cad3d.models.pointnet2_unet.PointNet2UNet`) and this wrapper (`Diffusion3DModel`: ``get_loss``,
``sample``). The training task holds the two networks as separate modules (checkpoint keys
``image_encoder_state`` and ``unet_state``); the schedule is rebuilt from the config.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional

import torch
import torch.nn.functional as F
from torch import nn

from cad3d.config import config_from_dict
from cad3d.models.diffusion import NoiseSchedule, NoiseScheduleConfig, guided_eps, make_sampler, spaced_timesteps
from cad3d.models.image_encoders import CNNImageEncoder, ImageEncoder, ImageEncoderConfig, ImageFeatures
from cad3d.models.pointnet2_unet import PointNet2UNet, PointNet2UNetConfig

# -- the wrapper ---------------------------------------------------------------------------------
@dataclass
class DiffusionConfig:
    """The whole model. ``unet.cond_dim``/``token_dim``/``proj_dim`` follow the encoder (set here)."""

    num_points: int = 4096
    image_size: int = 256
    schedule: NoiseScheduleConfig = field(default_factory=NoiseScheduleConfig)
    encoder: ImageEncoderConfig = field(default_factory=ImageEncoderConfig)
    unet: PointNet2UNetConfig = field(default_factory=PointNet2UNetConfig)
    cond_drop_prob: float = 0.1  # classifier-free guidance training
    sampler: str = "ddim"  # default sampler of `sample`: ddim | ddpm
    sample_steps: int = 50  # default steps of `sample`
    guidance_scale: float = 1.0  # default guidance of `sample` (1 = conditional model)
    clip_x0: Optional[float] = 1.0  # clouds live in the unit sphere

    def __post_init__(self) -> None:
        if isinstance(self.schedule, Mapping):
            self.schedule = NoiseScheduleConfig(**self.schedule)
        if isinstance(self.encoder, Mapping):
            self.encoder = ImageEncoderConfig(**self.encoder)
        if isinstance(self.unet, Mapping):
            self.unet = PointNet2UNetConfig.from_dict(self.unet)
        if not 0.0 <= self.cond_drop_prob < 1.0:
            raise ValueError(f"cond_drop_prob must be in [0, 1), got {self.cond_drop_prob}")
        enc = self.encoder
        token_dim = 0
        if enc.tokens:
            token_dim = enc.small_widths[-1] if enc.backbone == "small" else (512 if enc.backbone in ("resnet18", "resnet34") else 0)
        if (self.unet.cond_dim, self.unet.token_dim, self.unet.proj_dim) != (enc.out_dim, token_dim, enc.fmap_dim):
            self.unet = dataclasses.replace(self.unet, cond_dim=enc.out_dim, token_dim=token_dim, proj_dim=enc.fmap_dim)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "DiffusionConfig":
        return config_from_dict(cls, d)


def diffusion_presets() -> dict[str, DiffusionConfig]:
    """"tiny": a CPU model of minutes (2048 points, 64 px, 2 levels); "full": the GPU model (4096
    points, ResNet-18 tokens cross-attended at the two coarsest levels). Both read the drawing at
    each point's projection (a stride-4 feature map)."""
    tiny = DiffusionConfig(
        num_points=2048,
        image_size=64,
        encoder=ImageEncoderConfig(backbone="small", out_dim=128, small_widths=(16, 32, 64), fmap_dim=32),
        unet=PointNet2UNetConfig(
            sa_ratios=(0.25, 0.25), sa_neighbors=(16, 16), sa_radii=(0.2, 0.4), sa_widths=(64, 128),
            fp_widths=(64, 128), in_width=32, time_dim=64, emb_dim=128,
        ),
        sample_steps=20,
    )
    full = DiffusionConfig(
        num_points=4096,
        image_size=256,
        encoder=ImageEncoderConfig(backbone="resnet18", out_dim=512, tokens=True, fmap_dim=64),
        unet=PointNet2UNetConfig(
            sa_ratios=(0.25, 0.25, 0.25, 0.25), sa_neighbors=(32, 32, 32, 16), sa_radii=(0.1, 0.2, 0.4, 0.8),
            sa_widths=(128, 256, 512, 512), fp_widths=(128, 256, 256, 512), in_width=64, emb_dim=512,
            cross_attention_levels=2, attn_heads=8,
        ),
    )
    return {"tiny": tiny, "full": full}


def iso_projection(batch: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """The drawings' cameras when none are given: every drawing an iso view (the default of the
    synthetic data and of single-view drawings). Returns cams (B, V, 2, 4), views (B, V) bool."""
    from cad3d.geometry.camera import grid_projections, iso_camera

    grid, views = grid_projections([iso_camera((64, 64))])  # size-independent; (V, 2, 4), (V,)
    return (torch.from_numpy(grid).expand(batch, -1, -1, -1).to(device),
            torch.from_numpy(views).expand(batch, -1).to(device))


def image_projection(feats: ImageFeatures, cams: Optional[torch.Tensor] = None, views: Optional[torch.Tensor] = None):
    """The U-Net's ``projection`` argument: None without a feature map, else (fmap, cams, views)."""
    if feats.fmap is None:
        return None
    if cams is None:
        cams, views = iso_projection(feats.fmap.shape[0], feats.fmap.device)
    elif views is None:
        views = torch.ones(cams.shape[:2], dtype=torch.bool, device=cams.device)
    return feats.fmap, cams.to(feats.fmap.device), views.to(feats.fmap.device)


def denoising_loss(
    image_encoder: nn.Module,
    unet: nn.Module,
    schedule: NoiseSchedule,
    images: torch.Tensor,
    points: torch.Tensor,
    generator: torch.Generator,
    cond_drop_prob: float = 0.0,
    cams: Optional[torch.Tensor] = None,
    views: Optional[torch.Tensor] = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The DDPM loss ``|eps - eps_hat(x_t, t, c)|^2`` (mean) for images (B, 3, H, W) and clouds
    (B, N, 3) drawn by cameras ``cams`` (B, V, 2, 4) (``views`` (B, V) which exist; default: iso);
    t, eps and the condition-dropout mask are drawn from ``generator`` (on the training device).
    Returns (loss, {"mse": ..., "cond_dropped": share of dropped conditions})."""
    B = points.shape[0]
    dev = points.device
    t = schedule.sample_timesteps(B, generator).to(dev)  # (B,)
    noise = torch.randn(points.shape, generator=generator, device=generator.device).to(dev)  # (B, N, 3)
    drop = (torch.rand(B, generator=generator, device=generator.device) < cond_drop_prob).to(dev)  # (B,)
    x_t = schedule.add_noise(points, noise, t)  # (B, N, 3) float32
    feats = image_encoder(images)
    eps = unet(x_t, t, feats.vector, feats.tokens, drop, image_projection(feats, cams, views))  # (B, N, 3)
    target = schedule.training_target(points, noise, t)
    mse = F.mse_loss(eps.float(), target.float())
    return mse, {"mse": mse.detach(), "cond_dropped": drop.float().mean()}


class Diffusion3DModel(nn.Module):
    """Image encoder + PointNet++ U-Net + noise schedule; ``get_loss`` and ``sample``."""

    def __init__(self, config: Optional[DiffusionConfig] = None, image_encoder: Optional[ImageEncoder] = None):
        super().__init__()
        self.config = config if config is not None else DiffusionConfig()
        self.image_encoder = image_encoder if image_encoder is not None else CNNImageEncoder(self.config.encoder)
        if image_encoder is not None:  # e.g. a ViTImageEncoder (the hybrid): the U-Net follows its sizes
            self.config = dataclasses.replace(self.config)
            self.config.unet = dataclasses.replace(self.config.unet, cond_dim=image_encoder.out_dim, token_dim=image_encoder.token_dim,
                                                   proj_dim=getattr(image_encoder, "fmap_dim", 0))
        self.unet = PointNet2UNet(self.config.unet)
        self.schedule = NoiseSchedule(self.config.schedule)

    @property
    def num_points(self) -> int:
        return self.config.num_points

    def get_loss(self, images: torch.Tensor, points: torch.Tensor, generator: torch.Generator,
                 cams: Optional[torch.Tensor] = None, views: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, dict]:
        """Training loss of a batch: images (B, 3, H, W), points (B, N, 3), cameras as in `denoising_loss`."""
        return denoising_loss(self.image_encoder, self.unet, self.schedule, images, points, generator,
                              self.config.cond_drop_prob, cams, views)

    def predict_noise(self, x: torch.Tensor, t: int, feats: ImageFeatures, guidance: float, projection=None) -> torch.Tensor:
        """eps_hat (B, N, 3) at timestep t with classifier-free guidance ``guidance`` (1 = the
        conditional model, 0 = the unconditional one; others run both in one batch)."""
        B = x.shape[0]
        tt = torch.full((B,), t, dtype=torch.long, device=x.device)
        if guidance == 1.0:
            return self.unet(x, tt, feats.vector, feats.tokens, None, projection)
        if guidance == 0.0:
            return self.unet(x, tt, feats.vector, feats.tokens, torch.ones(B, dtype=torch.bool, device=x.device), projection)
        tokens = torch.cat([feats.tokens, feats.tokens]) if feats.tokens is not None else None
        drop = torch.cat([torch.zeros(B, dtype=torch.bool, device=x.device), torch.ones(B, dtype=torch.bool, device=x.device)])
        both = None if projection is None else tuple(torch.cat([p, p]) for p in projection)
        geometry = self.unet.geometry(x, repeat=2)  # both passes see the same points: find neighbourhoods once
        eps = self.unet(torch.cat([x, x]), tt.repeat(2), torch.cat([feats.vector, feats.vector]), tokens, drop, both,
                        geometry)  # (2B, N, 3)
        return guided_eps(eps[:B], eps[B:], guidance)

    @torch.no_grad()
    def sample(
        self,
        images: torch.Tensor,
        steps: Optional[int] = None,
        guidance: Optional[float] = None,
        *,
        sampler: Optional[str] = None,
        eta: float = 0.0,
        seed: Optional[int] = None,
        generator: Optional[torch.Generator] = None,
        num_points: Optional[int] = None,
        x_T: Optional[torch.Tensor] = None,
        condition: bool = True,
        cams: Optional[torch.Tensor] = None,
        views: Optional[torch.Tensor] = None,
        init: Optional[torch.Tensor] = None,
        strength: float = 1.0,
    ) -> torch.Tensor:
        """Point clouds (B, N, 3) for drawings images (B, 3, H, W) in [0, 1].

        ``steps`` (default ``config.sample_steps``; None with sampler "ddpm" and no config steps
        means all T), ``guidance`` (default ``config.guidance_scale``), ``sampler`` "ddim" (eta=0:
        deterministic given x_T) or "ddpm" (ancestral). Randomness: ``generator``, else a CPU
        generator seeded with ``seed`` (default 0) — the same seed gives the same clouds.
        ``x_T`` (B * R, N, 3) starts from given noise: R clouds per drawing (rows b * R .. b * R + R - 1
        belong to drawing b; the drawings are encoded once). ``condition=False`` samples with the
        null condition (the unconditional model). ``cams``/``views``: the drawings' cameras (default
        iso). ``init`` (B * R, N, 3) with ``strength`` in (0, 1]: refine a given cloud instead of
        starting from pure noise — it is noised to timestep ``strength * T`` (with ``x_T`` as the
        noise) and denoised from there with ``steps * strength`` steps (SDEdit)."""
        cfg = self.config
        dev = images.device
        steps = steps or cfg.sample_steps or cfg.schedule.timesteps
        guidance = cfg.guidance_scale if guidance is None else float(guidance)
        if not condition:
            guidance = 0.0
        if generator is None:
            generator = torch.Generator().manual_seed(0 if seed is None else int(seed))
        was_training = self.training
        self.eval()
        try:
            B = images.shape[0]
            n = num_points or cfg.num_points
            x = x_T.float().to(dev) if x_T is not None else torch.randn((B, n, 3), generator=generator, device=generator.device).to(dev)
            if x.shape[0] % B:
                raise ValueError(f"x_T holds {x.shape[0]} clouds: not a multiple of the {B} drawings")
            feats = self.image_encoder(images)
            projection = image_projection(feats, cams, views)
            if x.shape[0] != B:  # R clouds per drawing share its features and cameras
                r = x.shape[0] // B
                feats = ImageFeatures(feats.vector.repeat_interleave(r, 0),
                                      None if feats.tokens is None else feats.tokens.repeat_interleave(r, 0),
                                      None if feats.fmap is None else feats.fmap.repeat_interleave(r, 0))
                projection = None if projection is None else tuple(p.repeat_interleave(r, 0) for p in projection)
            smp = make_sampler(sampler or cfg.sampler, self.schedule, eta=eta, clip_x0=cfg.clip_x0)
            smp.set_timesteps(steps)
            if init is not None and strength < 1.0:
                t_start = max(int(round(strength * (cfg.schedule.timesteps - 1))), 0)
                smp.timesteps = spaced_timesteps(t_start + 1, max(1, min(t_start + 1, round(steps * strength))))
                x = self.schedule.add_noise(init.float().to(dev), x, torch.full((x.shape[0],), t_start, device=dev))  # (B*R, N, 3)
            for t, t_prev in smp.pairs():
                eps = self.predict_noise(x, t, feats, guidance, projection)  # (B, N, 3)
                x = smp.step(eps, t, t_prev, x, generator=generator)
            return x
        finally:
            self.train(was_training)


def create_diffusion_model(num_points: int = 4096, device: str | torch.device = "cpu", **config: Any) -> Diffusion3DModel:
    """A `Diffusion3DModel` on ``device`` (the reference API's factory).

    ``config``: `DiffusionConfig` fields (nested ones as dicts or dataclasses), or
    ``preset="tiny"|"full"`` (default "full") whose fields the others override, or
    ``config=DiffusionConfig(...)``."""
    base = config.pop("config", None)
    preset = config.pop("preset", "full")
    if base is None:
        presets = diffusion_presets()
        if preset not in presets:
            raise ValueError(f"preset must be one of {sorted(presets)}, got {preset!r}")
        base = presets[preset]
    d = base.to_dict()
    for k, v in config.items():
        if isinstance(v, Mapping) and isinstance(d.get(k), Mapping):
            d[k] = {**d[k], **v}
        else:
            d[k] = dataclasses.asdict(v) if dataclasses.is_dataclass(v) else v
    d["num_points"] = int(num_points)
    from cad3d.devices import resolve_device

    return Diffusion3DModel(DiffusionConfig.from_dict(d)).to(resolve_device(device))


__all__ = [
    "Diffusion3DModel",
    "DiffusionConfig",
    "create_diffusion_model",
    "denoising_loss",
    "diffusion_presets",
    "image_projection",
    "iso_projection",
]
