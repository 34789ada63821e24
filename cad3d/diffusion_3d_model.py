"""Reference import path of the diffusion model; the code lives in `cad3d.models.diffusion_model`
(wrapper, config, presets) and `cad3d.models.image_encoders`."""

from cad3d.models.diffusion_model import Diffusion3DModel, DiffusionConfig, create_diffusion_model, denoising_loss, diffusion_presets
from cad3d.models.image_encoders import CNNImageEncoder, ImageEncoder, ImageEncoderConfig, ImageFeatures, ViTImageEncoder

__all__ = [
    "CNNImageEncoder", "Diffusion3DModel", "DiffusionConfig", "ImageEncoder", "ImageEncoderConfig", "ImageFeatures",
    "ViTImageEncoder", "create_diffusion_model", "denoising_loss", "diffusion_presets",
]
