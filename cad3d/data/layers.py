"""Layered depth maps: along each pixel's ray, the camera depths of the first ``K`` surface
crossings of a closed part, front to back (entry, exit, entry, exit, ...).

A single depth map holds only the visible surface; the layers also hold the back faces and the
walls of holes, so lifting every layer through the drawing's camera gives points all over the
part — what a converter must predict from a drawing. Zero marks "no crossing".
"""

from __future__ import annotations

import numpy as np

from cad3d.data.raster import triangle_fragments

DEFAULT_LAYERS = 4
# Crossings closer than this (camera units) are one: a pixel centre on a shared edge is covered
# by both triangles.
_SAME_CROSSING = 1e-6


def depth_layers(vertices: np.ndarray, faces: np.ndarray, camera, num_layers: int = DEFAULT_LAYERS) -> np.ndarray:
    """(num_layers, H, W) float32 camera depths ``c_z`` of the first crossings of each pixel's ray
    with the mesh (``vertices`` (V, 3) in world units, ``faces`` (F, 3)) inside ``camera``'s
    viewport, nearest first; 0 where the ray crosses the surface fewer times."""
    h, w = camera.image_size
    out = np.zeros((num_layers, h, w), dtype=np.float32)
    faces = np.asarray(faces, dtype=np.int64)
    if len(faces) == 0:
        return out
    uv, z = camera.project(np.asarray(vertices, dtype=np.float64))  # (V, 2), (V,)
    frags = triangle_fragments(uv, z, faces, camera.viewport, (h, w))
    if frags is None:
        return out
    flat, depth = frags[0], frags[1]
    order = np.lexsort((depth, flat))  # by pixel, then front to back
    flat, depth = flat[order], depth[order]
    new_pixel = np.r_[True, flat[1:] != flat[:-1]]
    repeat = ~new_pixel & (np.abs(np.diff(depth, prepend=-np.inf)) < _SAME_CROSSING)
    flat, depth, new_pixel = flat[~repeat], depth[~repeat], new_pixel[~repeat]
    start = np.maximum.accumulate(np.where(new_pixel, np.arange(len(flat)), 0))  # first fragment of each pixel
    rank = np.arange(len(flat)) - start  # (N,) crossing number along the ray
    keep = rank < num_layers
    out.reshape(num_layers, -1)[rank[keep], flat[keep]] = depth[keep]
    return out


def _slopes(layer: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Depth change per pixel along columns and rows (H, W) of one layer, 0 where a neighbour has
    no crossing (the layer's rim)."""
    present = layer > 0
    gx, gy = np.zeros_like(layer), np.zeros_like(layer)
    both_x = present[:, 1:] & present[:, :-1]
    dx = np.where(both_x, layer[:, 1:] - layer[:, :-1], 0.0)
    gx[:, :-1] += dx
    gx[:, 1:] += dx
    both_y = present[1:] & present[:-1]
    dy = np.where(both_y, layer[1:] - layer[:-1], 0.0)
    gy[:-1] += dy
    gy[1:] += dy
    return gx / 2.0, gy / 2.0


def sample_layers(layers: np.ndarray, cameras, num_points: int, rng: np.random.Generator,
                  max_stretch: float = 4.0) -> np.ndarray:
    """``num_points`` world points (num_points, 3) float32 on the surface that layered depth maps
    ``layers`` (K, H, W) (camera depth ``c_z``, 0 = none) describe, seen through ``cameras`` (one
    per viewport of the image).

    Pixels are drawn in proportion to the surface area they cover (a pixel of a face tilted away
    from the camera covers ``sqrt(1 + |grad c_z|^2)`` times its footprint, capped at
    ``max_stretch``), without replacement while there are enough, and each point is jittered
    inside its pixel along the face's local depth plane, so the cloud is an even surface sample
    rather than a pixel grid. Raises ValueError when no layer has a crossing."""
    k_idx, r_idx, c_idx, weights, gxs, gys = [], [], [], [], [], []
    for cam in cameras:
        r0, c0, vh, vw = cam.viewport
        for k in range(layers.shape[0]):
            layer = layers[k, r0 : r0 + vh, c0 : c0 + vw]
            rr, cc = np.nonzero(layer > 0)
            if len(rr) == 0:
                continue
            gx, gy = _slopes(layer)
            gx, gy = gx[rr, cc] * cam.scale, gy[rr, cc] * cam.scale  # depth change per world unit
            k_idx.append(np.full(len(rr), k))
            r_idx.append(rr + r0)
            c_idx.append(cc + c0)
            weights.append(np.minimum(np.sqrt(1.0 + gx**2 + gy**2), max_stretch))
            gxs.append(gx / cam.scale)
            gys.append(gy / cam.scale)
    if not k_idx:
        raise ValueError("the layered depth maps hold no surface crossing")
    k_all, r_all, c_all = np.concatenate(k_idx), np.concatenate(r_idx), np.concatenate(c_idx)
    w_all, gx_all, gy_all = np.concatenate(weights), np.concatenate(gxs), np.concatenate(gys)
    p = w_all / w_all.sum()
    pick = rng.choice(len(p), size=num_points, replace=num_points > len(p), p=p)
    du, dv = rng.random(num_points) - 0.5, rng.random(num_points) - 0.5  # offsets inside the pixel
    r, c = r_all[pick], c_all[pick]
    z = layers[k_all[pick], r, c] + gx_all[pick] * du + gy_all[pick] * dv
    uv = np.stack([c + 0.5 + du, r + 0.5 + dv], axis=1)
    out = np.empty((num_points, 3), dtype=np.float32)
    for cam in cameras:  # each point through the camera of its viewport
        r0, c0, vh, vw = cam.viewport
        mine = (r >= r0) & (r < r0 + vh) & (c >= c0) & (c < c0 + vw)
        if mine.any():
            out[mine] = cam.unproject(uv[mine], z[mine])
    return out
