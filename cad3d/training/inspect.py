"""What ``cad3d ckpt ls`` and ``cad3d ckpt inspect`` show of checkpoint files, read with
``weights_only`` on CPU (metadata without the weights where possible)."""

from __future__ import annotations

import collections
import logging
from pathlib import Path
from typing import Any, Mapping

import torch

from cad3d.errors import CheckpointError
from cad3d.training.checkpoint import iter_checkpoint_files
from cad3d.training.checkpoint_io import (
    EMA_KEY,
    accepted_hashes,
    _check_structure,
    _load_mmap,
    META_KEY,
    plain,
    read_manifest,
    sha256_file,
)

logger = logging.getLogger(__name__)


def tensor_bytes(value: Any) -> int:
    """Bytes of the tensor data inside ``value`` (tensors in dicts, lists and tuples)."""
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, Mapping):
        return sum(tensor_bytes(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(tensor_bytes(v) for v in value)
    return 0


def weight_bytes(payload: Mapping[str, Any], schema) -> dict[str, int]:
    """Tensor bytes of a checkpoint's weights (``schema.module_keys``), optimizer state and EMA
    weights, and their ``total``: what a checkpoint file should not much exceed."""
    out = {
        "weights": sum(tensor_bytes(payload.get(key)) for key in schema.module_keys.values()),
        "optimizer": tensor_bytes(payload.get(schema.optimizer_key)),
        "ema": tensor_bytes(payload.get(EMA_KEY)),
    }
    out["total"] = sum(out.values())
    return out


def summarize_value(value: Any) -> Any:
    """A JSON-able description of a payload value: tensors as shape/dtype, state dicts as
    counts, plain values as themselves (long lists shortened)."""
    if isinstance(value, torch.Tensor):
        return {"tensor": list(value.shape), "dtype": str(value.dtype).replace("torch.", ""), "numel": value.numel()}
    if isinstance(value, Mapping):
        tensors = [v for v in value.values() if isinstance(v, torch.Tensor)]
        if tensors and len(tensors) == len(value):
            dtypes = collections.Counter(str(t.dtype).replace("torch.", "") for t in tensors)
            return {
                "state_dict": len(tensors),
                "params": sum(t.numel() for t in tensors),
                "bytes": sum(t.numel() * t.element_size() for t in tensors),
                "dtypes": dict(dtypes),
                "tensors": {str(k): [list(v.shape), str(v.dtype).replace("torch.", "")] for k, v in value.items()},
            }
        return {str(k): summarize_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        if len(value) > 8:
            return {"list": len(value), "first": [summarize_value(v) for v in value[:3]], "last": summarize_value(value[-1])}
        return [summarize_value(v) for v in value]
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    return repr(value)


def inspect_file(path) -> dict:
    """Metadata and a summary of every key of a checkpoint, without loading its weights onto
    any device (memory-mapped on CPU)."""
    path = Path(path)
    payload = _load_mmap(path)
    meta = _check_structure(payload, path, None)
    return {
        "file": str(path),
        "size": path.stat().st_size,
        "meta": plain(meta),
        "keys": {str(k): summarize_value(v) for k, v in payload.items() if k != META_KEY},
    }


def list_folder(directory, *, check_hash: bool = True) -> list[dict]:
    """One row per checkpoint file: name, kind, epoch, step, metrics, size, sha status, created,
    error. ``sha`` is "ok", "BAD", "?" (not in the manifest) or "-" (not checked)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"{directory}: not a folder")
    manifest = read_manifest(directory)["files"]
    rows = []
    for path in iter_checkpoint_files(directory):
        row: dict[str, Any] = {"file": path.name, "size": path.stat().st_size}
        try:
            meta = _check_structure(_load_mmap(path), path, None)
            row.update(
                kind=meta.get("file_kind"),
                epoch=meta.get("epoch"),
                step=meta.get("global_step"),
                complete=meta.get("epoch_complete"),
                metrics=meta.get("metrics") or {},
                created=meta.get("created"),
                task=meta.get("task"),
                error=None,
            )
        except CheckpointError as exc:
            row.update(kind="?", epoch=None, step=None, complete=None, metrics={}, created=None, task=None, error=str(exc))
        entry = manifest.get(path.name)
        if not check_hash:
            row["sha"] = "-"
        elif entry is None:
            row["sha"] = "?"
        else:
            row["sha"] = "ok" if sha256_file(path) in accepted_hashes(entry) else "BAD"
        rows.append(row)
    return rows


