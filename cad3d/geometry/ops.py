"""Batched point-cloud operations: Chamfer distance, F-score, farthest point sampling, kNN and
ball query, voxelization, normalization and depth back-projection.

The one geometry module models import from; farthest point sampling lives in
:mod:`cad3d.geometry.fps` (compiled kernels) and kNN / ball query / grouping in
:mod:`cad3d.geometry.neighbors`, both re-exported here. CPU and CUDA. Conventions:

* Point clouds are ``(B, N, 3)`` float tensors; most functions also take an unbatched
  ``(N, 3)`` cloud and then return unbatched results.
* Distances named ``sq_dist`` are *squared* Euclidean distances in the units of the input
  coordinates.
* Memory: pairwise distances are only ever materialized one block of ``chunk_size`` query rows
  at a time, ``(B, chunk_size, M)``, never the full ``(B, N, M)`` matrix. ``chunk_size=None``
  picks a block of about ``_BLOCK_ELEMENTS`` entries (:mod:`cad3d.geometry._common`).
* Nearest-neighbour *indices* are searched under ``no_grad`` with the matmul ranking
  ``|b|^2 - 2ab`` (after centring both clouds); the returned distances are then recomputed
  exactly from the gathered points with autograd, so gradients are those of the true
  nearest-neighbour distances and no block is kept alive for the backward pass.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import numpy as np
import torch
from torch.utils.checkpoint import checkpoint

from cad3d.geometry._common import _as_batched, _centered, _check_pair, _chunk_rows, _gather_points, _rank_block
from cad3d.geometry.camera import OrthoCamera
from cad3d.geometry.fps import farthest_point_sample, farthest_point_sample_reference
from cad3d.geometry.neighbors import ball_query, group_points, knn

__all__ = [
    "NearestNeighbors",
    "ball_query",
    "chamfer_distance",
    "denormalize",
    "depth_to_points",
    "f_score",
    "farthest_point_sample",
    "farthest_point_sample_reference",
    "group_points",
    "knn",
    "nearest_neighbors",
    "normalize",
    "soft_voxelize",
    "voxelize",
]


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------
def _nn_indices(a0: torch.Tensor, b0: torch.Tensor, rows: int) -> torch.Tensor:
    """Index (B, N) into b0 (B, M, 3) of the nearest neighbour of each a0 (B, N, 3) point,
    one (B, rows, M) block at a time; ties go to the lowest index."""
    b_sq = b0.square().sum(-1)  # (B, M)
    n = a0.shape[1]
    idx = torch.empty(a0.shape[:2], dtype=torch.long, device=a0.device)
    for s in range(0, n, rows):
        idx[:, s : s + rows] = _rank_block(a0[:, s : s + rows], b0, b_sq).argmin(dim=2)
    return idx


def _safe_sqrt(x: torch.Tensor) -> torch.Tensor:
    """sqrt with a zero (not NaN/inf) gradient at 0, e.g. for duplicate points."""
    pos = x > 0
    return torch.where(pos, torch.where(pos, x, torch.ones_like(x)).sqrt(), torch.zeros_like(x))


# --------------------------------------------------------------------------------------------
# nearest neighbours, Chamfer, F-score
# --------------------------------------------------------------------------------------------
class NearestNeighbors(NamedTuple):
    """Nearest neighbours both ways between clouds a (B, N, 3) and b (B, M, 3)."""

    sq_dist_ab: torch.Tensor  # (B, N) squared distance from each a point to its nearest b point
    idx_ab: torch.Tensor  # (B, N) long, index into b
    sq_dist_ba: torch.Tensor  # (B, M) squared distance from each b point to its nearest a point
    idx_ba: torch.Tensor  # (B, M) long, index into a


def nearest_neighbors(a: torch.Tensor, b: torch.Tensor, *, chunk_size: int | None = None) -> NearestNeighbors:
    """Nearest neighbour of every point of ``a`` in ``b`` and of every point of ``b`` in ``a``.

    Args:
        a: (B, N, 3) or (N, 3) points.
        b: (B, M, 3) or (M, 3) points; M may differ from N.
        chunk_size: rows per distance block, (B, chunk_size, M) for a -> b and
            (B, chunk_size, N) for b -> a; None = automatic.

    Returns:
        :class:`NearestNeighbors` with squared Euclidean distances (differentiable w.r.t. ``a``
        and ``b``) and long indices; unbatched inputs give unbatched fields. Ties are broken by
        the lowest index of the float32 ranking, so with duplicate points any of the duplicates
        may be returned (the distance is the same).

    Each direction is its own pass over blocks of rows, so every argmin runs along the
    contiguous last dimension (a strided column argmin is ~5x slower on CPU). Peak extra memory
    is O(B * chunk_size * max(N, M)).
    """
    a3, unbatched = _as_batched(a, "a")
    b3, _ = _as_batched(b, "b")
    _check_pair(a3, b3, "a", "b")
    bsz, n, _ = a3.shape
    m = b3.shape[1]
    with torch.no_grad():
        a0, b0 = _centered(a3, b3)  # (B, N, 3), (B, M, 3)
        idx_ab = _nn_indices(a0, b0, _chunk_rows(chunk_size, bsz, m))  # (B, N)
        idx_ba = _nn_indices(b0, a0, _chunk_rows(chunk_size, bsz, n))  # (B, M)
    sq_ab = (a3 - _gather_points(b3, idx_ab)).square().sum(-1)  # (B, N)
    sq_ba = (b3 - _gather_points(a3, idx_ba)).square().sum(-1)  # (B, M)
    out = NearestNeighbors(sq_ab, idx_ab, sq_ba, idx_ba)
    if unbatched:
        out = NearestNeighbors(*(t.squeeze(0) for t in out))
    return out


def chamfer_distance(
    a: torch.Tensor,
    b: torch.Tensor,
    *,
    norm: str = "l2",
    reduction: str = "mean",
    chunk_size: int | None = None,
) -> torch.Tensor:
    """Symmetric Chamfer distance ``mean_a d(a, b) + mean_b d(b, a)`` per sample.

    Args:
        a: (B, N, 3) or (N, 3) points.
        b: (B, M, 3) or (M, 3) points; M may differ from N.
        norm: ``"l2"``: d is the *squared* Euclidean distance to the nearest neighbour (the usual
            training loss, "CD-L2"); ``"l1"``: d is the (non-squared) Euclidean distance
            ("CD-L1" of point-cloud completion benchmarks), with a zero gradient at d = 0.
            Nearest neighbours are Euclidean in both cases.
        reduction: ``"mean"`` over the batch (scalar), ``"sum"`` (scalar) or ``"none"`` (B,)
            (a scalar for unbatched input).
        chunk_size: rows per distance block; memory O(B * chunk_size * max(N, M)).

    Returns:
        The Chamfer distance in (squared, for l2) input units; differentiable w.r.t. a and b.
    """
    if norm not in ("l2", "l1"):
        raise ValueError(f"norm must be 'l2' or 'l1', got {norm!r}")
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    a3, unbatched = _as_batched(a, "a")
    b3, _ = _as_batched(b, "b")
    nn = nearest_neighbors(a3, b3, chunk_size=chunk_size)
    d_ab, d_ba = nn.sq_dist_ab, nn.sq_dist_ba  # (B, N), (B, M)
    if norm == "l1":
        d_ab, d_ba = _safe_sqrt(d_ab), _safe_sqrt(d_ba)
    per_sample = d_ab.mean(dim=1) + d_ba.mean(dim=1)  # (B,)
    if reduction == "mean":
        return per_sample.mean()
    if reduction == "sum":
        return per_sample.sum()
    return per_sample.squeeze(0) if unbatched else per_sample


def f_score(
    pred: torch.Tensor,
    gt: torch.Tensor,
    tau: float | torch.Tensor | None = None,
    *,
    tau_rel: float = 0.01,
    chunk_size: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """F-score at distance threshold ``tau`` (Tatarchenko et al. 2019), per sample.

    Args:
        pred: (B, N, 3) or (N, 3) predicted points.
        gt: (B, M, 3) or (M, 3) ground-truth points.
        tau: threshold in input units: a float, a (B,) tensor, or None for
            ``tau_rel * `` the diagonal of each ground-truth bounding box.
        tau_rel: relative threshold used when ``tau`` is None (0.01 = 1% of the diagonal).

    Returns:
        (fscore, precision, recall), each (B,) (scalars for unbatched input) in [0, 1].
        precision = share of pred points within tau (strictly) of gt, recall = share of gt points
        within tau of pred; fscore = 2PR / (P + R), 0 when both are 0. Not differentiable.
    """
    p3, unbatched = _as_batched(pred, "pred")
    g3, _ = _as_batched(gt, "gt")
    with torch.no_grad():
        nn = nearest_neighbors(p3, g3, chunk_size=chunk_size)
        if tau is None:
            diag = (g3.amax(dim=1) - g3.amin(dim=1)).norm(dim=-1)  # (B,)
            tau_t = tau_rel * diag
        else:
            tau_t = torch.as_tensor(tau, dtype=p3.dtype, device=p3.device).expand(p3.shape[0])  # (B,)
        tau2 = tau_t.square().unsqueeze(1)  # (B, 1)
        precision = (nn.sq_dist_ab < tau2).to(p3.dtype).mean(dim=1)  # (B,)
        recall = (nn.sq_dist_ba < tau2).to(p3.dtype).mean(dim=1)  # (B,)
        denom = precision + recall
        fscore = torch.where(denom > 0, 2 * precision * recall / denom.clamp_min(1e-12), torch.zeros_like(denom))
    if unbatched:
        return fscore.squeeze(0), precision.squeeze(0), recall.squeeze(0)
    return fscore, precision, recall


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
