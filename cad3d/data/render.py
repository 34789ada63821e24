"""Technical drawings of meshes: black edge lines on white with hidden-line removal, plus the
depth map of the visible surface, for one or several orthographic cameras.

What is drawn, per camera (see ``cad3d.geometry.camera`` for the pixel conventions):

* sharp edges: the two faces meet at a dihedral angle above ``sharp_angle_deg`` (so the facets
  of a tessellated cylinder are not drawn, its end circles are);
* contours of smooth surfaces (a cylinder's outline), interpolated across faces from corner
  normals (``cad3d.data.contours``), so coarse and fine tessellations draw the same line; mesh
  edges between a front and a back face where interpolation does not apply (a cone's apex);
* boundary and non-manifold edges of open meshes; tangent edges (fillet boundaries) on request.

Visibility comes from a z-buffer rasterized at the output resolution (pixel centres, nearest
``c_z``) that also keeps the id of the nearest face. A point sampled on an edge is visible when,
somewhere in its 3x3 pixel neighbourhood, the nearest face's plane extended to the point is not
in front of it (or the pixel is background): the plane test is exact for the faces that own the
edge, and the neighbourhood keeps lines on silhouettes and creases. A contour point also looks
across the contour and accepts the faces around its own (``_visible_on_contour``). Hidden parts
are dropped or drawn dashed. Lines are drawn at ``supersample`` times the resolution and reduced with a block
minimum, which keeps them crisp (no anti-aliasing grey).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import trimesh
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from cad3d.data.contours import SmoothShading, contour_segments, smooth_shading, tangent_edge_mask
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
    dihedral angle above the threshold, or boundary/non-manifold; tangent: (E,) tangent edges
    to draw (none unless asked). normals: (F, 3) unit face normals (outward when the mesh is
    closed); valid: (F,) face has non-zero area; closed: every edge has exactly two consistently
    wound faces (then back faces never show and are skipped). wfaces: (F, 3) welded vertex ids;
    shading: corner normals for the interpolated contour.
    """

    edges: np.ndarray
    faces: np.ndarray
    flipped: np.ndarray
    sharp: np.ndarray
    tangent: np.ndarray
    normals: np.ndarray
    valid: np.ndarray
    closed: bool
    wfaces: np.ndarray
    shading: SmoothShading


def _pair_edges(faces: np.ndarray, n_vertices: int):
    """Group the directed edges of ``faces`` (F, 3) by undirected edge.

    Returns edges (E, 2), first and second face (E,) (-1 if none), the number of faces on each
    edge (E,) and whether the two faces run the edge in the same direction (E,).
    """
    if len(faces) == 0:
        none = np.zeros(0, dtype=np.int64)
        return np.zeros((0, 2), dtype=np.int64), none, none, none, np.zeros(0, dtype=bool)
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


def _look_through_slivers(points: np.ndarray, wfaces: np.ndarray, slivers: np.ndarray, edges: np.ndarray,
                          f0: np.ndarray, f1: np.ndarray, steps: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Edge faces (f0, f1) with zero-area slivers seen through.

    Boolean kernels leave collinear slivers where an edge of one face meets a vertex of another
    (a T-junction): a hex nut's corner edge then borders a sliver instead of the next side face,
    and with no normal on one side it would be neither sharp nor a silhouette (the outline breaks).
    An edge whose face is a sliver takes, in its place, the face across the sliver's longest
    edge, its real neighbour (a chain of slivers is followed up to ``steps`` times).

    points: (V, 3) welded vertex positions; wfaces: (F, 3) welded vertex ids; slivers: (F,) zero
    area though three distinct vertices; edges: (E, 2) welded vertex ids of the edges whose faces are f0, f1 (E,)
    (f1 = -1 on a boundary).
    """
    ids = np.flatnonzero(slivers)
    if len(ids) == 0 or len(edges) == 0:
        return f0, f1
    n = len(points) + 1
    key = np.minimum(edges[:, 0], edges[:, 1]) * n + np.maximum(edges[:, 0], edges[:, 1])  # (E,)
    order = np.argsort(key)
    tri = wfaces[ids]  # (S, 3)
    span = np.linalg.norm(points[np.roll(tri, -1, axis=1)] - points[tri], axis=2)  # (S, 3) edge k: k -> k+1
    k = np.argmax(span, axis=1)
    u, v = tri[np.arange(len(ids)), k], tri[np.arange(len(ids)), (k + 1) % 3]
    longest = np.minimum(u, v) * n + np.maximum(u, v)  # (S,) keys of the slivers' longest edges
    pos = order[np.clip(np.searchsorted(key[order], longest), 0, len(order) - 1)]
    across = np.full(len(slivers), -1, dtype=np.int64)  # sliver -> the face across its longest edge
    ok = key[pos] == longest
    across[ids[ok]] = np.where(f0[pos[ok]] == ids[ok], f1[pos[ok]], f0[pos[ok]])
    f0, f1 = f0.copy(), f1.copy()
    for _ in range(steps):
        for f, other in ((f0, f1), (f1, f0)):
            swap = (f >= 0) & (across[np.maximum(f, 0)] >= 0) & (across[np.maximum(f, 0)] != other)
            if not swap.any():
                continue
            f[swap] = across[f[swap]]
    return f0, f1


def _edge_topology(vertices: np.ndarray, faces: np.ndarray, sharp_angle_deg: float, with_tangent: bool) -> _EdgeTopology:
    tri = vertices[faces]  # (F, 3, 3)
    cross = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])  # (F, 3)
    norm = np.linalg.norm(cross, axis=1)
    lo_corner = vertices.min(axis=0)
    extent = max(float((vertices.max(axis=0) - lo_corner).max()), 1e-12)
    valid = norm > 1e-12 * extent * extent
    normals = cross / np.where(valid, norm, 1.0)[:, None]

    wfaces, rep = faces, np.arange(len(vertices))
    edges, f0, f1, counts, flipped = _pair_edges(faces, len(vertices))
    if np.any(counts != 2):
        # Open edges may be an artefact of unwelded vertices (e.g. STL): weld by position and retry.
        q = np.round((vertices - lo_corner) / extent * (2**20)).astype(np.int64)
        _, rep, inverse = np.unique((q[:, 0] << 42) | (q[:, 1] << 21) | q[:, 2], return_index=True,
                                    return_inverse=True)
        wfaces = inverse.reshape(-1)[faces]
    # Faces with a repeated vertex (the poles and apexes of CAD tessellations, once welded) bound
    # nothing: paired with real faces they would make stray open edges, drawn as dots.
    proper = (wfaces[:, 0] != wfaces[:, 1]) & (wfaces[:, 1] != wfaces[:, 2]) & (wfaces[:, 0] != wfaces[:, 2])
    if wfaces is not faces or not proper.all():
        kept = np.flatnonzero(proper)
        edges, f0, f1, counts, flipped = _pair_edges(wfaces[kept], len(rep))
        f0, f1 = kept[f0], np.where(f1 >= 0, kept[np.maximum(f1, 0)], -1)
        valid &= proper
        normals = np.where(proper[:, None], normals, 0.0)
    welded_edges, edges = edges, rep[edges]
    f0, f1 = _look_through_slivers(vertices[rep], wfaces, ~valid & proper, welded_edges, f0, f1)

    pair = counts == 2
    f1c = np.maximum(f1, 0)
    both_valid = valid[f0] & (f1 >= 0) & valid[f1c]
    cos_angle = np.einsum("ij,ij->i", normals[f0], normals[f1c])
    cos_angle = np.where(flipped, -cos_angle, cos_angle)
    sharp = (pair & both_valid & (cos_angle < np.cos(np.deg2rad(sharp_angle_deg)))) | ~pair
    smooth = pair & both_valid & ~sharp
    closed = bool(np.all(pair) and not np.any(flipped))
    if closed:
        # Each body (a set of faces joined by edges) faces outwards on its own: a multi-body
        # file may hold one body inside out.
        n_faces = len(faces)
        graph = coo_matrix((np.ones(len(f0)), (f0, f1)), shape=(n_faces, n_faces))
        n_bodies, body = connected_components(graph, directed=False)
        volume = np.bincount(body, weights=np.einsum("ij,ij->i", tri[:, 0], cross), minlength=n_bodies)
        normals = np.where((volume[body] < 0)[:, None], -normals, normals)  # inside-out bodies
    edge_faces = np.stack([f0, f1], axis=1)
    tangent = (tangent_edge_mask(tri, valid, edge_faces, smooth, cos_angle) if with_tangent
               else np.zeros(len(edges), dtype=bool))
    return _EdgeTopology(
        edges=edges,
        faces=edge_faces,
        flipped=flipped,
        sharp=sharp,
        tangent=tangent,
        normals=normals,
        valid=valid,
        closed=closed,
        wfaces=wfaces,
        shading=smooth_shading(tri, wfaces, normals, valid, welded_edges, edge_faces, smooth, cos_angle),
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


def _pixel_lookup(su: np.ndarray, offsets_rc: np.ndarray, fid: np.ndarray, cam: OrthoCamera) -> np.ndarray:
    """(K, S) face id seen at the pixels ``offsets_rc`` (K, 2) (rows, columns; or (K, S, 2))
    away from the pixels holding ``su`` (S, 2), clipped to the camera's viewport."""
    h, w = fid.shape
    r0, c0, vh, vw = cam.viewport
    rc = np.asarray(offsets_rc)
    if rc.ndim == 2:
        rc = np.broadcast_to(rc[:, None, :], (len(rc), len(su), 2))
    rr = np.clip(np.floor(su[:, 1]).astype(np.int64)[None, :] + rc[..., 0], r0, min(r0 + vh, h) - 1)
    cc = np.clip(np.floor(su[:, 0]).astype(np.int64)[None, :] + rc[..., 1], c0, min(c0 + vw, w) - 1)
    return fid[rr, cc]


def _not_behind(f: np.ndarray, su: np.ndarray, sz: np.ndarray, planes: np.ndarray, tol: float) -> np.ndarray:
    """(K, S) pixel shows background, or its face's plane extended to ``su`` is not in front."""
    pl = planes[np.maximum(f, 0)]  # (K, S, 3)
    plane_depth = pl[..., 0] * su[:, 0] + pl[..., 1] * su[:, 1] + pl[..., 2]
    return (f < 0) | (plane_depth >= sz - tol)


def _visible_on_edges(su: np.ndarray, sz: np.ndarray, fid: np.ndarray, planes: np.ndarray, cam: OrthoCamera) -> np.ndarray:
    """(S,) visibility of points ``su`` (S, 2) at depth ``sz`` (S,) on mesh edges: some pixel of
    the 3x3 neighbourhood sees background or a face whose plane is not in front of the point."""
    tol = 0.5 / cam.scale
    visible = np.zeros(len(sz), dtype=bool)
    todo = np.arange(len(sz))
    # The centre pixel settles most samples; only the rest look at all 9 neighbours.
    for offsets_rc in (_NEIGHBOURS[4:5], _NEIGHBOURS):
        f = _pixel_lookup(su[todo], offsets_rc, fid, cam)
        visible[todo] = np.any(_not_behind(f, su[todo], sz[todo], planes, tol), axis=0)
        todo = todo[~visible[todo]]
    return visible


def _visible_on_contour(su, sz, screen, face, fid, planes, wfaces, cam: OrthoCamera) -> np.ndarray:
    """(C,) visibility of contour points ``su`` (C, 2) at depth ``sz`` (C,) on faces ``face``
    (C,), whose normals point along ``screen`` (C, 2) in the image.

    The surface bends away from the eye there, so the faces seen right next to a contour are in
    front of it yet hide nothing: a point is visible when a pixel beside it, across the contour
    (the normal's side, either sign as open meshes may be wound either way) or in its 3x3
    neighbourhood, sees background, a face not in front, or a face sharing a vertex with its own.
    """
    steps = np.array([1.5, -1.5, 2.5, -2.5])
    across = np.floor(steps[:, None, None] * screen[None, :, ::-1] + 0.5).astype(np.int64)  # (4, C, 2) rows, cols
    near = np.broadcast_to(_NEIGHBOURS[:, None, :], (len(_NEIGHBOURS), len(su), 2))
    f = _pixel_lookup(su, np.concatenate([across, near]), fid, cam)  # (13, C)
    local = np.any(wfaces[np.maximum(f, 0)][..., :, None] == wfaces[face][None, :, None, :], axis=(-2, -1))
    return np.any(_not_behind(f, su, sz, planes, 0.5 / cam.scale) | ((f >= 0) & local), axis=0)


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
    # Smooth surfaces get the interpolated contour; mesh silhouettes only where it does not run.
    polygonal = ~topo.shading.interpolated[f0] | ~topo.shading.interpolated[f1c]
    selected = np.flatnonzero(topo.sharp | topo.tangent | (silhouette & (topo.sharp | polygonal)))
    p0, p1, n0, n1, cface, convex = contour_segments(vertices[faces], topo.shading, cam.forward)

    # Segment ends in pixels: mesh edges first, then contour segments.
    a, b = topo.edges[selected, 0], topo.edges[selected, 1]
    (uc0, zc0), (uc1, zc1) = cam.project(p0), cam.project(p1)
    ua, ub = np.concatenate([uv[a], uc0]), np.concatenate([uv[b], uc1])  # (N, 2)
    za, zb = np.concatenate([z[a], zc0]), np.concatenate([z[b], zc1])  # (N,)
    if len(ua) == 0:
        return

    # Sample each segment densely in screen space (midpoints of equal sub-segments).
    length = np.linalg.norm(ub - ua, axis=1)
    n = np.maximum(np.ceil(length * supersample * SAMPLES_PER_PX).astype(np.int64), 1) + 1
    eid = np.repeat(np.arange(len(ua)), n)
    k = np.arange(int(n.sum())) - np.repeat(np.cumsum(n) - n, n)
    t = (k + 0.5) / n[eid]
    su = ua[eid] + t[:, None] * (ub - ua)[eid]  # (S, 2)
    sz = za[eid] + t * (zb - za)[eid]  # (S,)

    visible = _visible_on_edges(su, sz, fid, planes, cam)
    on_contour = np.flatnonzero((eid >= len(selected)) & ~visible)
    if len(on_contour):
        seg = eid[on_contour] - len(selected)
        tc = t[on_contour, None]
        normal = n0[seg] + tc * (n1[seg] - n0[seg])  # (C, 3)
        screen = np.stack([normal @ cam.R[0], -(normal @ cam.R[1])], axis=1)  # (C, 2) pixels
        screen /= np.maximum(np.linalg.norm(screen, axis=1), 1e-12)[:, None]
        visible[on_contour] = _visible_on_contour(su[on_contour], sz[on_contour], screen, cface[seg], fid,
                                                  planes, topo.wfaces, cam)
    if topo.closed and len(convex):  # outward normals: concave contours are hidden by their own surface
        on_concave = (eid >= len(selected)) & ~convex[np.maximum(eid - len(selected), 0)]
        visible[on_concave] = False

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
    tangent_edges: bool = False,
) -> Drawing:
    """Draw ``mesh`` as a technical drawing seen by ``cameras`` (each into its viewport).

    mesh: a mesh in the normalized frame (inside the unit sphere), outward-facing normals.
    hidden: "none" omits hidden edges, "dashed" draws them dashed.
    line_width: line width in output pixels. sharp_angle_deg: dihedral angle (degrees) above
    which an edge is drawn. supersample: resolution factor the lines are drawn at.
    tangent_edges: also draw where a planar face meets a curved one tangentially (fillet
    boundaries). Off by default, as in ISO 128 views: those edges are not outlines.
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
        topo = _edge_topology(vertices, faces, sharp_angle_deg, tangent_edges)
        offsets = _disk_offsets(max((line_width * s - 1.0) / 2.0, 0.0))
        for cam in cameras:
            _draw_camera(cam, vertices, faces, topo, zbuf, fid, lines, hidden=hidden, supersample=s, offsets=offsets)

    image = np.where(lines, 0, 255).astype(np.uint8)
    depth = np.where(np.isfinite(zbuf), zbuf, 0.0).astype(np.float32)
    return Drawing(image=image, depth=depth, cameras=list(cameras))
