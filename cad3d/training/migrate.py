"""``cad3d ckpt migrate``: renaming and rewriting checkpoints of older or foreign layouts into
this one, planned first (a dry run lists every step) and applied with atomic writes."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import torch

from cad3d.errors import CheckpointError
from cad3d.training.checkpoint import CheckpointManager, epoch_file_pattern, iter_checkpoint_files
from cad3d.training.checkpoint_io import (
    build_metadata,
    is_state_dict,
    MANIFEST_NAME,
    META_KEY,
    plain,
    read_manifest,
    _torch_load,
)
from cad3d.training.tasks.base import CheckpointSchema

logger = logging.getLogger(__name__)


@dataclass
class MigrationStep:
    source: Path
    target: Path | None
    action: str  # "rename" | "add-metadata" | "rename+add-metadata" | "record" | "skip" | "refuse"
    reason: str
    kind: str | None = None
    epoch: int | None = None
    step: int | None = None

    def describe(self) -> str:
        if self.action in ("skip", "refuse"):
            return f"{self.action.upper():<20} {self.source.name}: {self.reason}"
        target = self.target.name if self.target else "-"
        arrow = f"{self.source.name} -> {target}" if self.target and self.target != self.source else self.source.name
        return f"{self.action.upper():<20} {arrow} ({self.reason})"


_STATE_DICT_ALIASES = ("model_state_dict", "state_dict", "model_state", "model", "net", "module")
_OPTIMIZER_ALIASES = ("optimizer_state_dict", "optimizer_state", "optimizer", "opt")
_SCHEDULER_ALIASES = ("scheduler_state_dict", "scheduler_state", "lr_scheduler", "scheduler")
_METRIC_ALIASES = ("val_loss", "loss", "train_loss", "best_val_loss", "best_loss")


def classify_name(name: str, schema: CheckpointSchema) -> tuple[str | None, int | None, int | None]:
    """``(kind, epoch, step)`` that an old or foreign file name stands for (kind None: unknown).

    Knows ours, Lightning-style ``epoch-05_step-000123.ckpt``, ``last.ckpt``,
    ``best-val_loss-0.12.ckpt``, ``epoch_5.pt``, ``checkpoint_5.pth``, ``checkpoint_epoch_5.pth``,
    ``best_model.pt``, ``final_model.pt`` (with or without a timestamp prefix)."""
    m = epoch_file_pattern(schema).match(name)
    if m:
        return "epoch", int(m.group(1)), None
    for kind, ours in (("last", schema.last_file), ("best", schema.best_file), ("final", schema.final_file)):
        if ours and name == ours:
            return kind, None, None
    stem = Path(name).stem.lower()
    step_m = re.search(r"step[_=-]?(\d+)", stem)
    step = int(step_m.group(1)) if step_m else None
    if re.search(r"(^|[_-])last($|[_-])", stem):
        return "last", None, step
    if re.search(r"(^|[_-])best($|[_-])", stem):
        return "best", None, step
    if re.search(r"(^|[_-])final($|[_-])", stem):
        return "final", None, step
    epoch_m = re.search(r"epoch[_=-]?(\d+)", stem) or re.search(r"(?:^|[_-])(?:checkpoint|ckpt|model)[_-](\d+)$", stem)
    if epoch_m:
        return "epoch", int(epoch_m.group(1)), step
    return None, None, step


def _target_name(kind: str, epoch: int | None, schema: CheckpointSchema) -> str | None:
    if kind == "epoch":
        return schema.epoch_name(epoch) if epoch is not None else None
    return {"last": schema.last_file, "best": schema.best_file, "final": schema.final_file}.get(kind)


def plan_migration(directory, schema: CheckpointSchema, task_name: str) -> list[MigrationStep]:
    """What `apply_migration` would do to each checkpoint file of ``directory``; changes nothing.
    Files that need unsafe unpickling are refused (named), never loaded."""
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"{directory}: not a folder")
    manifest = read_manifest(directory)["files"]
    steps: list[MigrationStep] = []
    claimed: dict[str, Path] = {}
    files = list(iter_checkpoint_files(directory))
    present = {f.name for f in files}
    for f in files:
        kind, epoch, step = classify_name(f.name, schema)
        try:
            payload = _torch_load(f, map_location="cpu", mmap=True)
        except CheckpointError as exc:
            steps.append(MigrationStep(f, None, "refuse", str(exc).split(": ", 1)[-1]))
            continue
        meta = payload.get(META_KEY) if isinstance(payload, dict) else None
        if isinstance(meta, dict):
            kind = meta.get("file_kind") or kind
            epoch = meta.get("epoch") if meta.get("epoch") is not None else epoch
        elif isinstance(payload, dict):
            epoch = _int(payload.get(schema.epoch_key), payload.get("epoch"), epoch)
        if kind is None:
            steps.append(MigrationStep(f, None, "skip", "name not recognised as an epoch, last, best or final checkpoint"))
            continue
        target = _target_name(kind, epoch, schema)
        if target is None:
            why = "no epoch number in its name or content" if kind == "epoch" else f"the {schema.model} schema has no {kind} file"
            steps.append(MigrationStep(f, None, "skip", why))
            continue
        if target in claimed and claimed[target] != f:
            steps.append(MigrationStep(f, None, "skip", f"{claimed[target].name} already becomes {target}"))
            continue
        if target != f.name and (target in present):
            steps.append(MigrationStep(f, None, "skip", f"{target} already exists"))
            continue
        claimed[target] = f
        rename = target != f.name
        if isinstance(meta, dict):
            if rename:
                steps.append(MigrationStep(f, directory / target, "rename", f"{kind} file", kind, epoch))
            elif f.name not in manifest:
                steps.append(MigrationStep(f, f, "record", "cad3d checkpoint not in the manifest", kind, epoch))
            continue
        if not isinstance(payload, dict):
            steps.append(MigrationStep(f, None, "skip", f"content is a {type(payload).__name__}, not a dict"))
            continue
        action = "rename+add-metadata" if rename else "add-metadata"
        steps.append(MigrationStep(f, directory / target, action, f"{kind} file without cad3d_meta", kind, epoch, step))
    return steps


def _int(*values) -> int | None:
    for v in values:
        if isinstance(v, bool):
            continue
        if isinstance(v, int):
            return v
        if isinstance(v, torch.Tensor) and v.numel() == 1:
            return int(v.item())
    return None


def _converted_payload(payload: dict, step: MigrationStep, schema: CheckpointSchema, task_name: str) -> dict:
    out = dict(payload)
    module_keys = list(schema.module_keys.values())
    if is_state_dict(payload) and len(module_keys) == 1:
        out = {module_keys[0]: payload}  # a bare state dict
    elif len(module_keys) == 1 and module_keys[0] not in out:
        for alias in _STATE_DICT_ALIASES:
            if is_state_dict(out.get(alias)):
                out[module_keys[0]] = out.pop(alias)
                break
    for aliases, key in ((_OPTIMIZER_ALIASES, schema.optimizer_key), (_SCHEDULER_ALIASES, schema.scheduler_key)):
        if key not in out:
            for alias in aliases:
                if isinstance(out.get(alias), dict):
                    out[key] = out.pop(alias)
                    break
    epoch = _int(out.get(schema.epoch_key), out.get("epoch"), step.epoch)
    gstep = _int(out.get(schema.step_key), out.get("global_step"), out.get("step"), step.step)
    metrics = {}
    for k in _METRIC_ALIASES:
        v = out.get(k)
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            metrics[k] = float(v)
        elif isinstance(v, torch.Tensor) and v.numel() == 1:
            metrics[k] = float(v.item())
    config = out.get("model_config") if isinstance(out.get("model_config"), dict) else out.get("config")
    try:
        config = plain(config) if isinstance(config, dict) else {}
    except TypeError:
        config = {}
    if epoch is not None:
        out.setdefault(schema.epoch_key, epoch)
    out.setdefault(schema.step_key, gstep if gstep is not None else 0)
    out[META_KEY] = build_metadata(
        task=task_name,
        file_kind=step.kind,
        epoch=epoch,
        global_step=gstep if gstep is not None else 0,
        epoch_complete=True,
        metrics=metrics,
        config=config,
        migrated_from=step.source.name,
        global_step_known=gstep is not None,
    )
    return out


def apply_migration(directory, steps: Iterable[MigrationStep], schema: CheckpointSchema, task_name: str) -> list[str]:
    """Carry out a plan: each file is published atomically under its new name (manifest kept)
    before its old name is removed. Returns one line per change."""
    mgr = CheckpointManager(directory, schema)
    done = []
    for step in steps:
        if step.action in ("skip", "refuse"):
            continue
        if step.action == "record":
            mgr.record(step.source.name)
            done.append(f"recorded {step.source.name} in {MANIFEST_NAME}")
            continue
        payload = _torch_load(step.source, map_location="cpu")
        if step.action == "rename":
            meta = dict(payload[META_KEY])
            meta["file_kind"] = step.kind
            payload = dict(payload, **{META_KEY: meta})
        else:
            payload = _converted_payload(payload, step, schema, task_name)
        mgr.publish(step.target.name, payload)
        if step.target != step.source:
            mgr.remove(step.source.name)
            done.append(f"{step.source.name} -> {step.target.name}")
        else:
            done.append(f"added cad3d_meta to {step.source.name}")
    return done
