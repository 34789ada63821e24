"""Atomic file writes: a temp file in the same folder, then ``os.replace``; a reader never sees
a partial file under the final name. ``durable=True`` also fsyncs the file and its folder, so
the new bytes survive a power cut (checkpoints, logs); data and outputs skip the fsyncs."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Callable

TMP_MARK = ".tmp-"  # temp files: ".<name>.tmp-<pid>-<random>"

# mkstemp creates 0600 files; published files get the usual permissions (0666 minus the umask).
_UMASK = os.umask(0)
os.umask(_UMASK)


class HashingWriter:
    """File-like wrapper that hashes what passes through (so a save needs no second read)."""

    def __init__(self, f):
        self._f = f
        self.sha = hashlib.sha256()

    def write(self, b) -> int:
        self.sha.update(b)
        return self._f.write(b)

    def flush(self) -> None:
        self._f.flush()


def fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # e.g. Windows: folders cannot be opened; the rename is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def temp_path(path: Path) -> Path:
    """A new empty temp file beside ``path``, named ``.<name>.tmp-<pid>-<random>``."""
    fd, name = tempfile.mkstemp(prefix=f".{path.name}{TMP_MARK}{os.getpid()}-", dir=path.parent)
    os.close(fd)
    os.chmod(name, 0o666 & ~_UMASK)
    return Path(name)


def atomic_write(path, writer: Callable, *, durable: bool = True) -> str:
    """Write through ``writer(file_like)`` to a temp file and publish it at ``path``; returns
    the sha256 hex of the bytes written. The temp file is removed if anything fails."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    try:
        with open(tmp, "wb") as f:
            hw = HashingWriter(f)
            writer(hw)
            f.flush()
            if durable:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if durable:
        fsync_dir(path.parent)
    return hw.sha.hexdigest()


def atomic_write_bytes(path, data: bytes, *, durable: bool = True) -> None:
    """Write ``data`` to ``path`` atomically."""
    atomic_write(path, lambda f: f.write(data), durable=durable)


def atomic_write_json(path, obj, *, durable: bool = True) -> None:
    """Write ``obj`` as JSON (indent=2) to ``path`` atomically."""
    atomic_write_bytes(path, (json.dumps(obj, indent=2) + "\n").encode("utf-8"), durable=durable)
