"""What a checkpoint file is and how it is read: cad3d's metadata inside it, the sha256
manifest of its folder, and loading with ``torch.load(weights_only=True)`` only.

A checkpoint is one dict saved with ``torch.save``: the reference-layout keys of the model's
`CheckpointSchema` (epoch, step, state dicts, optimizer, scheduler, task extras), plus
``"cad3d_meta"`` (plain metadata, readable without loading the weights) and ``"cad3d_resume"``
(the engine's private resume state). Every failure to read one is a `CheckpointError` naming the
file and the cause.
"""

from __future__ import annotations

import datetime as _dt
import errno
import functools
import hashlib
import json
import logging
import os
import pickle
import platform
import subprocess
import warnings
import zipfile
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from cad3d.errors import CheckpointError
from cad3d.io import atomic_write, atomic_write_json

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1  # of "cad3d_meta" and of the manifest
META_KEY = "cad3d_meta"
RESUME_KEY = "cad3d_resume"
EMA_KEY = "ema_state"  # {module role: EMA state dict}, when the run keeps an EMA of its weights
RUN_STATE_KEY = "cad3d_run_state"  # reference to the run-state file (e.g. a replay buffer) of this step
MANIFEST_NAME = "checkpoints_manifest.json"
CHECKPOINT_SUFFIXES = (".pth", ".pt", ".ckpt")
FILE_KINDS = ("epoch", "last", "best", "final")
_ZIP_MAGIC = b"PK\x03\x04"


class CheckpointEnvironmentWarning(UserWarning):
    """A checkpoint made in a different environment (torch/cad3d version, CUDA vs CPU)."""


# ---------------------------------------------------------------------------------------
# atomic writes (cad3d.io; re-exported here for the engine and the trainers)
# ---------------------------------------------------------------------------------------
def atomic_torch_save(obj, path) -> str:
    """``torch.save(obj)`` to ``path`` atomically; returns the sha256 hex of the bytes written."""
    return atomic_write(path, lambda f: torch.save(obj, f))


def sha256_file(path) -> str:
    """sha256 hex digest of a file, read in 4 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


# ---------------------------------------------------------------------------------------
# metadata
# ---------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    commit = out.stdout.strip()
    return commit if out.returncode == 0 and commit else None


def _cad3d_version() -> str:
    from cad3d import __version__

    return __version__


def environment_versions() -> dict[str, str | None]:
    """Versions recorded in ``cad3d_meta["versions"]``."""
    return {
        "cad3d": _cad3d_version(),
        "torch": str(torch.__version__),
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
    }


def plain(value: Any, where: str = "cad3d_meta") -> Any:
    """``value`` as plain Python (bool/int/float/str/None, lists, str-keyed dicts), so it loads
    with weights_only anywhere: subclasses such as ``TorchVersion`` or ``numpy.float64`` become
    their base type, tuples become lists; anything else is a TypeError naming where it is."""
    if value is None or type(value) in (bool, int, float, str):
        return value
    for base in (bool, int, float, str):
        if isinstance(value, base):
            return base(value)
    if hasattr(value, "item") and getattr(value, "ndim", None) == 0:  # numpy / torch scalars
        return plain(value.item(), where)
    if isinstance(value, (list, tuple)):
        return [plain(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, Mapping):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise TypeError(f"{where}: key {k!r} is not a string")
            out[str(k)] = plain(v, f"{where}.{k}")
        return out
    raise TypeError(f"{where}: {type(value).__name__} is not a plain value")


def build_metadata(**fields) -> dict:
    """The ``cad3d_meta`` dict: defaults, versions, git commit and creation time, then ``fields``.

    Fields the engine usually gives: task, file_kind, epoch, global_step, epoch_complete,
    metrics, device, precision, world_size, seed, config. Values must be plain (JSON-like).
    """
    meta: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "task": None,
        "file_kind": None,
        "epoch": None,
        "global_step": None,
        "epoch_complete": True,
        "metrics": {},
        "versions": environment_versions(),
        "device": None,
        "precision": None,
        "world_size": 1,
        "seed": None,
        "config": {},
        "git_commit": _git_commit(),
        "created": _now(),
    }
    meta.update(fields)
    meta["metrics"] = {str(k): float(v) for k, v in (meta.get("metrics") or {}).items()}
    return plain(meta)


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).astimezone().isoformat(timespec="seconds")


# ---------------------------------------------------------------------------------------
# manifest
# ---------------------------------------------------------------------------------------
def read_manifest(directory) -> dict:
    """The folder's manifest, or an empty one when missing. A corrupt manifest is an error."""
    path = Path(directory) / MANIFEST_NAME
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {"schema_version": SCHEMA_VERSION, "files": {}}
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read the checkpoint manifest ({exc})") from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}: the checkpoint manifest is not valid JSON ({exc})") from exc
    if not isinstance(data, dict) or not isinstance(data.get("files"), dict):
        raise CheckpointError(f"{path}: the checkpoint manifest has no 'files' table")
    return data


def write_manifest(directory, manifest: dict) -> None:
    path = Path(directory) / MANIFEST_NAME
    try:
        atomic_write_json(path, manifest)
    except OSError as exc:
        raise write_failure(path, exc, intact=f"the previous {MANIFEST_NAME} is intact") from None


def _errno_in_chain(exc: BaseException | None) -> int | None:
    """The errno of the first OSError in an exception's cause/context chain. torch's zip writer
    turns the OSError of a full disk into a RuntimeError ("unexpected pos ...") raised while
    handling it, so the errno is only found on ``__context__``."""
    seen = 0
    while exc is not None and seen < 8:
        if isinstance(exc, OSError) and exc.errno:
            return exc.errno
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return None


def write_cause(exc: BaseException) -> str:
    """Why a write failed, in words: a full disk or quota said as such."""
    code = _errno_in_chain(exc)
    if code == errno.ENOSPC:
        return "the disk is full (no space left on device)"
    if code == getattr(errno, "EDQUOT", -1):
        return "the disk quota is exceeded"
    return os.strerror(code) if code is not None else _first_line(exc)


def write_failure(path, exc: BaseException, *, intact: str) -> CheckpointError:
    """The `CheckpointError` for a failed write of ``path``: the cause (`write_cause`) and
    ``intact``, what is still safe (e.g. "the previous vae_last.pth is intact")."""
    no_space = _errno_in_chain(exc) in (errno.ENOSPC, getattr(errno, "EDQUOT", -1))
    return CheckpointError(f"{path}: cannot save: {write_cause(exc)}; {intact}" + ("; free some space and run again" if no_space else ""))


def accepted_hashes(entry: Mapping[str, Any] | None) -> set[str]:
    """Hashes the manifest accepts for a name: its sha256 and, while pending, the previous one."""
    if not entry:
        return set()
    hashes = {entry.get("sha256")}
    previous = entry.get("previous")
    if entry.get("pending") and previous:
        hashes.add(previous.get("sha256"))
    return {h for h in hashes if h}


def hash_status(path) -> tuple[str, str | None]:
    """``("ok"|"mismatch"|"unlisted", actual_sha256)`` of a file against its folder's manifest."""
    path = Path(path)
    entry = read_manifest(path.parent)["files"].get(path.name)
    if not entry:
        return "unlisted", None
    actual = sha256_file(path)
    return ("ok" if actual in accepted_hashes(entry) else "mismatch"), actual


# ---------------------------------------------------------------------------------------
# loading
# ---------------------------------------------------------------------------------------
def _first_line(exc: BaseException) -> str:
    """The informative line of an exception (torch's weights_only errors are paragraphs)."""
    text = str(exc).strip()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for ln in lines:
        if "GLOBAL" in ln or ln.startswith("WeightsUnpickler error"):
            return ln.split(" Please use ", 1)[0]
    for i, ln in enumerate(lines):
        if ln.startswith("WeightsUnpickler error") or ln.endswith("WeightsUnpickler error:"):
            return " ".join(lines[i : i + 2])
    return lines[0] if lines else type(exc).__name__


def _unsafe_globals(path: Path) -> list[str]:
    getter = getattr(torch.serialization, "get_unsafe_globals_in_checkpoint", None)  # torch >= 2.5
    if getter is None:
        return []
    try:
        return list(getter(str(path)))
    except Exception:  # noqa: BLE001 - best effort, only to name the culprit
        return []


def _read_head(path: Path) -> bytes:
    with open(path, "rb") as f:
        return f.read(4)


def _torch_load(path: Path, *, map_location, mmap: bool = False) -> Any:
    """``torch.load(weights_only=True)`` with every failure turned into a CheckpointError."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise CheckpointError(f"{path}: checkpoint file not found") from None
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read the checkpoint ({exc})") from exc
    if not path.is_file():
        raise CheckpointError(f"{path}: not a file")
    if size == 0:
        raise CheckpointError(f"{path}: checkpoint is empty (0 bytes): an interrupted or failed write")
    try:
        head = _read_head(path)
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read the checkpoint ({exc.strerror or exc})") from None
    is_zip = head == _ZIP_MAGIC
    if not is_zip and not head.startswith(b"\x80"):
        raise CheckpointError(
            f"{path}: not a PyTorch checkpoint (neither a torch zip archive nor a pickle): corrupt or a different file type"
        )
    kwargs: dict[str, Any] = {"map_location": map_location, "weights_only": True}
    if mmap and is_zip:
        kwargs["mmap"] = True
    try:
        return torch.load(path, **kwargs)
    except pickle.UnpicklingError as exc:
        cause = _first_line(exc)
        # A readable zip whose pickle weights_only rejects holds objects other than tensors and
        # plain values; for a legacy pickle, only a rejected GLOBAL says so (else: corrupt).
        if is_zip or "GLOBAL" in str(exc):
            names = _unsafe_globals(path) if is_zip else []
            named = f" (unsupported globals: {', '.join(names)})" if names else ""
            raise CheckpointError(
                f"{path}: refused to load: the file needs unsafe unpickling{named}; it may contain arbitrary code and "
                f"will not be loaded ({cause})"
            ) from None
        raise CheckpointError(f"{path}: corrupt checkpoint: cannot unpickle it ({cause})") from None
    except Exception as exc:  # noqa: BLE001 - a damaged file makes torch's readers fail in any way
        # (IndexError, AssertionError, struct.error... from the legacy unpickler; RuntimeError
        # from the zip reader; MemoryError from a size field gone wild): all are "corrupt".
        cause = _first_line(exc)
        if not isinstance(exc, (RuntimeError, EOFError, OSError, ValueError)):
            cause = f"{type(exc).__name__}: {cause}"
        if is_zip:
            raise CheckpointError(f"{path}: truncated or corrupt checkpoint (zip archive unreadable: {cause})") from None
        raise CheckpointError(f"{path}: truncated or corrupt checkpoint ({cause})") from None


def zip_crc_ok(path) -> bool | None:
    """Whether every record of a torch zip checkpoint matches its CRC32 (None: not a zip).

    torch.load does not check CRCs of tensor data, so this catches flipped bytes in files the
    manifest does not list.
    """
    try:
        with zipfile.ZipFile(path) as z:
            return z.testzip() is None
    except zipfile.BadZipFile:
        try:
            return False if _read_head(Path(path)) == _ZIP_MAGIC else None
        except OSError:
            return False
    except Exception:  # noqa: BLE001 - zlib.error, NotImplementedError (a flipped method byte)...
        return False


def _check_structure(payload: Any, path: Path, expected_task: str | None) -> dict:
    if not isinstance(payload, dict) or META_KEY not in payload:
        what = "not a dict" if not isinstance(payload, dict) else "no 'cad3d_meta' metadata"
        raise CheckpointError(
            f"{path}: foreign checkpoint ({what}); convert it with `cad3d ckpt migrate {path.parent}`"
        )
    meta = payload[META_KEY]
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path}: 'cad3d_meta' is not a dict; convert it with `cad3d ckpt migrate`")
    version = meta.get("schema_version")
    if not isinstance(version, int):
        raise CheckpointError(f"{path}: 'cad3d_meta' has no integer schema_version")
    if version > SCHEMA_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint schema_version {version} is newer than this cad3d supports ({SCHEMA_VERSION}); "
            "upgrade cad3d"
        )
    problem = _metadata_problem(meta)
    if problem:
        raise CheckpointError(f"{path}: corrupt 'cad3d_meta': {problem}")
    if expected_task is not None and meta.get("task") != expected_task:
        raise CheckpointError(f"{path}: checkpoint is for task {meta.get('task')!r}, expected {expected_task!r}")
    return meta


# The fields readers format or compare, with the types `build_metadata` writes (None allowed).
_META_TYPES = {"task": str, "file_kind": str, "device": str, "precision": str, "created": str, "epoch": int,
               "global_step": int, "world_size": int, "epoch_complete": bool, "metrics": dict, "versions": dict,
               "config": dict}


def _metadata_problem(meta: Mapping[str, Any]) -> str | None:
    """What is wrong with the types of a metadata dict (a damaged file can unpickle to anything)."""
    for key, kind in _META_TYPES.items():
        value = meta.get(key)
        if value is not None and (not isinstance(value, kind) or (kind is not bool and isinstance(value, bool))):
            return f"{key!r} is {type(value).__name__}, expected {kind.__name__}"
    for name, value in (meta.get("metrics") or {}).items():
        if not isinstance(name, str) or isinstance(value, bool) or not isinstance(value, (int, float)):
            return f"metric {name!r} is {type(value).__name__}, expected a number"
    return None


def strip_path(message: str, path) -> str:
    """An error message without its leading "<path>: " (for a caller that names the file itself)."""
    prefix = f"{path}: "
    return message[len(prefix):] if message.startswith(prefix) else message


def environment_differences(meta: Mapping[str, Any]) -> list[str]:
    """Differences between the checkpoint's environment and this one, as sentences."""
    diffs = []
    versions = meta.get("versions") or {}
    here = environment_versions()
    for name in ("torch", "cad3d"):
        theirs = versions.get(name)
        if theirs and theirs != here[name]:
            diffs.append(f"saved with {name} {theirs}, running {name} {here[name]}")
    device = str(meta.get("device") or "")
    if device.startswith("cuda") and not torch.cuda.is_available():
        diffs.append(f"trained on {device}, CUDA is not available here (loading on CPU)")
    elif device == "cpu" and torch.cuda.is_available():
        diffs.append("trained on CPU, running where CUDA is available (results may differ slightly)")
    return diffs


def load_checkpoint(
    path,
    *,
    map_location="cpu",
    expected_task: str | None = None,
    verify_hash: bool = True,
) -> dict:
    """Load a cad3d checkpoint safely (``weights_only``, never an unsafe fallback).

    Raises `CheckpointError` naming the file and the cause for a missing, empty, truncated,
    corrupt, tampered (sha256 differs from the folder's manifest, or a zip CRC fails when the
    manifest does not list it), unsafe (needs arbitrary unpickling) or foreign file, a task other
    than ``expected_task``, or a newer schema. Warns (`CheckpointEnvironmentWarning`) when the
    environment differs from the one that saved it.
    """
    path = Path(path)
    mismatch = None
    if verify_hash and path.is_file():
        try:
            status, actual = hash_status(path)
        except OSError as exc:
            raise CheckpointError(f"{path}: cannot read the checkpoint ({exc.strerror or exc})") from None
        if status == "mismatch":
            mismatch = actual
        elif status == "unlisted" and zip_crc_ok(path) is False:
            _torch_load(path, map_location="cpu", mmap=True)  # a more specific cause first, if any
            raise CheckpointError(f"{path}: corrupt or tampered checkpoint: zip CRC check failed for its data")
    try:
        payload = _torch_load(path, map_location=map_location)
    except CheckpointError as exc:
        if mismatch:
            raise CheckpointError(f"{exc}; its sha256 also differs from {MANIFEST_NAME}") from None
        raise
    if mismatch:
        raise CheckpointError(
            f"{path}: sha256 {mismatch[:12]}… does not match {MANIFEST_NAME}: the file was modified or only "
            "partly written (tampered?); it will not be used"
        )
    meta = _check_structure(payload, path, expected_task)
    for diff in environment_differences(meta):
        warnings.warn(f"{path}: {diff}", CheckpointEnvironmentWarning, stacklevel=2)
    return payload


def _load_mmap(path) -> dict:
    """The payload with tensors memory-mapped on CPU (nothing read until touched)."""
    return _torch_load(Path(path), map_location="cpu", mmap=True)


def read_metadata(path) -> dict:
    """``cad3d_meta`` of a checkpoint without materialising its weights (memory-mapped, CPU).

    Does not check the hash (see `load_checkpoint`); raises `CheckpointError` like it for
    unreadable, unsafe or foreign files.
    """
    path = Path(path)
    payload = _load_mmap(path)
    return dict(_check_structure(payload, path, None))


def load_state_dict_strict(module: nn.Module, state_dict: Mapping[str, Any], *, path, key: str) -> None:
    """``module.load_state_dict(state_dict)``; on any mismatch raise `CheckpointError` listing
    missing and unexpected keys and shape mismatches, naming the file and the key."""
    if not isinstance(state_dict, Mapping):
        raise CheckpointError(f"{path}: key {key!r} is not a state dict (got {type(state_dict).__name__})")
    own = module.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    shapes = [
        f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
        for k, v in state_dict.items()
        if k in own and isinstance(v, torch.Tensor) and tuple(v.shape) != tuple(own[k].shape)
    ]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing keys: {_short_list(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {_short_list(unexpected)}")
        if shapes:
            parts.append(f"shape mismatches: {_short_list(shapes)}")
        raise CheckpointError(
            f"{path}: state dict {key!r} does not fit {type(module).__name__} (architecture mismatch): " + "; ".join(parts)
        )
    try:
        module.load_state_dict(state_dict, strict=True)
    except (RuntimeError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{path}: cannot load state dict {key!r}: {_first_line(exc)}") from None


def _short_list(items: list[str], limit: int = 10) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f", … ({len(items) - limit} more)" if len(items) > limit else "")


def is_state_dict(value: Any) -> bool:
    """A non-empty mapping of tensors (what a module's ``state_dict`` saves)."""
    return isinstance(value, Mapping) and bool(value) and all(isinstance(t, torch.Tensor) for t in value.values())
