"""Pictures for people: point clouds rendered as depth-shaded dots, and dataset contact sheets."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from cad3d.data.dataset import index_dataset, load_cameras, load_drawing, load_points
from cad3d.geometry.camera import OrthoCamera, iso_camera
from cad3d.io import atomic_write


def render_cloud(points: np.ndarray, camera: OrthoCamera | None = None, size: int = 256, dot: int = 1) -> np.ndarray:
    """(N, 3) normalized points -> (size, size, 3) uint8 RGB: near points dark blue, far ones light.

    The camera defaults to the isometric view; its viewport is ignored (the cloud fills the image).
    """
    cam = camera or iso_camera((size, size))
    cam = OrthoCamera.looking(cam.forward, image_size=(size, size), up=cam.R[1], name=cam.name)
    uv, depth = cam.project(np.asarray(points, dtype=np.float64))  # (N, 2), (N,)
    img = np.full((size, size, 3), 255, dtype=np.uint8)
    if len(depth) == 0:
        return img
    order = np.argsort(-depth)  # far first, near drawn last (on top)
    uv, depth = uv[order], depth[order]
    span = max(float(depth.max() - depth.min()), 1e-9)
    t = ((depth - depth.min()) / span)[:, None]  # 0 near .. 1 far
    near, far = np.array([20, 40, 140]), np.array([170, 200, 240])
    colors = (near * (1 - t) + far * t).astype(np.uint8)  # (N, 3)
    cols, rows = np.floor(uv[:, 0]).astype(int), np.floor(uv[:, 1]).astype(int)
    for dr in range(-(dot // 2), dot - dot // 2):
        for dc in range(-(dot // 2), dot - dot // 2):
            r, c = rows + dr, cols + dc
            ok = (r >= 0) & (r < size) & (c >= 0) & (c < size)
            img[r[ok], c[ok]] = colors[ok]
    return img


def contact_sheet(
    data_dir: str | os.PathLike,
    out_path: str | os.PathLike,
    *,
    num_samples: int = 12,
    columns: int = 3,
    split: str | None = None,
    tile: int = 192,
) -> Path:
    """Write a PNG with each sample's drawing beside a render of its cloud from the same camera."""
    from PIL import Image, ImageDraw

    records = index_dataset(data_dir, split)[:num_samples]
    rows = (len(records) + columns - 1) // columns
    label_h = 14
    sheet = Image.new("RGB", (columns * 2 * tile, rows * (tile + label_h)), "white")
    draw = ImageDraw.Draw(sheet)
    for k, rec in enumerate(records):
        drawing = (load_drawing(rec.image, tile) * 255).astype(np.uint8)
        cams = load_cameras(rec.meta) if rec.meta else None
        # A three-view sheet is previewed from its isometric panel (the last one).
        camera = cams[-1] if cams else None
        cloud = render_cloud(load_points(rec.points), camera, size=tile, dot=2)
        x, y = (k % columns) * 2 * tile, (k // columns) * (tile + label_h)
        sheet.paste(Image.fromarray(drawing, "L").convert("RGB"), (x, y + label_h))
        sheet.paste(Image.fromarray(cloud, "RGB"), (x + tile, y + label_h))
        draw.rectangle([x, y + label_h, x + 2 * tile - 1, y + label_h + tile - 1], outline=(200, 200, 200))
        draw.text((x + 3, y + 1), f"{rec.stem}  {rec.family or ''}", fill=(0, 0, 0))
    out_path = Path(out_path)
    atomic_write(out_path, lambda f: sheet.save(f, format="PNG"), durable=False)
    return out_path
