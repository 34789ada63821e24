"""Geometry: cameras and batched point-cloud operations shared by every stage.

The torch-based ops are imported on first use, so camera and sampling code (the data synthesis
workers) starts without loading torch.
"""

from cad3d.geometry.camera import OrthoCamera, iso_camera, random_camera, three_view_cameras
from cad3d.geometry.sampling import sample_surface

_OPS = (
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
)


def __getattr__(name):
    if name in _OPS:
        from cad3d.geometry import ops

        return getattr(ops, name)
    raise AttributeError(f"module 'cad3d.geometry' has no attribute {name!r}")


__all__ = ["OrthoCamera", "iso_camera", "random_camera", "three_view_cameras", "sample_surface", *_OPS]
