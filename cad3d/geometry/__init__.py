"""Geometry: cameras and batched point-cloud operations shared by every stage.

The torch-based ops (`ops`, `transforms`) are imported on first use, so camera and sampling code
(the data synthesis workers) starts without loading torch.
"""

from cad3d.geometry.camera import OrthoCamera, iso_camera, random_camera, three_view_cameras
from cad3d.geometry.sampling import sample_surface

_LAZY = {  # name -> the module that defines it
    **dict.fromkeys(("NearestNeighbors", "nearest_neighbors", "chamfer_distance", "f_score"), "ops"),
    **dict.fromkeys(("farthest_point_sample", "farthest_point_sample_reference"), "fps"),
    **dict.fromkeys(("knn", "ball_query", "group_points"), "neighbors"),
    **dict.fromkeys(("voxelize", "soft_voxelize", "normalize", "denormalize", "depth_to_points", "resample_points"), "transforms"),
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"cad3d.geometry.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'cad3d.geometry' has no attribute {name!r}")


__all__ = ["OrthoCamera", "iso_camera", "random_camera", "three_view_cameras", "sample_surface", *_LAZY]
