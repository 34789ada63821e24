"""Reference import path of the diffusion trainer and the dataset helpers; the code lives in
`cad3d.training.trainers` and `cad3d.data`."""

from cad3d.data.dataset import CAD2D3DDataset
from cad3d.data.synth import create_synthetic_training_data
from cad3d.training.trainers import DiffusionTrainer

__all__ = ["CAD2D3DDataset", "DiffusionTrainer", "create_synthetic_training_data"]
