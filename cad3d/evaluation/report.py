"""The evaluation's artefacts: ``eval.json``, ``eval.md`` (Markdown tables overall and per
family) and ``eval_examples.png`` (drawing, ground truth and each method's cloud)."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Sequence

import numpy as np


from cad3d.evaluation.metrics import METRICS

log = logging.getLogger(__name__)


METRIC_TITLES = {"chamfer_l2": "Chamfer-L2 ↓", "chamfer_l1": "Chamfer-L1 ↓", "fscore_1pct": "F@1% ↑", "fscore_2pct": "F@2% ↑"}


def method_label(name: str, info: dict) -> str:
    """"vit (trained)", "geometric (no weights)", "retrieval (baseline)", "mean (baseline, medoid)", ..."""
    if info.get("kind") == "baseline":
        return {"mean": "mean (baseline, medoid)", "oracle": "oracle (ceiling)"}.get(name, f"{name} (baseline)")
    if info.get("trained") is None:
        return f"{name} (no weights)"
    return f"{name} ({'trained' if info['trained'] else 'untrained'})"


def _fmt(v, digits: int = 4) -> str:
    if v is None:
        return "–"
    if isinstance(v, float) and (abs(v) >= 1e-3 or v == 0.0):
        return f"{v:.{digits}f}"
    return f"{v:.2e}" if isinstance(v, float) else str(v)


def render_markdown(report: dict) -> str:
    """The report as Markdown: methods × metrics overall, then one family × methods table per metric."""
    methods = report["methods"]
    ran = [m for m, info in methods.items() if info["status"] == "ok"]
    title = f"# cad3d eval: split `{report['split']}` of `{report['data']}`"
    lines = [title, ""]
    lines.append(f"{report['num_samples']} drawings, every method at {report['num_points']} points, scored against "
                 f"a dense sample of the true surface; device {report['device']}. Chamfer-L2 (squared) and Chamfer-L1 on "
                 "normalized clouds (lower is better); F-score at 1% and 2% of the ground truth's bounding-box "
                 "diagonal (higher is better); x oracle: Chamfer-L2 and F@1% as multiples of the oracle row's (an "
                 "independent perfect sample: the ceiling); repeated: share of duplicate points a method returned.")
    if report.get("held_out_families"):
        lines += ["", f"**Unseen families** (held out of training): {', '.join(report['held_out_families'])}."]
    lines += ["", "| method | n | failed | " + " | ".join(METRIC_TITLES[m] for m in METRICS)
              + " | CD-L2 x oracle | F@1% x oracle | repeated | s/drawing |",
              "|---|---:|---:|" + "---:|" * len(METRICS) + "---:|---:|---:|---:|"]
    for m in ran:
        row = report["overall"].get(m, {"n": 0, "failed": 0})
        frac = row.get("of_oracle") or {}
        cells = [method_label(m, methods[m]), str(row["n"]), str(row["failed"])]
        cells += [_fmt(row.get(k)) for k in METRICS]
        cells += [_fmt(frac.get("chamfer_l2"), 2), _fmt(frac.get("fscore_1pct"), 2), _fmt(row.get("repeated"), 3),
                  _fmt(row.get("seconds_per_drawing"))]
        lines.append("| " + " | ".join(cells) + " |")
    bullets = [f"- {m}: {info['note']}" for m, info in methods.items() if info["status"] == "ok" and info.get("note")]
    bullets += [f"- {note}" for note in report.get("notes", [])]
    if bullets:
        lines += [""] + bullets
    if ran:
        for metric in METRICS:
            lines += ["", f"## {METRIC_TITLES[metric]} per family", "",
                      "| family | n | " + " | ".join(ran) + " |", "|---|---:|" + "---:|" * len(ran)]
            for fam, per in report["per_family"].items():
                n = max((per[m]["n"] + per[m]["failed"]) for m in per)
                lines.append(f"| {fam} | {n} | " + " | ".join(_fmt(per.get(m, {}).get(metric)) for m in ran) + " |")
    if report["failures"]:
        lines += ["", "## Failures", ""]
        lines += [f"- {f['method']} on {f['stem']}: {f['error']}" for f in report["failures"][:20]]
        if len(report["failures"]) > 20:
            lines.append(f"- ... and {len(report['failures']) - 20} more (eval.json)")
    return "\n".join(lines) + "\n"


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: a fixed bitmap font
        return ImageFont.load_default()


def examples_image(rows, columns: Sequence[str], tile: int = 160, labels: Sequence[str] | None = None) -> np.ndarray:
    """A contact sheet (H, W, 3) uint8: one row per sample: its drawing, the ground truth, then
    each method's cloud (iso view) in ``columns`` order; a failed method is a grey "failed" tile.

    rows: [(family, drawing (H, W) in [0, 1], gt (M, 3), {method: (N, 3) or None})];
    labels: column titles of the methods (default their names).
    """
    from PIL import Image, ImageDraw

    from cad3d.data.preview import render_cloud

    header = 24
    labels = ["drawing", "ground truth", *(labels or columns)]
    sheet = Image.new("RGB", (tile * len(labels), header + tile * len(rows)), "white")
    draw = ImageDraw.Draw(sheet)
    font = _font(13)
    for j, label in enumerate(labels):
        draw.text((j * tile + 6, 5), label, fill=(0, 0, 0), font=font)
    for i, (family, drawing, gt, preds) in enumerate(rows):
        y = header + i * tile
        d = Image.fromarray((np.clip(drawing, 0, 1) * 255).astype(np.uint8), "L").resize((tile, tile), Image.BILINEAR)
        sheet.paste(d.convert("RGB"), (0, y))
        draw.text((4, y + 3), str(family or ""), fill=(200, 0, 0), font=font)
        sheet.paste(Image.fromarray(render_cloud(gt, size=tile, dot=2)), (tile, y))
        for j, m in enumerate(columns):
            x = (j + 2) * tile
            pts = preds.get(m)
            if pts is None:
                draw.rectangle([x, y, x + tile - 1, y + tile - 1], fill=(225, 225, 225))
                draw.text((x + tile // 2 - 20, y + tile // 2 - 8), "failed", fill=(120, 0, 0), font=font)
            else:
                sheet.paste(Image.fromarray(render_cloud(pts, size=tile, dot=2)), (x, y))
    for j in range(1, len(labels)):
        draw.line([(j * tile, 0), (j * tile, sheet.height)], fill=(200, 200, 200))
    for i in range(len(rows)):
        draw.line([(0, header + i * tile), (sheet.width, header + i * tile)], fill=(200, 200, 200))
    return np.asarray(sheet)


def _write_png(path: Path, rgb: np.ndarray) -> None:
    from cad3d.conversion.outputs import png_bytes
    from cad3d.io import atomic_write_bytes

    atomic_write_bytes(path, png_bytes(rgb))


def write_artefacts(report: dict, out_dir: str | os.PathLike, *, examples=None, example_stems=None,
                    more: dict[str, str] | None = None) -> dict[str, str]:
    """Write eval.json, eval.md, eval_examples.png (when ``examples`` rows are given, see
    `examples_image`); ``more``: other files written there, listed in the report's artefacts.
    Returns {artefact: path}; ``report["artefacts"]`` holds the same."""
    from cad3d.io import atomic_write_bytes, atomic_write_json

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, str] = {}
    if examples:
        ran = [m for m, info in report["methods"].items() if info["status"] == "ok"]
        titles = [method_label(m, report["methods"][m]) for m in ran]
        _write_png(out / "eval_examples.png", examples_image(examples, ran, labels=titles))
        paths["examples"] = str(out / "eval_examples.png")
        report["example_stems"] = list(example_stems or [])
    if any(info["status"] == "ok" for info in report["methods"].values()):
        from cad3d.evaluation.plots import plot_eval_chart

        paths["chart"] = str(plot_eval_chart(report, out / "eval_chart.png"))
    paths.update(more or {})
    paths["markdown"] = str(out / "eval.md")
    paths["json"] = str(out / "eval.json")
    report["artefacts"] = paths
    atomic_write_bytes(out / "eval.md", render_markdown(report).encode("utf-8"))
    atomic_write_json(out / "eval.json", report)
    return paths
