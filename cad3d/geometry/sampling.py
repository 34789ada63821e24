"""Area-weighted surface sampling of triangle meshes, deterministic for a given numpy Generator."""

from __future__ import annotations

import numpy as np

__all__ = ["sample_surface"]


def sample_surface(
    mesh,
    n: int,
    rng: np.random.Generator | int,
    *,
    return_faces: bool = False,
    return_normals: bool = False,
):
    """Sample ``n`` points uniformly (area-weighted) on the surface of a triangle mesh.

    Args:
        mesh: a ``trimesh.Trimesh`` (anything with ``vertices`` (V, 3) and ``faces`` (F, 3);
            ``face_normals`` (F, 3) too when ``return_normals``).
        n: number of points, >= 0.
        rng: a ``numpy.random.Generator`` (consumed: 1 uniform draw for the face and 2 for the
            barycentric coordinates per point) or an int seed for a fresh one.
        return_faces: also return the (n,) int64 index of each point's face.
        return_normals: also return the (n, 3) float32 unit normal of each point's face.

    Returns:
        points (n, 3) float32 in mesh units, or a tuple (points, [faces], [normals]) in that
        order when requested. The same generator state gives the same points.

    Raises:
        ValueError: the mesh has no faces or zero total area.
    """
    if isinstance(rng, (int, np.integer)):
        rng = np.random.default_rng(int(rng))
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator or an int seed, got {type(rng).__name__}")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    vertices = np.asarray(mesh.vertices, dtype=np.float64)  # (V, 3)
    faces = np.asarray(mesh.faces, dtype=np.int64)  # (F, 3)
    if faces.size == 0:
        raise ValueError("cannot sample the surface of a mesh without faces")
    tri = vertices[faces]  # (F, 3, 3)
    e1 = tri[:, 1] - tri[:, 0]  # (F, 3)
    e2 = tri[:, 2] - tri[:, 0]  # (F, 3)
    area = 0.5 * np.linalg.norm(np.cross(e1, e2), axis=1)  # (F,)
    cdf = np.cumsum(area)
    total = cdf[-1]
    if not np.isfinite(total) or total <= 0:
        raise ValueError(f"cannot sample the surface of a mesh with total area {total}")
    # Inverse-CDF face choice: one uniform per point, independent of numpy's choice() internals.
    face_idx = np.searchsorted(cdf, rng.random(n) * total, side="right")  # (n,)
    face_idx = np.minimum(face_idx, len(faces) - 1)  # guards u * total rounding up to total
    uv = rng.random((n, 2))  # (n, 2)
    flip = uv.sum(axis=1) > 1.0  # reflect into the triangle: uniform on it
    uv[flip] = 1.0 - uv[flip]
    points = tri[face_idx, 0] + uv[:, :1] * e1[face_idx] + uv[:, 1:] * e2[face_idx]  # (n, 3)
    points = points.astype(np.float32)
    extra = []
    if return_faces:
        extra.append(face_idx.astype(np.int64))
    if return_normals:
        extra.append(np.asarray(mesh.face_normals, dtype=np.float32)[face_idx])
    return (points, *extra) if extra else points
