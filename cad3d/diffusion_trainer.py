"""Seed-000 import path: `from cad3d.diffusion_trainer import create_synthetic_training_data, CAD2D3DDataset`."""

from cad3d.data.dataset import CAD2D3DDataset
from cad3d.data.synth import create_synthetic_training_data

__all__ = ["CAD2D3DDataset", "create_synthetic_training_data"]
