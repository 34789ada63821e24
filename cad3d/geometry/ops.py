"""Batched point-cloud operations: nearest neighbours, Chamfer distance, F-score, farthest point
sampling, kNN and ball query (voxels, normalization and depth lifting: `cad3d.geometry.transforms`).

Pure torch (no compiled extension), CPU and CUDA. Conventions:

* Point clouds are ``(B, N, 3)`` float tensors; most functions also take an unbatched
  ``(N, 3)`` cloud and then return unbatched results.
* Distances named ``sq_dist`` are *squared* Euclidean distances in the units of the input
  coordinates.
* Memory: pairwise distances are only ever materialized one block of ``chunk_size`` query rows
  at a time, ``(B, chunk_size, M)``, never the full ``(B, N, M)`` matrix. ``chunk_size=None``
  picks a block of about ``_BLOCK_ELEMENTS`` entries.
* Nearest-neighbour *indices* are searched under ``no_grad`` with the matmul ranking
  ``|b|^2 - 2ab`` (after centring both clouds); the returned distances are then recomputed
  exactly from the gathered points with autograd, so gradients are those of the true
  nearest-neighbour distances and no block is kept alive for the backward pass.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch


__all__ = [
    "NearestNeighbors",
    "ball_query",
    "chamfer_distance",
    "f_score",
    "farthest_point_sample",
    "group_points",
    "knn",
    "nearest_neighbors",
]

# Entries of one pairwise-distance block when chunk_size is None: 2**21 float32 = 8 MiB, large
# enough that the matmul dominates the loop overhead, small enough to stay cache-friendly
# (measured on CPU: 1-4 Mi entries per block are equally fast, 16 Mi and more get slower).
_BLOCK_ELEMENTS = 1 << 21


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------
def _as_batched(x: torch.Tensor, name: str) -> tuple[torch.Tensor, bool]:
    """(N, C) -> (1, N, C) and a flag saying the input was unbatched; (B, N, C) unchanged."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() == 2:
        return x.unsqueeze(0), True
    if x.dim() != 3:
        raise ValueError(f"{name} must have shape (B, N, C) or (N, C), got {tuple(x.shape)}")
    return x, False


def _check_pair(a: torch.Tensor, b: torch.Tensor, na: str, nb: str) -> None:
    if a.shape[0] != b.shape[0] or a.shape[-1] != b.shape[-1]:
        raise ValueError(f"{na} {tuple(a.shape)} and {nb} {tuple(b.shape)} differ in batch or channel size")
    if a.shape[1] == 0 or b.shape[1] == 0:
        raise ValueError(f"empty point cloud: {na} {tuple(a.shape)}, {nb} {tuple(b.shape)}")


def _chunk_rows(chunk_size: int | None, batch: int, cols: int) -> int:
    if chunk_size is None:
        return max(1, _BLOCK_ELEMENTS // max(1, batch * cols))
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    return int(chunk_size)


def _rank_block(a: torch.Tensor, b: torch.Tensor, b_sq: torch.Tensor) -> torch.Tensor:
    """``|b_j|^2 - 2 a_i . b_j`` (B, n, m) for a (B, n, 3), b (B, m, 3), b_sq (B, m): the squared
    distance minus the per-row constant ``|a_i|^2``, so it ranks the b points of each row
    exactly as the distance does. Only used for ranking, never returned as a distance."""
    return torch.baddbmm(b_sq.unsqueeze(1), a, b.transpose(1, 2), alpha=-2.0)  # (B, n, m)


def _nn_indices(a0: torch.Tensor, b0: torch.Tensor, rows: int) -> torch.Tensor:
    """Index (B, N) into b0 (B, M, 3) of the nearest neighbour of each a0 (B, N, 3) point,
    one (B, rows, M) block at a time; ties go to the lowest index."""
    b_sq = b0.square().sum(-1)  # (B, M)
    n = a0.shape[1]
    idx = torch.empty(a0.shape[:2], dtype=torch.long, device=a0.device)
    for s in range(0, n, rows):
        idx[:, s : s + rows] = _rank_block(a0[:, s : s + rows], b0, b_sq).argmin(dim=2)
    return idx


def _centered(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Detached copies of a and b shifted by a common centre (distances unchanged), which keeps
    the |a|^2 + |b|^2 - 2ab expansion accurate for clouds far from the origin."""
    shift = a.detach().mean(dim=1, keepdim=True)  # (B, 1, 3)
    return a.detach() - shift, b.detach() - shift


def _gather_points(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """x (B, N, C), idx (B, *S) long -> (B, *S, C)."""
    b, _, c = x.shape
    flat = idx.reshape(b, -1, 1).expand(-1, -1, c)  # (B, prod(S), C)
    return torch.gather(x, 1, flat).reshape(*idx.shape, c)


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


# --------------------------------------------------------------------------------------------
# sampling and neighbourhoods
# --------------------------------------------------------------------------------------------
def farthest_point_sample(x: torch.Tensor, m: int, *, start: str | int = "first") -> torch.Tensor:
    """Farthest point sampling: indices of ``m`` points, each the farthest (Euclidean) from the
    ones picked before it.

    Args:
        x: (B, N, 3) or (N, 3) points.
        m: number of samples, 1 <= m <= N.
        start: ``"first"`` (index 0) or an int index of the first sample (same for every cloud).

    Returns:
        (B, m) (or (m,)) long indices. Deterministic: ties go to the lowest index, as in a naive
        ``argmax`` loop, on CPU and CUDA alike. With fewer than m distinct points the remaining
        picks repeat points at distance 0.

    Vectorized over the batch; the loop runs over m only with preallocated buffers and in-place
    updates. The argmax over N is split into a max per block of ~sqrt(N) points followed by an
    argmax inside the winning block, because a plain argmax over N is several times slower than
    a max on CPU.
    """
    x3, unbatched = _as_batched(x, "x")
    bsz, n, _ = x3.shape
    if not 1 <= m <= n:
        raise ValueError(f"m must be in [1, {n}], got {m}")
    if start == "first":
        start_idx = 0
    elif isinstance(start, (int, np.integer)) and not isinstance(start, bool) and 0 <= int(start) < n:
        start_idx = int(start)
    else:
        raise ValueError(f"start must be 'first' or an index in [0, {n}), got {start!r}")
    dev = x3.device
    bs = max(1, math.isqrt(n - 1) + 1)  # block size ~ sqrt(N)
    nb = -(-n // bs)
    n_pad = nb * bs
    with torch.no_grad():
        xt = torch.empty(3, bsz, n_pad, dtype=x3.dtype, device=dev)  # coordinate-major (3, B, Np)
        xt[:, :, :n] = x3.permute(2, 0, 1)
        xt[:, :, n:] = x3[:, :1].permute(2, 0, 1)
        # Padding entries hold -1 < any real distance, so they are never picked.
        dist = torch.full((bsz, n_pad), math.inf, dtype=x3.dtype, device=dev)  # (B, Np)
        dist[:, n:] = -1.0
        dist_blocks = dist.view(bsz, nb, bs)
        buf = torch.empty_like(xt)  # (3, B, Np)
        b0, b1, b2 = buf.unbind(0)
        d = torch.empty(bsz, n_pad, dtype=x3.dtype, device=dev)  # (B, Np)
        idx = torch.empty(m, bsz, dtype=torch.long, device=dev)
        far = torch.full((bsz,), start_idx, dtype=torch.long, device=dev)  # (B,)
        idx[0] = far
        for i in range(1, m):
            c = torch.gather(xt, 2, far.view(1, bsz, 1).expand(3, bsz, 1))  # (3, B, 1)
            torch.sub(xt, c, out=buf)
            buf.mul_(buf)
            torch.add(b0, b1, out=d)
            d.add_(b2)  # (B, Np) squared distance to the last pick
            torch.minimum(dist, d, out=dist)
            blk = dist_blocks.amax(dim=2).argmax(dim=1)  # (B,) first block holding the max
            inside = torch.gather(dist_blocks, 1, blk.view(bsz, 1, 1).expand(bsz, 1, bs)).view(bsz, bs)
            torch.add(inside.argmax(dim=1), blk, alpha=bs, out=idx[i])  # global index, (B,)
            far = idx[i]
        out = idx.t().contiguous()  # (B, m)
    return out.squeeze(0) if unbatched else out


def knn(
    query: torch.Tensor, ref: torch.Tensor, k: int, *, chunk_size: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """k nearest neighbours in ``ref`` of every query point.

    Args:
        query: (B, S, 3) or (S, 3).
        ref: (B, N, 3) or (N, 3), k <= N.
        k: neighbours per query.
        chunk_size: query rows per distance block (B, chunk_size, N).

    Returns:
        (sq_dist (B, S, k), idx (B, S, k) long), nearest first; squared Euclidean distances,
        differentiable w.r.t. query and ref. Unbatched inputs give (S, k).
    """
    q3, unbatched = _as_batched(query, "query")
    r3, _ = _as_batched(ref, "ref")
    _check_pair(q3, r3, "query", "ref")
    bsz, s_n, _ = q3.shape
    n = r3.shape[1]
    if not 1 <= k <= n:
        raise ValueError(f"k must be in [1, {n}], got {k}")
    rows = _chunk_rows(chunk_size, bsz, n)
    with torch.no_grad():
        q0, r0 = _centered(q3, r3)
        r_sq = r0.square().sum(-1)  # (B, N)
        idx = torch.empty(bsz, s_n, k, dtype=torch.long, device=q3.device)
        for s in range(0, s_n, rows):
            d = _rank_block(q0[:, s : s + rows], r0, r_sq)  # (B, rows, N)
            idx[:, s : s + rows] = d.topk(k, dim=2, largest=False, sorted=True).indices
    sq = (q3.unsqueeze(2) - _gather_points(r3, idx)).square().sum(-1)  # (B, S, k)
    # Re-sort by the exact distances (the float32 ranking may swap near-ties).
    sq, order = sq.sort(dim=2, stable=True)
    idx = torch.gather(idx, 2, order)
    if unbatched:
        return sq.squeeze(0), idx.squeeze(0)
    return sq, idx


def ball_query(
    query: torch.Tensor,
    ref: torch.Tensor,
    radius: float,
    k: int,
    *,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """PointNet++ ball query: the first ``k`` ref points (in index order) strictly within
    ``radius`` of each query point, padded with the first one found.

    Args:
        query: (B, S, 3) or (S, 3) centres (usually an FPS subset of ref).
        ref: (B, N, 3) or (N, 3).
        radius: ball radius in input units.
        k: neighbours per ball.

    Returns:
        (B, S, k) long indices into ref (or (S, k)). A ball with no ref point inside is filled
        with the query's nearest ref point (the original CUDA kernel leaves index 0, an arbitrary
        point). Not differentiable (indices); gather with :func:`group_points`.
    """
    q3, unbatched = _as_batched(query, "query")
    r3, _ = _as_batched(ref, "ref")
    _check_pair(q3, r3, "query", "ref")
    bsz, s_n, _ = q3.shape
    n = r3.shape[1]
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    rows = _chunk_rows(chunk_size, bsz, 3 * n)
    kk = min(k, n)
    r2 = float(radius) ** 2
    with torch.no_grad():
        ar = torch.arange(n, device=q3.device)  # (N,)
        out = torch.empty(bsz, s_n, k, dtype=torch.long, device=q3.device)
        for s in range(0, s_n, rows):
            e = min(s_n, s + rows)
            # Exact differences, not the |q|^2 + |r|^2 - 2qr expansion: membership on the sphere
            # must not depend on rounding.
            d = (q3[:, s:e].unsqueeze(2) - r3.unsqueeze(1)).square().sum(-1)  # (B, c, N)
            key = torch.where(d < r2, ar, n)  # (B, c, N): own index inside the ball, N outside
            cand = key.topk(kk, dim=2, largest=False, sorted=True).values  # (B, c, kk) first found
            nearest = d.argmin(dim=2, keepdim=True)  # (B, c, 1)
            first = torch.where(cand[:, :, :1] < n, cand[:, :, :1], nearest)  # (B, c, 1)
            cand = torch.where(cand < n, cand, first)
            if kk < k:
                cand = torch.cat([cand, first.expand(-1, -1, k - kk)], dim=2)
            out[:, s:e] = cand
    return out.squeeze(0) if unbatched else out


def group_points(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Gather per-point features by index: x (B, N, C), idx (B, S, K) -> (B, S, K, C).

    ``idx`` may have any shape (B, *S); the result is (B, *S, C). Differentiable w.r.t. x.
    """
    if x.dim() != 3 or idx.dim() < 2 or idx.shape[0] != x.shape[0]:
        raise ValueError(f"expected x (B, N, C) and idx (B, ...), got {tuple(x.shape)} and {tuple(idx.shape)}")
    return _gather_points(x, idx.long())
