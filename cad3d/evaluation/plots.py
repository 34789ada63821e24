"""Figures with matplotlib: the loss curves of a training run and the charts of an evaluation.

Headless: figures are `matplotlib.figure.Figure` objects drawn by the Agg canvas, never pyplot,
so no display or global figure state is touched and the functions are safe in a server.
Every file is written whole or not at all (`atomic_write_bytes`), as PNG or SVG.

* `plot_loss_curves` - a run folder's epoch log (`cad3d.evaluation.read_loss_curves`): train and
  validation loss, the learning rate, and each part of the loss (the VAE's chamfer, kl, ...).
* `plot_eval_chart` - an evaluation report (`cad3d.evaluation.evaluate`): Chamfer-L2 and F@1%
  per method, and Chamfer-L2 per part family and method.
"""

from __future__ import annotations

import io
import math
import os
from pathlib import Path

from cad3d.errors import EvaluationError
from cad3d.evaluation.curves import find_runs

PLOT_FORMATS = ("png", "svg")
DPI = 100


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: str | os.PathLike, fmt: str | None = None) -> Path:
    from cad3d.errors import EvaluationError
    from cad3d.io import atomic_write_bytes

    path = Path(path)
    fmt = fmt or path.suffix.lstrip(".").lower() or "png"
    if fmt not in PLOT_FORMATS:
        raise EvaluationError(f"{path}: unknown plot format {fmt!r}; choose from {', '.join(PLOT_FORMATS)}")
    buf = io.BytesIO()
    fig.savefig(buf, format=fmt, metadata={"Software": None} if fmt == "png" else {"Date": None})
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, buf.getvalue())
    return path


def _spans_decades(values) -> bool:
    """Log scale when all values are positive and span more than a decade."""
    return min(values) > 0 and max(values) / min(values) > 10


def read_training_series(run_dir: str | os.PathLike) -> dict[str, dict[str, list[tuple[float, float]]]]:
    """{"loss": {name: [(epoch, value)]}, "lr": {...}, "parts": {...}} of a run folder.

    "loss" is `read_loss_curves` (train and validation loss); "lr" and "parts" come from the
    engine's epoch log entries (``lr`` and the mean ``parts`` of the train loss) and are empty
    for logs without them (e.g. a diffusion run's training report). Raises EvaluationError
    without a readable log."""
    from cad3d.evaluation.curves import _log_files, _read_json, read_loss_curves

    run_dir = Path(run_dir)
    series = {"loss": read_loss_curves(run_dir), "lr": {}, "parts": {}}
    logs, _ = _log_files(run_dir)
    for path in logs:
        entries = _read_json(path)
        prefix = "" if len(logs) == 1 else path.stem.replace("_epoch_log", "").replace("training_history", "vit") + " "
        for k, e in enumerate(entries if isinstance(entries, list) else []):
            if not isinstance(e, dict):
                continue
            epoch = float(e.get("epoch", k + 1))
            values = {"lr": {prefix + "lr": e.get("lr")},
                      "parts": {prefix + name: v for name, v in (e.get("parts") or {}).items()}}
            for group, named in values.items():
                for name, v in named.items():
                    if isinstance(v, (int, float)) and math.isfinite(v):
                        series[group].setdefault(name, []).append((epoch, float(v)))
    return series


def _lines(ax, curves: dict[str, list[tuple[float, float]]], title: str, ylabel: str) -> None:
    for name, pts in curves.items():
        pts = sorted(pts)
        ax.plot([x for x, _ in pts], [y for _, y in pts], marker="o", markersize=3, linewidth=1.5, label=name)
    values = [y for pts in curves.values() for _, y in pts]
    if values and _spans_decades(values):
        ax.set_yscale("log")
    ax.set_title(title)
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.legend(fontsize="small")


def plot_loss_curves(run_dir: str | os.PathLike, out_path: str | os.PathLike | None = None, fmt: str = "png") -> Path:
    """Draw a run folder's curves (`read_training_series`) to ``out_path`` (default
    ``run_dir/loss_curves.<fmt>``): one panel for the loss, one for the learning rate and one for
    the loss parts when the log has them. Returns the path; EvaluationError without a log."""
    run_dir = Path(run_dir)
    series = read_training_series(run_dir)
    panels = [("loss", "loss", "loss")] + [(k, title, k) for k, title in (("lr", "learning rate"), ("parts", "loss parts"))
                                         if series[k]]
    fig = _figure(4.6 * len(panels), 3.6)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (key, title, ylabel) in zip(axes, panels):
        _lines(ax, series[key], title, ylabel if key != "parts" else "value")
    fig.suptitle(f"{run_dir.name}: training curves")
    path = Path(out_path) if out_path is not None else run_dir / f"loss_curves.{fmt}"
    return _save(fig, path, fmt)


def _bars(ax, labels: list[str], values: list, title: str) -> None:
    xs = range(len(labels))
    heights = [v if v is not None else 0.0 for v in values]
    bars = ax.bar(xs, heights, color=[f"C{i}" for i in xs])
    ax.bar_label(bars, labels=["–" if v is None else f"{v:.3g}" for v in values], fontsize="small")
    ax.set_xticks(list(xs), labels, rotation=20, ha="right")
    ax.set_title(title)
    ax.grid(True, axis="y", alpha=0.3)


def plot_eval_chart(report: dict, out_path: str | os.PathLike, fmt: str | None = None) -> Path:
    """Bars of an evaluation report: Chamfer-L2 (lower is better) and F@1% (higher is better)
    per method that ran, and Chamfer-L2 per part family grouped by method. Returns the path."""
    from cad3d.errors import EvaluationError
    from cad3d.evaluation.report import method_label

    ran = [m for m, info in report["methods"].items() if info["status"] == "ok"]
    if not ran:
        raise EvaluationError("no method ran: nothing to chart")
    labels = [method_label(m, report["methods"][m]) for m in ran]
    families = list(report.get("per_family", {}))
    fig = _figure(4.2 * 2 + max(4.5, 0.55 * len(families) * max(1, len(ran)) / 2), 4.2)
    ax_cd, ax_f, ax_fam = fig.subplots(1, 3, width_ratios=[1, 1, max(1.0, len(families) * len(ran) / 8)])
    overall = report["overall"]
    _bars(ax_cd, labels, [overall.get(m, {}).get("chamfer_l2") for m in ran], "Chamfer-L2 ↓ per method")
    _bars(ax_f, labels, [overall.get(m, {}).get("fscore_1pct") for m in ran], "F@1% ↑ per method")
    width = 0.8 / len(ran)
    for j, m in enumerate(ran):
        ys = [report["per_family"][f].get(m, {}).get("chamfer_l2") for f in families]
        ax_fam.bar([i + (j - (len(ran) - 1) / 2) * width for i in range(len(families))],
                   [y if y is not None else 0.0 for y in ys], width, label=m, color=f"C{j}")
    ax_fam.set_xticks(range(len(families)), families, rotation=30, ha="right")
    ax_fam.set_title("Chamfer-L2 ↓ per family")
    ax_fam.grid(True, axis="y", alpha=0.3)
    ax_fam.legend(fontsize="small")
    fig.suptitle(f"cad3d eval: split {report['split']}, {report['num_samples']} drawings")
    return _save(fig, out_path, fmt)


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
