"""Run-state files: task state that belongs to the run, not to each checkpoint (e.g. the
diffusion replay buffer), stored once per run folder beside the checkpoints.

A task with ``schema.run_state_file`` (a name template with ``{step}``) returns that state from
`TrainTask.run_state`. At a save the engine publishes it as ``run_state_file.format(step=S)``
through the checkpoint manager (atomic, listed in the manifest, ``file_kind`` "run_state") and
the checkpoints of step S carry a reference to it (``cad3d_run_state``: file, sha256, step).
Once those checkpoints are published the manager deletes the run's other run-state files
(save before delete), so a kill at any moment leaves the newest checkpoint's state intact and
a resumed run continues bit-identically. An older checkpoint whose state file was replaced gets
the newest one, with a warning.
"""

from __future__ import annotations

import logging
import re
import warnings
from pathlib import Path
from typing import Any, Mapping, Optional

from cad3d.errors import CheckpointError
from cad3d.training.checkpoint_io import META_KEY, RUN_STATE_KEY, build_metadata, load_checkpoint, sha256_file

logger = logging.getLogger(__name__)

RUN_STATE_KIND = "run_state"


def run_state_pattern(template: str) -> re.Pattern:
    """Regex of a ``run_state_file`` template's names; group 1 is the step."""
    return re.compile("^" + re.escape(template).replace(re.escape("{step}"), r"(\d+)") + "$")


def save_run_state(manager, task: str, state: Mapping[str, Any], global_step: int) -> Optional[dict]:
    """Publish ``state`` (tensors and plain values) for step ``global_step`` in the manager's
    folder, once per step; returns the reference the checkpoints of this step carry (None on a
    non-writer rank)."""
    if not manager.is_writer:
        return None
    name = manager.schema.run_state_file.format(step=global_step)
    entry = manager.entry(name)
    if entry is None or entry.get("pending") or not (manager.directory / name).is_file():
        meta = build_metadata(task=task, file_kind=RUN_STATE_KIND, global_step=global_step)
        manager.publish(name, {**state, META_KEY: meta})
        entry = manager.entry(name)
    return {"file": name, "sha256": entry["sha256"], "global_step": int(global_step)}


def prune_run_states(manager, payload: Mapping[str, Any]) -> None:
    """Delete the folder's run-state files other than the one ``payload`` (just published)
    refers to."""
    ref = payload.get(RUN_STATE_KEY)
    if not manager.is_writer or not ref or not manager.schema.run_state_file:
        return
    for path in run_state_files(manager.directory, manager.schema.run_state_file):
        if path.name != ref["file"]:
            manager.remove(path.name)


def run_state_files(directory: Path, template: str) -> list[Path]:
    """Run-state files of ``template`` in ``directory``, oldest step first."""
    pattern = run_state_pattern(template)
    if not Path(directory).is_dir():
        return []
    found = [(int(m.group(1)), p) for p in Path(directory).iterdir() if (m := pattern.match(p.name)) and p.is_file()]
    return [p for _, p in sorted(found)]


def load_run_state(checkpoint_path: Path, payload: Mapping[str, Any], template: Optional[str]) -> Optional[dict]:
    """The run state a checkpoint refers to, from its folder (hash-checked); the folder's newest
    one, with a warning, when that file was replaced; None when the checkpoint refers to none or
    the folder holds none."""
    ref = payload.get(RUN_STATE_KEY)
    if not ref or not template:
        return None
    folder = Path(checkpoint_path).parent
    path = folder / str(ref.get("file"))
    if not (path.is_file() and sha256_file(path) == ref.get("sha256")):
        newest = run_state_files(folder, template)
        if not newest:
            warnings.warn(f"{checkpoint_path}: its run state {ref.get('file')} is gone; continuing without it", stacklevel=2)
            return None
        path = newest[-1]
        warnings.warn(f"{checkpoint_path}: its run state of step {ref.get('global_step')} was replaced; "
                      f"using {path.name} (not the exact state of that checkpoint)", stacklevel=2)
    state = load_checkpoint(path, map_location="cpu")
    if (state.get(META_KEY) or {}).get("file_kind") != RUN_STATE_KIND:
        raise CheckpointError(f"{path}: not a run-state file")
    return {k: v for k, v in state.items() if k != META_KEY}


__all__ = ["RUN_STATE_KIND", "load_run_state", "prune_run_states", "run_state_files", "run_state_pattern", "save_run_state"]
