"""Neighbourhood queries of the PointNet++ layers: kNN, ball query and grouping by index.

Indices are found without autograd: on CPU by the numba kernels of
:mod:`cad3d.geometry.cpu_kernels` (exact differences, O(k) memory per query), elsewhere (or
with ``backend="torch"``) one (B, rows, N) block of query rows at a time (``chunk_size``; None =
a block of about ``_BLOCK_ELEMENTS`` entries), never the full (B, S, N) matrix. kNN distances
are then recomputed from the gathered points with autograd.
"""

from __future__ import annotations

import torch

from cad3d.geometry._common import _as_batched, _centered, _check_pair, _chunk_rows, _gather_points, _rank_block, compute_dtype, cpu_kernels

BACKENDS = ("auto", "torch")


def _kernels(backend: str, *xs: torch.Tensor):
    """The CPU kernels module when backend is auto, every input is on the CPU and numba loads."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "torch" or any(x.device.type != "cpu" for x in xs):
        return None
    return cpu_kernels()


def _numpy(x: torch.Tensor, dtype: torch.dtype):
    """A contiguous numpy copy (or view) of a detached CPU tensor in dtype."""
    return x.detach().to(dtype).contiguous().numpy()


def knn(
    query: torch.Tensor, ref: torch.Tensor, k: int, *, chunk_size: int | None = None, backend: str = "auto"
) -> tuple[torch.Tensor, torch.Tensor]:
    """k nearest neighbours in ``ref`` of every query point.

    Args:
        query: (B, S, 3) or (S, 3).
        ref: (B, N, 3) or (N, 3), k <= N.
        k: neighbours per query.
        chunk_size: query rows per distance block (B, chunk_size, N) of the torch code.
        backend: ``"auto"`` (the numba kernel on CPU, else torch) or ``"torch"``.

    Returns:
        (sq_dist (B, S, k), idx (B, S, k) long), nearest first; squared Euclidean distances,
        differentiable w.r.t. query and ref. Unbatched inputs give (S, k). The CPU kernel
        ranks exact differences in float32 (float64 for float64 input), ties to the lowest
        index; the torch code ranks the float32 ``|r|^2 - 2qr`` expansion, so near-ties may
        come out in another order.
    """
    q3, unbatched = _as_batched(query, "query")
    r3, _ = _as_batched(ref, "ref")
    _check_pair(q3, r3, "query", "ref")
    bsz, s_n, _ = q3.shape
    n = r3.shape[1]
    if not 1 <= k <= n:
        raise ValueError(f"k must be in [1, {n}], got {k}")
    rows = _chunk_rows(chunk_size, bsz, n)
    kernels = _kernels(backend, q3, r3)
    if kernels is not None:
        dt = compute_dtype(q3, r3)
        idx = torch.from_numpy(kernels.knn(_numpy(q3, dt), _numpy(r3, dt), k, threads=torch.get_num_threads()))  # (B, S, k)
    else:
        with torch.no_grad():
            q0, r0 = _centered(q3, r3)
            r_sq = r0.square().sum(-1)  # (B, N)
            idx = torch.empty(bsz, s_n, k, dtype=torch.long, device=q3.device)
            for s in range(0, s_n, rows):
                d = _rank_block(q0[:, s : s + rows], r0, r_sq)  # (B, rows, N)
                idx[:, s : s + rows] = d.topk(k, dim=2, largest=False, sorted=True).indices
    sq = (q3.unsqueeze(2) - _gather_points(r3, idx)).square().sum(-1)  # (B, S, k)
    # Re-sort by the distances returned (the torch ranking may swap near-ties).
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
    backend: str = "auto",
) -> torch.Tensor:
    """PointNet++ ball query: the first ``k`` ref points (in index order) strictly within
    ``radius`` of each query point, padded with the first one found.

    Args:
        query: (B, S, 3) or (S, 3) centres (usually an FPS subset of ref).
        ref: (B, N, 3) or (N, 3).
        radius: ball radius in input units.
        k: neighbours per ball.
        chunk_size: query rows per block of the torch code, (B, chunk_size, N, 3) differences.
        backend: ``"auto"`` (the numba kernel on CPU, else torch) or ``"torch"``.

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
    kernels = _kernels(backend, q3, r3)
    if kernels is not None:
        # The same test as below, d < r2 in the compute dtype, on exact differences.
        dt = compute_dtype(q3, r3)
        out = torch.from_numpy(kernels.ball_query(_numpy(q3, dt), _numpy(r3, dt), float(radius), k, threads=torch.get_num_threads()))
        return out.squeeze(0) if unbatched else out  # (B, S, k)
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
