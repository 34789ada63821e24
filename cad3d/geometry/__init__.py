"""Geometry: cameras and batched point-cloud operations shared by every stage."""

from cad3d.geometry.camera import OrthoCamera, iso_camera, random_camera, three_view_cameras

__all__ = ["OrthoCamera", "iso_camera", "random_camera", "three_view_cameras"]
