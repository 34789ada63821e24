"""A conversion's result and its files: clouds as PLY/NPY, meshes as OBJ, PNG previews, each
file written whole or not at all."""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cad3d.errors import ConversionError
from cad3d.io import atomic_write_bytes

FORMATS = ("ply", "npy", "obj", "glb")


@dataclass
class ConversionResult:
    """One drawing's cloud and how it was made."""

    points: np.ndarray  # (N, 3) float32, normalized object frame
    method: str  # diffusion | vit | depth | geometric
    trained: bool  # whether the weights that made it were trained
    weights: dict = field(default_factory=dict)  # role -> checkpoint path (or "initial")
    seconds: float = 0.0
    source: str | None = None  # input path


def cloud_bytes(points: np.ndarray, fmt: str) -> bytes:
    """Serialize a cloud: binary PLY of vertices, .npy, an OBJ mesh reconstructed from it, or a
    GLB of both (`glb_bytes`)."""
    import trimesh

    pts = np.asarray(points, dtype=np.float32)
    if fmt == "npy":
        buf = io.BytesIO()
        np.save(buf, pts, allow_pickle=False)
        return buf.getvalue()
    if fmt == "ply":
        return trimesh.PointCloud(pts).export(file_type="ply")
    if fmt == "obj":
        return mesh_from_cloud(pts).export(file_type="obj").encode()
    if fmt == "glb":
        return glb_bytes(pts)
    raise ValueError(f"unknown format {fmt!r}; choose from {FORMATS}")


def glb_bytes(points: np.ndarray, marker_size: float | None = None) -> bytes:
    """A binary glTF scene that browsers and Blender open, coloured by height (blue low, orange
    high). Default: node ``points`` holds the cloud as a point primitive and node ``mesh`` the
    surface `mesh_from_cloud` builds (left out when it cannot build one). ``marker_size``: the
    cloud alone, each point an octahedron of that radius (a viewer draws point primitives one
    pixel wide). glTF is y-up, our clouds z-up: everything is stored as (x, z, -y)."""
    import trimesh

    pts = np.asarray(points, dtype=np.float32)
    y_up = pts[:, [0, 2, 1]] * np.array([1, 1, -1], dtype=np.float32)  # (N, 3)
    height = pts[:, 2] - pts[:, 2].min()
    t = (height / max(float(height.max()), 1e-12))[:, None]  # (N, 1) in [0, 1], low -> high
    colors = np.concatenate([(1 - t) * (40, 90, 200) + t * (240, 150, 40), np.full_like(t, 255)], axis=1)  # (N, 4)
    colors = colors.astype(np.uint8)
    scene = trimesh.Scene()
    if marker_size is not None:
        corners = np.concatenate([np.eye(3), -np.eye(3)]) * marker_size  # (6, 3): +x +y +z -x -y -z
        faces = np.array([[0, 1, 2], [1, 3, 2], [3, 4, 2], [4, 0, 2], [1, 0, 5], [3, 1, 5], [4, 3, 5], [0, 4, 5]])  # outward
        verts = (y_up[:, None, :] + corners[None]).reshape(-1, 3)  # (N * 6, 3)
        tris = (faces[None] + 6 * np.arange(len(pts))[:, None, None]).reshape(-1, 3)  # (N * 8, 3)
        markers = trimesh.Trimesh(verts, tris, vertex_colors=np.repeat(colors, 6, axis=0), process=False)
        scene.add_geometry(markers, node_name="points", geom_name="points")
        return scene.export(file_type="glb")
    scene.add_geometry(trimesh.PointCloud(y_up, colors=colors), node_name="points", geom_name="points")
    try:
        mesh = mesh_from_cloud(pts)
    except ConversionError:
        mesh = None
    if mesh is not None and len(mesh.faces):
        mesh.vertices = mesh.vertices[:, [0, 2, 1]] * (1, 1, -1)
        mesh.visual.face_colors = (170, 180, 195, 255)
        scene.add_geometry(mesh, node_name="mesh", geom_name="mesh")
    return scene.export(file_type="glb")


def mesh_from_cloud(points: np.ndarray, resolution: int = 48):
    """A watertight mesh around a normalized cloud: occupancy on a grid, closed and filled, then
    marching cubes (trimesh with scikit-image). Coarse (voxel edge 2/resolution) but faithful to
    concavities, unlike a convex hull. ConversionError when the points are too scattered."""
    import trimesh
    from scipy import ndimage

    pts = np.asarray(points, dtype=np.float64)
    pitch = 2.0 / resolution
    idx = np.clip(np.floor((pts + 1.0) / pitch).astype(int), 0, resolution - 1)
    grid = np.zeros((resolution,) * 3, dtype=bool)
    grid[idx[:, 0], idx[:, 1], idx[:, 2]] = True
    grid = ndimage.binary_closing(grid, structure=np.ones((3, 3, 3)), iterations=1)
    grid = ndimage.binary_fill_holes(grid)
    if not grid.any():  # scattered points only (e.g. a barely trained model): closing erased them all
        raise ConversionError("the cloud is too scattered to build a mesh around it (save it as ply, npy or glb)")
    # One empty voxel of padding keeps the surface closed at the grid's border.
    mesh = trimesh.voxel.ops.matrix_to_marching_cubes(np.pad(grid, 1), pitch=pitch)
    mesh.apply_translation(np.full(3, -1.0 - pitch / 2))
    return mesh


def preview_image(points: np.ndarray, drawing: np.ndarray | None = None, tile: int = 256) -> np.ndarray:
    """(tile, k*tile, 3) uint8: the drawing (if given), then the cloud from iso, front, top and side."""
    from cad3d.data.preview import render_cloud
    from cad3d.geometry.camera import OrthoCamera, three_view_cameras

    views = [c for c in three_view_cameras((tile, tile))]
    tiles = []
    if drawing is not None:
        from PIL import Image

        d = Image.fromarray((np.clip(drawing, 0, 1) * 255).astype(np.uint8), "L").resize((tile, tile))
        tiles.append(np.asarray(d.convert("RGB")))
    for cam in [views[-1]] + views[:-1]:
        full = OrthoCamera.looking(cam.forward, image_size=(tile, tile), up=cam.R[1], name=cam.name)
        tiles.append(render_cloud(points, full, size=tile, dot=2))
    sheet = np.concatenate(tiles, axis=1)
    sheet[:, [i * tile for i in range(1, len(tiles))]] = 200  # separators
    return sheet


def png_bytes(rgb: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb, "RGB").save(buf, format="PNG")
    return buf.getvalue()


def write_result(result: ConversionResult, out_dir: Path, stem: str, fmt: str | tuple[str, ...] = "ply",
                 drawing: np.ndarray | None = None, preview: bool = True) -> dict[str, Path]:
    """Write ``stem.<fmt>`` for one format or each of several (and ``stem_preview.png``) into
    ``out_dir``; all bytes are produced before anything is written, and each file appears whole
    or not at all. Returns {format or "preview": path}."""
    payloads = {f: cloud_bytes(result.points, f) for f in ((fmt,) if isinstance(fmt, str) else fmt)}
    if preview:
        payloads["preview"] = png_bytes(preview_image(result.points, drawing))
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConversionError(f"{out_dir}: cannot create output folder ({exc.strerror or exc})") from None
    written = {}
    for kind, data in payloads.items():
        path = out_dir / (f"{stem}_preview.png" if kind == "preview" else f"{stem}.{kind}")
        try:
            atomic_write_bytes(path, data, durable=False)
        except OSError as exc:
            for done in written.values():
                done.unlink(missing_ok=True)
            raise ConversionError(f"{path}: cannot write ({exc.strerror or exc})") from None
        written[kind] = path
    return written


