"""A user's drawing in: read from a file with every way it can be bad named, or taken from an
array, tensor or PIL image; and the part's filled silhouette in it."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from cad3d.errors import ConversionError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif")
MAX_PIXELS = 64_000_000  # a 8000x8000 drawing; larger inputs are refused before decoding
# A drawing is padded with paper to a square: one much longer than wide would be a few pixels
# thin once fitted (and the square, before it shrinks, a memory bomb). Both bounds are checked on
# the header, before decoding, so reading any file needs at most about 1 GB.
MAX_ASPECT = 20
MAX_SIDE = 16_384


def read_drawing(path: str | os.PathLike, image_size: int | None = 256) -> np.ndarray:
    """A user's drawing as (image_size, image_size) float32 in [0, 1], 1 = white paper (None:
    its own size, padded to a square).

    Accepts grayscale, RGB, RGBA and LA (transparent = white paper), palette and 16-bit images.
    Raises ConversionError naming the file for: a missing file or folder, an empty file, a file
    that is not an image, a truncated or damaged image, an image too large to decode safely (over
    `MAX_PIXELS` pixels or `MAX_SIDE` on a side), too elongated (over `MAX_ASPECT`:1), an
    unsupported mode (CMYK, floating point) and a blank page. Nothing else escapes: a damaged
    file makes PIL's decoders fail in many ways, all reported as this file's error.
    """
    from PIL import Image

    path = Path(path)
    try:
        if not path.exists():
            raise ConversionError(f"{path}: no such file")
        if path.is_dir():
            raise ConversionError(f"{path}: is a folder, not a drawing")
        if path.stat().st_size == 0:
            raise ConversionError(f"{path}: empty file (0 bytes)")
    except OSError as exc:
        raise ConversionError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    try:
        with Image.open(path) as im:
            w, h = im.size
            mode = im.mode
    except Image.DecompressionBombError as exc:
        raise ConversionError(f"{path}: image too large to decode safely ({exc})") from None
    except Exception as exc:  # noqa: BLE001 - UnidentifiedImageError, SyntaxError, struct.error...
        raise ConversionError(f"{path}: not an image ({_cause(exc)})") from None
    _check_header(path, w, h, mode)
    image = _decode(path, image_size)
    if (image < 0.5).sum() < 10:
        raise ConversionError(f"{path}: blank drawing (no lines found)")
    return image


def _check_header(path: Path, w: int, h: int, mode: str) -> None:
    if w < 8 or h < 8:
        raise ConversionError(f"{path}: image too small ({w}x{h} pixels)")
    if max(w, h) > MAX_ASPECT * min(w, h):
        raise ConversionError(f"{path}: image too elongated for a drawing ({w}x{h} pixels, over {MAX_ASPECT}:1)")
    if w * h > MAX_PIXELS or max(w, h) > MAX_SIDE:
        raise ConversionError(f"{path}: image too large ({w}x{h} pixels; at most {MAX_PIXELS:,} pixels and "
                              f"{MAX_SIDE} on a side)")
    if mode in ("CMYK", "F", "YCbCr", "LAB", "HSV"):
        raise ConversionError(f"{path}: unsupported image mode {mode} (use grayscale, RGB or RGBA)")


def _decode(path: Path, image_size: int | None) -> np.ndarray:
    from PIL import Image

    from cad3d.data.dataset import load_drawing
    from cad3d.errors import DatasetError

    try:
        return load_drawing(path, image_size)
    except DatasetError as exc:
        raise ConversionError(str(exc)) from None
    except Image.DecompressionBombError as exc:
        raise ConversionError(f"{path}: image too large to decode safely ({exc})") from None
    except MemoryError:
        raise ConversionError(f"{path}: not enough memory to decode the image") from None
    except Exception as exc:  # noqa: BLE001 - a damaged image fails inside PIL's decoders in many ways
        raise ConversionError(f"{path}: corrupt or unreadable image ({_cause(exc)})") from None


def _cause(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def as_drawing(drawing, image_size: int | None = None) -> np.ndarray:
    """A drawing as (H, W) float32 in [0, 1] (1 = white paper).

    ``drawing``: a path (checked and read by `read_drawing` at ``image_size``), a PIL image, a
    numpy array (H, W), (H, W, 3), (H, W, 4) or (3, H, W) — uint8 or float in [0, 255] or
    [0, 1] — or a torch tensor (H, W) / (C, H, W) in [0, 1]. Arrays keep their size."""
    if isinstance(drawing, (str, os.PathLike)):
        return read_drawing(drawing, image_size)
    if hasattr(drawing, "detach"):  # torch tensor
        drawing = drawing.detach().float().cpu().numpy()
    if hasattr(drawing, "convert") and hasattr(drawing, "size"):  # PIL image
        arr = np.asarray(drawing.convert("L"), dtype=np.float32) / 255.0
    else:
        arr = np.asarray(drawing)
        if arr.dtype == np.uint8 or (arr.size and arr.max() > 1.0):
            arr = arr.astype(np.float32) / 255.0
        if arr.ndim == 3 and arr.shape[0] in (1, 3, 4) and arr.shape[-1] not in (3, 4):
            arr = arr[:3].mean(0)  # (C, H, W) tensor layout
        elif arr.ndim == 3 and arr.shape[-1] in (3, 4):
            arr = arr[..., :3].mean(-1)
    if arr.ndim != 2 or arr.size == 0:
        raise ConversionError(f"a drawing must be an (H, W), (H, W, 3) or (3, H, W) image, got shape {arr.shape}")
    return np.clip(arr.astype(np.float32), 0.0, 1.0)


def silhouette_mask(drawing, ink_threshold: float = 0.5) -> np.ndarray:
    """(H, W) bool: the part's filled silhouette in a line drawing.

    Ink is darker than ``ink_threshold``; it is thickened by one pixel so a small gap in an
    outline does not let the paper in; paper reachable from the image border (4-connected) is
    background; everything else (ink and enclosed paper) is the part."""
    from scipy import ndimage

    gray = as_drawing(drawing)
    ink = gray < ink_threshold  # (H, W)
    thick = ndimage.binary_dilation(ink)
    labels, _ = ndimage.label(~thick)
    border = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    background = np.isin(labels, border[border > 0])
    return ndimage.binary_erosion(~background, border_value=0) | ink


def collect_inputs(inputs: list[str | os.PathLike]) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Expand files and folders into drawing paths; folders without images are errors."""
    found, errors = [], []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            images = sorted(q for q in p.iterdir() if q.is_file() and q.suffix.lower() in IMAGE_SUFFIXES)
            if not images:
                errors.append((p, f"{p}: folder has no images ({', '.join(IMAGE_SUFFIXES)})"))
            found.extend(images)
        else:
            found.append(p)
    return found, errors
