"""Reference import path of the CAD Vision Transformer; the code lives in `cad3d.models.vit`."""

from cad3d.models.vit import NUM_PART_FAMILIES, VisionTransformer, VisionTransformerConfig, vit_presets

__all__ = ["NUM_PART_FAMILIES", "VisionTransformer", "VisionTransformerConfig", "vit_presets"]
