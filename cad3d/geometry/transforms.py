"""Point clouds to and from other forms: voxel grids (hard and differentiable), normalization into
the unit sphere, and depth maps back-projected through orthographic cameras. Batched like
`cad3d.geometry.ops`: ``(B, N, 3)`` or unbatched ``(N, 3)``."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch.utils.checkpoint import checkpoint

from cad3d.geometry.camera import OrthoCamera
from cad3d.geometry._common import _as_batched, _chunk_rows

__all__ = ["denormalize", "depth_to_points", "normalize", "resample_points", "soft_voxelize", "voxelize"]


# --------------------------------------------------------------------------------------------
# voxels
# --------------------------------------------------------------------------------------------
def voxelize(points: torch.Tensor, resolution: int) -> torch.Tensor:
    """Hard occupancy grid of points in the cube [-1, 1]^3.

    Args:
        points: (B, N, 3) or (N, 3); coordinates outside [-1, 1] are ignored, 1.0 falls into the
            last voxel.
        resolution: R voxels per axis (voxel edge 2 / R).

    Returns:
        (B, R, R, R) (or (R, R, R)) occupancy in {0, 1}, in the points' float dtype, indexed
        ``[b, ix, iy, iz]`` with voxel i covering ``[-1 + 2i/R, -1 + 2(i+1)/R)``.
    """
    p3, unbatched = _as_batched(points, "points")
    if resolution < 1:
        raise ValueError(f"resolution must be >= 1, got {resolution}")
    bsz = p3.shape[0]
    r = int(resolution)
    with torch.no_grad():
        valid = ((p3 >= -1) & (p3 <= 1)).all(dim=-1)  # (B, N)
        ijk = ((p3 + 1) * (r / 2)).floor().long().clamp_(0, r - 1)  # (B, N, 3)
        lin = (ijk[..., 0] * r + ijk[..., 1]) * r + ijk[..., 2]  # (B, N)
        lin = lin + torch.arange(bsz, device=p3.device).unsqueeze(1) * r**3
        occ = torch.zeros(bsz * r**3, dtype=p3.dtype if p3.is_floating_point() else torch.float32, device=p3.device)
        occ[lin[valid]] = 1
    occ = occ.view(bsz, r, r, r)
    return occ.squeeze(0) if unbatched else occ


def _splat(gx: torch.Tensor, gy: torch.Tensor, gz: torch.Tensor) -> torch.Tensor:
    """Sum over points of outer products: gx, gy, gz (B, c, R) -> (B, R, R, R)."""
    bsz, c, r = gx.shape
    xy = (gx.unsqueeze(3) * gy.unsqueeze(2)).reshape(bsz, c, r * r)  # (B, c, R*R)
    return torch.bmm(xy.transpose(1, 2), gz).view(bsz, r, r, r)


def soft_voxelize(
    points: torch.Tensor,
    resolution: int,
    sigma: float | None = None,
    *,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """Differentiable occupancy: each point splats an isotropic Gaussian on the voxel centres.

    ``density[v] = sum_i exp(-|c_v - p_i|^2 / (2 sigma^2))`` and the returned occupancy is
    ``1 - exp(-density)`` (a soft union: ~1 - prod_i (1 - w_i) for small weights), in [0, 1).
    The Gaussian is separable, so the grid is a sum of per-point outer products of three 1D
    profiles and is built with batched matmuls over chunks of points; with autograd each chunk
    is recomputed in the backward pass (activation checkpointing), so memory stays
    O(B * chunk_size * R^2 + B * R^3) for forward and backward.

    Args:
        points: (B, N, 3) or (N, 3), the grid spans [-1, 1]^3 (same layout as :func:`voxelize`).
        resolution: R voxels per axis.
        sigma: Gaussian std in input units; None = half a voxel edge (1 / R).
        chunk_size: points per chunk; None = automatic.

    Returns:
        (B, R, R, R) (or (R, R, R)) soft occupancy, differentiable w.r.t. points.
    """
    p3, unbatched = _as_batched(points, "points")
    if resolution < 1:
        raise ValueError(f"resolution must be >= 1, got {resolution}")
    r = int(resolution)
    sigma = 1.0 / r if sigma is None else float(sigma)
    if sigma <= 0:
        raise ValueError(f"sigma must be > 0, got {sigma}")
    bsz, n, _ = p3.shape
    centers = -1.0 + (torch.arange(r, device=p3.device, dtype=p3.dtype) + 0.5) * (2.0 / r)  # (R,)
    g = torch.exp(-(p3.unsqueeze(-1) - centers).square() / (2.0 * sigma**2))  # (B, N, 3, R)
    gx, gy, gz = g.unbind(2)  # each (B, N, R)
    rows = _chunk_rows(chunk_size, bsz, r * r)
    density = p3.new_zeros(bsz, r, r, r)
    recompute = torch.is_grad_enabled() and p3.requires_grad and n > rows
    for s in range(0, n, rows):
        e = min(n, s + rows)
        args = (gx[:, s:e], gy[:, s:e], gz[:, s:e])
        density = density + (checkpoint(_splat, *args, use_reentrant=False) if recompute else _splat(*args))
    occ = 1.0 - torch.exp(-density)
    return occ.squeeze(0) if unbatched else occ


# --------------------------------------------------------------------------------------------
# normalization
# --------------------------------------------------------------------------------------------
def normalize(points):
    """Centre each cloud at its bounding-box centre and scale it into the unit sphere.

    Args:
        points: (N, 3) or (B, N, 3), a numpy array or a torch tensor.

    Returns:
        (points_n, center, scale) of the input's kind: points_n like ``points``;
        center (3,) or (B, 3); scale () or (B,), the largest distance of a point from the
        centre (1 for a cloud that is a single point, so nothing divides by zero), such that
        ``points_n = (points - center) / scale`` has max norm 1. Differentiable for tensors.
    """
    is_np = isinstance(points, np.ndarray)
    p = torch.from_numpy(np.array(points)) if is_np else points  # copy: read-only arrays are fine
    p3, unbatched = _as_batched(p, "points")
    if p3.shape[1] == 0:
        raise ValueError("cannot normalize an empty point cloud")
    center = (p3.amax(dim=1) + p3.amin(dim=1)) / 2  # (B, 3)
    centred = p3 - center.unsqueeze(1)  # (B, N, 3)
    scale = centred.norm(dim=-1).amax(dim=1)  # (B,)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    pn = centred / scale.view(-1, 1, 1)
    if unbatched:
        pn, center, scale = pn.squeeze(0), center.squeeze(0), scale.squeeze(0)
    if is_np:
        return pn.numpy(), center.numpy(), scale.numpy()
    return pn, center, scale


def denormalize(points_n, center, scale):
    """Inverse of :func:`normalize`: ``points_n * scale + center``.

    Args:
        points_n: (N, 3) or (B, N, 3), numpy or torch.
        center: (3,) or (B, 3).
        scale: scalar, () or (B,).
    """
    if isinstance(points_n, np.ndarray):
        center = np.asarray(center, dtype=points_n.dtype)
        scale = np.asarray(scale, dtype=points_n.dtype)
        if points_n.ndim == 3:
            return points_n * scale.reshape(-1, 1, 1) + center.reshape(-1, 1, 3)
        return points_n * scale + center
    center = torch.as_tensor(center, dtype=points_n.dtype, device=points_n.device)
    scale = torch.as_tensor(scale, dtype=points_n.dtype, device=points_n.device)
    if points_n.dim() == 3:
        return points_n * scale.reshape(-1, 1, 1) + center.reshape(-1, 1, 3)
    return points_n * scale + center


# --------------------------------------------------------------------------------------------
# depth lifting
# --------------------------------------------------------------------------------------------
def depth_to_points(depth, camera: OrthoCamera | Sequence[OrthoCamera], mask=None):
    """Lift a depth map back to world points with the camera(s) that rendered it.

    Args:
        depth: (H, W) numpy array or torch tensor of camera depth ``c_z`` (world units),
            0 (or less) = background; (H, W) must equal ``camera.image_size``.
        camera: one :class:`OrthoCamera`, or a list of them for a multi-view sheet; each camera
            lifts only the pixels of its own ``viewport``.
        mask: optional (H, W) bool of pixels to use (e.g. a predicted foreground).

    Returns:
        (P, 3) world points, one per used pixel (taken at the pixel centre ``(j + 0.5, i + 0.5)``),
        camera by camera and row-major inside each viewport. numpy in -> numpy (float32 unless
        depth is float64); torch in -> torch on depth's device and dtype, differentiable w.r.t.
        depth.
    """
    cams = [camera] if isinstance(camera, OrthoCamera) else list(camera)
    if not cams:
        raise ValueError("depth_to_points needs at least one camera")
    is_torch = isinstance(depth, torch.Tensor)
    if depth.ndim != 2:
        raise ValueError(f"depth must be (H, W), got shape {tuple(depth.shape)}")
    for cam in cams:
        if tuple(depth.shape) != tuple(cam.image_size):
            raise ValueError(f"depth shape {tuple(depth.shape)} does not match camera {cam.name!r} image_size {tuple(cam.image_size)}")
    if is_torch:
        valid = depth > 0
        if mask is not None:
            valid = valid & torch.as_tensor(mask, dtype=torch.bool, device=depth.device)
    else:
        depth = np.asarray(depth)
        valid = depth > 0
        if mask is not None:
            valid = valid & np.asarray(mask, dtype=bool)
    out = []
    for cam in cams:
        r0, c0, vh, vw = cam.viewport
        if is_torch:
            ii, jj = torch.nonzero(valid[r0 : r0 + vh, c0 : c0 + vw], as_tuple=True)
            ii, jj = ii + r0, jj + c0
            z = depth[ii, jj]  # (P,)
            cx, cy = cam.principal
            u = jj.to(depth.dtype) + 0.5
            v = ii.to(depth.dtype) + 0.5
            c = torch.stack([(u - cx) / cam.scale, (cy - v) / cam.scale, z], dim=1)  # (P, 3) camera frame
            rot = torch.as_tensor(cam.R, dtype=depth.dtype, device=depth.device)
            eye = torch.as_tensor(cam.eye_array, dtype=depth.dtype, device=depth.device)
            out.append(c @ rot + eye)  # (P, 3) world, same as cam.unproject
        else:
            ii, jj = np.nonzero(valid[r0 : r0 + vh, c0 : c0 + vw])
            ii, jj = ii + r0, jj + c0
            uv = np.stack([jj + 0.5, ii + 0.5], axis=1)  # (P, 2) (u=column, v=row)
            out.append(cam.unproject(uv, depth[ii, jj]))
    if is_torch:
        return torch.cat(out, dim=0)
    dtype = np.float64 if depth.dtype == np.float64 else np.float32
    return np.concatenate(out, axis=0).astype(dtype)


def resample_points(points: np.ndarray, num_points: int, rng: np.random.Generator) -> np.ndarray:
    """(N, 3) -> (num_points, 3) float32 without repeated points: a random subset when N is large
    enough, else all N plus midpoints between random points and one of their 4 nearest neighbours
    (new points stay on the sampled surface where it is locally flat). An empty cloud is a
    ValueError."""
    from scipy.spatial import cKDTree

    pts = np.asarray(points, dtype=np.float32)
    n = len(pts)
    if n == 0:
        raise ValueError("cannot resample an empty point cloud")
    if n >= num_points:
        return pts[rng.permutation(n)[:num_points]]
    k = min(5, n)
    _, nbrs = cKDTree(pts).query(pts, k=k)  # (N, k), self first
    nbrs = np.asarray(nbrs).reshape(n, k)
    extra = num_points - n
    a = rng.integers(0, n, size=extra)
    b = nbrs[a, rng.integers(1, k, size=extra)] if k > 1 else a
    t = rng.uniform(0.25, 0.75, size=(extra, 1)).astype(np.float32)  # not exactly a midpoint: no twins
    new = pts[a] * t + pts[b] * (1 - t)
    if k == 1:  # a single point: jitter it so copies differ
        new = new + rng.normal(0.0, 1e-4, size=new.shape).astype(np.float32)
    return np.concatenate([pts, new]).astype(np.float32)
