"""The engine's run folder: one writer at a time (its lock), a fresh start that never mixes with an
earlier run, and the checkpoint to resume — chosen by rank 0 and shared, so every rank loads the
same file (or every rank stops, saying why).

Invariants: nothing is written to the folder before rank 0 holds its lock (`RunLock`), so an
unwritable ``--out`` fails before training; ``--resume auto`` resumes, or starts fresh only when
the folder holds no checkpoint of the model, or refuses listing why each checkpoint was rejected;
a fresh run deletes earlier checkpoints only with ``overwrite``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from cad3d.errors import CheckpointError
from cad3d.io import atomic_write_json
from cad3d.training import distributed as D
from cad3d.training.checkpoint import CheckpointManager
from cad3d.training.checkpoint_io import sha256_file, write_failure
from cad3d.training.engine_config import TrainingConfigError
from cad3d.training.run_lock import RunLock
from cad3d.training.run_state import restore_run

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ResumeChoice:
    """What rank 0 chose to resume from, as every rank opens it."""

    name: str  # a file name in out_dir, or a path as the user gave it
    in_out_dir: bool
    sha256: Optional[str]  # of rank 0's file (distributed runs only): the other ranks must see the same bytes

    def path(self, out_dir: Path) -> Path:
        return out_dir / self.name if self.in_out_dir else Path(self.name)


def open_run(engine) -> Optional[ResumeChoice]:
    """Rank 0 locks ``engine.out_dir`` (creating it), builds the writer's `CheckpointManager`
    (which recovers from an interrupted save) and decides how the run starts; the other ranks
    get its decision (None: fresh) or stop with its error. Sets ``engine.lock`` and
    ``engine.manager``."""
    cfg, info, task = engine.config, engine.dist, engine.task

    def writer() -> Optional[ResumeChoice]:
        engine.lock = RunLock(engine.out_dir, f"training {task.name}").acquire()
        engine.manager = CheckpointManager(engine.out_dir, task.schema, keep_last=cfg.keep_last, is_writer=True)
        return _decide(engine)

    choice = D.on_main(writer, info, "opening the run folder")
    if not info.is_main:
        engine.manager = CheckpointManager(engine.out_dir, task.schema, keep_last=cfg.keep_last, is_writer=False)
    return choice


def _decide(engine) -> Optional[ResumeChoice]:
    cfg, mgr, out = engine.config, engine.manager, engine.out_dir
    if not cfg.resume:
        _prepare_fresh(engine)
        return None
    if cfg.resume == "auto":
        path, rejected = mgr.resume_choice()
        if path is None and (rejected or mgr.existing_files()):
            reasons = "; ".join(f"{p.name}: {why}" for p, why in rejected) or "none is a checkpoint of this run"
            raise TrainingConfigError(
                f"--resume auto: none of the checkpoints in {out} can be resumed ({reasons}). Fix or move them, resume "
                "from a file with --resume PATH, or start fresh over them with --overwrite (without --resume)"
            )
        for bad, why in rejected:
            logger.warning("not resuming from %s: %s", bad, why)
        if path is None:
            logger.info("no checkpoint to resume in %s: starting fresh", out)
            _prepare_fresh(engine)
            return None
    else:
        path = Path(cfg.resume)
        if not path.is_file():
            raise TrainingConfigError(f"resume checkpoint {path} does not exist")
    in_out = path.parent.resolve() == out.resolve()
    sha = sha256_file(path) if engine.dist.distributed else None
    return ResumeChoice(path.name if in_out else str(path), in_out, sha)


def _prepare_fresh(engine) -> None:
    """A fresh run must not mix with an earlier one in ``out_dir``: checkpoints of this model
    there are an error, or deleted first with ``overwrite`` (with the epoch log, the report and
    the manifest's best)."""
    cfg, task, mgr = engine.config, engine.task, engine.manager
    existing = mgr.existing_files()
    if existing and not cfg.overwrite:
        raise TrainingConfigError(
            f"{engine.out_dir} already holds {len(existing)} checkpoint file(s) of {task.name}; newest: "
            f"{existing[-1].name}. Continue that run with --resume auto (resume='auto'), choose another --out, or "
            "pass --overwrite (overwrite=True) to delete them and start fresh"
        )
    removed = mgr.clear()
    if existing:
        logger.warning("overwrite: deleted %d earlier file(s) of %s in %s", len(removed), task.name, engine.out_dir)


def load_resume(engine, choice: ResumeChoice, progress, sums) -> Path:
    """Every rank restores rank 0's choice; a rank that cannot see the same file stops them all."""
    info = engine.dist
    path = choice.path(engine.out_dir)

    def load() -> None:
        if choice.sha256 is not None and not info.is_main:
            if not path.is_file():
                raise CheckpointError(f"{path}: rank {info.rank} cannot find the checkpoint rank 0 resumes from; every "
                                      "rank must see the same --out folder (shared storage)")
            if sha256_file(path) != choice.sha256:
                raise CheckpointError(f"{path}: rank {info.rank} sees other bytes than rank 0 resumes from; every rank "
                                      "must see the same --out folder (shared storage)")
        restore_run(engine, path, progress, sums)

    D.on_all(load, info, f"resuming from {path}")
    return path


def write_run_json(path: Path, obj) -> None:
    """Write a run's log or report atomically; a failure (a full disk...) is a CheckpointError
    that says the checkpoints are intact."""
    try:
        atomic_write_json(path, obj)
    except OSError as exc:
        raise write_failure(path, exc, intact=f"the checkpoints in {path.parent} are intact") from None
