"""The depth model's ONNX contract: file names, tensor names and sizes, the JSON sidecar.

The contract is that of the official MiDaS v2.1 small export: one input ``1x3x256x256`` float32
RGB, one output ``1x256x256`` relative inverse depth (larger = closer, unknown scale and shift).
Our export has a dynamic batch axis and writes a JSON sidecar next to the file
(``cad3d_depth_256.json``) with its preprocessing ("unit": RGB in [0, 1]); a file without a
sidecar is taken for MiDaS ("imagenet": RGB in [0, 1], then ``(x - mean) / std``). The exporter
(`cad3d.training.depth_export`) and the runtime (`cad3d.conversion.depth`) both follow this module.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from cad3d.errors import ConversionError

MODELS_DIR = Path("models")
OUR_MODEL_NAME = "cad3d_depth_256.onnx"
MIDAS_MODEL_NAMES = ("midas_v2_small_256.onnx", "midas_v21_small_256.onnx", "model-small.onnx")
# find_depth_model's order: ours is trained on drawings, MiDaS on photographs.
KNOWN_MODEL_NAMES = (OUR_MODEL_NAME,) + MIDAS_MODEL_NAMES
DEFAULT_ONNX_PATH = MODELS_DIR / OUR_MODEL_NAME

ONNX_IMAGE_SIZE = 256  # the MiDaS v2.1 small input size (H = W)
ONNX_OPSET = 17
INPUT_NAME, OUTPUT_NAME = "image", "inverse_depth"
# Extra outputs of our layered exports (MiDaS files have none): (N, K, H, W) camera depth of each
# ray's first K surface crossings minus EYE_DISTANCE, in normalized-part units, and their
# probabilities of existing.
LAYERS_NAME, PRESENCE_NAME = "depth_layers", "layer_presence"
SIDECAR_FORMAT = "cad3d-depth-onnx"
PREPROCESSINGS = ("unit", "imagenet")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
FOREGROUND_THRESHOLD = 0.5  # our network: <= 0 on paper, >= 1 on the part


class DepthModelError(ConversionError):
    """A depth model file that is missing, not ONNX, or not of the MiDaS contract; or an export
    whose ONNX output does not match PyTorch. The message names the file and the cause."""


def sidecar_path(onnx_path: str | os.PathLike) -> Path:
    """The JSON sidecar of an ONNX file: same folder and stem, ``.json``."""
    return Path(onnx_path).with_suffix(".json")


def read_sidecar(onnx_path: Path) -> dict | None:
    side = sidecar_path(onnx_path)
    if not side.is_file():
        return None
    try:
        info = json.loads(side.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, OSError) as exc:
        raise DepthModelError(f"{side}: unreadable sidecar of {onnx_path.name} ({exc})") from None
    if not isinstance(info, dict) or info.get("format") != SIDECAR_FORMAT:
        return None  # someone else's JSON: not ours
    return info


def find_depth_model(models_dir: str | os.PathLike = MODELS_DIR) -> Path | None:
    """The first existing file of `KNOWN_MODEL_NAMES` in ``models_dir`` (our export first, then
    the MiDaS names), or None."""
    for name in KNOWN_MODEL_NAMES:
        candidate = Path(models_dir) / name
        if candidate.is_file():
            return candidate
    return None
