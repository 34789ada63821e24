"""Reference import path of the ViT trainer; the code lives in `cad3d.training.trainers` (the
facade) and `cad3d.training.tasks.vit` (the task)."""

from cad3d.models.vit import VisionTransformerConfig
from cad3d.training.tasks.vit import FamilyLabeledDataset, ViTTask, ViTTaskConfig
from cad3d.training.trainers import TrainingConfig, VisionTransformerTrainer

__all__ = ["FamilyLabeledDataset", "TrainingConfig", "ViTTask", "ViTTaskConfig", "VisionTransformerConfig", "VisionTransformerTrainer"]
