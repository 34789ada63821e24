"""Contour generators (silhouettes) of the smooth parts of a mesh, and its tangent edges.

A smooth surface's contour is where its normal is perpendicular to the view. On a mesh it is
taken from corner normals interpolated over each face ("interpolated contour", Hertzmann & Zorin
2000): a corner normal averages the faces around its vertex that are joined to it across smooth
edges (not across sharp ones), and the contour crosses a face where ``normal . view`` changes sign
between its corners. Both faces of an edge compute the same crossing on it, so the contour is a
continuous polyline whatever the tessellation, and coarse and fine meshes of one surface agree.

Interpolating normals is wrong at singular vertices such as a cone's apex, where the faces around
a vertex turn much more than any of its edges bends; faces touching one keep the polygonal
silhouette (mesh edges between front and back faces) instead.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

# A vertex is singular when its corner group's faces deviate from their mean normal by more than
# this many times the largest bend of the smooth edges between them (and by SINGULAR_MIN_DEG).
SINGULAR_SPREAD_RATIO = 2.0
SINGULAR_MIN_DEG = 5.0
# Tangent edges: see tangent_edge_mask. Widths are area / extent in normalized units.
FLAT_DEG = 0.5
PLANAR_MIN_WIDTH = 0.04
TANGENT_WIDTH_RATIO = 3.0


@dataclass
class SmoothShading:
    """Camera-independent data of the smooth parts of a mesh.

    corner_normals: (F, 3, 3) unit normal at each face corner, oriented like its face's normal.
    interpolated: (F,) faces whose contour is interpolated (valid, no singular corner); the
    others' silhouettes are mesh edges.
    """

    corner_normals: np.ndarray
    interpolated: np.ndarray


def _corner_angles(tri: np.ndarray) -> np.ndarray:
    """(F, 3) interior angle at each corner of the triangles (F, 3, 3)."""
    a = np.roll(tri, -1, axis=1) - tri  # (F, 3, 3) to the next corner
    b = np.roll(tri, 1, axis=1) - tri  # (F, 3, 3) to the previous corner
    na = np.linalg.norm(a, axis=2)
    nb = np.linalg.norm(b, axis=2)
    cos = np.einsum("fkc,fkc->fk", a, b) / np.maximum(na * nb, 1e-300)
    return np.arccos(np.clip(cos, -1.0, 1.0))


def _components(n: int, src: np.ndarray, dst: np.ndarray) -> tuple[int, np.ndarray]:
    """Connected components of the graph on ``n`` nodes with edges ``src``-``dst`` (E,):
    (number, label (n,)). Minimum-label propagation with pointer jumping; the groups here are
    corners around one vertex, so it settles in a few rounds (cheaper than a sparse matrix)."""
    label = np.arange(n)
    while True:
        low = np.minimum(label[src], label[dst])
        new = label.copy()
        np.minimum.at(new, src, low)
        np.minimum.at(new, dst, low)
        new = new[new]
        if np.array_equal(new, label):
            break
        label = new
    roots, label = np.unique(label, return_inverse=True)
    return len(roots), label


def _corner_of(wfaces: np.ndarray, face: np.ndarray, vertex: np.ndarray) -> np.ndarray:
    """(E,) flat corner index ``3 * face + k`` of ``vertex`` in ``face``."""
    k = np.argmax(wfaces[face] == vertex[:, None], axis=1)
    return 3 * face + k


def smooth_shading(
    tri: np.ndarray,
    wfaces: np.ndarray,
    normals: np.ndarray,
    valid: np.ndarray,
    edges: np.ndarray,
    edge_faces: np.ndarray,
    smooth: np.ndarray,
    cos_angle: np.ndarray,
) -> SmoothShading:
    """Corner normals averaged across smooth edges, and the faces whose contour is interpolated.

    tri: (F, 3, 3) triangle corners; wfaces: (F, 3) welded vertex ids; normals: (F, 3) unit face
    normals; valid: (F,) non-degenerate faces; edges: (E, 2) welded vertex ids; edge_faces:
    (E, 2) its two faces; smooth: (E,) edges the surface continues smoothly across (both faces
    valid); cos_angle: (E,) cosine of the bend between the two faces (winding-corrected).
    """
    n_faces = len(wfaces)
    corner_normals = np.repeat(normals[:, None, :], 3, axis=1)  # (F, 3, 3)
    # Only vertices on a bent smooth edge have corners whose normals differ from their faces'.
    bent = smooth & (cos_angle < np.cos(np.deg2rad(FLAT_DEG)))
    curved = np.zeros(int(wfaces.max()) + 1 if n_faces else 0, dtype=bool)
    curved[edges[bent].ravel()] = True
    node_of = np.full(3 * n_faces, -1)
    nodes = np.flatnonzero(curved[wfaces].ravel())  # (C,) flat corner ids 3 * face + k
    if len(nodes) == 0:
        return SmoothShading(corner_normals=corner_normals, interpolated=valid.copy())
    node_of[nodes] = np.arange(len(nodes))

    sel = np.flatnonzero(smooth)
    f0, f1 = edge_faces[sel, 0], edge_faces[sel, 1]
    # Across a smooth edge, the corners of its two faces at each end vertex are one group.
    src = np.concatenate([_corner_of(wfaces, f0, edges[sel, 0]), _corner_of(wfaces, f0, edges[sel, 1])])
    dst = np.concatenate([_corner_of(wfaces, f1, edges[sel, 0]), _corner_of(wfaces, f1, edges[sel, 1])])
    cos_sel = np.concatenate([cos_angle[sel], cos_angle[sel]])
    link = node_of[src] >= 0
    src, dst, cos_sel = node_of[src[link]], node_of[dst[link]], cos_sel[link]
    n_groups, label = _components(len(nodes), src, dst)
    corner_face = nodes // 3  # (C,)

    # Group-wise reductions over corners sorted by group.
    order = np.argsort(label, kind="stable")
    starts = np.flatnonzero(np.r_[True, label[order][1:] != label[order][:-1]])  # (G,)

    # Winding may be inconsistent: orient every member like the group's first face first.
    ref = normals[corner_face[order[starts]]]  # (G, 3)
    fn = normals[corner_face]  # (C, 3)
    sign = np.where(np.einsum("ij,ij->i", fn, ref[label]) < 0, -1.0, 1.0)  # (C,)
    weight = _corner_angles(tri).reshape(-1)[nodes] * valid[corner_face]  # (C,) angle-weighted average
    total = np.add.reduceat(((sign * weight)[:, None] * fn)[order], starts, axis=0)  # (G, 3)
    length = np.linalg.norm(total, axis=1)
    mean = total / np.maximum(length, 1e-300)[:, None]  # (G, 3)
    # Corners of degenerate faces alone in their group have no normal: they keep the face's own.
    has_normal = (length >= 1e-12)[label]
    flat_normals = corner_normals.reshape(-1, 3)
    flat_normals[nodes[has_normal]] = (sign[:, None] * mean[label])[has_normal]

    # Singular vertices: the spread of the group's normals against the largest bend within it.
    agree = np.where(valid[corner_face], np.abs(np.einsum("ij,ij->i", fn, mean[label])), 1.0)  # (C,)
    spread = np.minimum.reduceat(agree[order], starts)  # (G,)
    bend = np.ones(n_groups)
    if len(src):
        group_of_edge = label[src]
        by_group = np.argsort(group_of_edge, kind="stable")
        g_sorted = group_of_edge[by_group]
        g_starts = np.flatnonzero(np.r_[True, g_sorted[1:] != g_sorted[:-1]])
        bend[g_sorted[g_starts]] = np.minimum.reduceat(cos_sel[by_group], g_starts)
    spread_deg = np.rad2deg(np.arccos(np.clip(spread, -1.0, 1.0)))
    bend_deg = np.rad2deg(np.arccos(np.clip(bend, -1.0, 1.0)))
    singular = (spread_deg > SINGULAR_SPREAD_RATIO * bend_deg) & (spread_deg > SINGULAR_MIN_DEG)
    singular_corner = np.zeros(3 * n_faces, dtype=bool)
    singular_corner[nodes] = singular[label]
    interpolated = valid & ~singular_corner.reshape(n_faces, 3).any(axis=1)
    return SmoothShading(corner_normals=corner_normals, interpolated=interpolated)


def contour_segments(
    tri: np.ndarray, shading: SmoothShading, forward: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Segments of the interpolated contour seen along ``forward`` (3,).

    Returns start and end points (S, 3) each, the interpolated normals there (S, 3) each, the
    face (S,) each segment crosses, and whether the surface is convex along the view there (S,):
    with outward normals, a concave contour (inside a bore) is always hidden by its own surface.
    """
    g = shading.corner_normals @ forward  # (F, 3)
    positive = g > 0
    count = positive.sum(axis=1)
    crossed = np.flatnonzero(shading.interpolated & (count > 0) & (count < 3))
    # The corner on its own side of the contour: the one positive corner, or the one negative.
    lone = np.where(count[crossed] == 1, np.argmax(positive[crossed], axis=1), np.argmin(positive[crossed], axis=1))
    ends = []
    for step in (1, 2):
        other = (lone + step) % 3
        gi = g[crossed, lone]
        go = g[crossed, other]
        t = (gi / (gi - go))[:, None]  # gi and go differ in sign: t in [0, 1]
        p = tri[crossed, lone] + t * (tri[crossed, other] - tri[crossed, lone])
        n = shading.corner_normals[crossed, lone] + t * (
            shading.corner_normals[crossed, other] - shading.corner_normals[crossed, lone]
        )
        ends.append((p, n))
    # Convex where n . forward grows along forward: the gradient of the linear g over the face,
    # sum_i g_i (N x e_i) / |N|^2 with e_i the edge opposite corner i, dotted with forward.
    corners = tri[crossed]  # (S, 3, 3)
    big_n = np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0])  # (S, 3)
    opposite = np.roll(corners, -2, axis=1) - np.roll(corners, -1, axis=1)  # (S, 3, 3)
    slope = np.einsum("sk,skc,c->s", g[crossed], np.cross(big_n[:, None, :], opposite), forward)
    return ends[0][0], ends[1][0], ends[0][1], ends[1][1], crossed, slope > 0


def tangent_edge_mask(
    tri: np.ndarray,
    valid: np.ndarray,
    edge_faces: np.ndarray,
    smooth: np.ndarray,
    cos_angle: np.ndarray,
) -> np.ndarray:
    """(E,) smooth edges where a planar region meets a curved surface (fillet boundaries).

    Planar regions are faces joined across edges bent less than FLAT_DEG. A bent edge is a
    tangent edge when the region on one side is at least PLANAR_MIN_WIDTH wide and
    TANGENT_WIDTH_RATIO times wider than the other: the facets of a tessellated cylinder are all
    alike and show no lines, a plate running into a fillet's narrow facets does.
    """
    n_faces = len(tri)
    flat = smooth & (cos_angle > np.cos(np.deg2rad(FLAT_DEG)))
    f0, f1 = edge_faces[flat, 0], edge_faces[flat, 1]
    graph = coo_matrix((np.ones(len(f0)), (f0, f1)), shape=(n_faces, n_faces))
    n_regions, region = connected_components(graph, directed=False)
    area = 0.5 * np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1) * valid
    region_area = np.bincount(region, weights=area, minlength=n_regions)
    lo = np.full((n_regions, 3), np.inf)
    hi = np.full((n_regions, 3), -np.inf)
    np.minimum.at(lo, region, tri.min(axis=1))
    np.maximum.at(hi, region, tri.max(axis=1))
    width = region_area / np.maximum(np.linalg.norm(hi - lo, axis=1), 1e-12)  # (R,) area / extent
    w0 = width[region[edge_faces[:, 0]]]
    w1 = width[region[np.maximum(edge_faces[:, 1], 0)]]
    wide, narrow = np.maximum(w0, w1), np.minimum(w0, w1)
    return smooth & ~flat & (wide >= PLANAR_MIN_WIDTH) & (wide >= TANGENT_WIDTH_RATIO * narrow)
