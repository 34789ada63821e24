"""Loss curves of a training run's JSON logs."""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path

import numpy as np


from cad3d.errors import EvaluationError
from cad3d.evaluation.report import _font, _write_png

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


def _nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(s * mag for s in (1, 2, 2.5, 5, 10) if s * mag >= raw)
    first = math.ceil(lo / step) * step
    return [first + k * step for k in range(int((hi - first) / step + 1e-9) + 1)]


def loss_curve_image(curves: dict[str, list[tuple[float, float]]], title: str, size=(720, 420)) -> np.ndarray:
    """(H, W, 3) uint8 line plot of loss against epoch; a log y axis when the values span more
    than a decade (all positive)."""
    from PIL import Image, ImageDraw

    w, h = size
    left, right, top, bottom = 78, 20, 52, 50  # the legend sits above the plot, never on the curves
    img = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(img)
    font, small = _font(14), _font(11)
    xs = [x for pts in curves.values() for x, _ in pts]
    ys = [y for pts in curves.values() for _, y in pts]
    log_y = min(ys) > 0 and max(ys) / min(ys) > 10
    f = (lambda v: math.log10(v)) if log_y else (lambda v: v)
    x0, x1 = min(xs), max(xs)
    if x1 == x0:
        x0, x1 = x0 - 1, x1 + 1
    y0, y1 = f(min(ys)), f(max(ys))
    pad = (y1 - y0) * 0.05 or (abs(y0) * 0.1 or 1.0)
    y0, y1 = y0 - pad, y1 + pad

    def px(x, y):
        return (left + (x - x0) / (x1 - x0) * (w - left - right), top + (1 - (f(y) - y0) / (y1 - y0)) * (h - top - bottom))

    draw.rectangle([left, top, w - right, h - bottom], outline=(0, 0, 0))
    if log_y:
        yticks = [10 ** e for e in range(math.floor(y0), math.ceil(y1) + 1) if y0 <= e <= y1]
        if len(yticks) < 2:
            yticks = [10 ** v for v in _nice_ticks(y0, y1)]
    else:
        yticks = _nice_ticks(y0, y1)
    for t in yticks:
        _, py = px(x0, t)
        draw.line([(left, py), (w - right, py)], fill=(230, 230, 230))
        draw.text((4, py - 7), f"{t:.3g}", fill=(0, 0, 0), font=small)
    xticks = [t for t in _nice_ticks(x0, x1, 8) if abs(t - round(t)) < 1e-9] or [x0, x1]
    for t in xticks:
        pxx, _ = px(t, 10 ** y0 if log_y else y0)
        draw.line([(pxx, h - bottom), (pxx, h - bottom + 4)], fill=(0, 0, 0))
        draw.text((pxx - 6, h - bottom + 6), f"{t:g}", fill=(0, 0, 0), font=small)
    draw.text((w // 2 - 20, h - 22), "epoch", fill=(0, 0, 0), font=font)
    draw.text((left, 8), title + ("  (log scale)" if log_y else ""), fill=(0, 0, 0), font=font)
    palette = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75)]
    for k, (name, pts) in enumerate(curves.items()):
        color = palette[k % len(palette)]
        xy = [px(x, y) for x, y in sorted(pts)]
        if len(xy) > 1:
            draw.line(xy, fill=color, width=2)
        for cx, cy in xy:
            draw.ellipse([cx - 3, cy - 3, cx + 3, cy + 3], fill=color)
        lx = left + 170 * k
        draw.line([(lx, top - 12), (lx + 25, top - 12)], fill=color, width=3)
        draw.text((lx + 30, top - 19), name, fill=(0, 0, 0), font=small)
    return np.asarray(img)


def plot_loss_curves(run_dir: str | os.PathLike, out_path: str | os.PathLike | None = None) -> Path:
    """Draw a run folder's loss curves (`read_loss_curves`) to ``out_path`` (default
    ``run_dir/loss_curves.png``); returns the path. Raises EvaluationError without a readable log."""
    run_dir = Path(run_dir)
    curves = read_loss_curves(run_dir)
    path = Path(out_path) if out_path is not None else run_dir / "loss_curves.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_png(path, loss_curve_image(curves, f"{run_dir.name}: loss per epoch"))
    return path


def write_loss_curves(runs_dir: str | os.PathLike, out: Path, notes: list) -> dict[str, str]:
    """``loss_<run>.png`` in ``out`` for each training run under ``runs_dir``; a run whose logs
    cannot be drawn is noted in ``notes``. Returns {"loss:<run>": path}."""
    root, paths = Path(runs_dir), {}
    Path(out).mkdir(parents=True, exist_ok=True)
    for run in find_runs(root):
        name = "_".join(run.relative_to(root).parts) or run.name
        try:
            paths[f"loss:{name}"] = str(plot_loss_curves(run, Path(out) / f"loss_{name}.png"))
        except EvaluationError as exc:
            notes.append(f"loss curves of {run}: {exc}")
    return paths
