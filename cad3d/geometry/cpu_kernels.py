"""CPU kernels (numba) of farthest point sampling, kNN and ball query.

Inputs are contiguous float32 or float64 numpy arrays of finite coordinates; every squared
distance is ``(dx*dx + dy*dy) + dz*dz`` in that dtype, with no fused multiply-add or
reassociation (no fastmath), so FPS returns exactly the indices of the torch loop in
:mod:`cad3d.geometry.fps`, and kNN / ball query rank the exact differences (ties to the lowest
index). Each call splits its clouds or queries over ``threads`` Python threads (the kernels
release the GIL; no numba threading layer, so forked data-loader workers stay safe). Importing
this module imports numba; compiled code is cached on disk, so only a machine's first use
compiles.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numba
import numpy as np

# Points per kd-tree leaf (bucket). Larger leaves cost more distance updates, smaller ones
# more bound checks per pick; 32-128 are about equally fast at 4096 -> 1024.
LEAF_SIZE = 64

# Fewest distance evaluations worth a thread (~1 ms): below, starting a thread costs more than
# it saves (a new pool per call: a pool kept alive would hang in forked data-loader workers).
MIN_THREAD_WORK = 1 << 20

# No fastmath anywhere: no FMA contraction or reassociation, so every distance is rounded as in
# the torch loop. nogil: slices of a call run in parallel threads.
_jit = numba.njit(cache=True, nogil=True)


@_jit
def _kd_leaves(p, leaf):
    """Split the points p (N, 3) into kd-tree leaves of at most ``leaf`` points (more only
    when all of a leaf's points are equal), halving the widest side of each box.

    Returns (order (N,), q (3, N), los (L,), his (L,)): leaf k holds the points
    ``order[los[k]:his[k]]``, in increasing index order (every split is a stable partition of an
    ascending range); q holds their coordinates in that order.
    """
    n = p.shape[0]
    order = np.arange(n)
    q = p.T.copy()  # (3, N) coordinates, permuted along with order
    tmp = np.empty(n, np.int64)
    qtmp = np.empty((3, n), p.dtype)
    los = np.empty(n, np.int64)
    his = np.empty(n, np.int64)
    stack = np.empty((n + 2, 2), np.int64)
    stack[0, 0], stack[0, 1] = 0, n
    top, nb = 1, 0
    while top > 0:
        top -= 1
        lo, hi = stack[top, 0], stack[top, 1]
        axis, span, cut = 0, 0.0, 0.0
        if hi - lo > leaf:
            for a in range(3):
                mn, mx = q[a, lo], q[a, lo]
                for j in range(lo + 1, hi):
                    mn, mx = min(mn, q[a, j]), max(mx, q[a, j])
                if mx - mn > span:
                    axis, span, cut = a, mx - mn, 0.5 * mn + 0.5 * mx
        if span == 0.0:  # small enough, or all points equal
            los[nb], his[nb] = lo, hi
            nb += 1
            continue
        # Stable partition at the middle of the widest side: below goes left; if rounding put
        # the cut on the minimum, "<=" does. Both sides are non-empty since min < max.
        nl = 0
        for j in range(lo, hi):
            nl += q[axis, j] < cut
        le = nl == 0
        if le:
            for j in range(lo, hi):
                nl += q[axis, j] <= cut
        a_, b_ = lo, lo + nl
        for j in range(lo, hi):
            c = q[axis, j]
            if c < cut or (le and c == cut):
                t = a_
                a_ += 1
            else:
                t = b_
                b_ += 1
            tmp[t] = order[j]
            for a in range(3):
                qtmp[a, t] = q[a, j]
        for j in range(lo, hi):
            order[j] = tmp[j]
            for a in range(3):
                q[a, j] = qtmp[a, j]
        stack[top, 0], stack[top, 1] = lo, lo + nl
        stack[top + 1, 0], stack[top + 1, 1] = lo + nl, hi
        top += 2
    return order, q, los[:nb].copy(), his[:nb].copy()


@_jit
def _fps_cloud(p, m, start, leaf, zero, ibits, out):
    """FPS of one cloud p (N, 3) into out (m,) int64; ``zero`` is 0 in p's dtype and ``ibits``
    an empty array of the signed integer type of its size.

    A pick c can only lower ``dist`` inside a leaf whose box is closer to c than the leaf's
    largest ``dist``. The box bound uses the same float operations on the per-axis gaps as the
    point distances (rounding is monotonic, so bound <= every point's computed distance), hence
    skipping such a leaf leaves every value exactly as the full update would. Each leaf keeps
    its max ``dist`` and the lowest index holding it, so the global argmax and its tie-breaking
    are those of a plain first-index argmax.
    """
    order, q, los, his = _kd_leaves(p, leaf)
    nb = los.shape[0]
    px, py, pz = q[0], q[1], q[2]  # (N,) each, leaf-ordered
    box = np.empty((6, nb), p.dtype)  # leaf boxes: min x, y, z, max x, y, z
    for k in range(nb):
        for a in range(3):
            mn, mx = q[a, los[k]], q[a, los[k]]
            for j in range(los[k] + 1, his[k]):
                mn, mx = min(mn, q[a, j]), max(mx, q[a, j])
            box[a, k], box[a + 3, k] = mn, mx
    lox, loy, loz, hix, hiy, hiz = box[0], box[1], box[2], box[3], box[4], box[5]
    # Distances are >= +0, and for those the float order equals the order of their bit patterns
    # read as signed integers: the max reductions run on integer views, which vectorize (float
    # max reductions only do under fast-math, which could change results).
    dist = np.empty(p.shape[0], p.dtype)
    dist[:] = np.inf
    dbits = dist.view(ibits.dtype)
    bound = np.empty(nb, p.dtype)
    bbits = bound.view(ibits.dtype)
    bmax = np.empty(nb, ibits.dtype)  # leaf max (bits)
    bmax[:] = dbits[0] + 1  # above the bits of inf: every leaf is updated by the first pick
    bidx = np.zeros(nb, np.int64)  # lowest index holding the leaf max
    far = start
    out[0] = far
    for i in range(1, m):
        cx, cy, cz = p[far, 0], p[far, 1], p[far, 2]
        for k in range(nb):  # squared distance from c to each box
            gx = max(max(lox[k] - cx, cx - hix[k]), zero)
            gy = max(max(loy[k] - cy, cy - hiy[k]), zero)
            gz = max(max(loz[k] - cz, cz - hiz[k]), zero)
            bound[k] = gx * gx + gy * gy + gz * gz
        for k in range(nb):
            if bbits[k] >= bmax[k]:
                continue  # no point of this leaf gets closer to the samples
            lo, hi = los[k], his[k]
            for j in range(lo, hi):
                dx, dy, dz = px[j] - cx, py[j] - cy, pz[j] - cz
                d = dx * dx + dy * dy + dz * dz
                v = dist[j]
                dist[j] = d if d < v else v
            best = dbits[lo]
            for j in range(lo + 1, hi):
                best = max(best, dbits[j])
            j = lo
            while dbits[j] != best:
                j += 1
            bmax[k], bidx[k] = best, order[j]
        best, far = bmax[0], bidx[0]
        for k in range(1, nb):
            if bmax[k] > best or (bmax[k] == best and bidx[k] < far):
                best, far = bmax[k], bidx[k]
        out[i] = far


@_jit
def _fps_batch(x, m, start, leaf, zero, ibits, out, b0, b1):
    for b in range(b0, b1):
        _fps_cloud(x[b], m, start, leaf, zero, ibits, out[b])


@_jit
def _knn_rows(q, rt, k, out, f0, f1):
    """k nearest of rt (B, 3, N) for the flattened queries f0..f1 of q (B, S, 3) into out
    (B, S, k), sorted by (distance, index)."""
    s_n, n = q.shape[1], rt.shape[2]
    d = np.empty(n, q.dtype)
    bd = np.empty(k, q.dtype)
    for f in range(f0, f1):
        b, s = f // s_n, f % s_n
        cx, cy, cz = q[b, s, 0], q[b, s, 1], q[b, s, 2]
        for j in range(n):  # vectorized
            dx, dy, dz = rt[b, 0, j] - cx, rt[b, 1, j] - cy, rt[b, 2, j] - cz
            d[j] = dx * dx + dy * dy + dz * dz
        bi = out[b, s]
        cnt = 0
        for j in range(n):
            v = d[j]
            if cnt < k or v < bd[k - 1]:  # insertion into the sorted best list; '>' keeps ties in index order
                p = cnt if cnt < k else k - 1
                while p > 0 and bd[p - 1] > v:
                    bd[p], bi[p] = bd[p - 1], bi[p - 1]
                    p -= 1
                bd[p], bi[p] = v, j
                cnt = min(cnt + 1, k)


@_jit
def _ball_rows(q, rt, r2, out, f0, f1):
    """PointNet++ ball query for the flattened queries f0..f1 of q (B, S, 3) into out (B, S, K):
    the first K indices of rt (B, 3, N) with distance < r2, padded with the first, or with
    the nearest point (lowest index of the minimum) when the ball is empty."""
    s_n, n, kk = q.shape[1], rt.shape[2], out.shape[2]
    for f in range(f0, f1):
        b, s = f // s_n, f % s_n
        cx, cy, cz = q[b, s, 0], q[b, s, 1], q[b, s, 2]
        row = out[b, s]
        cnt, best, arg = 0, np.inf, 0
        for j in range(n):
            dx, dy, dz = rt[b, 0, j] - cx, rt[b, 1, j] - cy, rt[b, 2, j] - cz
            v = dx * dx + dy * dy + dz * dz
            if v < r2:
                row[cnt] = j
                cnt += 1
                if cnt == kk:
                    break
            if v < best:
                best, arg = v, j
        first = row[0] if cnt > 0 else arg
        for j in range(cnt, kk):
            row[j] = first


def _threaded(kernel, total: int, threads: int, work: int, *args) -> None:
    """kernel(*args, start, stop) over [0, total), in up to ``threads`` contiguous slices, fewer
    when ``work`` (point-pair distances) would give a thread less than ``MIN_THREAD_WORK``."""
    threads = max(1, min(threads, total, work // MIN_THREAD_WORK))
    if threads == 1:
        kernel(*args, 0, total)
        return
    cuts = np.linspace(0, total, threads + 1).astype(np.int64)
    with ThreadPoolExecutor(threads) as pool:
        jobs = [pool.submit(kernel, *args, int(a), int(b)) for a, b in zip(cuts[:-1], cuts[1:])]
        for job in jobs:
            job.result()


def fps(x: np.ndarray, m: int, start: int, threads: int = 1) -> np.ndarray:
    """Farthest point sampling: x (B, N, 3) -> (B, m) int64 indices."""
    out = np.empty((x.shape[0], m), np.int64)
    ibits = np.empty(0, np.int32 if x.dtype == np.float32 else np.int64)
    _threaded(_fps_batch, x.shape[0], threads, x.shape[0] * x.shape[1] * m // 8, x, m, start, LEAF_SIZE, x.dtype.type(0), ibits, out)
    return out


def knn(q: np.ndarray, r: np.ndarray, k: int, threads: int = 1) -> np.ndarray:
    """Indices (B, S, k) int64 of the k nearest r (B, N, 3) points of every q (B, S, 3) point,
    sorted by (distance, index)."""
    out = np.empty((q.shape[0], q.shape[1], k), np.int64)
    rt = np.ascontiguousarray(r.transpose(0, 2, 1))  # (B, 3, N)
    _threaded(_knn_rows, q.shape[0] * q.shape[1], threads, q.size // 3 * r.shape[1], q, rt, k, out)
    return out


def ball_query(q: np.ndarray, r: np.ndarray, radius: float, k: int, threads: int = 1) -> np.ndarray:
    """Indices (B, S, k) int64 of the PointNet++ ball query (see :func:`_ball_rows`)."""
    out = np.empty((q.shape[0], q.shape[1], k), np.int64)
    rt = np.ascontiguousarray(r.transpose(0, 2, 1))  # (B, 3, N)
    _threaded(_ball_rows, q.shape[0] * q.shape[1], threads, q.size // 3 * r.shape[1], q, rt, q.dtype.type(radius**2), out)
    return out
