"""Evaluation: every conversion path and simple baselines scored on a held-out split.

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

Artefacts: `cad3d.evaluation.report`.
"""


from __future__ import annotations

import logging
import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import Iterable, Optional, Sequence

import numpy as np

from cad3d.conversion.converter import METHODS
from cad3d.errors import Cad3dError, DatasetError, EvaluationError
from cad3d.evaluation.baselines import THUMBNAIL_SIZE, MeanBaseline, OracleBaseline, RetrievalBaseline
from cad3d.evaluation.plots import write_loss_curves
from cad3d.evaluation.metrics import SampleScore, aggregate, aggregate_by_family, score_clouds, with_oracle_fractions
from cad3d.evaluation.report import write_artefacts

log = logging.getLogger(__name__)

BASELINES = ("retrieval", "mean", "oracle")
ALL_METHODS = METHODS + BASELINES


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
    from cad3d.data.dataset import index_dataset, load_dense_points, load_drawing, load_points

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
    # Scored against a dense sample of the true surface, so that a perfect answer of n_pts points
    # (the oracle row) scores near the top; the stored clouds are too sparse for F@1%.
    truths = [load_dense_points(data_dir, r.stem) for r in records]  # (M, 3) each
    # Every method answers with as many points as the stored surface samples hold, so the oracle
    # row is a true independent sample at that count (8192 points reach F@1% ~0.9; 4096 ~0.77).
    n_pts = int(num_points or len(load_points(records[0].points)))

    if converter is None:
        from cad3d.conversion.converter import HybridCAD3DConverter

        converter = HybridCAD3DConverter(device="cpu", enable_learning=False, num_points=n_pts)

    method_info: dict[str, dict] = {}
    notes: list[str] = []
    runners: dict[str, object] = {}
    available = converter.available_methods()
    for m in methods:
        if m in METHODS:
            if m not in available:
                why = {"depth": "no ONNX depth model found (put one in models/ or pass depth_model_path)",
                       "vit": "no ViT checkpoint loaded", "diffusion": "no diffusion checkpoint loaded",
                       "refine": "no refine checkpoint loaded"}[m]
                method_info[m] = {"kind": "model", "status": "skipped", "note": why, "trained": False}
                continue
            trained = bool(converter.trained.get(m)) if m != "geometric" else None
            method_info[m] = {"kind": "model", "status": "ok", "trained": trained,
                              "weights": converter.weights.get(m, "none"), "note": ""}
            runners[m] = m

    if "oracle" in methods:
        runners["oracle"] = OracleBaseline([r.points for r in records])
        method_info["oracle"] = {"kind": "baseline", "status": "ok", "trained": None,
                                 "note": "the sample's own stored surface sample (independent of the dense ground truth): the ceiling"}
    baseline_wanted = [m for m in methods if m in ("retrieval", "mean")]
    if train_data is not None:  # another dataset's training parts must not be scored
        _refuse_training_parts(records, Path(train_data))
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
            results = _run_batch(m, runner, converter, [drawings[i] for i in idx], n_pts, steps, guidance, seed + start, idx)
            batch = _score_batch(m, [records[i] for i in idx], [truths[i] for i in idx], results, n_pts, seed)
            for rec, (s, cloud) in zip((records[i] for i in idx), batch):
                scores.append(s)
                if rec.stem in examples:
                    example_clouds[rec.stem][m] = cloud
            bar.update(len(idx))
    bar.close()

    method_info = {m: method_info[m] for m in ALL_METHODS if m in method_info}  # one order in every report
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
        "overall": with_oracle_fractions(aggregate(scores)),
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
        curves = {}
        if runs_dir is not None and Path(runs_dir).is_dir():
            curves = write_loss_curves(runs_dir, Path(out_dir), report.setdefault("notes", []))
        report["artefacts"] = write_artefacts(report, out_dir, examples=example_rows, example_stems=stems, more=curves)
    return report


def _score_batch(method: str, records, truths, results, n_pts: int, seed: int) -> list[tuple[SampleScore, Optional[np.ndarray]]]:
    """[(score, checked cloud or None)] for one batch of `_run_batch` results, scored in one call.

    Every method is scored at ``n_pts`` points: a larger answer (a baseline's stored cloud) is
    subsampled, a smaller one upsampled without repeats (`resample_points`); ``repeated`` records
    the share of duplicate points a method itself returned."""
    from cad3d.geometry.transforms import resample_points

    out = []
    for rec, (cloud, seconds, error) in zip(records, results):
        s = SampleScore(rec.stem, rec.family, method, seconds=seconds, error=error)
        if error is None:
            try:
                cloud = _check_cloud(cloud)
                s.repeated = 1.0 - len(np.unique(cloud, axis=0)) / len(cloud)
                if len(cloud) != n_pts:
                    cloud = resample_points(cloud, n_pts, np.random.default_rng([seed, len(cloud)]))
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


def _refuse_training_parts(records, train_dir: Path) -> None:
    """EvaluationError when a scored part is also a training part of ``train_dir`` (same family,
    parameters and source: the same geometry, whatever the dataset's size or stem names)."""
    from cad3d.data.dataset import index_dataset, part_identity

    try:
        train = index_dataset(train_dir, "train")
    except DatasetError:
        return
    train_ids = {part_identity(r) for r in train}
    leaked = [r.stem for r in records if part_identity(r) in train_ids]
    if leaked:
        raise EvaluationError(
            f"{len(leaked)} scored part(s) are training parts of {train_dir} (e.g. {', '.join(leaked[:5])}): "
            "scores on them measure memory, not generalisation; evaluate another split or dataset")


def _run_batch(method, runner, converter, drawings, n_pts, steps, guidance, seed, indices=()) -> list[tuple]:
    """[(cloud or None, seconds per drawing, error or None)] for one batch; a failing batch is
    retried drawing by drawing so one bad drawing fails alone."""

    def once(batch):
        if isinstance(runner, str):
            res = converter.convert_batch(batch, runner, num_points=n_pts, steps=steps, guidance=guidance, seed=seed)
            return [(r.points, r.seconds, None) for r in res]
        t0 = time.perf_counter()
        clouds = runner.predict(batch) if not isinstance(runner, OracleBaseline) else runner.predict_indices(indices)
        per = (time.perf_counter() - t0) / max(len(batch), 1)
        return [(c, per, None) for c in clouds]

    try:
        return once(drawings)
    except Exception as exc:  # noqa: BLE001 - a method's failure is a result, not a crash
        if len(drawings) == 1:
            log.debug("%s failed", method, exc_info=True)
            return [(None, None, _describe_failure(exc))]
    return [_run_batch(method, runner, converter, [d], n_pts, steps, guidance, seed + k)[0] for k, d in enumerate(drawings)]
