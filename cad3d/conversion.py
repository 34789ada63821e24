"""Conversion plumbing shared by every path: reading a user's drawing, the geometric fallback,
and writing clouds, meshes and previews without ever leaving a partial file.

The converters themselves live in `cad3d.hybrid_vit_diffusion` (the hybrid) and
`cad3d.vae_integration`; this module knows nothing about trained models.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cad3d.errors import ConversionError
from cad3d.io import atomic_write_bytes

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif")
MAX_PIXELS = 64_000_000  # a 8000x8000 drawing; larger inputs are refused before decoding
FORMATS = ("ply", "npy", "obj", "glb")


def read_drawing(path: str | os.PathLike, image_size: int = 256) -> np.ndarray:
    """A user's drawing as (image_size, image_size) float32 in [0, 1], 1 = white paper.

    Accepts grayscale, RGB, RGBA and LA (transparent = white paper), palette and 16-bit images.
    Raises ConversionError naming the file for: a missing file or folder, an empty file, a file
    that is not an image, a truncated image, an image too large to decode safely, an unsupported
    mode (CMYK, floating point) and a blank page.
    """
    from PIL import Image, UnidentifiedImageError

    from cad3d.data.dataset import load_drawing
    from cad3d.errors import DatasetError

    path = Path(path)
    if not path.exists():
        raise ConversionError(f"{path}: no such file")
    if path.is_dir():
        raise ConversionError(f"{path}: is a folder, not a drawing")
    if path.stat().st_size == 0:
        raise ConversionError(f"{path}: empty file (0 bytes)")
    try:
        with Image.open(path) as im:
            w, h = im.size
            mode = im.mode
    except (UnidentifiedImageError, OSError) as exc:
        raise ConversionError(f"{path}: not an image ({exc})") from None
    except Image.DecompressionBombError as exc:
        raise ConversionError(f"{path}: image too large to decode safely ({exc})") from None
    if w * h > MAX_PIXELS:
        raise ConversionError(f"{path}: image too large ({w}x{h} pixels; at most {MAX_PIXELS:,} pixels)")
    if w < 8 or h < 8:
        raise ConversionError(f"{path}: image too small ({w}x{h} pixels)")
    if mode in ("CMYK", "F", "YCbCr", "LAB", "HSV"):
        raise ConversionError(f"{path}: unsupported image mode {mode} (use grayscale, RGB or RGBA)")
    try:
        image = load_drawing(path, image_size)
    except DatasetError as exc:
        raise ConversionError(str(exc)) from None
    except Image.DecompressionBombError as exc:
        raise ConversionError(f"{path}: image too large to decode safely ({exc})") from None
    if (image < 0.5).sum() < 10:
        raise ConversionError(f"{path}: blank drawing (no lines found)")
    return image


def is_three_view_sheet(image: np.ndarray) -> bool:
    """True for a three-view sheet (`cad3d.geometry.camera.three_view_cameras` layout): lines in
    all four quadrants and none on the cross between them. A single view is centred on the part,
    so its lines always cross the middle of the image."""
    h, w = image.shape
    ink = image < 0.5
    band = max(1, min(h, w) // 64)
    if ink[h // 2 - band : h // 2 + band].any() or ink[:, w // 2 - band : w // 2 + band].any():
        return False
    quadrants = (ink[: h // 2, : w // 2], ink[h // 2 :, : w // 2], ink[: h // 2, w // 2 :], ink[h // 2 :, w // 2 :])
    return all(q.sum() >= 10 for q in quadrants)


def drawing_cameras(image: np.ndarray) -> list:
    """The cameras a drawing was most likely made with: the three-view sheet's four, else iso."""
    from cad3d.geometry.camera import iso_camera, three_view_cameras

    size = image.shape
    return three_view_cameras(size) if is_three_view_sheet(image) else [iso_camera(size)]


def geometric_fallback(image: np.ndarray, num_points: int, generator: np.random.Generator) -> np.ndarray:
    """A rough cloud from the drawing alone, when no model is available: (num_points, 3) float32,
    normalized into the unit sphere like every ground-truth cloud.

    A three-view sheet is carved into a visual hull (`visual_hull`): exact for the outline seen
    from every panel. A single view is inflated like a balloon: a pixel at distance d from the
    outline lies ``h = H * sqrt(d / d_max)`` in front of and behind the mid-plane of the view,
    with H half the silhouette's radius; the outline and extent are right, the depth only roughly.
    """
    from scipy import ndimage

    from cad3d.depth_onnx import silhouette_mask
    from cad3d.geometry.camera import EYE_DISTANCE

    cameras = drawing_cameras(image)
    sil = silhouette_mask(image)
    if len(cameras) > 1:
        return visual_hull(sil, cameras, num_points, generator)
    cam = cameras[0]
    rows, cols = np.nonzero(sil)
    if len(rows) == 0:
        raise ConversionError("blank drawing: no outline to lift")
    dist = ndimage.distance_transform_edt(sil)  # (H, W) pixels to the outline
    pick = generator.integers(0, len(rows), size=num_points)
    r, c = rows[pick], cols[pick]
    uv = np.stack([c + generator.random(num_points), r + generator.random(num_points)], axis=1)  # (P, 2)
    radius = np.sqrt(len(rows) / np.pi) / cam.scale  # world units of an equal-area disc
    height = 0.5 * radius * np.sqrt(dist[r, c] / max(dist.max(), 1.0))  # (P,)
    side = np.where(generator.random(num_points) < 0.5, -1.0, 1.0)
    points = cam.unproject(uv, EYE_DISTANCE + side * height)  # (P, 3)
    return normalize_cloud(points)


def visual_hull(silhouette: np.ndarray, cameras: list, num_points: int, generator: np.random.Generator,
                resolution: int = 64) -> np.ndarray:
    """Points on the surface of the voxels of [-1, 1]^3 whose projection falls inside the
    silhouette in every camera's viewport: (num_points, 3) float32, normalized.

    silhouette: (H, W) bool of the whole sheet; cameras: the sheet's cameras (one per panel).
    """
    from scipy import ndimage

    pitch = 2.0 / resolution
    axis = -1.0 + pitch * (np.arange(resolution) + 0.5)
    grid = np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), axis=-1).reshape(-1, 3)  # (R^3, 3)
    inside = np.ones(len(grid), dtype=bool)
    for cam in cameras:
        uv, _ = cam.project(grid)  # (R^3, 2)
        cols, rows = np.floor(uv[:, 0]).astype(int), np.floor(uv[:, 1]).astype(int)
        r0, c0, vh, vw = cam.viewport
        seen = (rows >= r0) & (rows < r0 + vh) & (cols >= c0) & (cols < c0 + vw)
        hit = np.zeros(len(grid), dtype=bool)
        hit[seen] = silhouette[rows[seen], cols[seen]]
        inside &= hit
    occ = inside.reshape((resolution,) * 3)
    surface = occ & ~ndimage.binary_erosion(occ)  # voxels with an empty neighbour
    idx = np.argwhere(surface)  # (S, 3)
    if len(idx) == 0:
        raise ConversionError("the views of the sheet do not agree on any solid (empty visual hull)")
    pick = idx[generator.integers(0, len(idx), size=num_points)]
    points = -1.0 + pitch * (pick + generator.random((num_points, 3)))  # (P, 3) jittered in the voxel
    return normalize_cloud(points)


def normalize_cloud(points: np.ndarray, *, robust: bool = False) -> np.ndarray:
    """(N, 3) -> float32 centred at the bounding-box centre and scaled into the unit sphere.

    ``robust``: take the box between the 2nd and 98th percentiles and the 98th percentile of the
    distances instead, so a few stray points (e.g. pixels lifted to a clipped depth) do not
    shrink the rest; those few may then lie outside the unit sphere.
    """
    from cad3d.geometry.ops import normalize

    p = np.asarray(points, dtype=np.float64)
    if not robust:
        return normalize(p)[0].astype(np.float32)
    lo, hi = np.percentile(p, 2, axis=0), np.percentile(p, 98, axis=0)
    center = (lo + hi) / 2.0  # (3,)
    scale = max(float(np.percentile(np.linalg.norm(p - center, axis=1), 98)), 1e-12)
    return ((p - center) / scale).astype(np.float32)


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


def collect_inputs(inputs: list[str | os.PathLike]) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Expand files and folders into drawing paths; folders without images are errors."""
    found, errors = [], []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            images = sorted(q for q in p.iterdir() if q.is_file() and q.suffix.lower() in IMAGE_SUFFIXES)
            if not images:
                errors.append((p, f"{p}: folder has no images ({', '.join(IMAGE_SUFFIXES)})"))
            found.extend(images)
        else:
            found.append(p)
    return found, errors
