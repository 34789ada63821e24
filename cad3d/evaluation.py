"""Evaluation: every conversion path and simple baselines scored on a held-out split (SPEC §6).

`evaluate` converts the drawings of one split of a dataset with each method and scores every
prediction against its ground-truth cloud with the geometry module's metrics:

* ``chamfer_l2`` - `chamfer_distance(norm="l2")`: mean squared nearest-neighbour distance both
  ways, on the clouds as stored (normalized into the unit sphere), lower is better;
* ``fscore_1pct`` / ``fscore_2pct`` - `f_score` at 1% / 2% of the ground truth's bounding-box
  diagonal, in [0, 1], higher is better;
* ``seconds`` - seconds per drawing spent by the method (model time; reading files excluded).

Methods: the converter's paths (``diffusion``, ``vit``, ``depth`` = depth lifting alone with an
ONNX depth model, ``geometric``), each labelled with whether its weights were trained, and two
baselines built from the TRAIN split only:

* ``retrieval`` - nearest-neighbour retrieval: the training sample whose drawing is most similar
  to the query (cosine similarity of 64x64 ink thumbnails) lends its cloud; exact on training
  drawings;
* ``mean`` - "the mean training cloud". A pointwise mean of unordered clouds means nothing, so it
  is the *medoid*: the training cloud with the smallest mean Chamfer-L2 to the other training
  clouds (searched over at most `MEDOID_POOL` clouds of `MEDOID_POINTS` points), the same cloud
  for every drawing.

A method that is not available (no checkpoint, no ONNX model, no train split) is reported as
skipped with the reason; a method that fails on a drawing counts that drawing as failed with the
reason and the evaluation goes on.

Held-out families (``families=``): only test samples of those part families are evaluated and
the baselines' training index leaves them out, so the report measures generalisation to unseen
part types. The models must have been trained without them too: make the training set with
``cad3d data synth --families <the others>`` (or `create_synthetic_training_data(families=...)`),
train on it, and evaluate on a second dataset of the held-out families with
``cad3d eval --data HELD_OUT --split all --train-data TRAIN_SET --families a,b``.

Artefacts (`write_artefacts`): ``eval.json`` (the report), ``eval.md`` (Markdown tables overall
and per family), ``eval_examples.png`` (drawing, ground truth and each method's cloud for a few
samples), ``eval_chart.png`` (`cad3d.plots.plot_eval_chart`) and the loss curves of the training
runs found (`cad3d.plots.plot_loss_curves`; this module only finds and reads their logs).
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Optional, Sequence

import numpy as np
import torch

from cad3d.errors import Cad3dError, DatasetError

log = logging.getLogger(__name__)

CONVERTER_METHODS = ("diffusion", "vit", "depth", "geometric")
BASELINES = ("retrieval", "mean")
ALL_METHODS = CONVERTER_METHODS + BASELINES
METRICS = ("chamfer_l2", "fscore_1pct", "fscore_2pct")
METRIC_TITLES = {"chamfer_l2": "Chamfer-L2 ↓", "fscore_1pct": "F@1% ↑", "fscore_2pct": "F@2% ↑"}
THUMBNAIL_SIZE = 64
MEDOID_POOL = 64
MEDOID_POINTS = 512


class EvaluationError(Cad3dError):
    """An evaluation that cannot run, or a training log that cannot be read or plotted."""


# --------------------------------------------------------------------------------------------
# metrics
# --------------------------------------------------------------------------------------------
@dataclass
class SampleScore:
    """One method on one drawing. Metrics are None when the method failed (``error`` says why)."""

    stem: str
    family: Optional[str]
    method: str
    chamfer_l2: Optional[float] = None
    fscore_1pct: Optional[float] = None
    fscore_2pct: Optional[float] = None
    seconds: Optional[float] = None
    error: Optional[str] = None


def score_clouds(preds: Sequence[np.ndarray], gts: Sequence[np.ndarray]) -> list[dict[str, float]]:
    """Metrics of predictions (N_i, 3) against their ground truths (M_i, 3); N_i may differ from M_i.

    Returns one {"chamfer_l2": squared units, "fscore_1pct": [0, 1], "fscore_2pct": [0, 1]} per
    pair. Pairs of equal shapes go through the metrics as one batch.
    """
    from cad3d.geometry.ops import chamfer_distance, f_score

    out: list[Optional[dict]] = [None] * len(preds)
    groups: dict[tuple, list[int]] = {}
    for i, (p, g) in enumerate(zip(preds, gts)):
        groups.setdefault((np.shape(p), np.shape(g)), []).append(i)
    for idx in groups.values():
        p = torch.from_numpy(np.stack([np.asarray(preds[i], dtype=np.float32) for i in idx]))  # (B, N, 3)
        g = torch.from_numpy(np.stack([np.asarray(gts[i], dtype=np.float32) for i in idx]))  # (B, M, 3)
        with torch.no_grad():
            cd = chamfer_distance(p, g, norm="l2", reduction="none")  # (B,)
            f1, _, _ = f_score(p, g, tau_rel=0.01)  # (B,)
            f2, _, _ = f_score(p, g, tau_rel=0.02)  # (B,)
        for k, i in enumerate(idx):
            out[i] = {"chamfer_l2": float(cd[k]), "fscore_1pct": float(f1[k]), "fscore_2pct": float(f2[k])}
    return out


def score_cloud(pred: np.ndarray, gt: np.ndarray) -> dict[str, float]:
    """Metrics of one prediction (N, 3) against its ground truth (M, 3), as in `score_clouds`."""
    return score_clouds([pred], [gt])[0]


def _summary(scores: Sequence[SampleScore]) -> dict:
    ok = [s for s in scores if s.error is None]
    out = {"n": len(ok), "failed": len(scores) - len(ok)}
    for m in METRICS:
        out[m] = float(np.mean([getattr(s, m) for s in ok])) if ok else None
    secs = [s.seconds for s in ok if s.seconds is not None]
    out["seconds_per_drawing"] = float(np.mean(secs)) if secs else None
    return out


def aggregate(scores: Iterable[SampleScore]) -> dict[str, dict]:
    """Per method: {"n": scored, "failed": failed, <metric>: mean over scored drawings,
    "seconds_per_drawing": mean}. Methods keep their first-seen order."""
    by_method: dict[str, list[SampleScore]] = {}
    for s in scores:
        by_method.setdefault(s.method, []).append(s)
    return {m: _summary(v) for m, v in by_method.items()}


def aggregate_by_family(scores: Iterable[SampleScore]) -> dict[str, dict[str, dict]]:
    """{family: {method: summary as in `aggregate`}}, families sorted (no family = "unknown")."""
    by_family: dict[str, list[SampleScore]] = {}
    for s in scores:
        by_family.setdefault(s.family or "unknown", []).append(s)
    return {f: aggregate(by_family[f]) for f in sorted(by_family)}


# --------------------------------------------------------------------------------------------
# baselines
# --------------------------------------------------------------------------------------------
def drawing_thumbnail(drawing: np.ndarray, size: int = THUMBNAIL_SIZE) -> np.ndarray:
    """(H, W) drawing in [0, 1] (1 = paper) -> (size * size,) float32 unit vector of ink (1 - paper),
    area-averaged; a blank page gives zeros."""
    from PIL import Image

    img = np.clip(np.asarray(drawing, dtype=np.float32), 0.0, 1.0)
    if img.shape != (size, size):
        img = np.asarray(Image.fromarray(img, mode="F").resize((size, size), Image.BOX), dtype=np.float32)
    ink = (1.0 - img).reshape(-1)
    norm = float(np.linalg.norm(ink))
    return ink / norm if norm > 0 else ink


@dataclass
class RetrievalBaseline:
    """Nearest-neighbour retrieval: the training cloud whose drawing looks most like the query.

    ``thumbnails`` (T, S*S) unit ink vectors of the training drawings; ``points`` their cloud files
    (loaded when first retrieved).
    """

    thumbnails: np.ndarray
    points: list[Path]
    stems: list[str]
    _cache: dict = field(default_factory=dict, repr=False)

    @classmethod
    def from_records(cls, records) -> "RetrievalBaseline":
        from cad3d.data.dataset import load_drawing

        thumbs = np.stack([drawing_thumbnail(load_drawing(r.image)) for r in records])  # (T, S*S)
        return cls(thumbs, [r.points for r in records], [r.stem for r in records])

    def nearest(self, drawings: Sequence[np.ndarray]) -> np.ndarray:
        """(B,) index of the most similar training drawing for each query (H, W) drawing."""
        q = np.stack([drawing_thumbnail(d, int(math.isqrt(self.thumbnails.shape[1]))) for d in drawings])  # (B, S*S)
        return np.argmax(q @ self.thumbnails.T, axis=1)  # (B,)

    def cloud(self, index: int) -> np.ndarray:
        from cad3d.data.dataset import load_points

        if index not in self._cache:
            self._cache[index] = load_points(self.points[index])
        return self._cache[index]

    def predict(self, drawings: Sequence[np.ndarray]) -> list[np.ndarray]:
        """The retrieved clouds, (M, 3) each, as stored."""
        return [self.cloud(int(i)) for i in self.nearest(drawings)]


def medoid_index(clouds: Sequence[np.ndarray], *, max_points: int = MEDOID_POINTS, seed: int = 0) -> int:
    """Index of the cloud with the smallest mean Chamfer-L2 to the others (each subsampled to
    ``max_points`` points, seeded). Clouds are (N_i, 3)."""
    from cad3d.data.dataset import choose_points
    from cad3d.geometry.ops import chamfer_distance

    if len(clouds) == 1:
        return 0
    rng = np.random.default_rng(seed)
    pts = torch.from_numpy(np.stack([choose_points(c, max_points, rng) for c in clouds]).astype(np.float32))  # (T, P, 3)
    t = pts.shape[0]
    dist = torch.zeros(t, t)
    with torch.no_grad():
        for i in range(t):
            dist[i] = chamfer_distance(pts[i].expand(t, -1, -1), pts, norm="l2", reduction="none")  # (T,)
    return int(torch.argmin(dist.sum(dim=1) / (t - 1)))


@dataclass
class MeanBaseline:
    """The medoid training cloud (see the module docstring), the same prediction for every drawing."""

    points: np.ndarray  # (M, 3)
    stem: str
    pool: int  # training clouds searched

    @classmethod
    def from_records(cls, records, *, pool: int = MEDOID_POOL, seed: int = 0) -> "MeanBaseline":
        from cad3d.data.dataset import load_points

        rng = np.random.default_rng(seed)
        chosen = sorted(rng.permutation(len(records))[:pool]) if len(records) > pool else range(len(records))
        subset = [records[i] for i in chosen]
        clouds = [load_points(r.points) for r in subset]
        best = medoid_index(clouds, seed=seed)
        return cls(clouds[best], subset[best].stem, len(subset))

    def predict(self, drawings: Sequence[np.ndarray]) -> list[np.ndarray]:
        return [self.points for _ in drawings]


# --------------------------------------------------------------------------------------------
# the evaluation
# --------------------------------------------------------------------------------------------
def parse_families(values: Iterable[str] | str | None) -> list[str] | None:
    """"a,b" or ["a", "b,c"] -> ["a", "b", "c"] (checked against the known families); None stays None."""
    if values is None:
        return None
    from cad3d.data.parts import FAMILIES

    items = [values] if isinstance(values, str) else list(values)
    fams = [f.strip() for v in items for f in str(v).split(",") if f.strip()]
    unknown = sorted(set(fams) - set(FAMILIES))
    if unknown:
        raise EvaluationError(f"unknown part families {unknown}; known: {', '.join(FAMILIES)}")
    return list(dict.fromkeys(fams)) or None


def _pick_examples(records, k: int) -> list[str]:
    """Up to ``k`` stems, one per family first (in order of appearance), then the rest in order."""
    seen, first, rest = set(), [], []
    for r in records:
        (rest if r.family in seen else first).append(r.stem)
        seen.add(r.family)
    return (first + rest)[:k]


def _describe_failure(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if not isinstance(exc, Cad3dError) else str(exc)


def _check_cloud(points) -> np.ndarray:
    arr = np.asarray(points, dtype=np.float32)
    if arr.ndim != 2 or arr.shape[1] != 3 or len(arr) == 0:
        raise EvaluationError(f"prediction has shape {arr.shape}, expected (N, 3)")
    if not np.isfinite(arr).all():
        raise EvaluationError("prediction contains NaN or infinite values")
    return arr


def evaluate(
    data_dir: str | os.PathLike,
    split: str = "test",
    methods: Sequence[str] | None = None,
    converter=None,
    out_dir: str | os.PathLike | None = None,
    *,
    train_data: str | os.PathLike | None = None,
    families: Iterable[str] | str | None = None,
    num_points: int | None = None,
    steps: int = 50,
    guidance: float | None = None,
    batch_size: int = 16,
    seed: int = 0,
    max_samples: int | None = None,
    num_examples: int = 4,
    runs_dir: str | os.PathLike | None = None,
    progress: bool = False,
) -> dict:
    """Score ``methods`` on split ``split`` of ``data_dir``; returns the report (see `write_artefacts`).

    Args:
        split: "train", "val", "test", or "all" (every sample: e.g. a dataset of held-out families).
        methods: names from `ALL_METHODS`; None = all of them (unavailable ones are reported as
            skipped with the reason). Explicitly asked-for methods are skipped the same way.
        converter: a `HybridCAD3DConverter`; None = one with no weights (geometric only, plus
            depth if ``models/`` holds an ONNX depth model).
        out_dir: when given, `write_artefacts` writes eval.json, eval.md, eval_examples.png and
            loss curves of the runs under ``runs_dir`` there.
        train_data: dataset whose TRAIN split indexes the baselines (default ``data_dir``).
        families: evaluate only these part families, held out of the baselines' index.
        num_points: points per predicted cloud (default: as many as the first ground truth).
        steps, guidance: diffusion sampling settings.
        batch_size: drawings per model call.
        max_samples: evaluate at most this many samples (the first ones, in stem order).
        num_examples: samples shown in eval_examples.png.

    Raises DatasetError for a missing dataset or split (naming it) and EvaluationError for an
    unknown method or family.
    """
    from cad3d.data.dataset import index_dataset, load_drawing, load_points

    t_start = time.perf_counter()
    data_dir = Path(data_dir)
    methods = list(ALL_METHODS if methods is None else methods)
    unknown = [m for m in methods if m not in ALL_METHODS]
    if unknown:
        raise EvaluationError(f"unknown method(s) {unknown}; choose from {', '.join(ALL_METHODS)}")
    held_out = parse_families(families)

    records = index_dataset(data_dir, None if split in (None, "all") else split)
    if held_out:
        records = [r for r in records if r.family in held_out]
        if not records:
            raise DatasetError(f"split '{split}' of {data_dir}: no samples of the families {', '.join(held_out)}")
    if max_samples is not None:
        records = records[: max(int(max_samples), 1)]
    drawings = [load_drawing(r.image) for r in records]  # (H, W) each
    truths = [load_points(r.points) for r in records]  # (M, 3) each
    n_pts = int(num_points or len(truths[0]))

    if converter is None:
        from cad3d.hybrid_vit_diffusion import HybridCAD3DConverter

        converter = HybridCAD3DConverter(device="cpu", enable_learning=False, num_points=n_pts)

    method_info: dict[str, dict] = {}
    notes: list[str] = []
    runners: dict[str, object] = {}
    available = converter.available_methods()
    for m in methods:
        if m in CONVERTER_METHODS:
            if m not in available:
                why = {"depth": "no ONNX depth model found (put one in models/ or pass depth_model_path)",
                       "vit": "no ViT checkpoint loaded", "diffusion": "no diffusion checkpoint loaded"}[m]
                method_info[m] = {"kind": "model", "status": "skipped", "note": why, "trained": False}
                continue
            trained = bool(converter.trained.get(m)) if m != "geometric" else None
            method_info[m] = {"kind": "model", "status": "ok", "trained": trained,
                              "weights": converter.weights.get(m, "none"), "note": ""}
            runners[m] = m

    baseline_wanted = [m for m in methods if m in BASELINES]
    if baseline_wanted:
        train_dir = Path(train_data) if train_data is not None else data_dir
        try:
            train_records = index_dataset(train_dir, "train")
        except DatasetError as exc:
            train_records, why = [], f"no training split to index ({exc})"
        else:
            if held_out:
                seen = sorted({r.family for r in train_records if r.family in held_out})
                if seen:
                    notes.append(f"the train split of {train_dir} holds the held-out families {', '.join(seen)}: the "
                                 "baselines leave them out, the models must have been trained without them")
                train_records = [r for r in train_records if r.family not in held_out]
            why = f"no training samples outside the held-out families in {train_dir}"
        for m in baseline_wanted:
            if not train_records:
                method_info[m] = {"kind": "baseline", "status": "skipped", "note": why, "trained": None}
                continue
            t0 = time.perf_counter()
            try:
                if m == "retrieval":
                    runners[m] = RetrievalBaseline.from_records(train_records)
                    note = f"nearest of {len(train_records)} training drawings (cosine of {THUMBNAIL_SIZE}px ink thumbnails)"
                else:
                    runners[m] = base = MeanBaseline.from_records(train_records, seed=seed)
                    note = f"medoid training cloud {base.stem} (least mean Chamfer to {base.pool - 1} other training clouds)"
            except DatasetError as exc:  # a bad training file: this baseline cannot be built
                method_info[m] = {"kind": "baseline", "status": "skipped", "note": str(exc), "trained": None}
                continue
            method_info[m] = {"kind": "baseline", "status": "ok", "trained": None, "note": note,
                              "train_data": str(train_dir), "train_samples": len(train_records),
                              "setup_seconds": time.perf_counter() - t0}

    examples = set(_pick_examples(records, num_examples))
    example_clouds: dict[str, dict[str, Optional[np.ndarray]]] = {s: {} for s in examples}
    scores: list[SampleScore] = []

    from tqdm.auto import tqdm

    bar = tqdm(total=len(runners) * len(records), desc="eval", unit="drawing", disable=not progress)
    for m, runner in runners.items():
        for start in range(0, len(records), batch_size):
            idx = list(range(start, min(start + batch_size, len(records))))
            results = _run_batch(m, runner, converter, [drawings[i] for i in idx], n_pts, steps, guidance, seed + start)
            batch = _score_batch(m, [records[i] for i in idx], [truths[i] for i in idx], results)
            for rec, (s, cloud) in zip((records[i] for i in idx), batch):
                scores.append(s)
                if rec.stem in examples:
                    example_clouds[rec.stem][m] = cloud
            bar.update(len(idx))
    bar.close()

    skipped = {m: info["note"] for m, info in method_info.items() if info["status"] == "skipped"}
    notes[:0] = [f"{m} skipped: {why}" for m, why in skipped.items()]
    report = {
        "data": str(data_dir),
        "split": split,
        "num_samples": len(records),
        "num_points": n_pts,
        "device": str(getattr(converter, "device", "cpu")),
        "held_out_families": held_out,
        "families": sorted({r.family or "unknown" for r in records}),
        "methods": method_info,
        "overall": aggregate(scores),
        "per_family": aggregate_by_family(scores),
        "failures": [{"method": s.method, "stem": s.stem, "error": s.error} for s in scores if s.error],
        "samples": [asdict(s) for s in scores],
        "notes": notes,
        "settings": {"steps": steps, "guidance": guidance, "batch_size": batch_size, "seed": seed},
        "seconds_total": time.perf_counter() - t_start,
    }
    if out_dir is not None:
        stems = [r.stem for r in records if r.stem in examples]
        example_rows = [(r.family, drawings[i], truths[i], example_clouds[r.stem])
                        for i, r in enumerate(records) if r.stem in examples]
        report["artefacts"] = write_artefacts(report, out_dir, examples=example_rows, example_stems=stems,
                                              runs_dir=runs_dir)
    return report


def _score_batch(method: str, records, truths, results) -> list[tuple[SampleScore, Optional[np.ndarray]]]:
    """[(score, checked cloud or None)] for one batch of `_run_batch` results, scored in one call."""
    out = []
    for rec, (cloud, seconds, error) in zip(records, results):
        s = SampleScore(rec.stem, rec.family, method, seconds=seconds, error=error)
        if error is None:
            try:
                cloud = _check_cloud(cloud)
            except EvaluationError as exc:
                s.error = str(exc)
        if s.error is not None:
            log.warning("%s failed on %s: %s", method, rec.stem, s.error)
        out.append((s, cloud if s.error is None else None))
    ok = [k for k, (_, c) in enumerate(out) if c is not None]
    for k, metrics in zip(ok, score_clouds([out[k][1] for k in ok], [truths[k] for k in ok])):
        for name, v in metrics.items():
            setattr(out[k][0], name, v)
    return out


def _run_batch(method, runner, converter, drawings, n_pts, steps, guidance, seed) -> list[tuple]:
    """[(cloud or None, seconds per drawing, error or None)] for one batch; a failing batch is
    retried drawing by drawing so one bad drawing fails alone."""

    def once(batch):
        if isinstance(runner, str):
            res = converter.convert_batch(batch, runner, num_points=n_pts, steps=steps, guidance=guidance, seed=seed)
            return [(r.points, r.seconds, None) for r in res]
        t0 = time.perf_counter()
        clouds = runner.predict(batch)
        per = (time.perf_counter() - t0) / max(len(batch), 1)
        return [(c, per, None) for c in clouds]

    try:
        return once(drawings)
    except Exception as exc:  # noqa: BLE001 - a method's failure is a result, not a crash
        if len(drawings) == 1:
            log.debug("%s failed", method, exc_info=True)
            return [(None, None, _describe_failure(exc))]
    return [_run_batch(method, runner, converter, [d], n_pts, steps, guidance, seed + k)[0] for k, d in enumerate(drawings)]


# --------------------------------------------------------------------------------------------
# artefacts
# --------------------------------------------------------------------------------------------
def method_label(name: str, info: dict) -> str:
    """"vit (trained)", "geometric (no weights)", "retrieval (baseline)", "mean (baseline, medoid)", ..."""
    if info.get("kind") == "baseline":
        return f"{name} (baseline, medoid)" if name == "mean" else f"{name} (baseline)"
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
    lines.append(f"{report['num_samples']} drawings, {report['num_points']} points per cloud, device {report['device']}. "
                 "Chamfer-L2 on normalized clouds (lower is better); F-score at 1% and 2% of the ground truth's "
                 "bounding-box diagonal (higher is better); seconds per drawing.")
    if report.get("held_out_families"):
        lines += ["", f"**Unseen families** (held out of training): {', '.join(report['held_out_families'])}."]
    lines += ["", "| method | n | failed | " + " | ".join(METRIC_TITLES[m] for m in METRICS) + " | s/drawing |",
              "|---|---:|---:|" + "---:|" * len(METRICS) + "---:|"]
    for m in ran:
        row = report["overall"].get(m, {"n": 0, "failed": 0})
        cells = [method_label(m, methods[m]), str(row["n"]), str(row["failed"])]
        cells += [_fmt(row.get(k)) for k in METRICS] + [_fmt(row.get("seconds_per_drawing"))]
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
    from cad3d.conversion import png_bytes
    from cad3d.io import atomic_write_bytes

    atomic_write_bytes(path, png_bytes(rgb))


def write_artefacts(report: dict, out_dir: str | os.PathLike, *, examples=None, example_stems=None,
                    runs_dir: str | os.PathLike | None = None) -> dict[str, str]:
    """Write eval.json, eval.md, eval_examples.png (when ``examples`` rows are given, see
    `examples_image`), eval_chart.png (when a method ran) and ``loss_<run>.png`` for each
    training run under ``runs_dir``.
    Returns {artefact: path}; ``report["artefacts"]`` holds the same."""
    from cad3d.training.checkpoint import atomic_write_bytes, atomic_write_json

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, str] = {}
    if examples:
        ran = [m for m, info in report["methods"].items() if info["status"] == "ok"]
        titles = [method_label(m, report["methods"][m]) for m in ran]
        _write_png(out / "eval_examples.png", examples_image(examples, ran, labels=titles))
        paths["examples"] = str(out / "eval_examples.png")
        report["example_stems"] = list(example_stems or [])
    from cad3d.plots import plot_eval_chart, plot_loss_curves

    if any(info["status"] == "ok" for info in report["methods"].values()):
        paths["chart"] = str(plot_eval_chart(report, out / "eval_chart.png"))
    if runs_dir is not None and Path(runs_dir).is_dir():
        root = Path(runs_dir)
        for run in find_runs(root):
            name = "_".join(run.relative_to(root).parts) or run.name
            try:
                paths[f"loss:{name}"] = str(plot_loss_curves(run, out / f"loss_{name}.png"))
            except EvaluationError as exc:
                report.setdefault("notes", []).append(f"loss curves of {run}: {exc}")
    paths["markdown"] = str(out / "eval.md")
    paths["json"] = str(out / "eval.json")
    report["artefacts"] = paths
    atomic_write_bytes(out / "eval.md", render_markdown(report).encode("utf-8"))
    atomic_write_json(out / "eval.json", report)
    return paths


# --------------------------------------------------------------------------------------------
# loss curves
# --------------------------------------------------------------------------------------------
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
