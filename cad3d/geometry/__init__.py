"""Geometry: cameras and batched point-cloud operations shared by every stage."""

from cad3d.geometry.camera import OrthoCamera, iso_camera, random_camera, three_view_cameras
from cad3d.geometry.ops import (
    NearestNeighbors,
    ball_query,
    chamfer_distance,
    denormalize,
    depth_to_points,
    f_score,
    farthest_point_sample,
    group_points,
    knn,
    nearest_neighbors,
    normalize,
    soft_voxelize,
    voxelize,
)
from cad3d.geometry.sampling import sample_surface

__all__ = [
    "OrthoCamera",
    "iso_camera",
    "random_camera",
    "three_view_cameras",
    "NearestNeighbors",
    "ball_query",
    "chamfer_distance",
    "denormalize",
    "depth_to_points",
    "f_score",
    "farthest_point_sample",
    "group_points",
    "knn",
    "nearest_neighbors",
    "normalize",
    "sample_surface",
    "soft_voxelize",
    "voxelize",
]
