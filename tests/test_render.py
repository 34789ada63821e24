"""Technical-drawing renderer: lines where a drafter puts them, depth that lifts onto the mesh."""

import numpy as np
import pytest
import trimesh
from scipy import ndimage
from scipy.spatial import ConvexHull

from cad3d.data.parts import make_part
from cad3d.data.render import Drawing, render_drawing
from cad3d.geometry.camera import FRONT_FORWARD, OrthoCamera, iso_camera, random_camera, three_view_cameras

BOX_EXTENTS = np.array([1.0, 0.8, 0.6])


def _normalized(mesh: trimesh.Trimesh) -> trimesh.Trimesh:
    mesh = mesh.copy()
    mesh.apply_translation(-(mesh.bounds[0] + mesh.bounds[1]) / 2)
    mesh.apply_scale(1.0 / np.linalg.norm(mesh.vertices, axis=1).max())
    return mesh


@pytest.fixture(scope="module")
def box():
    return _normalized(trimesh.creation.box(extents=BOX_EXTENTS))


def _ink_near(image, uv, radius=1):
    """(N,) whether any black pixel lies within ``radius`` pixels of each (u, v) point."""
    h, w = image.shape
    col, row = np.floor(uv[:, 0]).astype(int), np.floor(uv[:, 1]).astype(int)
    hit = np.zeros(len(uv), dtype=bool)
    for dr in range(-radius, radius + 1):
        for dc in range(-radius, radius + 1):
            hit |= image[np.clip(row + dr, 0, h - 1), np.clip(col + dc, 0, w - 1)] == 0
    return hit


def _along(uv_a, uv_b, n=60, trim=0.15):
    t = np.linspace(trim, 1 - trim, n)[:, None]
    return uv_a + t * (uv_b - uv_a)


def test_image_and_depth_format(box):
    drawing = render_drawing(box, [iso_camera()])
    assert isinstance(drawing, Drawing)
    assert drawing.image.shape == (256, 256) and drawing.image.dtype == np.uint8
    assert drawing.depth.shape == (256, 256) and drawing.depth.dtype == np.float32
    assert set(np.unique(drawing.image)) == {0, 255}  # crisp, no grey
    assert drawing.image[0, 0] == 255 and drawing.image[-1, -1] == 255
    assert 200 < (drawing.image == 0).sum() < 0.2 * drawing.image.size
    assert drawing.depth[0, 0] == 0 and drawing.depth.max() > 0
    assert len(drawing.cameras) == 1


def test_box_silhouette_and_visible_edges_are_drawn(box):
    cam = iso_camera()
    image = render_drawing(box, [cam]).image
    corners = trimesh.creation.box(extents=BOX_EXTENTS).vertices
    corners = corners / np.linalg.norm(corners, axis=1).max()
    uv, depth = cam.project(corners)
    nearest = np.argmin(depth)
    # The three edges from the corner nearest the eye are visible sharp edges.
    for other in range(8):
        if np.sum(np.abs(corners[other] - corners[nearest]) > 1e-9) == 1:
            assert _ink_near(image, _along(uv[nearest], uv[other])).mean() > 0.95
    # The outline (hexagon) of the box is drawn.
    ring = ConvexHull(uv).vertices
    for a, b in zip(ring, np.roll(ring, -1)):
        assert _ink_near(image, _along(uv[a], uv[b])).mean() > 0.95


def test_hidden_edges_only_when_dashed(box):
    cam = iso_camera()
    corners = trimesh.creation.box(extents=BOX_EXTENTS).vertices
    corners = corners / np.linalg.norm(corners, axis=1).max()
    uv, depth = cam.project(corners)
    far = np.argmax(depth)  # the corner hidden behind the box
    plain = render_drawing(box, [cam], hidden="none").image
    dashed = render_drawing(box, [cam], hidden="dashed").image
    for other in range(8):
        if np.sum(np.abs(corners[other] - corners[far]) > 1e-9) == 1:
            samples = _along(uv[far], uv[other], n=120, trim=0.1)
            # (a hidden edge of a box crosses one visible edge in this view)
            assert _ink_near(plain, samples, radius=0).mean() < 0.08
            coverage = _ink_near(dashed, samples, radius=0).mean()
            assert 0.4 < coverage < 0.8, coverage  # dashes, not a solid line


def test_cylinder_side_has_no_facet_lines():
    cyl = _normalized(trimesh.creation.cylinder(radius=0.5, height=1.2, sections=48))
    cam = OrthoCamera.looking(FRONT_FORWARD, name="front")
    image = render_drawing(cyl, [cam]).image
    uv, _ = cam.project(cyl.vertices)
    u0, u1 = uv[:, 0].min(), uv[:, 0].max()
    v0, v1 = uv[:, 1].min(), uv[:, 1].max()
    inner = image[int(v0) + 3 : int(v1) - 2, int(u0) + 3 : int(u1) - 2]
    assert inner.size > 1000 and (inner == 0).sum() == 0
    # The outline is there, and lowering the threshold below the facet angle shows the facets.
    assert (image == 0).sum() > 2 * ((v1 - v0) + (u1 - u0)) * 0.9
    faceted = render_drawing(cyl, [cam], sharp_angle_deg=5.0).image
    assert (faceted[int(v0) + 3 : int(v1) - 2, int(u0) + 3 : int(u1) - 2] == 0).sum() > 100


def _box_surface_distance(points, half):
    q = np.abs(points) - half
    outside = np.linalg.norm(np.maximum(q, 0), axis=1)
    inside = np.minimum(np.max(q, axis=1), 0)
    return np.abs(outside + inside)


@pytest.mark.parametrize("camera", [iso_camera(), random_camera(np.random.default_rng(3))], ids=["iso", "random"])
def test_depth_lifts_onto_box_surface(box, camera):
    depth = render_drawing(box, [camera]).depth
    rows, cols = np.nonzero(depth)
    assert len(rows) > 5000
    uv = np.stack([cols + 0.5, rows + 0.5], axis=1)
    points = camera.unproject(uv, depth[rows, cols])
    half = BOX_EXTENTS / 2 / np.linalg.norm(BOX_EXTENTS / 2)
    assert _box_surface_distance(points, half).max() < 1.0 / camera.scale
    # The depth is the ray's entry into the box (the nearest surface), and every pixel whose
    # centre ray hits the box has depth.
    h, w = depth.shape
    jj, ii = np.meshgrid(np.arange(w) + 0.5, np.arange(h) + 0.5)
    origins = camera.unproject(np.stack([jj.ravel(), ii.ravel()], axis=1), np.zeros(h * w))
    direction = camera.forward
    with np.errstate(divide="ignore", invalid="ignore"):
        t1, t2 = (-half - origins) / direction, (half - origins) / direction
    t_enter = np.minimum(t1, t2).max(axis=1).reshape(h, w)
    t_exit = np.maximum(t1, t2).min(axis=1).reshape(h, w)
    solid_hit = t_exit - t_enter > 2.0 / camera.scale
    assert np.all(depth[solid_hit] > 0)
    assert np.abs(depth[rows, cols] - t_enter[rows, cols]).max() < 1.0 / camera.scale


def test_depth_lifts_onto_nonconvex_part():
    mesh, _ = make_part("t_beam", np.random.default_rng(4))
    mesh = _normalized(mesh)
    camera = random_camera(np.random.default_rng(1))
    depth = render_drawing(mesh, [camera]).depth
    rows, cols = np.nonzero(depth)
    pick = np.random.default_rng(0).choice(len(rows), size=min(1500, len(rows)), replace=False)
    rows, cols = rows[pick], cols[pick]
    points = camera.unproject(np.stack([cols + 0.5, rows + 0.5], axis=1), depth[rows, cols])
    tris = mesh.triangles  # (F, 3, 3)
    n, f = len(points), len(tris)
    closest = trimesh.triangles.closest_point(np.tile(tris, (n, 1, 1)), np.repeat(points, f, axis=0))
    dist = np.linalg.norm(closest - np.repeat(points, f, axis=0), axis=1).reshape(n, f).min(axis=1)
    assert dist.max() < 1.0 / camera.scale


def test_three_view_panels_draw_inside_their_viewports(box):
    cams = three_view_cameras()
    drawing = render_drawing(box, cams, hidden="dashed")
    assert drawing.image.shape == (256, 256)
    for cam in cams:
        r0, c0, vh, vw = cam.viewport
        panel = drawing.image[r0 : r0 + vh, c0 : c0 + vw]
        assert (panel == 0).sum() > 100, cam.name
        # A margin of white around the drawing in each panel: nothing leaks into a neighbour.
        assert (panel[:2] == 255).all() and (panel[-2:] == 255).all(), cam.name
        assert (panel[:, :2] == 255).all() and (panel[:, -2:] == 255).all(), cam.name
        assert (drawing.depth[r0 : r0 + vh, c0 : c0 + vw] > 0).sum() > 500, cam.name


def test_line_width_and_determinism(box):
    cam = iso_camera()
    thin = render_drawing(box, [cam]).image
    again = render_drawing(box, [cam]).image
    thick = render_drawing(box, [cam], line_width=2.5).image
    assert np.array_equal(thin, again)
    assert (thick == 0).sum() > 1.5 * (thin == 0).sum()


def test_rejects_bad_arguments(box):
    with pytest.raises(ValueError):
        render_drawing(box, [iso_camera()], hidden="dotted")
    with pytest.raises(ValueError):
        render_drawing(box, [])


def test_unwelded_inside_out_and_open_meshes(box):
    cam = iso_camera()
    reference = render_drawing(box, [cam])
    # Unwelded vertices (as from STL): the same drawing, not every triangle edge.
    soup = trimesh.Trimesh(box.triangles.reshape(-1, 3), np.arange(3 * len(box.faces)).reshape(-1, 3), process=False)
    assert np.array_equal(render_drawing(soup, [cam]).image, reference.image)
    # Inside-out winding: still the near surface and the same lines.
    inverted = trimesh.Trimesh(box.vertices, box.faces[:, ::-1], process=False)
    flipped = render_drawing(inverted, [cam])
    assert np.array_equal(flipped.image, reference.image)
    assert np.allclose(flipped.depth, reference.depth)
    # Inconsistent winding (some faces flipped): no extra lines.
    cyl = _normalized(trimesh.creation.cylinder(radius=0.5, height=1.2, sections=48))
    faces = cyl.faces.copy()
    faces[::3] = faces[::3, ::-1]
    mixed = trimesh.Trimesh(cyl.vertices, faces, process=False)
    assert np.array_equal(render_drawing(mixed, [cam]).image, render_drawing(cyl, [cam]).image)
    # An open mesh (box without its top) draws its boundary and sees inside.
    top = np.flatnonzero(box.face_normals[:, 2] > 0.9)
    open_box = trimesh.Trimesh(box.vertices, np.delete(box.faces, top, axis=0), process=False)
    drawing = render_drawing(open_box, [cam])
    assert (drawing.image == 0).sum() > 0.8 * (reference.image == 0).sum()
    assert (drawing.depth > 0).sum() == (reference.depth > 0).sum()


def _with_slivers(mesh: trimesh.Trimesh) -> trimesh.Trimesh:
    """``mesh`` with a T-junction on each sharp edge, as boolean kernels leave them: one face of
    the edge split at the edge's midpoint, the gap closed by a zero-area sliver."""
    vertices, faces = [*mesh.vertices], [list(f) for f in mesh.faces]
    sharp = mesh.face_adjacency_edges[mesh.face_adjacency_angles > np.deg2rad(30)]
    slivers = set()
    for a, b in sharp:
        f = next(i for i, face in enumerate(faces) if i not in slivers and a in face and b in face)
        face = faces[f]
        k = face.index(a)
        if face[(k + 1) % 3] != b:  # the face runs the edge b -> a
            a, b = b, a
            k = face.index(a)
        c = face[(k + 2) % 3]
        m = len(vertices)
        vertices.append((mesh.vertices[a] + mesh.vertices[b]) / 2)
        faces[f] = [a, m, c]
        faces += [[m, b, c], [m, a, b]]  # the other half, and the sliver (zero area)
        slivers.add(len(faces) - 1)
    return trimesh.Trimesh(np.array(vertices), np.array(faces), process=False)


def test_t_junction_slivers_do_not_break_lines(box):
    """Boolean kernels split an edge of one face and close the gap with a zero-area sliver: the
    edge still separates the two real faces, so it is drawn (a hex nut's corners went missing)."""
    slivered = _with_slivers(box)
    assert slivered.is_watertight and (slivered.area_faces < 1e-12).sum() == 12
    for cam in (iso_camera(), *three_view_cameras()):
        reference = render_drawing(box, [cam]).image
        image = render_drawing(slivered, [cam]).image
        assert (reference == 0).sum() > 100
        # The same lines, sampled from other segment ends (a pixel's shift at most).
        near_new, near_ref = (ndimage.binary_dilation(x == 0, np.ones((3, 3))) for x in (image, reference))
        assert near_new[reference == 0].mean() > 0.99 and near_ref[image == 0].mean() > 0.99


def _outline_inked(image, cam, center, radius, n=200):
    """Share of the projected outline of a sphere (a circle in an orthographic view) inked."""
    uv, _ = cam.project(np.asarray(center)[None])
    ang = np.linspace(0, 2 * np.pi, n, endpoint=False)
    ring = uv + radius * cam.scale * np.stack([np.cos(ang), np.sin(ang)], axis=1)
    return _ink_near(image, ring).mean()


def test_contours_of_open_and_multi_body_meshes():
    """Imported meshes may be open and hold several bodies, wound either way: each smooth body's
    outline is still drawn all round, and a body in front hides the one behind."""
    cam = iso_camera()
    ball = trimesh.creation.icosphere(subdivisions=4, radius=0.3)
    near = ball.copy()
    near.apply_translation(-0.45 * cam.forward)  # towards the eye, overlapping the far one on screen
    far = ball.copy()
    far.apply_translation(0.45 * cam.forward + 0.25 * cam.R[0])
    far.faces = far.faces[:, ::-1]  # inside-out body
    cut = far.vertices[far.faces].mean(axis=1) @ cam.forward > 0.45 + 0.1  # open: drop its back cap
    far = trimesh.Trimesh(far.vertices, far.faces[~cut], process=False)
    scene = trimesh.util.concatenate([near, far])
    assert not scene.is_watertight
    image = render_drawing(scene, [cam]).image
    assert _outline_inked(image, cam, near.centroid, 0.3) > 0.97
    # The far ball's outline shows where the near one does not cover it, and not inside it.
    uv_near, _ = cam.project(near.centroid[None])
    ang = np.linspace(0, 2 * np.pi, 400, endpoint=False)
    center_far = 0.45 * cam.forward + 0.25 * cam.R[0]
    ring = cam.project(center_far[None])[0] + 0.3 * cam.scale * np.stack([np.cos(ang), np.sin(ang)], axis=1)
    covered = np.linalg.norm(ring - uv_near, axis=1) < 0.3 * cam.scale - 2
    exposed = np.linalg.norm(ring - uv_near, axis=1) > 0.3 * cam.scale + 2
    assert covered.sum() > 40 and exposed.sum() > 40
    assert _ink_near(image, ring[exposed]).mean() > 0.97
    assert _ink_near(image, ring[covered], radius=0).mean() < 0.05


def test_a_body_inside_out_among_others_draws_like_the_others():
    """A closed multi-body mesh with one body wound inside out draws as if it were not."""
    cam = iso_camera()
    left = trimesh.creation.cylinder(radius=0.25, height=0.8, sections=64)
    left.apply_translation((-0.35, 0.35, 0))
    right = trimesh.creation.icosphere(subdivisions=3, radius=0.3)
    right.apply_translation((0.35, -0.35, 0))
    inverted = trimesh.Trimesh(right.vertices, right.faces[:, ::-1], process=False)
    good = render_drawing(trimesh.util.concatenate([left, right]), [cam], hidden="dashed")
    mixed = render_drawing(trimesh.util.concatenate([left, inverted]), [cam], hidden="dashed")
    assert np.array_equal(good.image, mixed.image)
    assert np.allclose(good.depth, mixed.depth)
    assert _outline_inked(mixed.image, cam, right.centroid, 0.3) > 0.97
