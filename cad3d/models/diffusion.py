"""Diffusion math for point clouds: the noise schedule and the samplers (no network in here).

    schedule = NoiseSchedule(NoiseScheduleConfig(timesteps=1000, beta_schedule="cosine"))
    x_t = schedule.add_noise(x0, noise, t)                       # q(x_t | x_0), closed form
    sampler = DDIMSampler(schedule, eta=0.0)
    sampler.set_timesteps(50)
    x = torch.randn(B, N, 3, generator=g)
    for t, t_prev in sampler.pairs():
        x = sampler.step(eps_model(x, t), t, t_prev, x, generator=g)

As in HF diffusers, the schedule (pure math, buffers) is independent of the network, and swapping
the sampler (`DDPMSampler` ancestral, `DDIMSampler` deterministic for ``eta=0``) never touches the
model. All randomness goes through an explicit ``torch.Generator``, so sampling with a seed is
reproducible. Schedule math runs in float32 whatever autocast is active.

Notation (Ho et al. 2020): ``alpha_t = 1 - beta_t``, ``abar_t = prod_{s<=t} alpha_s``;
``x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps``. Timesteps are 0-based, ``0 .. T-1``; the
"previous" step of ``t = 0`` is the clean sample, ``abar_{-1} = 1``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterator, Optional

import torch
from torch import nn

BETA_SCHEDULES = ("linear", "cosine")


@dataclass
class NoiseScheduleConfig:
    """The variance schedule. ``linear``: betas from ``beta_start`` to ``beta_end`` (DDPM);
    ``cosine``: Nichol & Dhariwal 2021 with offset ``cosine_s``, betas capped at ``max_beta``."""

    timesteps: int = 1000
    beta_schedule: str = "linear"
    beta_start: float = 1e-4
    beta_end: float = 0.02
    cosine_s: float = 0.008
    max_beta: float = 0.999

    def __post_init__(self) -> None:
        if self.timesteps < 1:
            raise ValueError(f"timesteps must be >= 1, got {self.timesteps}")
        if self.beta_schedule not in BETA_SCHEDULES:
            raise ValueError(f"beta_schedule must be one of {BETA_SCHEDULES}, got {self.beta_schedule!r}")
        if not 0.0 < self.beta_start <= self.beta_end < 1.0:
            raise ValueError(f"need 0 < beta_start <= beta_end < 1, got {self.beta_start}, {self.beta_end}")


def make_betas(config: NoiseScheduleConfig) -> torch.Tensor:
    """(T,) float64 betas of the configured schedule."""
    T = config.timesteps
    if config.beta_schedule == "linear":
        return torch.linspace(config.beta_start, config.beta_end, T, dtype=torch.float64)
    s = config.cosine_s
    steps = torch.arange(T + 1, dtype=torch.float64) / T  # (T+1,)
    f = torch.cos((steps + s) / (1 + s) * math.pi / 2).square()  # (T+1,) abar(t/T) up to scale
    abar = f / f[0]
    betas = 1.0 - abar[1:] / abar[:-1]  # (T,)
    return betas.clamp(min=0.0, max=config.max_beta)


def _expand(values: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """values[t] shaped (B, 1, ..., 1) to broadcast against ``like`` (B, ...)."""
    out = values.to(like.device)[t.to(like.device).long()]  # (B,)
    return out.view(-1, *([1] * (like.dim() - 1)))


class NoiseSchedule(nn.Module):
    """Betas and their products as float32 buffers (not saved in state dicts: rebuilt from the
    config). Methods take ``t`` as a (B,) long tensor of 0-based timesteps."""

    def __init__(self, config: Optional[NoiseScheduleConfig] = None):
        super().__init__()
        self.config = config if config is not None else NoiseScheduleConfig()
        betas = make_betas(self.config)  # (T,) float64
        alphas = 1.0 - betas
        abar = torch.cumprod(alphas, dim=0)
        abar_prev = torch.cat([torch.ones(1, dtype=torch.float64), abar[:-1]])
        # Posterior q(x_{t-1} | x_t, x_0) variance; at t = 0 it is 0 (the sample is x_0).
        posterior_var = betas * (1.0 - abar_prev) / (1.0 - abar)
        for name, value in {
            "betas": betas,
            "alphas": alphas,
            "alphas_cumprod": abar,
            "alphas_cumprod_prev": abar_prev,
            "posterior_variance": posterior_var,
        }.items():
            self.register_buffer(name, value.float(), persistent=False)

    @property
    def timesteps(self) -> int:
        return self.config.timesteps

    def sample_timesteps(self, batch: int, generator: torch.Generator, device: torch.device | str | None = None) -> torch.Tensor:
        """(B,) long timesteps uniform in [0, T)."""
        device = device if device is not None else generator.device
        return torch.randint(0, self.timesteps, (batch,), generator=generator, device=device)

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Sample of q(x_t | x_0): ``sqrt(abar_t) x0 + sqrt(1 - abar_t) noise``; x0, noise (B, ...)."""
        abar = _expand(self.alphas_cumprod, t, x0)  # (B, 1, 1)
        return abar.sqrt() * x0.float() + (1.0 - abar).sqrt() * noise.float()

    def training_target(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """What the network predicts: the noise (epsilon parameterization). x0 and t are taken for
        a uniform interface with other parameterizations."""
        return noise

    def abar_at(self, t: int) -> torch.Tensor:
        """abar_t as a 0-d tensor; ``t = -1`` is the clean sample (1)."""
        return self.alphas_cumprod[t] if t >= 0 else torch.ones((), device=self.alphas_cumprod.device)


def x0_from_eps(x_t: torch.Tensor, eps: torch.Tensor, abar: torch.Tensor) -> torch.Tensor:
    """x_0 implied by a noise prediction: ``(x_t - sqrt(1 - abar) eps) / sqrt(abar)``."""
    return (x_t - (1.0 - abar).sqrt() * eps) / abar.sqrt()


def spaced_timesteps(timesteps: int, num_steps: int) -> list[int]:
    """``num_steps`` descending 0-based timesteps from T-1 to 0, evenly spread ("trailing")."""
    if not 1 <= num_steps <= timesteps:
        raise ValueError(f"num_steps must be in [1, {timesteps}], got {num_steps}")
    ts = torch.linspace(timesteps - 1, 0, num_steps, dtype=torch.float64).round().long().tolist()
    return ts


class _Sampler:
    """Shared by the samplers: a descending list of timesteps and (t, t_prev) pairs."""

    def __init__(self, schedule: NoiseSchedule, clip_x0: Optional[float] = None):
        self.schedule = schedule
        self.clip_x0 = clip_x0
        self.timesteps: list[int] = list(range(schedule.timesteps - 1, -1, -1))

    def set_timesteps(self, num_steps: Optional[int] = None) -> list[int]:
        """Use ``num_steps`` evenly spaced steps (None: all T). Returns the descending timesteps."""
        T = self.schedule.timesteps
        self.timesteps = spaced_timesteps(T, num_steps or T)
        return self.timesteps

    def pairs(self) -> Iterator[tuple[int, int]]:
        """(t, t_prev) for each step; t_prev = -1 means "to the clean sample"."""
        ts = self.timesteps
        for i, t in enumerate(ts):
            yield t, (ts[i + 1] if i + 1 < len(ts) else -1)

    def _x0(self, x_t: torch.Tensor, eps: torch.Tensor, t: int) -> torch.Tensor:
        x0 = x0_from_eps(x_t, eps, self.schedule.abar_at(t))
        if self.clip_x0 is not None:
            x0 = x0.clamp(-self.clip_x0, self.clip_x0)
        return x0


class DDPMSampler(_Sampler):
    """Ancestral sampling from p(x_{t_prev} | x_t) = q(x_{t_prev} | x_t, x0_hat).

    With all T steps this is DDPM (posterior variance ``beta_tilde``). With fewer steps the
    schedule is respaced (Nichol & Dhariwal 2021): the step's beta is
    ``1 - abar_t / abar_{t_prev}``.
    """

    def step(self, eps: torch.Tensor, t: int, t_prev: int, x_t: torch.Tensor, *, generator: torch.Generator) -> torch.Tensor:
        """x_{t_prev} (B, N, 3) from x_t (B, N, 3) and the predicted noise eps (B, N, 3)."""
        s = self.schedule
        eps, x_t = eps.float(), x_t.float()
        abar_t, abar_prev = s.abar_at(t), s.abar_at(t_prev)
        beta = 1.0 - abar_t / abar_prev  # respaced beta of this step
        x0 = self._x0(x_t, eps, t)  # (B, N, 3)
        # Posterior mean coefficients (Ho et al. eq. 7).
        c0 = abar_prev.sqrt() * beta / (1.0 - abar_t)
        ct = (1.0 - beta).sqrt() * (1.0 - abar_prev) / (1.0 - abar_t)
        mean = c0 * x0 + ct * x_t
        if t_prev < 0:
            return mean
        var = beta * (1.0 - abar_prev) / (1.0 - abar_t)
        noise = torch.randn(x_t.shape, generator=generator, device=generator.device, dtype=x_t.dtype).to(x_t.device)
        return mean + var.sqrt() * noise


class DDIMSampler(_Sampler):
    """DDIM (Song et al. 2021): deterministic for ``eta = 0`` (an ODE solver: the same x_T gives the
    same x_0, and `invert` runs it backwards); ``eta = 1`` has the DDPM posterior variance."""

    def __init__(self, schedule: NoiseSchedule, eta: float = 0.0, clip_x0: Optional[float] = None):
        super().__init__(schedule, clip_x0)
        self.eta = float(eta)

    def step(self, eps: torch.Tensor, t: int, t_prev: int, x_t: torch.Tensor, *, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """x_{t_prev} (B, N, 3) from x_t and the predicted noise eps (B, N, 3)."""
        s = self.schedule
        eps, x_t = eps.float(), x_t.float()
        abar_t, abar_prev = s.abar_at(t), s.abar_at(t_prev)
        x0 = self._x0(x_t, eps, t)  # (B, N, 3)
        if self.clip_x0 is not None:  # keep eps consistent with the clipped x0
            eps = (x_t - abar_t.sqrt() * x0) / (1.0 - abar_t).sqrt()
        sigma = self.eta * ((1.0 - abar_prev) / (1.0 - abar_t) * (1.0 - abar_t / abar_prev)).clamp(min=0).sqrt()
        direction = (1.0 - abar_prev - sigma.square()).clamp(min=0).sqrt() * eps
        x_prev = abar_prev.sqrt() * x0 + direction
        if self.eta > 0 and t_prev >= 0:
            if generator is None:
                raise ValueError("DDIM with eta > 0 needs a generator")
            noise = torch.randn(x_t.shape, generator=generator, device=generator.device, dtype=x_t.dtype).to(x_t.device)
            x_prev = x_prev + sigma * noise
        return x_prev

    def invert(self, eps_fn: Callable[[torch.Tensor, int], torch.Tensor], x0: torch.Tensor) -> torch.Tensor:
        """Deterministic DDIM inversion: run the ODE from x0 (B, N, 3) up to the noisiest step of
        ``self.timesteps``; ``eps_fn(x, t)`` predicts the noise at timestep t. Returns x_T."""
        x = x0.float()
        ts = list(reversed(self.timesteps))  # ascending
        prev = -1
        for t in ts:
            eps = eps_fn(x, prev if prev >= 0 else t).float()
            abar_from, abar_to = self.schedule.abar_at(prev), self.schedule.abar_at(t)
            x0_hat = x0_from_eps(x, eps, abar_from)
            x = abar_to.sqrt() * x0_hat + (1.0 - abar_to).sqrt() * eps
            prev = t
        return x


SAMPLERS = ("ddpm", "ddim")


def make_sampler(name: str, schedule: NoiseSchedule, *, eta: float = 0.0, clip_x0: Optional[float] = None) -> _Sampler:
    """"ddpm" (ancestral) or "ddim" (deterministic for eta = 0)."""
    if name == "ddpm":
        return DDPMSampler(schedule, clip_x0=clip_x0)
    if name == "ddim":
        return DDIMSampler(schedule, eta=eta, clip_x0=clip_x0)
    raise ValueError(f"sampler must be one of {SAMPLERS}, got {name!r}")


def guided_eps(eps_cond: torch.Tensor, eps_uncond: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance: ``eps_u + scale (eps_c - eps_u)``; scale 1 is the conditional model."""
    return eps_uncond + scale * (eps_cond - eps_uncond)


__all__ = [
    "BETA_SCHEDULES",
    "DDIMSampler",
    "DDPMSampler",
    "NoiseSchedule",
    "NoiseScheduleConfig",
    "SAMPLERS",
    "guided_eps",
    "make_betas",
    "make_sampler",
    "spaced_timesteps",
]
