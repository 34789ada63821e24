"""What a drawing says without any trained model: which cameras drew it (an iso view or a
three-view sheet), the geometric fallback (a silhouette inflated, or the visual hull of a
sheet's panels) and the normalization every path's cloud ends with."""

from __future__ import annotations

import numpy as np

from cad3d.conversion.drawing import silhouette_mask
from cad3d.errors import ConversionError
from cad3d.geometry.camera import EYE_DISTANCE, iso_camera, sheet_cameras


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
    """The cameras a drawing was most likely made with: a clean three-view sheet's four (in the
    standard its panels follow), a varied sheet's views wherever they sit, else one iso view."""
    from cad3d.data.sheet import detect_projection, fit_sheet_cameras

    size = image.shape
    if is_three_view_sheet(image):
        return sheet_cameras(detect_projection(image), size)
    return fit_sheet_cameras(image) or [iso_camera(size)]


def frame_part(image: np.ndarray, *, clutter: float = 0.02, small: float = 0.6) -> np.ndarray:
    """A single-view drawing as the models saw drawings in training: the part alone, centred,
    filling the frame. Only sheets need it — a border, title block, dimensions or notes (more than
    ``clutter`` of the ink outside the part), or a part drawn small (its longer side under
    ``small`` of the image) — so a drawing framed like the training data is returned unchanged."""
    from cad3d.data.sheet import crop_to_part, find_part, ink_mask

    box = find_part(image)
    if box is None:
        return image
    r0, c0, r1, c1 = box
    ink = ink_mask(image)
    outside = 1.0 - ink[r0:r1, c0:c1].sum() / max(int(ink.sum()), 1)
    if outside <= clutter and max(r1 - r0, c1 - c0) >= small * max(image.shape):
        return image
    # The training drawings fit the part's bounding sphere with a 6% margin: its box fills ~0.7.
    return crop_to_part(image, image.shape[0], fill=0.7)[0]


def geometric_fallback(image: np.ndarray, num_points: int, generator: np.random.Generator,
                       cameras: list | None = None) -> np.ndarray:
    """A rough cloud from the drawing alone, when no model is available: (num_points, 3) float32,
    normalized into the unit sphere like every ground-truth cloud.

    A three-view sheet is carved into a visual hull (`visual_hull`): exact for the outline seen
    from every panel. A single view is inflated like a balloon: a pixel at distance d from the
    outline lies ``h = H * sqrt(d / d_max)`` in front of and behind the mid-plane of the view,
    with H half the silhouette's radius; the outline and extent are right, the depth only roughly.
    """
    from scipy import ndimage


    cameras = cameras or drawing_cameras(image)  # the drawing's cameras when the caller knows them
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
    from cad3d.geometry.transforms import normalize

    p = np.asarray(points, dtype=np.float64)
    if not robust:
        return normalize(p)[0].astype(np.float32)
    lo, hi = np.percentile(p, 2, axis=0), np.percentile(p, 98, axis=0)
    center = (lo + hi) / 2.0  # (3,)
    scale = max(float(np.percentile(np.linalg.norm(p - center, axis=1), 98)), 1e-12)
    return ((p - center) / scale).astype(np.float32)
