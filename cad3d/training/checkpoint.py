"""The checkpoint manager of a run folder: atomic publish, the sha256 manifest kept true,
best/last/epoch files, retention and finding the file to resume from.

Invariant: at every instant, the manifest's entry for a name accepts the bytes at that name. A
save writes and fsyncs a temp file, records the new hash as ``pending`` (keeping the previous
entry), renames, fsyncs the folder, then resolves the entry; a reader accepts the entry's hash or,
while pending, the previous one. Files are deleted only after their replacement is published.
"""

from __future__ import annotations

import logging
import math
import os
import re
import warnings
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch

from cad3d.errors import CheckpointError
from cad3d.io import TMP_MARK as _TMP_MARK
from cad3d.io import HashingWriter as _HashingWriter
from cad3d.io import fsync_dir as _fsync_dir
from cad3d.io import temp_path as _temp_path
from cad3d.training.checkpoint_io import (
    CHECKPOINT_SUFFIXES,
    MANIFEST_NAME,
    META_KEY,
    RESUME_KEY,
    SCHEMA_VERSION,
    _load_mmap,
    _now,
    _torch_load,
    accepted_hashes,
    build_metadata,
    plain,
    read_manifest,
    read_metadata,
    sha256_file,
    strip_path,
    write_failure,
    write_manifest,
    zip_crc_ok,
)
from cad3d.training.run_files import RUN_STATE_KIND, prune_run_states, run_state_files
from cad3d.training.run_lock import pid_alive
from cad3d.training.tasks.base import CheckpointSchema

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------
# the manager
# ---------------------------------------------------------------------------------------
def epoch_file_pattern(schema: CheckpointSchema) -> re.Pattern:
    """Regex matching the schema's epoch file names; group 1 is the epoch."""
    template = re.escape(schema.epoch_file).replace(re.escape("{epoch}"), r"(\d+)")
    return re.compile(rf"^{template}$")


def is_temp_file(name: str) -> bool:
    return name.startswith(".") and _TMP_MARK in name


def _metric_better(value: float, best: float | None, mode: str) -> bool:
    if value is None or math.isnan(value):
        return False
    if best is None or math.isnan(best):
        return True
    return value < best if mode == "min" else value > best


class CheckpointManager:
    """Writes, lists, prunes and finds the checkpoints of one run folder (rank 0 writes).

    The engine calls `save_epoch` at each epoch end, `save_last` mid-epoch or on SIGTERM,
    `save_final` at the end, and `find_resume` for ``--resume auto``.
    """

    def __init__(
        self,
        directory,
        schema: CheckpointSchema,
        *,
        keep_last: int | None = None,
        is_writer: bool = True,
    ):
        if keep_last is not None and keep_last < 0:
            raise ValueError(f"keep_last must be >= 0 or None, got {keep_last}")
        if schema.mode not in ("min", "max"):
            raise ValueError(f"schema.mode must be 'min' or 'max', got {schema.mode!r}")
        self.directory = Path(directory)
        self.schema = schema
        self.keep_last = keep_last
        self.is_writer = is_writer
        self._epoch_re = epoch_file_pattern(schema)
        self._manifest = read_manifest(self.directory) if self.directory.is_dir() else {"schema_version": SCHEMA_VERSION, "files": {}}
        if is_writer and self.directory.is_dir():
            self._recover()
        if "best" not in self._manifest:
            self._best_from_file()

    # -- manifest -----------------------------------------------------------------------
    def _write_manifest(self) -> None:
        self._manifest["schema_version"] = SCHEMA_VERSION
        # Saving policy, so `cad3d ckpt verify` can tell expected gaps from missing files.
        self._manifest["every_n_epochs"] = max(1, int(self.schema.every_n_epochs))
        if self.keep_last is not None or "keep_last" not in self._manifest:
            self._manifest["keep_last"] = self.keep_last
        write_manifest(self.directory, self._manifest)

    def _recover(self) -> None:
        """After a crash: remove our stale temp files and resolve pending manifest entries."""
        for p in self.directory.iterdir():
            if is_temp_file(p.name) and not _pid_alive_in_name(p.name):
                logger.info("removing temp file %s left by an interrupted save", p)
                p.unlink(missing_ok=True)
        files = self._manifest["files"]
        changed = False
        for name, entry in list(files.items()):
            if not entry.get("pending"):
                continue
            changed = True
            path = self.directory / name
            actual = sha256_file(path) if path.is_file() else None
            previous = entry.get("previous")
            if actual == entry.get("sha256"):
                files[name] = _resolved(entry)
                self._update_best_from_entry(name, files[name])
            elif previous and actual == previous.get("sha256"):
                files[name] = previous
            else:
                files.pop(name)  # nothing of ours at that name; verify will flag a stray file
        if changed:
            self._write_manifest()

    def _best_from_file(self) -> None:
        """No best in the manifest (e.g. it was deleted): take it from the best file's metadata."""
        path = self.directory / self.schema.best_file if self.schema.best_file else None
        if path is None or not path.is_file():
            return
        try:
            meta = read_metadata(path)
        except CheckpointError as exc:
            logger.warning("cannot restore the best metric: %s", exc)
            return
        value = (meta.get("metrics") or {}).get(self.schema.monitor)
        if value is not None and not math.isnan(float(value)):
            self._set_best(float(value), meta.get("epoch"), meta.get("global_step"))

    @property
    def best_metric(self) -> float | None:
        """Best value of ``schema.monitor`` so far (restored from the manifest on resume)."""
        best = self._manifest.get("best")
        if best and best.get("monitor") == self.schema.monitor:
            return float(best["value"])
        return None

    def _update_best_from_entry(self, name: str, entry: Mapping[str, Any]) -> None:
        if name == self.schema.best_file and entry.get("kind") == "best":
            value = (entry.get("metrics") or {}).get(self.schema.monitor)
            if value is not None:
                self._set_best(float(value), entry.get("epoch"), entry.get("global_step"))

    def _set_best(self, value: float, epoch, global_step) -> None:
        self._manifest["best"] = {
            "monitor": self.schema.monitor,
            "mode": self.schema.mode,
            "value": value,
            "epoch": epoch,
            "global_step": global_step,
        }

    # -- saving -------------------------------------------------------------------------
    def _payload_for(self, payload: Mapping[str, Any], kind: str, **meta_fields) -> dict:
        """A shallow copy of the payload whose metadata says what this file is."""
        out = dict(payload)
        meta = dict(payload.get(META_KEY) or build_metadata(task=self.schema.model))
        meta.update({k: v for k, v in meta_fields.items() if v is not None})
        meta["file_kind"] = kind
        meta.setdefault("schema_version", SCHEMA_VERSION)
        if "metrics" in meta_fields and meta_fields["metrics"] is not None:
            meta["metrics"] = {str(k): float(v) for k, v in meta_fields["metrics"].items()}
        out[META_KEY] = meta = plain(meta)
        if meta.get("epoch") is not None:
            out.setdefault(self.schema.epoch_key, meta["epoch"])
        if meta.get("global_step") is not None:
            out.setdefault(self.schema.step_key, meta["global_step"])
        return out

    def _write(self, name: str, payload: dict) -> Path:
        """Publish one checkpoint file, keeping the manifest invariant (see the module doc). A
        failed write (a full disk...) is a `CheckpointError` saying so; the file that was at
        ``name`` is then untouched."""
        path = self.directory / name
        existed = path.exists()
        intact = f"the previous {name} is intact" if existed else f"the checkpoints already in {self.directory} are intact"
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            tmp = _temp_path(path)
        except OSError as exc:
            raise write_failure(path, exc, intact=intact) from None
        meta = payload[META_KEY]
        files = self._manifest["files"]
        before = files.get(name)
        try:
            with open(tmp, "wb") as f:
                hw = _HashingWriter(f)
                torch.save(payload, hw)
                f.flush()
                os.fsync(f.fileno())
            entry = _manifest_entry(hw.sha.hexdigest(), tmp.stat().st_size, meta)
            previous = before.get("previous") if before and before.get("pending") else before
            if not existed:
                previous = None
            elif previous is None:  # a file the manifest does not list: accept its bytes meanwhile
                previous = {"sha256": sha256_file(path)}
            files[name] = {**entry, "pending": True, "previous": previous}
            self._write_manifest()  # 2. the new hash is accepted before the bytes appear
            os.replace(tmp, path)  # 3. commit point
        except BaseException as exc:
            tmp.unlink(missing_ok=True)
            if before is None:
                files.pop(name, None)
            else:
                files[name] = before  # what the manifest on disk accepts too (the old bytes)
            if isinstance(exc, Exception):
                raise write_failure(path, exc, intact=intact) from None
            raise
        _fsync_dir(self.directory)
        files[name] = entry
        self._update_best_from_entry(name, entry)
        try:
            self._write_manifest()  # 4. resolved
        except CheckpointError as exc:  # the pending entry on disk accepts the new bytes
            raise write_failure(path, exc, intact=f"{name} was saved whole, earlier files are intact") from None
        logger.debug("saved checkpoint %s (%s)", path, entry["sha256"][:12])
        return path

    def publish(self, name: str, payload: dict) -> Path:
        """Write any checkpoint file of this folder (e.g. a migrated one) with the same atomic,
        manifest-keeping protocol as the saves. ``payload`` must carry ``cad3d_meta``."""
        if META_KEY not in payload:
            raise ValueError("publish: payload has no 'cad3d_meta'")
        payload = dict(payload)
        payload[META_KEY] = plain(payload[META_KEY])
        return self._write(name, payload)

    def entry(self, name: str) -> Mapping[str, Any] | None:
        """The manifest entry of ``name`` (None when not listed)."""
        return self._manifest["files"].get(name)

    def remove(self, name: str) -> None:
        """Delete a file of this folder, then its manifest entry."""
        self._delete(name)

    def record(self, name: str) -> None:
        """List an existing, unlisted cad3d checkpoint in the manifest (hash of its bytes now)."""
        path = self.directory / name
        meta = read_metadata(path)
        st = path.stat()
        self._manifest["files"][name] = _manifest_entry(sha256_file(path), st.st_size, meta)
        self._write_manifest()

    def _delete(self, name: str) -> None:
        (self.directory / name).unlink(missing_ok=True)
        if self._manifest["files"].pop(name, None) is not None:
            self._write_manifest()

    def save_epoch(self, payload: dict, *, epoch: int, global_step: int, metrics: Mapping[str, float]) -> list[Path]:
        """End of an epoch: ``last`` always, the epoch file every ``schema.every_n_epochs``,
        ``best`` when ``metrics[schema.monitor]`` improves (NaN never does); then prune to
        ``keep_last`` epoch files. Returns the files written (none on a non-writer rank)."""
        if not self.is_writer:
            return []
        fields = {"epoch": epoch, "global_step": global_step, "metrics": dict(metrics), "epoch_complete": True}
        written = [self._write(self.schema.last_file, self._payload_for(payload, "last", **fields))]
        n = max(1, int(self.schema.every_n_epochs))
        if epoch % n == 0:
            name = self.schema.epoch_name(epoch)
            written.append(self._write(name, self._payload_for(payload, "epoch", **fields)))
        value = metrics.get(self.schema.monitor)
        if value is None:
            logger.debug("metric %r not in this epoch's metrics; best not updated", self.schema.monitor)
        elif _metric_better(float(value), self.best_metric, self.schema.mode):
            if self.schema.best_file:
                written.append(self._write(self.schema.best_file, self._payload_for(payload, "best", **fields)))
            else:
                self._set_best(float(value), epoch, global_step)
                self._write_manifest()
        if self.keep_last is not None:
            self.prune(self.keep_last)
        prune_run_states(self, payload)
        return written

    def save_last(self, payload: dict, *, epoch: int, global_step: int, metrics: Mapping[str, float] | None = None) -> Path | None:
        """Write ``last`` now (mid-epoch or on SIGTERM). ``epoch_complete`` comes from the
        payload's metadata (False when not given)."""
        if not self.is_writer:
            return None
        complete = bool((payload.get(META_KEY) or {}).get("epoch_complete", False))
        fields = {
            "epoch": epoch,
            "global_step": global_step,
            "metrics": dict(metrics) if metrics is not None else None,
            "epoch_complete": complete,
        }
        path = self._write(self.schema.last_file, self._payload_for(payload, "last", **fields))
        prune_run_states(self, payload)
        return path

    def save_final(self, payload: dict) -> Path | None:
        """Write ``schema.final_file`` (e.g. ViT ``final_model.pth``), if the schema has one."""
        if not self.is_writer or not self.schema.final_file:
            return None
        return self._write(self.schema.final_file, self._payload_for(payload, "final"))

    # -- listing, retention, resume -----------------------------------------------------
    def epoch_files(self) -> list[tuple[int, Path]]:
        """``(epoch, path)`` of the schema's epoch files present, oldest first (by epoch in name)."""
        if not self.directory.is_dir():
            return []
        found = []
        for p in self.directory.iterdir():
            m = self._epoch_re.match(p.name)
            if m and p.is_file():
                found.append((int(m.group(1)), p))
        return sorted(found)

    def prune(self, keep_last: int, *, dry_run: bool = False) -> list[Path]:
        """Delete all but the ``keep_last`` newest epoch files (never best, last or final).
        Returns the files deleted (or that would be, with ``dry_run``)."""
        if keep_last < 0:
            raise ValueError(f"keep_last must be >= 0, got {keep_last}")
        protected = {self.schema.last_file, self.schema.best_file, self.schema.final_file}
        files = [p for _, p in self.epoch_files() if p.name not in protected]
        doomed = files[: max(0, len(files) - keep_last)]
        if not dry_run and self.is_writer:
            for p in doomed:
                logger.info("pruning %s", p)
                self._delete(p.name)
        return doomed

    def candidates(self) -> list[Path]:
        """Checkpoint files of this schema present in the folder (last, best, final, epochs)."""
        names = [self.schema.last_file, self.schema.best_file, self.schema.final_file]
        out = [self.directory / n for n in names if n and (self.directory / n).is_file()]
        return out + [p for _, p in self.epoch_files()]

    def _schema_names(self) -> set[str]:
        return {n for n in (self.schema.last_file, self.schema.best_file, self.schema.final_file) if n}

    def _is_schema_file(self, name: str) -> bool:
        return name in self._schema_names() or self._epoch_re.match(name) is not None

    def existing_files(self) -> list[Path]:
        """Checkpoint files of this schema in the folder (its epoch/last/best/final names, listed
        in the manifest or not), newest (by modification time) last. Manifest entries whose file
        is gone do not count (see the module doc)."""
        if not self.directory.is_dir():
            return []
        found = [p for p in self.directory.iterdir() if self._is_schema_file(p.name) and p.is_file()]

        def mtime(p: Path) -> float:
            try:
                return p.stat().st_mtime
            except OSError:
                return 0.0

        return sorted(found, key=lambda p: (mtime(p), p.name))

    def clear(self) -> list[Path]:
        """Delete every checkpoint file of this schema, its epoch log and report, and reset the
        manifest's best (a fresh run with ``overwrite``: nothing is kept, so save-before-delete
        does not apply). Files of other schemas and their manifest entries stay. Returns the
        paths deleted (none on a non-writer rank)."""
        if not self.is_writer:
            return []
        removed = []
        run_states = run_state_files(self.directory, self.schema.run_state_file) if self.schema.run_state_file else []
        for path in self.existing_files() + run_states:
            logger.info("removing %s (overwrite)", path)
            path.unlink(missing_ok=True)
            removed.append(path)
        for name in (self.schema.epoch_log_file, self.schema.report_file):
            path = self.directory / name if name else None
            if path is not None and path.is_file():
                logger.info("removing %s (overwrite)", path)
                path.unlink(missing_ok=True)
                removed.append(path)
        files = self._manifest["files"]
        stale = [name for name in files if self._is_schema_file(name) or name in {p.name for p in run_states}]
        changed = bool(stale) or "best" in self._manifest
        for name in stale:
            files.pop(name)
        self._manifest.pop("best", None)
        if changed and self.directory.is_dir():
            self._write_manifest()
        return removed

    def find_resume(self) -> Path | None:
        """The newest complete, valid checkpoint (see `resume_choice`), or None; each file
        passed over is warned about, naming it and why."""
        path, rejected = self.resume_choice()
        for bad, why in rejected:
            warnings.warn(f"skipping checkpoint for resume: {bad}: {why}", stacklevel=2)
        return path

    def resume_choice(self) -> tuple[Path | None, list[tuple[Path, str]]]:
        """``(path, rejected)``: the newest checkpoint to resume from by ``(global_step, epoch)``
        from its metadata (not mtime), or None; and every file passed over before it (or at all,
        when None) with the reason — unreadable, no epoch/step, a final model, tampered, no
        resume state."""
        ranked, rejected = [], []
        for path in self.candidates():
            try:
                meta = read_metadata(path)
            except CheckpointError as exc:
                rejected.append((path, strip_path(str(exc), path)))
                continue
            if meta.get("file_kind") == "final":
                rejected.append((path, "a final model, not a point to resume from"))
                continue
            step, epoch = meta.get("global_step"), meta.get("epoch")
            if not isinstance(step, int) or not isinstance(epoch, int):
                rejected.append((path, "metadata has no epoch/global_step"))
                continue
            # Same step: prefer a finished epoch, then last > epoch > best (same state, but the
            # ones written first each epoch are the most likely to carry full resume state).
            kind_rank = {"last": 3, "epoch": 2, "best": 1}.get(meta.get("file_kind"), 0)
            prefer = (bool(meta.get("epoch_complete", True)), kind_rank)
            ranked.append(((step, epoch, *prefer), path))
        ranked.sort(key=lambda t: t[0], reverse=True)
        for _, path in ranked:
            problem = self._integrity_problem(path)
            if problem is None:
                return path, rejected
            rejected.append((path, problem))
        return None, rejected

    def _integrity_problem(self, path: Path) -> str | None:
        """Why a file cannot be trusted (hash/CRC/load), or None."""
        try:
            entry = read_manifest(self.directory)["files"].get(path.name)
            if entry:
                if sha256_file(path) not in accepted_hashes(entry):
                    return f"sha256 does not match {MANIFEST_NAME} (tampered or partly written)"
                payload = _load_mmap(path)
            else:
                if zip_crc_ok(path) is False:
                    return "zip CRC check failed (corrupt or tampered)"
                payload = _torch_load(path, map_location="cpu")
        except CheckpointError as exc:
            return strip_path(str(exc), path)
        except OSError as exc:
            return f"cannot read it ({exc.strerror or exc})"
        if RESUME_KEY not in payload:
            return f"no {RESUME_KEY!r} resume state (e.g. a migrated file: resume from it by path with --resume PATH)"
        return None


def _manifest_entry(sha256: str, size: int, meta: Mapping[str, Any]) -> dict:
    """A file's manifest entry: its hash and size, and what its metadata says of it."""
    return {
        "sha256": sha256,
        "size": size,
        "epoch": meta.get("epoch"),
        "global_step": meta.get("global_step"),
        "kind": meta.get("file_kind"),
        "epoch_complete": bool(meta.get("epoch_complete", True)),
        "metrics": dict(meta.get("metrics") or {}),
        "created": meta.get("created") or _now(),
    }


def _pid_alive_in_name(name: str) -> bool:
    m = re.search(re.escape(_TMP_MARK) + r"(\d+)-", name)
    return bool(m) and (int(m.group(1)) == os.getpid() or pid_alive(int(m.group(1))))


def _resolved(entry: Mapping[str, Any]) -> dict:
    return {k: v for k, v in entry.items() if k not in ("pending", "previous")}


def iter_checkpoint_files(directory) -> Iterable[Path]:
    """Files in a folder that look like checkpoints (by suffix or manifest listing; not run-state
    files), sorted."""
    directory = Path(directory)
    entries = read_manifest(directory)["files"]
    run_states = {name for name, e in entries.items() if e.get("kind") == RUN_STATE_KIND}
    listed = set(entries) - run_states
    for p in sorted(directory.iterdir()):
        if p.is_file() and not is_temp_file(p.name) and p.name not in run_states and (p.suffix in CHECKPOINT_SUFFIXES or p.name in listed):
            yield p
