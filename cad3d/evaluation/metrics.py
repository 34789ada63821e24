"""Scores of a predicted cloud against its ground truth (Chamfer, F-score) and their
aggregates over samples and part families."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Iterable, Optional, Sequence

import numpy as np


log = logging.getLogger(__name__)


METRICS = ("chamfer_l2", "chamfer_l1", "fscore_1pct", "fscore_2pct")


@dataclass
class SampleScore:
    """One method on one drawing. Metrics are None when the method failed (``error`` says why)."""

    stem: str
    family: Optional[str]
    method: str
    chamfer_l2: Optional[float] = None
    fscore_1pct: Optional[float] = None
    fscore_2pct: Optional[float] = None
    chamfer_l1: Optional[float] = None
    seconds: Optional[float] = None
    repeated: Optional[float] = None  # share of duplicate points in the method's own answer
    error: Optional[str] = None


def score_clouds(preds: Sequence[np.ndarray], gts: Sequence[np.ndarray]) -> list[dict[str, float]]:
    """Metrics of predictions (N_i, 3) against their ground truths (M_i, 3); N_i may differ from M_i.

    Returns one {"chamfer_l2": squared units, "chamfer_l1": units, "fscore_1pct": [0, 1],
    "fscore_2pct": [0, 1]} per pair, with the definitions of `cad3d.geometry.ops.chamfer_distance`
    and `f_score` (threshold: 1% or 2% of the ground truth's bounding diagonal, points strictly
    within it). One kd-tree search each way per pair gives all four: a dense ground truth of
    tens of thousands of points is scored in milliseconds, not a dense distance matrix.
    """
    from scipy.spatial import cKDTree

    out = []
    for pred, gt in zip(preds, gts):
        p = np.asarray(pred, dtype=np.float64)
        g = np.asarray(gt, dtype=np.float64)
        d_pg = cKDTree(g).query(p)[0]  # (N,) each predicted point to the truth
        d_gp = cKDTree(p).query(g)[0]  # (M,) each true point to the prediction
        diag = float(np.linalg.norm(g.max(axis=0) - g.min(axis=0)))
        row = {"chamfer_l2": float((d_pg**2).mean() + (d_gp**2).mean()), "chamfer_l1": float(d_pg.mean() + d_gp.mean())}
        for name, rel in (("fscore_1pct", 0.01), ("fscore_2pct", 0.02)):
            precision, recall = float((d_pg < rel * diag).mean()), float((d_gp < rel * diag).mean())
            row[name] = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
        out.append(row)
    return out


def score_cloud(pred: np.ndarray, gt: np.ndarray) -> dict[str, float]:
    """Metrics of one prediction (N, 3) against its ground truth (M, 3), as in `score_clouds`."""
    return score_clouds([pred], [gt])[0]


def _summary(scores: Sequence[SampleScore]) -> dict:
    ok = [s for s in scores if s.error is None]
    out = {"n": len(ok), "failed": len(scores) - len(ok)}
    for m in METRICS:
        values = [getattr(s, m) for s in ok if getattr(s, m) is not None]
        out[m] = float(np.mean(values)) if values else None
    reps = [s.repeated for s in ok if s.repeated is not None]
    out["repeated"] = float(np.mean(reps)) if reps else None
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


def with_oracle_fractions(summary: dict[str, dict]) -> dict[str, dict]:
    """Add each method's metrics as a fraction of the ``oracle`` row's (when scored): Chamfer /
    oracle Chamfer (1 = as close as a perfect sample, larger is worse) and F-score / oracle
    F-score (1 = the ceiling)."""
    oracle = summary.get("oracle")
    if not oracle or not oracle.get("n"):
        return summary
    for row in summary.values():
        row["of_oracle"] = {m: (row[m] / oracle[m]) if row.get(m) is not None and oracle.get(m) else None for m in METRICS}
    return summary
