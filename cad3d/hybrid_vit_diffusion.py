"""Reference import path of the hybrid converter; the code lives in `cad3d.conversion`."""

from cad3d.conversion.batch import ConvertReport, convert_files
from cad3d.conversion.converter import (
    DEFAULT_DIFFUSION_PATH,
    DEFAULT_LEARNING_PATH,
    DEFAULT_VIT_PATH,
    METHODS,
    HybridCAD3DConverter,
)

__all__ = ["ConvertReport", "DEFAULT_DIFFUSION_PATH", "DEFAULT_LEARNING_PATH", "DEFAULT_VIT_PATH", "METHODS",
           "HybridCAD3DConverter", "convert_files"]
