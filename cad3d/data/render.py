"""Technical drawings of meshes: black edge lines on white with hidden-line removal, plus the
depth map of the visible surface, for one or several orthographic cameras.

What is drawn, per camera (see ``cad3d.geometry.camera`` for the pixel conventions):

* sharp edges: the two faces meet at a dihedral angle above ``sharp_angle_deg`` (so the facets
  of a tessellated cylinder are not drawn, its end circles are);
* silhouette edges: one face turns towards the camera, the other away (a cylinder's outline);
* boundary and non-manifold edges of open meshes.

Visibility comes from a z-buffer rasterized at the output resolution (pixel centres, nearest
``c_z``) that also keeps the id of the nearest face. A point sampled on an edge is visible when,
somewhere in its 3x3 pixel neighbourhood, the nearest face's plane extended to the point is not
in front of it (or the pixel is background): the plane test is exact for the faces that own the
edge, and the neighbourhood keeps lines on silhouettes and creases. Hidden parts are dropped or
drawn dashed. Lines are drawn at ``supersample`` times the resolution and reduced with a block
minimum, which keeps them crisp (no anti-aliasing grey).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import trimesh

from cad3d.data.raster import triangle_fragments
from cad3d.geometry.camera import OrthoCamera

# Dash pattern of hidden lines, in output pixels.
DASH_ON_PX = 4.0
DASH_PERIOD_PX = 7.0
# Edge samples per output pixel of edge length, times ``supersample`` (spacing below one pixel).
SAMPLES_PER_PX = 0.75


@dataclass
class Drawing:
    """A rendered drawing.

    image: (H, W) uint8, 255 = white background, 0 = line.
    depth: (H, W) float32 camera depth ``c_z`` of the visible surface at each pixel centre,
        0 where no surface is seen.
    cameras: the cameras drawn, each into its own viewport.
    """

    image: np.ndarray
    depth: np.ndarray
    cameras: list[OrthoCamera]


@dataclass
class _EdgeTopology:
    """Camera-independent edge data of a mesh.

    edges: (E, 2) vertex ids; faces: (E, 2) ids of the two adjacent faces (second = -1 on a
    boundary); flipped: (E,) the two faces are wound inconsistently across the edge; sharp: (E,)
    dihedral angle above the threshold, or boundary/non-manifold. normals: (F, 3) unit face
    normals (outward when the mesh is closed); valid: (F,) face has non-zero area; closed: every
    edge has exactly two consistently wound faces (then back faces never show and are skipped).
    """

    edges: np.ndarray
    faces: np.ndarray
    flipped: np.ndarray
    sharp: np.ndarray
    normals: np.ndarray
    valid: np.ndarray
    closed: bool


def _pair_edges(faces: np.ndarray, n_vertices: int):
    """Group the directed edges of ``faces`` (F, 3) by undirected edge.

    Returns edges (E, 2), first and second face (E,) (-1 if none), the number of faces on each
    edge (E,) and whether the two faces run the edge in the same direction (E,).
    """
    half = faces[:, [0, 1, 1, 2, 2, 0]].reshape(-1, 2)  # (3F, 2) directed edges
    lo, hi = half.min(axis=1), half.max(axis=1)
    key = lo.astype(np.int64) * (n_vertices + 1) + hi
    order = np.argsort(key, kind="stable")
    key_sorted = key[order]
    starts = np.flatnonzero(np.r_[True, key_sorted[1:] != key_sorted[:-1]])
    counts = np.diff(np.r_[starts, len(key_sorted)])
    first = order[starts]
    second = order[np.minimum(starts + 1, len(order) - 1)]
    f0 = first // 3
    f1 = np.where(counts >= 2, second // 3, -1)
    same_direction = (counts >= 2) & (half[first, 0] == half[second, 0])
    return np.stack([lo[first], hi[first]], axis=1), f0, f1, counts, same_direction


def _edge_topology(vertices: np.ndarray, faces: np.ndarray, sharp_angle_deg: float) -> _EdgeTopology:
    tri = vertices[faces]  # (F, 3, 3)
    cross = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])  # (F, 3)
    norm = np.linalg.norm(cross, axis=1)
    lo_corner = vertices.min(axis=0)
    extent = max(float((vertices.max(axis=0) - lo_corner).max()), 1e-12)
    valid = norm > 1e-12 * extent * extent
    normals = cross / np.where(valid, norm, 1.0)[:, None]

    edges, f0, f1, counts, flipped = _pair_edges(faces, len(vertices))
    if np.any(counts != 2):
        # Open edges may be an artefact of unwelded vertices (e.g. STL): weld by position and retry.
        q = np.round((vertices - lo_corner) / extent * (2**20)).astype(np.int64)
        _, rep, inverse = np.unique((q[:, 0] << 42) | (q[:, 1] << 21) | q[:, 2], return_index=True,
                                    return_inverse=True)
        edges, f0, f1, counts, flipped = _pair_edges(inverse.reshape(-1)[faces], len(rep))
        edges = rep[edges]

    pair = counts == 2
    f1c = np.maximum(f1, 0)
    both_valid = valid[f0] & (f1 >= 0) & valid[f1c]
    cos_angle = np.einsum("ij,ij->i", normals[f0], normals[f1c])
    cos_angle = np.where(flipped, -cos_angle, cos_angle)
    sharp = (pair & both_valid & (cos_angle < np.cos(np.deg2rad(sharp_angle_deg)))) | ~pair
    closed = bool(np.all(pair) and not np.any(flipped))
    if closed:
        signed_volume = np.einsum("ij,ij->", tri[:, 0], cross) / 6.0
        if signed_volume < 0:  # inside-out mesh
            normals = -normals
    return _EdgeTopology(
        edges=edges,
        faces=np.stack([f0, f1], axis=1),
        flipped=flipped,
        sharp=sharp,
        normals=normals,
        valid=valid,
        closed=closed,
    )


def _rasterize(uv: np.ndarray, z: np.ndarray, tris: np.ndarray, face_ids: np.ndarray, viewport, zbuf, fid, planes):
    """Z-buffer ``tris`` (T, 3) vertex ids into ``zbuf``/``fid`` (H, W) inside ``viewport``.

    uv: (V, 2) pixel coordinates (column, row); z: (V,) depth. Each pixel centre covered by a
    triangle gets the triangle's depth there; the nearest wins. ``planes`` (F, 3) receives the
    screen-space depth plane ``z = a*u + b*v + c`` of each drawn face.
    """
    frags = triangle_fragments(uv, z, tris, viewport, zbuf.shape)
    if frags is None:
        return
    flat, depth, tid, tri_planes, kept = frags
    planes[face_ids[kept]] = tri_planes
    zflat = zbuf.reshape(-1)
    np.minimum.at(zflat, flat, depth)
    win = depth <= zflat[flat]
    fid.reshape(-1)[flat[win]] = face_ids[kept][tid[win]]


_NEIGHBOURS = np.array([(dr, dc) for dr in (-1, 0, 1) for dc in (-1, 0, 1)], dtype=np.int64)  # (9, 2)


def _disk_offsets(radius: float) -> np.ndarray:
    """(K, 2) integer (drow, dcol) offsets within ``radius`` pixels."""
    r = int(np.floor(radius))
    d = np.arange(-r, r + 1)
    dr, dc = np.meshgrid(d, d, indexing="ij")
    keep = dr**2 + dc**2 <= radius**2 + 1e-9
    return np.stack([dr[keep], dc[keep]], axis=1)


def _draw_camera(
    cam: OrthoCamera,
    vertices: np.ndarray,
    faces: np.ndarray,
    topo: _EdgeTopology,
    zbuf: np.ndarray,
    fid: np.ndarray,
    lines: np.ndarray,
    *,
    hidden: str,
    supersample: int,
    offsets: np.ndarray,
) -> None:
    h, w = zbuf.shape
    r0, c0, vh, vw = cam.viewport
    uv, z = cam.project(vertices)  # (V, 2), (V,)

    facing = topo.normals @ cam.forward  # (F,) < 0: towards the eye
    front = (facing < -1e-9) & topo.valid
    draw_faces = np.flatnonzero(front if topo.closed else topo.valid)
    planes = np.zeros((len(faces), 3))
    _rasterize(uv, z, faces[draw_faces], draw_faces, cam.viewport, zbuf, fid, planes)

    f0, f1 = topo.faces[:, 0], topo.faces[:, 1]
    f1c = np.maximum(f1, 0)
    # Across an inconsistently wound edge the second face's normal counts reversed.
    front1 = np.where(topo.flipped, (-facing[f1c] < -1e-9) & topo.valid[f1c], front[f1c])
    silhouette = (f1 >= 0) & topo.valid[f0] & topo.valid[f1c] & (front[f0] != front1)
    selected = np.flatnonzero(topo.sharp | silhouette)
    if len(selected) == 0:
        return

    # Sample each selected edge densely in screen space (midpoints of equal sub-segments).
    a, b = topo.edges[selected, 0], topo.edges[selected, 1]
    ua, ub, za, zb = uv[a], uv[b], z[a], z[b]
    length = np.linalg.norm(ub - ua, axis=1)
    n = np.maximum(np.ceil(length * supersample * SAMPLES_PER_PX).astype(np.int64), 1) + 1
    eid = np.repeat(np.arange(len(selected)), n)
    k = np.arange(int(n.sum())) - np.repeat(np.cumsum(n) - n, n)
    t = (k + 0.5) / n[eid]
    su = ua[eid] + t[:, None] * (ub - ua)[eid]  # (S, 2)
    sz = za[eid] + t * (zb - za)[eid]  # (S,)

    # Visibility against the face planes of the 3x3 pixel neighbourhood.
    col = np.floor(su[:, 0]).astype(np.int64)
    row = np.floor(su[:, 1]).astype(np.int64)
    tol = 0.5 / cam.scale
    visible = np.zeros(len(sz), dtype=bool)
    todo = np.arange(len(sz))
    # The centre pixel settles most samples; only the rest look at all 9 neighbours.
    for offsets_rc in (_NEIGHBOURS[4:5], _NEIGHBOURS):
        rr = np.clip(row[todo][None, :] + offsets_rc[:, :1], r0, min(r0 + vh, h) - 1)  # (K, T)
        cc = np.clip(col[todo][None, :] + offsets_rc[:, 1:], c0, min(c0 + vw, w) - 1)
        f = fid[rr, cc]
        pl = planes[np.maximum(f, 0)]  # (K, T, 3)
        plane_depth = pl[..., 0] * su[todo, 0] + pl[..., 1] * su[todo, 1] + pl[..., 2]
        visible[todo] = np.any((f < 0) | (plane_depth >= sz[todo] - tol), axis=0)
        todo = todo[~visible[todo]]

    keep = visible
    if hidden == "dashed":
        d = (ub - ua)[eid]
        along = np.where(np.abs(d[:, 0]) >= np.abs(d[:, 1]), su[:, 0], su[:, 1])
        keep = visible | (np.mod(along, DASH_PERIOD_PX) < DASH_ON_PX)
    # Marking a pixel of the supersampled canvas and reducing each s x s block with "any" is the
    # same as marking the output pixel that holds it, so no supersampled canvas is needed.
    pts = su[keep] * supersample
    prow = np.floor(pts[:, 1]).astype(np.int64)
    pcol = np.floor(pts[:, 0]).astype(np.int64)
    if len(offsets) > 1:
        prow = (prow[:, None] + offsets[None, :, 0]).ravel()
        pcol = (pcol[:, None] + offsets[None, :, 1]).ravel()
    prow, pcol = prow // supersample, pcol // supersample
    inside = (prow >= r0) & (prow < min(r0 + vh, h)) & (pcol >= c0) & (pcol < min(c0 + vw, w))
    lines[prow[inside], pcol[inside]] = True


def render_drawing(
    mesh: trimesh.Trimesh,
    cameras: list[OrthoCamera],
    *,
    hidden: str = "none",
    line_width: float = 1.0,
    sharp_angle_deg: float = 30.0,
    supersample: int = 2,
) -> Drawing:
    """Draw ``mesh`` as a technical drawing seen by ``cameras`` (each into its viewport).

    mesh: a mesh in the normalized frame (inside the unit sphere), outward-facing normals.
    hidden: "none" omits hidden edges, "dashed" draws them dashed.
    line_width: line width in output pixels. sharp_angle_deg: dihedral angle (degrees) above
    which an edge is drawn. supersample: resolution factor the lines are drawn at.
    Returns a :class:`Drawing` of the cameras' common ``image_size`` (H, W).
    """
    if hidden not in ("none", "dashed"):
        raise ValueError(f"hidden must be 'none' or 'dashed', got {hidden!r}")
    if not cameras:
        raise ValueError("render_drawing needs at least one camera")
    h, w = cameras[0].image_size
    if any(tuple(c.image_size) != (h, w) for c in cameras):
        raise ValueError("all cameras of one drawing must share image_size")
    s = max(int(supersample), 1)

    vertices = np.asarray(mesh.vertices, dtype=np.float64)
    faces = np.asarray(mesh.faces, dtype=np.int64)
    zbuf = np.full((h, w), np.inf)
    fid = np.full((h, w), -1, dtype=np.int64)
    lines = np.zeros((h, w), dtype=bool)
    if len(faces):
        topo = _edge_topology(vertices, faces, sharp_angle_deg)
        offsets = _disk_offsets(max((line_width * s - 1.0) / 2.0, 0.0))
        for cam in cameras:
            _draw_camera(cam, vertices, faces, topo, zbuf, fid, lines, hidden=hidden, supersample=s, offsets=offsets)

    image = np.where(lines, 0, 255).astype(np.uint8)
    depth = np.where(np.isfinite(zbuf), zbuf, 0.0).astype(np.float32)
    return Drawing(image=image, depth=depth, cameras=list(cameras))
