"""``cad3d ckpt verify``: checks of a checkpoint file or folder (loadable, hashes, restore, a
forward pass, epoch/loss progression, weights changed between epochs, log consistency).

Everything here loads with ``weights_only`` on CPU; nothing prints (the CLI does).
"""

from __future__ import annotations

import collections
import json
import logging
import math
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from cad3d.errors import CheckpointError
from cad3d.training.checkpoint import epoch_file_pattern, iter_checkpoint_files
from cad3d.training.checkpoint_io import (
    accepted_hashes,
    _check_structure,
    is_state_dict,
    MANIFEST_NAME,
    read_manifest,
    sha256_file,
    _torch_load,
    zip_crc_ok,
)
from cad3d.training.loader import load_trained
from cad3d.training.tasks.base import CheckpointSchema, TrainTask, find_task_class

logger = logging.getLogger(__name__)

PASS, FAIL, SKIP = "PASS", "FAIL", "SKIP"


@dataclass
class CheckResult:
    name: str
    status: str  # PASS | FAIL | SKIP
    detail: str


@dataclass
class VerifyReport:
    path: str
    checks: list[CheckResult] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(c.status != FAIL for c in self.checks)

    def add(self, name: str, status: str, detail: str) -> None:
        self.checks.append(CheckResult(name, status, detail))

    def to_dict(self) -> dict:
        return {"path": self.path, "ok": self.ok, "checks": [asdict(c) for c in self.checks]}


@dataclass
class _Loaded:
    path: Path
    meta: dict
    payload: dict | None  # dropped after use to keep memory flat


def _epoch_sort_key(item: _Loaded):
    return (item.meta.get("epoch") or 0, item.meta.get("global_step") or 0)


def _module_tensors(payload: Mapping[str, Any], schema: CheckpointSchema | None) -> dict[str, torch.Tensor]:
    """Floating tensors of the module state dicts, keyed "<key>.<param>"."""
    keys = list(schema.module_keys.values()) if schema else [k for k, v in payload.items() if is_state_dict(v)]
    out = {}
    for key in keys:
        sd = payload.get(key)
        if isinstance(sd, Mapping):
            for k, v in sd.items():
                if isinstance(v, torch.Tensor) and v.is_floating_point():
                    out[f"{key}.{k}"] = v
    return out


def verify(path, *, forward: bool = True) -> VerifyReport:
    """Run the checks on a checkpoint file or folder; each is PASS, FAIL or SKIP with a
    reason: loadable, hash, restore, forward, progression, weights_change, log_consistency."""
    path = Path(path)
    report = VerifyReport(str(path))
    if path.is_dir():
        folder, files, single = path, list(iter_checkpoint_files(path)), False
    elif path.exists():
        folder, files, single = path.parent, [path], True
    else:
        raise CheckpointError(f"{path}: no such file or folder")
    if not files:
        report.add("loadable", FAIL, f"no checkpoint files (*.pth, *.pt, *.ckpt) in {folder}")
        return report

    # 1. loadable ---------------------------------------------------------------------------
    loaded: list[_Loaded] = []
    failures, env_notes = [], set()
    for f in files:
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                payload = _torch_load(f, map_location="cpu")
                meta = _check_structure(payload, f, None)
            env_notes.update(str(w.message).split(": ", 1)[-1] for w in caught)
            loaded.append(_Loaded(f, dict(meta), payload))
        except CheckpointError as exc:
            failures.append(str(exc))
    if failures:
        report.add("loadable", FAIL, f"{len(loaded)}/{len(files)} loadable (weights_only); " + " | ".join(failures))
    else:
        report.add("loadable", PASS, f"{len(files)}/{len(files)} load with weights_only and carry cad3d_meta")

    # 2. hash -------------------------------------------------------------------------------
    _check_hashes(report, folder, files)

    # the task decides the schema, modules and forward pass
    tasks = collections.Counter(item.meta.get("task") for item in loaded)
    task_name = tasks.most_common(1)[0][0] if tasks else None
    task_cls = find_task_class(task_name)
    schema = task_cls.schema if task_cls else None

    # 3. restore and 4. forward (the newest file and the best) ----------------------------------
    _check_restore_and_forward(report, loaded, task_name, task_cls, forward)

    if env_notes:
        logger.warning("environment differs from the one that saved these checkpoints: %s", "; ".join(sorted(env_notes)))

    if single:
        for name in ("progression", "weights_change", "log_consistency"):
            report.add(name, SKIP, "single file: verify its folder to compare epochs")
        return report

    epochs = sorted((i for i in loaded if i.meta.get("file_kind") == "epoch"), key=_epoch_sort_key)
    _check_progression(report, epochs, loaded, schema)
    _check_weights_change(report, epochs, schema)
    _check_log(report, folder, epochs, loaded, schema, task_name)
    return report


def _check_hashes(report: VerifyReport, folder: Path, files: list[Path]) -> None:
    try:
        manifest = read_manifest(folder)
    except CheckpointError as exc:
        report.add("hash", FAIL, str(exc))
        return
    if not (folder / MANIFEST_NAME).exists():
        crc_bad = [f.name for f in files if zip_crc_ok(f) is False]
        if crc_bad:
            report.add("hash", FAIL, f"no {MANIFEST_NAME}; zip CRC check failed: {', '.join(crc_bad)}")
        else:
            report.add("hash", SKIP, f"no {MANIFEST_NAME} in {folder} (zip CRCs ok); `cad3d ckpt migrate` records one")
        return
    entries = manifest["files"]
    bad, unlisted, good = [], [], 0
    for f in files:
        entry = entries.get(f.name)
        if entry is None:
            unlisted.append(f.name)
        elif sha256_file(f) in accepted_hashes(entry):
            good += 1
        else:
            bad.append(f.name)
    problems = []
    if bad:
        problems.append(f"sha256 differs from the manifest (tampered or partly written): {', '.join(bad)}")
    if unlisted:
        problems.append(f"not in the manifest (integrity unknown; `cad3d ckpt migrate` records them): {', '.join(unlisted)}")
    if problems:
        report.add("hash", FAIL, "; ".join(problems))
    else:
        report.add("hash", PASS, f"{good} file(s) match {MANIFEST_NAME}")


def _restore(item: _Loaded, task_cls: type[TrainTask]) -> tuple[TrainTask, dict[str, nn.Module]]:
    trained = load_trained(item.path, kind=task_cls.name, payload=item.payload)
    return trained.task, trained.modules


def _check_restore_and_forward(report, loaded: list[_Loaded], task_name, task_cls, forward: bool) -> None:
    if not loaded:
        report.add("restore", SKIP, "nothing loadable")
        report.add("forward", SKIP, "nothing loadable")
        return
    if task_cls is None:
        why = f"task {task_name!r} is not registered in this cad3d" if task_name else "metadata names no task"
        report.add("restore", SKIP, why)
        report.add("forward", SKIP, why)
        return
    restored, fails = {}, []
    for item in loaded:
        try:
            restored[item.path] = _restore(item, task_cls)
        except (CheckpointError, TypeError, ValueError) as exc:
            fails.append(str(exc))
    if fails:
        report.add("restore", FAIL, f"{len(restored)}/{len(loaded)} restored into {task_cls.__name__}; " + " | ".join(fails))
    else:
        report.add("restore", PASS, f"{len(restored)}/{len(loaded)} restored strictly into {task_cls.__name__} modules")
    if not forward:
        report.add("forward", SKIP, "disabled (--no-forward)")
        return
    newest = max(loaded, key=lambda i: (i.meta.get("global_step") or 0, i.meta.get("epoch") or 0))
    targets = [newest] + [i for i in loaded if i.meta.get("file_kind") == "best" and i is not newest]
    targets = [t for t in targets if t.path in restored]
    if not targets:
        report.add("forward", SKIP, "no restored checkpoint to run")
        return
    notes, fwd_fails = [], []
    for item in targets:
        task, modules = restored[item.path]
        try:
            for m in modules.values():
                m.eval()
            batch = task.example_batch(2, generator=torch.Generator().manual_seed(0))
            with torch.no_grad():
                out = task.forward_check(modules, batch)
            outs = out if isinstance(out, (list, tuple)) else [out]
            if all(isinstance(o, torch.Tensor) and bool(torch.isfinite(o).all()) for o in outs):
                notes.append(f"{item.path.name}: output {tuple(outs[0].shape)} finite")
            else:
                fwd_fails.append(f"{item.path.name}: output has NaN/Inf")
        except Exception as exc:  # noqa: BLE001 - any failure of the model is the finding
            fwd_fails.append(f"{item.path.name}: forward raised {type(exc).__name__}: {exc}")
    if fwd_fails:
        report.add("forward", FAIL, "; ".join(fwd_fails + notes))
    else:
        report.add("forward", PASS, "; ".join(notes))


def _monitor_value(meta: Mapping[str, Any], schema: CheckpointSchema | None) -> tuple[str | None, float | None]:
    metrics = meta.get("metrics") or {}
    for name in ([schema.monitor] if schema else []) + ["val_loss", "loss", "train_loss"]:
        if name in metrics:
            return name, float(metrics[name])
    return None, None


def _check_progression(report, epochs: list[_Loaded], loaded: list[_Loaded], schema) -> None:
    if not epochs:
        report.add("progression", SKIP, "no epoch files")
        return
    problems = []
    seen = collections.Counter(i.meta.get("epoch") for i in epochs)
    dups = sorted(e for e, n in seen.items() if n > 1)
    if dups:
        problems.append(f"duplicate epochs {dups}")
    if schema:
        pattern = epoch_file_pattern(schema)
        for i in epochs:
            m = pattern.match(i.path.name)
            if m and int(m.group(1)) != i.meta.get("epoch"):
                problems.append(f"{i.path.name} holds epoch {i.meta.get('epoch')}")
    prev = None
    for i in epochs:
        if prev is not None and (i.meta.get("global_step") or 0) < (prev.meta.get("global_step") or 0):
            problems.append(f"global_step goes back from {prev.path.name} to {i.path.name}")
        prev = i
    last = [i for i in loaded if i.meta.get("file_kind") == "last"]
    if last and (last[0].meta.get("epoch") or 0) < (epochs[-1].meta.get("epoch") or 0):
        problems.append(f"{last[0].path.name} (epoch {last[0].meta.get('epoch')}) is older than {epochs[-1].path.name}")
    name, values = None, []
    for i in epochs:
        n, v = _monitor_value(i.meta, schema)
        name = name or n
        if v is not None:
            values.append((i.meta.get("epoch"), v))
    bad = [e for e, v in values if not math.isfinite(v)]
    if bad:
        problems.append(f"{name} not finite at epochs {bad}")
    detail = f"epochs {[i.meta.get('epoch') for i in epochs]}"
    if len(values) >= 2 and not bad:
        (e0, v0), (e1, v1) = values[0], values[-1]
        trend = "decreased" if v1 < v0 else "did not decrease"
        detail += f"; {name} {trend}: {v0:.6g} (epoch {e0}) -> {v1:.6g} (epoch {e1})"
    elif not values:
        detail += "; no loss metric in the metadata"
    if problems:
        report.add("progression", FAIL, "; ".join(problems) + f" ({detail})")
    else:
        report.add("progression", PASS, detail)


def _check_weights_change(report, epochs: list[_Loaded], schema) -> None:
    if len(epochs) < 2:
        report.add("weights_change", SKIP, f"{len(epochs)} epoch file(s): nothing to compare")
        return
    same, diffs = [], []
    for a, b in zip(epochs, epochs[1:]):
        ta, tb = _module_tensors(a.payload, schema), _module_tensors(b.payload, schema)
        common = [k for k in ta if k in tb and ta[k].shape == tb[k].shape]
        if not common:
            same.append(f"{a.path.name} vs {b.path.name}: no comparable tensors")
            continue
        delta = max(float((ta[k].float() - tb[k].float()).abs().max()) if ta[k].numel() else 0.0 for k in common)
        if delta == 0.0:
            same.append(f"{a.path.name} == {b.path.name}")
        diffs.append(delta)
    if same:
        report.add("weights_change", FAIL, "weights did not change: " + "; ".join(same))
    else:
        report.add("weights_change", PASS, f"{len(diffs)} consecutive pair(s) differ; smallest max |Δw| = {min(diffs):.3e}")


def _check_log(report, folder: Path, epochs: list[_Loaded], loaded: list[_Loaded], schema, task_name) -> None:
    if schema is None:
        report.add("log_consistency", SKIP, f"task {task_name!r} not registered: log file name unknown")
        return
    if not schema.epoch_log_file:
        report.add("log_consistency", SKIP, f"schema of {schema.model!r} has no epoch log")
        return
    log_path = folder / schema.epoch_log_file
    if not log_path.exists():
        report.add("log_consistency", SKIP, f"no {schema.epoch_log_file}")
        return
    try:
        entries = json.loads(log_path.read_text(encoding="utf-8"))
        if not isinstance(entries, list) or not all(isinstance(e, dict) and isinstance(e.get("epoch"), int) for e in entries):
            raise ValueError("not a list of entries with an integer 'epoch'")
    except (OSError, ValueError) as exc:
        report.add("log_consistency", FAIL, f"{log_path}: unreadable epoch log ({exc})")
        return
    problems = []
    log_epochs = [e["epoch"] for e in entries]
    by_epoch = {e["epoch"]: e for e in entries}
    dups = sorted(e for e, n in collections.Counter(log_epochs).items() if n > 1)
    if dups:
        problems.append(f"log has duplicate epochs {dups}")
    if log_epochs and sorted(set(log_epochs)) != list(range(min(log_epochs), max(log_epochs) + 1)):
        missing = sorted(set(range(min(log_epochs), max(log_epochs) + 1)) - set(log_epochs))
        problems.append(f"log is missing epochs {missing}")
    checked = 0
    for item in loaded:
        e = item.meta.get("epoch")
        if item.meta.get("file_kind") not in ("epoch", "last", "best") or e is None:
            continue
        if item.meta.get("file_kind") == "last" and not item.meta.get("epoch_complete", True):
            continue  # mid-epoch: its epoch is not logged yet
        if e not in by_epoch:
            problems.append(f"{item.path.name}: epoch {e} not in {schema.epoch_log_file}")
            continue
        for k, v in (item.meta.get("metrics") or {}).items():
            lv = by_epoch[e].get(k)
            if isinstance(lv, (int, float)) and not (math.isclose(lv, v, rel_tol=1e-6, abs_tol=1e-9) or (math.isnan(lv) and math.isnan(v))):
                problems.append(f"{item.path.name}: {k}={v:.6g} but the log says {lv:.6g}")
        checked += 1
    # Epoch files are expected every N epochs; retention removes the oldest, never a newer one.
    try:
        n = int(read_manifest(folder).get("every_n_epochs") or schema.every_n_epochs)
    except (CheckpointError, TypeError, ValueError):
        n = int(schema.every_n_epochs)
    n = max(1, n)
    present = {i.meta.get("epoch") for i in epochs}
    expected = [e for e in sorted(set(log_epochs)) if e % n == 0]
    missing = [e for e in expected if e not in present]
    unexplained = [e for e in missing if present and e > min(present)]
    if unexplained:
        problems.append(f"epoch files missing for epochs {unexplained} (expected every {n}, not explained by retention)")
    detail = (
        f"{len(entries)} log entries (epochs {min(log_epochs) if log_epochs else '-'}..{max(log_epochs) if log_epochs else '-'}); "
        f"{checked} checkpoint(s) match; epoch files every {n} epoch(s): {len(expected) - len(missing)}/{len(expected)} present"
        + (" (older ones pruned)" if missing and not unexplained else "")
    )
    if problems:
        report.add("log_consistency", FAIL, "; ".join(problems) + f" ({detail})")
    else:
        report.add("log_consistency", PASS, detail)


