"""Batched point-cloud operations: nearest neighbours, Chamfer distance, F-score, farthest point
sampling, kNN and ball query (voxels, normalization and depth lifting: `cad3d.geometry.transforms`).

The one geometry module models import from; farthest point sampling lives in
:mod:`cad3d.geometry.fps` (compiled kernels) and kNN / ball query / grouping in
:mod:`cad3d.geometry.neighbors`, both re-exported here. CPU and CUDA. Conventions:

* Point clouds are ``(B, N, 3)`` float tensors; most functions also take an unbatched
  ``(N, 3)`` cloud and then return unbatched results.
* Distances named ``sq_dist`` are *squared* Euclidean distances in the units of the input
  coordinates.
* Memory: pairwise distances are only ever materialized one block of ``chunk_size`` query rows
  at a time, ``(B, chunk_size, M)``, never the full ``(B, N, M)`` matrix. ``chunk_size=None``
  picks a block of about ``_BLOCK_ELEMENTS`` entries (:mod:`cad3d.geometry._common`).
* Nearest-neighbour *indices* are searched under ``no_grad`` with the matmul ranking
  ``|b|^2 - 2ab`` (after centring both clouds); the returned distances are then recomputed
  exactly from the gathered points with autograd, so gradients are those of the true
  nearest-neighbour distances and no block is kept alive for the backward pass.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from cad3d.geometry._common import _as_batched, _centered, _check_pair, _chunk_rows, _gather_points, _rank_block
from cad3d.geometry.fps import farthest_point_sample, farthest_point_sample_reference
from cad3d.geometry.neighbors import ball_query, group_points, knn

__all__ = [
    "NearestNeighbors",
    "ball_query",
    "chamfer_distance",
    "f_score",
    "farthest_point_sample",
    "farthest_point_sample_reference",
    "group_points",
    "knn",
    "nearest_neighbors",
]


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------
def _nn_indices(a0: torch.Tensor, b0: torch.Tensor, rows: int) -> torch.Tensor:
    """Index (B, N) into b0 (B, M, 3) of the nearest neighbour of each a0 (B, N, 3) point,
    one (B, rows, M) block at a time; ties go to the lowest index."""
    b_sq = b0.square().sum(-1)  # (B, M)
    n = a0.shape[1]
    idx = torch.empty(a0.shape[:2], dtype=torch.long, device=a0.device)
    for s in range(0, n, rows):
        idx[:, s : s + rows] = _rank_block(a0[:, s : s + rows], b0, b_sq).argmin(dim=2)
    return idx


def _safe_sqrt(x: torch.Tensor) -> torch.Tensor:
    """sqrt with a zero (not NaN/inf) gradient at 0, e.g. for duplicate points."""
    pos = x > 0
    return torch.where(pos, torch.where(pos, x, torch.ones_like(x)).sqrt(), torch.zeros_like(x))


# --------------------------------------------------------------------------------------------
# nearest neighbours, Chamfer, F-score
# --------------------------------------------------------------------------------------------
class NearestNeighbors(NamedTuple):
    """Nearest neighbours both ways between clouds a (B, N, 3) and b (B, M, 3)."""

    sq_dist_ab: torch.Tensor  # (B, N) squared distance from each a point to its nearest b point
    idx_ab: torch.Tensor  # (B, N) long, index into b
    sq_dist_ba: torch.Tensor  # (B, M) squared distance from each b point to its nearest a point
    idx_ba: torch.Tensor  # (B, M) long, index into a


def nearest_neighbors(a: torch.Tensor, b: torch.Tensor, *, chunk_size: int | None = None) -> NearestNeighbors:
    """Nearest neighbour of every point of ``a`` in ``b`` and of every point of ``b`` in ``a``.

    Args:
        a: (B, N, 3) or (N, 3) points.
        b: (B, M, 3) or (M, 3) points; M may differ from N.
        chunk_size: rows per distance block, (B, chunk_size, M) for a -> b and
            (B, chunk_size, N) for b -> a; None = automatic.

    Returns:
        :class:`NearestNeighbors` with squared Euclidean distances (differentiable w.r.t. ``a``
        and ``b``) and long indices; unbatched inputs give unbatched fields. Ties are broken by
        the lowest index of the float32 ranking, so with duplicate points any of the duplicates
        may be returned (the distance is the same).

    Each direction is its own pass over blocks of rows, so every argmin runs along the
    contiguous last dimension (a strided column argmin is ~5x slower on CPU). Peak extra memory
    is O(B * chunk_size * max(N, M)).
    """
    a3, unbatched = _as_batched(a, "a")
    b3, _ = _as_batched(b, "b")
    _check_pair(a3, b3, "a", "b")
    bsz, n, _ = a3.shape
    m = b3.shape[1]
    with torch.no_grad():
        a0, b0 = _centered(a3, b3)  # (B, N, 3), (B, M, 3)
        idx_ab = _nn_indices(a0, b0, _chunk_rows(chunk_size, bsz, m))  # (B, N)
        idx_ba = _nn_indices(b0, a0, _chunk_rows(chunk_size, bsz, n))  # (B, M)
    sq_ab = (a3 - _gather_points(b3, idx_ab)).square().sum(-1)  # (B, N)
    sq_ba = (b3 - _gather_points(a3, idx_ba)).square().sum(-1)  # (B, M)
    out = NearestNeighbors(sq_ab, idx_ab, sq_ba, idx_ba)
    if unbatched:
        out = NearestNeighbors(*(t.squeeze(0) for t in out))
    return out


def chamfer_distance(
    a: torch.Tensor,
    b: torch.Tensor,
    *,
    norm: str = "l2",
    reduction: str = "mean",
    chunk_size: int | None = None,
) -> torch.Tensor:
    """Symmetric Chamfer distance ``mean_a d(a, b) + mean_b d(b, a)`` per sample.

    Args:
        a: (B, N, 3) or (N, 3) points.
        b: (B, M, 3) or (M, 3) points; M may differ from N.
        norm: ``"l2"``: d is the *squared* Euclidean distance to the nearest neighbour (the usual
            training loss, "CD-L2"); ``"l1"``: d is the (non-squared) Euclidean distance
            ("CD-L1" of point-cloud completion benchmarks), with a zero gradient at d = 0.
            Nearest neighbours are Euclidean in both cases.
        reduction: ``"mean"`` over the batch (scalar), ``"sum"`` (scalar) or ``"none"`` (B,)
            (a scalar for unbatched input).
        chunk_size: rows per distance block; memory O(B * chunk_size * max(N, M)).

    Returns:
        The Chamfer distance in (squared, for l2) input units; differentiable w.r.t. a and b.
    """
    if norm not in ("l2", "l1"):
        raise ValueError(f"norm must be 'l2' or 'l1', got {norm!r}")
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    a3, unbatched = _as_batched(a, "a")
    b3, _ = _as_batched(b, "b")
    nn = nearest_neighbors(a3, b3, chunk_size=chunk_size)
    d_ab, d_ba = nn.sq_dist_ab, nn.sq_dist_ba  # (B, N), (B, M)
    if norm == "l1":
        d_ab, d_ba = _safe_sqrt(d_ab), _safe_sqrt(d_ba)
    per_sample = d_ab.mean(dim=1) + d_ba.mean(dim=1)  # (B,)
    if reduction == "mean":
        return per_sample.mean()
    if reduction == "sum":
        return per_sample.sum()
    return per_sample.squeeze(0) if unbatched else per_sample


def f_score(
    pred: torch.Tensor,
    gt: torch.Tensor,
    tau: float | torch.Tensor | None = None,
    *,
    tau_rel: float = 0.01,
    chunk_size: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """F-score at distance threshold ``tau`` (Tatarchenko et al. 2019), per sample.

    Args:
        pred: (B, N, 3) or (N, 3) predicted points.
        gt: (B, M, 3) or (M, 3) ground-truth points.
        tau: threshold in input units: a float, a (B,) tensor, or None for
            ``tau_rel * `` the diagonal of each ground-truth bounding box.
        tau_rel: relative threshold used when ``tau`` is None (0.01 = 1% of the diagonal).

    Returns:
        (fscore, precision, recall), each (B,) (scalars for unbatched input) in [0, 1].
        precision = share of pred points within tau (strictly) of gt, recall = share of gt points
        within tau of pred; fscore = 2PR / (P + R), 0 when both are 0. Not differentiable.
    """
    p3, unbatched = _as_batched(pred, "pred")
    g3, _ = _as_batched(gt, "gt")
    with torch.no_grad():
        nn = nearest_neighbors(p3, g3, chunk_size=chunk_size)
        if tau is None:
            diag = (g3.amax(dim=1) - g3.amin(dim=1)).norm(dim=-1)  # (B,)
            tau_t = tau_rel * diag
        else:
            tau_t = torch.as_tensor(tau, dtype=p3.dtype, device=p3.device).expand(p3.shape[0])  # (B,)
        tau2 = tau_t.square().unsqueeze(1)  # (B, 1)
        precision = (nn.sq_dist_ab < tau2).to(p3.dtype).mean(dim=1)  # (B,)
        recall = (nn.sq_dist_ba < tau2).to(p3.dtype).mean(dim=1)  # (B,)
        denom = precision + recall
        fscore = torch.where(denom > 0, 2 * precision * recall / denom.clamp_min(1e-12), torch.zeros_like(denom))
    if unbatched:
        return fscore.squeeze(0), precision.squeeze(0), recall.squeeze(0)
    return fscore, precision, recall
