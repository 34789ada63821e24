"""Training runs' JSON logs: finding them, reading their loss curves, drawing them for a report
(`cad3d.evaluation.plots` draws)."""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path



from cad3d.errors import EvaluationError

log = logging.getLogger(__name__)


# Per-epoch JSON logs of the training engine (a list of {"epoch", "train_loss", "val_loss", ...}),
# then reports that only hold the train loss per epoch ("loss_history").
EPOCH_LOG_PATTERNS = ("training_history.json", "*epoch_log.json")
REPORT_PATTERNS = ("*training_report.json",)
CURVE_KEYS = ("train_loss", "val_loss")


def _log_files(run_dir: Path) -> tuple[list[Path], list[Path]]:
    logs = sorted({p for pat in EPOCH_LOG_PATTERNS for p in run_dir.glob(pat) if p.is_file()})
    reports = sorted({p for pat in REPORT_PATTERNS for p in run_dir.glob(pat) if p.is_file()})
    return logs, reports


def find_runs(root: str | os.PathLike) -> list[Path]:
    """Folders at or under ``root`` holding an epoch log or a training report, sorted."""
    root = Path(root)
    found = [d for d in [root, *sorted(p for p in root.rglob("*") if p.is_dir())] if any(_log_files(d))]
    return found


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise EvaluationError(f"{path}: unreadable training log ({exc})") from None


def read_loss_curves(run_dir: str | os.PathLike) -> dict[str, list[tuple[float, float]]]:
    """{"train_loss": [(epoch, loss), ...], "val_loss": [...]} from a run folder's epoch log
    (else the train loss of its training report). Non-finite and missing values are dropped.
    Raises EvaluationError when the folder has no readable log."""
    run_dir = Path(run_dir)
    logs, reports = _log_files(run_dir)
    curves: dict[str, list[tuple[float, float]]] = {}
    for path in logs:
        entries = _read_json(path)
        if not isinstance(entries, list):
            raise EvaluationError(f"{path}: an epoch log must be a JSON list of epochs")
        prefix = "" if len(logs) == 1 else path.stem.replace("_epoch_log", "").replace("training_history", "vit") + " "
        for k, e in enumerate(entries):
            if not isinstance(e, dict):
                continue
            for key in CURVE_KEYS:
                v = e.get(key)
                if isinstance(v, (int, float)) and math.isfinite(v):
                    curves.setdefault(prefix + key, []).append((float(e.get("epoch", k + 1)), float(v)))
    if not curves:
        for path in reports:
            report = _read_json(path)
            history = report.get("loss_history") if isinstance(report, dict) else None
            if isinstance(history, list):
                pts = [(float(k + 1), float(v)) for k, v in enumerate(history)
                       if isinstance(v, (int, float)) and math.isfinite(v)]
                if pts:
                    curves["train_loss"] = pts
                    break
    if not curves:
        raise EvaluationError(f"{run_dir}: no loss values in an epoch log ({', '.join(EPOCH_LOG_PATTERNS)}) "
                              f"or a training report ({', '.join(REPORT_PATTERNS)})")
    return curves
