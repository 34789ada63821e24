"""One writer per run folder: training, ``cad3d ckpt prune`` and ``cad3d ckpt migrate`` hold
``RUN/.cad3d.lock`` while they write, so two writers never rewrite the manifest from their own
copies.

The lock is an OS file lock (``flock`` through `filelock`): the kernel drops it when its process
dies, however it dies. Beside it, ``RUN/.cad3d.lock.json`` says who holds it (pid, host, since,
what for) so a refused writer can name the holder. A holder record left by a process that is gone
(a SIGKILL) is stale and taken over; one whose process still runs on this host while the file
lock is free means the filesystem does not enforce file locks, and is refused too.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import socket
import sys
from pathlib import Path
from typing import Any

import filelock

from cad3d.errors import CheckpointError
from cad3d.io import atomic_write_json
from cad3d.training.checkpoint_io import write_cause

logger = logging.getLogger(__name__)

LOCK_NAME = ".cad3d.lock"
HOLDER_NAME = ".cad3d.lock.json"


class RunFolderLocked(CheckpointError):
    """Another process writes to this run folder; the message names it (pid, host, since)."""


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux /proc), to tell a live holder
    from another process that reuses its pid; None where /proc is not available."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[-1].split()[19]  # field 22; the name in (...) may hold spaces


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: it exists, under another user
        return True
    return True


def holder_running_here(holder: dict[str, Any]) -> bool:
    """Whether a holder record's process still runs (same host, live pid, same start time)."""
    pid = holder.get("pid")
    if holder.get("host") != socket.gethostname() or not isinstance(pid, int) or not pid_alive(pid):
        return False
    started = holder.get("started")
    return started is None or started == _start_time(pid)


def describe_holder(holder: dict[str, Any] | None) -> str:
    if not holder:
        return "another process (it has not said which yet)"
    what = f" ({holder['purpose']})" if holder.get("purpose") else ""
    return f"pid {holder.get('pid')} on host {holder.get('host')} since {holder.get('since')}{what}"


def read_holder(directory) -> dict[str, Any] | None:
    """The holder record of a run folder, or None (none, or unreadable: a record is advisory)."""
    try:
        data = json.loads((Path(directory) / HOLDER_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


class RunLock:
    """The writer's lock of a run folder; a context manager (``with RunLock(out, "training"):``).

    `acquire` creates the folder if needed and raises `RunFolderLocked` naming the holder when
    another process writes there, or `CheckpointError` when the folder cannot be written (checked
    before any work starts)."""

    def __init__(self, directory, purpose: str):
        self.directory = Path(directory)
        self.purpose = purpose
        self._lock: filelock.BaseFileLock | None = None

    @property
    def held(self) -> bool:
        return self._lock is not None

    def acquire(self) -> "RunLock":
        d = self.directory
        try:
            d.mkdir(parents=True, exist_ok=True)
            lock = filelock.FileLock(str(d / LOCK_NAME), timeout=0)
            lock.acquire()
        except filelock.Timeout:
            raise RunFolderLocked(
                f"{d} is in use by {describe_holder(read_holder(d))}: one writer per run folder; wait for it to "
                "finish, stop it, or choose another folder"
            ) from None
        except OSError as exc:
            raise CheckpointError(f"{d}: cannot write to the run folder ({write_cause(exc)})") from None
        try:
            self._take_over(lock)
        except BaseException:
            lock.release()
            raise
        self._lock = lock
        return self

    def _take_over(self, lock) -> None:
        d = self.directory
        previous = read_holder(d)
        if previous and previous.get("pid") != os.getpid() and holder_running_here(previous):
            raise RunFolderLocked(
                f"{d} is in use by {describe_holder(previous)}, which is still running, although the file lock "
                f"was free (this filesystem does not enforce file locks); stop it or choose another folder"
            )
        if previous:
            logger.warning("%s: taking over the lock left by %s (that process is gone)", d, describe_holder(previous))
        record = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": _start_time(os.getpid()),
            "since": _dt.datetime.now(_dt.timezone.utc).astimezone().isoformat(timespec="seconds"),
            "purpose": self.purpose,
            "command": " ".join(sys.argv[:4]),
        }
        try:
            atomic_write_json(d / HOLDER_NAME, record)
        except OSError as exc:
            raise CheckpointError(f"{d}: cannot write to the run folder ({write_cause(exc)})") from None

    def release(self) -> None:
        """Remove the holder record, then free the lock (in that order: a new holder's record is
        never deleted by the old one). Safe to call twice."""
        if self._lock is None:
            return
        try:
            holder = read_holder(self.directory)
            if holder and holder.get("pid") == os.getpid():
                (self.directory / HOLDER_NAME).unlink(missing_ok=True)
        except OSError as exc:
            logger.warning("%s: cannot remove the lock record (%s)", self.directory, exc)
        finally:
            self._lock.release()
            self._lock = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
