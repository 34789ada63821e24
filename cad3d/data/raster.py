"""Scanline rasterization of triangles into pixel fragments, shared by the drawing renderer's
z-buffer and the layered depth maps. Pure numpy, vectorized over all triangles at once."""

from __future__ import annotations

import numpy as np


def triangle_fragments(uv: np.ndarray, z: np.ndarray, tris: np.ndarray, viewport, shape):
    """Every (pixel centre, triangle) coverage of ``tris`` (T, 3) vertex ids inside ``viewport``
    (row0, col0, height, width) of an image of ``shape`` (H, W).

    uv: (V, 2) pixel coordinates (column, row); z: (V,) depth. Returns None when nothing is
    covered, else ``(flat, depth, tid, planes, kept)``: flat (N,) pixel indices ``row * W + col``,
    depth (N,) the triangle's depth at the pixel centre, tid (N,) index into ``kept`` (the ids of
    the non-degenerate triangles), planes (len(kept), 3) each kept triangle's screen-space depth
    plane ``z = a*u + b*v + c``.
    """
    r0, c0, vh, vw = viewport
    h, w = shape
    p = uv[tris]  # (T, 3, 2)
    zt = z[tris]  # (T, 3)
    x0, y0 = p[:, 0, 0], p[:, 0, 1]
    e1x, e1y = p[:, 1, 0] - x0, p[:, 1, 1] - y0
    e2x, e2y = p[:, 2, 0] - x0, p[:, 2, 1] - y0
    area2 = e1x * e2y - e2x * e1y
    ok = np.abs(area2) > 1e-10
    if not np.any(ok):
        return None
    kept = np.nonzero(ok)[0]
    p, zt = p[ok], zt[ok]
    x0, y0, e1x, e1y, e2x, e2y, area2 = (a[ok] for a in (x0, y0, e1x, e1y, e2x, e2y, area2))
    # Barycentrics as affine functions of the pixel position: b1 = A1 u + B1 v + C1, etc.
    A1, B1 = e2y / area2, -e2x / area2
    A2, B2 = -e1y / area2, e1x / area2
    C1 = -(A1 * x0 + B1 * y0)
    C2 = -(A2 * x0 + B2 * y0)
    dz1, dz2 = zt[:, 1] - zt[:, 0], zt[:, 2] - zt[:, 0]
    pa, pb, pc = A1 * dz1 + A2 * dz2, B1 * dz1 + B2 * dz2, zt[:, 0] + C1 * dz1 + C2 * dz2
    tri_planes = np.stack([pa, pb, pc], axis=1)

    # Scanlines: every pixel row whose centre lies in the triangle's vertical extent, clipped.
    iy0 = np.maximum(np.ceil(p[:, :, 1].min(axis=1) - 0.5), r0).astype(np.int64)
    iy1 = np.minimum(np.floor(p[:, :, 1].max(axis=1) - 0.5), min(r0 + vh, h) - 1).astype(np.int64)
    ny = np.maximum(iy1 - iy0 + 1, 0)
    n_rows = int(ny.sum())
    if n_rows == 0:
        return None
    rtid = np.repeat(np.arange(len(ny)), ny)  # (R,) triangle of each scanline
    row = iy0[rtid] + (np.arange(n_rows) - np.repeat(np.cumsum(ny) - ny, ny))
    vc = row + 0.5
    # On a scanline each barycentric is affine in u: b = A u + (B v + C) >= -eps bounds u on one side.
    A = np.stack([-A1 - A2, A1, A2], axis=1)[rtid]  # (R, 3)
    K = np.stack([-B1 - B2, B1, B2], axis=1)[rtid] * vc[:, None] + np.stack([1.0 - C1 - C2, C1, C2], axis=1)[rtid]
    eps = 1e-7
    with np.errstate(divide="ignore", invalid="ignore"):
        bound = (-eps - K) / A  # (R, 3)
    pos, neg = A > 0, A < 0
    u_lo = np.max(np.where(pos, bound, -np.inf), axis=1)
    u_hi = np.min(np.where(neg, bound, np.inf), axis=1)
    empty = np.any((A == 0) & (K < -eps), axis=1)
    jx0 = np.maximum(np.ceil(u_lo - 0.5), c0)
    jx1 = np.minimum(np.floor(u_hi - 0.5), min(c0 + vw, w) - 1)
    nx = np.where(empty, 0, np.maximum(jx1 - jx0 + 1, 0)).astype(np.int64)
    total = int(nx.sum())
    if total == 0:
        return None
    pid = np.repeat(np.arange(n_rows), nx)  # (N,) scanline of each pixel
    col = jx0.astype(np.int64)[pid] + (np.arange(total) - np.repeat(np.cumsum(nx) - nx, nx))
    row = row[pid]
    tid = rtid[pid]
    depth = pa[tid] * (col + 0.5) + pb[tid] * (row + 0.5) + pc[tid]
    return row * w + col, depth, tid, tri_planes, kept
