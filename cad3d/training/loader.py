"""One way to rebuild a trained model from its checkpoint: `load_trained(path)`.

Every converter, the trainer facades and ``cad3d ckpt verify`` load through it: the file is read
with ``weights_only`` (hash-checked against its folder's manifest), the task named in its
metadata rebuilds the modules from the stored config, and the weights go in strictly: the EMA
weights (``ema_state``) when the file has them, else the raw ones (``weights=`` chooses). A file
that cannot be trusted or does not fit is a `CheckpointError` naming it and the cause.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional

import torch
from torch import nn

from cad3d.errors import CheckpointError
from cad3d.training.checkpoint_io import EMA_KEY, META_KEY, load_checkpoint, load_state_dict_strict
from cad3d.training.tasks.base import TrainTask, get_task_class


@dataclass
class TrainedModel:
    """A checkpoint's model, rebuilt: ``kind`` (task name), its ``task`` (config, schema), the
    ``modules`` by role with their weights (eval mode; ``weights`` says which: "ema" or "raw"),
    the ``metadata`` and the whole ``payload`` (extras such as stored scores)."""

    path: Path
    kind: str
    task: TrainTask
    modules: dict[str, nn.Module]
    metadata: dict
    payload: dict
    weights: str = "raw"

    @property
    def config(self) -> Any:
        return self.task.config

    @property
    def model(self) -> nn.Module:
        """The module that converts (e.g. the `Diffusion3DModel` around its two networks)."""
        return self.task.inference_model(self.modules)


def load_trained(
    path: str | os.PathLike,
    *,
    kind: Optional[str] = None,
    map_location: str | torch.device = "cpu",
    payload: Optional[Mapping[str, Any]] = None,
    weights: str = "auto",
) -> TrainedModel:
    """Rebuild the model of the checkpoint at ``path``.

    ``kind``: the task the file must belong to ("vae", "vit", "diffusion", "depth"), None for
    any; ``payload``: the file's contents when already loaded (then ``path`` only names it);
    ``weights``: "auto" (the EMA weights when the file has them, else the raw ones), "ema" (an
    error when the file has none) or "raw" (the weights as last trained)."""
    if weights not in ("auto", "ema", "raw"):
        raise ValueError(f"weights must be auto, ema or raw, got {weights!r}")
    path = Path(path)
    if payload is None:
        payload = load_checkpoint(path, map_location=map_location, expected_task=kind)
    meta = dict(payload.get(META_KEY) or {})
    name = kind or meta.get("task")
    if not name:
        raise CheckpointError(f"{path}: its metadata names no model kind (task)")
    try:
        task_cls = get_task_class(name)
    except KeyError:
        raise CheckpointError(f"{path}: model kind {name!r} is not known to this cad3d") from None
    try:
        task = task_cls.from_checkpoint(payload)
        modules = task.build_modules()
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: its stored config does not build a {name} model ({exc})") from None
    ema = payload.get(EMA_KEY)
    if weights == "ema" and not isinstance(ema, Mapping):
        raise CheckpointError(f"{path}: no EMA weights ({EMA_KEY!r}) in this file; load its raw weights (weights='raw')")
    use_ema = weights != "raw" and isinstance(ema, Mapping)
    for role, key in task_cls.schema.module_keys.items():
        if key not in payload:
            raise CheckpointError(f"{path}: no {key!r} (state dict of module {role!r})")
        if role not in modules:
            raise CheckpointError(f"{path}: task {name!r} builds no module {role!r}")
        if use_ema:
            if role not in ema:
                raise CheckpointError(f"{path}: {EMA_KEY!r} has no weights of module {role!r}")
            load_state_dict_strict(modules[role], ema[role], path=path, key=f"{EMA_KEY}.{role}")
        else:
            load_state_dict_strict(modules[role], payload[key], path=path, key=key)
    for module in modules.values():
        module.eval()
    return TrainedModel(path=path, kind=name, task=task, modules=modules, metadata=meta, payload=dict(payload),
                        weights="ema" if use_ema else "raw")
