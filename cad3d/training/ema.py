"""Exponential moving average (EMA) of a run's weights, kept beside the trained modules.

After every optimizer step each floating-point entry of every module's state dict (parameters and
buffers such as BatchNorm statistics) moves towards the raw value:

    ema <- d * ema + (1 - d) * raw,    d = min(decay, (1 + n) / (10 + n))

where n counts the updates before this one: the warm-up ``(1 + n) / (10 + n)`` keeps the first
steps from being dominated by the initial weights (as in TensorFlow's and timm's EMA). Integer
entries (``num_batches_tracked``) are copied. The averages live on the training device in the
dtype of the raw entry; under DDP they follow the unwrapped modules (identical on every rank).
`state` / `load_state` hold everything a resumed run needs to continue bit-identically.
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Mapping, Optional

import torch
from torch import nn


class ModelEMA:
    """EMA copies of ``modules`` (role -> module), updated by `update` after each step."""

    def __init__(self, modules: Mapping[str, nn.Module], decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        self.decay = float(decay)
        self.num_updates = 0
        self.shadow: dict[str, dict[str, torch.Tensor]] = {
            role: {k: v.detach().clone() for k, v in m.state_dict().items()} for role, m in modules.items()
        }

    def current_decay(self) -> float:
        """The decay of the next update (the warm-up applies while it is below ``decay``)."""
        return min(self.decay, (1.0 + self.num_updates) / (10.0 + self.num_updates))

    @torch.no_grad()
    def update(self, modules: Mapping[str, nn.Module]) -> None:
        """One EMA step towards the modules' current weights."""
        weight = 1.0 - self.current_decay()
        ema_f, raw_f = [], []
        for role, m in modules.items():
            shadow = self.shadow[role]
            for k, v in m.state_dict().items():
                if v.is_floating_point():
                    ema_f.append(shadow[k])
                    raw_f.append(v.detach())
                else:
                    shadow[k].copy_(v)
        if ema_f:
            torch._foreach_lerp_(ema_f, raw_f, weight)  # ema += weight * (raw - ema), one kernel per group
        self.num_updates += 1

    def state_dicts(self) -> dict[str, dict[str, torch.Tensor]]:
        """The averaged weights by module role (what a checkpoint stores under ``ema_state``)."""
        return self.shadow

    def state(self) -> dict:
        """Decay and update count (the resume state; the weights go in ``state_dicts``)."""
        return {"decay": self.decay, "num_updates": self.num_updates}

    def load(self, state_dicts: Mapping[str, Mapping[str, torch.Tensor]], state: Optional[Mapping] = None) -> None:
        """Restore saved averages (strict: the same roles and keys) and the update count."""
        if set(state_dicts) != set(self.shadow):
            raise KeyError(f"EMA modules {sorted(state_dicts)} differ from the run's {sorted(self.shadow)}")
        for role, sd in state_dicts.items():
            shadow = self.shadow[role]
            if set(sd) != set(shadow):
                missing, extra = sorted(set(shadow) - set(sd)), sorted(set(sd) - set(shadow))
                raise KeyError(f"EMA weights of {role!r} do not fit: missing {missing[:5]}, unexpected {extra[:5]}")
            for k, v in sd.items():
                shadow[k].copy_(v)
        if state is not None:
            self.num_updates = int(state.get("num_updates", 0))

    @contextlib.contextmanager
    def applied(self, modules: Mapping[str, nn.Module]) -> Iterator[None]:
        """Within the block the modules hold the EMA weights; afterwards exactly their own again."""
        backup = {role: {k: v.detach().clone() for k, v in m.state_dict().items()} for role, m in modules.items()}
        try:
            for role, m in modules.items():
                m.load_state_dict(self.shadow[role])
            yield
        finally:
            for role, m in modules.items():
                m.load_state_dict(backup[role])


def make_ema(modules: Mapping[str, nn.Module], decay: Optional[float]) -> Optional[ModelEMA]:
    """A `ModelEMA` when ``decay`` is set (None or 0: no EMA)."""
    return ModelEMA(modules, decay) if decay else None


def ema_weights(ema: Optional[ModelEMA], modules: Mapping[str, nn.Module]):
    """`ModelEMA.applied` when there is an EMA, else a no-op context."""
    return ema.applied(modules) if ema is not None else contextlib.nullcontext()


__all__ = ["ModelEMA", "ema_weights", "make_ema"]
