"""Running an ONNX depth model (ours or a user's MiDaS file) on drawings, and lifting its
relative inverse depth map to a 3D point cloud.

    path = find_depth_model("models")            # ours first, else a MiDaS file, else None
    est = DepthEstimator(path)                    # tensor names/shapes read from the session
    inv = est.predict("drawing.png")              # (H, W) relative inverse depth, larger = closer
    cloud = lift_drawing("drawing.png", inv)      # (N, 3) float32, normalized object frame

The file contract (tensor sizes, sidecar, preprocessing) is `cad3d.models.depth_contract`.

Lifting (`lift_drawing`, `fit_camera_depth`): relative inverse depth ``r`` is, on the part,
``1 / c_z = alpha + beta * r`` for unknown ``alpha`` and ``beta > 0``. The drawing says nothing
about absolute depth, so two facts about orthographic iso views of a normalized part fix them:

* the foreground is the drawing's filled silhouette (`silhouette_mask`: paper reachable from the
  image border without crossing a line is background, the rest is the part);
* the visible surface's depth extent (2nd-98th percentile of ``c_z``) is `DEPTH_EXTENT_RATIO` x
  the silhouette's larger side (world units = pixels / camera scale), and the silhouette's
  outline lies at the depth of the part's centre, the camera target at `EYE_DISTANCE` (as on a
  sphere, or a cube seen along its diagonal). Measured on 60 synthetic iso drawings of every
  part family: extent ratio 0.69 +- 0.09; outline median depth ``EYE_DISTANCE - 0.01 E +- 0.04 E``
  (better than anchoring the middle or the near end of the depth range, +- 0.06 E).

So the median ``r`` of the outline pixels maps to ``EYE_DISTANCE`` and ``beta`` is chosen (by
bisection) so that the 2nd-98th percentile range of ``r`` maps to that extent; every pixel gets
``c_z = 1 / (alpha + beta * r)`` (clipped to half an extent beyond the range), and then
`cad3d.geometry.transforms.depth_to_points` lifts the pixels with the drawing's camera (default: the iso
camera of `cad3d.geometry.camera` at the drawing's size).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from cad3d.conversion.drawing import as_drawing, silhouette_mask
from cad3d.errors import ConversionError
from cad3d.geometry.camera import EYE_DISTANCE, OrthoCamera, iso_camera
from cad3d.geometry.transforms import depth_to_points
from cad3d.models.depth_contract import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ONNX_IMAGE_SIZE,
    LAYERS_NAME,
    PRESENCE_NAME,
    PREPROCESSINGS,
    DepthModelError,
    read_sidecar,
    sidecar_path,
)

logger = logging.getLogger(__name__)

# Lifting prior for iso views of normalized parts (see the module doc): visible depth extent
# over the silhouette's larger side.
DEPTH_EXTENT_RATIO = 0.69
OUTLINE_WIDTH = 2  # pixels of the silhouette's rim that count as its outline


def _resize(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(H, W) -> (h, w) bilinear (anti-aliased when shrinking)."""
    if tuple(x.shape) == tuple(size):
        return x.astype(np.float32, copy=False)
    t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))[None, None]  # (1, 1, H, W)
    shrink = size[0] < x.shape[0] or size[1] < x.shape[1]
    out = F.interpolate(t, size=size, mode="bilinear", align_corners=False, antialias=shrink)
    return out[0, 0].numpy()


def _static(dim, default: int) -> int:
    return dim if isinstance(dim, int) and dim > 0 else default


class DepthEstimator:
    """Runs an ONNX depth model of the MiDaS contract on drawings.

    Args:
        onnx_path: our export or a user's MiDaS v2.1 small file.
        preprocessing: "unit" (RGB in [0, 1]), "imagenet" (then ``(x - mean) / std``) or "auto":
            the sidecar's choice for our export, else "imagenet" (MiDaS).
        providers: onnxruntime execution providers; default CUDA when available, then CPU.

    Tensor names and shapes are read from the session: one input (N, 3, H, W) (a dynamic H/W
    counts as 256), the first output (N, H, W) or (N, 1, H, W). Raises `DepthModelError`
    naming the file when it is missing, not loadable, or of another shape.
    """

    def __init__(self, onnx_path: str | os.PathLike, preprocessing: str = "auto", providers: Sequence[str] | None = None):
        import onnxruntime as ort

        self.path = Path(onnx_path)
        if preprocessing not in ("auto",) + PREPROCESSINGS:
            raise ValueError(f"preprocessing must be auto, unit or imagenet, got {preprocessing!r}")
        if not self.path.is_file():
            raise DepthModelError(f"{self.path}: depth model not found")
        if providers is None:
            available = ort.get_available_providers()
            providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available] or available
        try:
            self.session = ort.InferenceSession(str(self.path), providers=list(providers))
        except Exception as exc:  # onnxruntime raises its own pybind types (InvalidProtobuf, Fail, ...)
            cause = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise DepthModelError(f"{self.path}: not a loadable ONNX model ({cause})") from None
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 1 or len(inputs[0].shape) != 4 or inputs[0].shape[1] not in (3, "3"):
            shapes = [(i.name, i.shape) for i in inputs]
            raise DepthModelError(f"{self.path}: expected one image input (N, 3, H, W) like MiDaS, got {shapes}")
        if inputs[0].type not in ("tensor(float)", "tensor(float16)"):
            raise DepthModelError(f"{self.path}: input {inputs[0].name!r} is {inputs[0].type}, expected float32")
        if not outputs or len(outputs[0].shape or ()) not in (3, 4):
            raise DepthModelError(f"{self.path}: expected an output (N, H, W) or (N, 1, H, W), got {[(o.name, o.shape) for o in outputs]}")
        self.input_name, self.output_name = inputs[0].name, outputs[0].name
        self.input_dtype = np.float16 if inputs[0].type == "tensor(float16)" else np.float32
        self.input_size = (_static(inputs[0].shape[2], ONNX_IMAGE_SIZE), _static(inputs[0].shape[3], ONNX_IMAGE_SIZE))  # (H, W)
        self.sidecar = read_sidecar(self.path)
        self.kind = "cad3d" if self.sidecar is not None else "midas"
        if preprocessing == "auto":
            preprocessing = (self.sidecar or {}).get("preprocessing", "imagenet")
            if preprocessing not in PREPROCESSINGS:
                raise DepthModelError(f"{sidecar_path(self.path)}: unknown preprocessing {preprocessing!r}")
        self.preprocessing = preprocessing
        # Only our network promises a background level; for MiDaS use the drawing's silhouette.
        self.foreground_threshold = (self.sidecar or {}).get("foreground_threshold")
        names = {o.name for o in outputs}
        self.layered = LAYERS_NAME in names and PRESENCE_NAME in names  # our layered export
        # Validation score stored with the export (lower is better; None: unknown).
        self.val_chamfer = (self.sidecar or {}).get("val_chamfer")

    def __repr__(self) -> str:
        return (f"DepthEstimator({str(self.path)!r}, kind={self.kind!r}, preprocessing={self.preprocessing!r}, "
                f"input={self.input_name!r}{self.input_size}, output={self.output_name!r})")

    def preprocess(self, drawing) -> np.ndarray:
        """Drawing -> the model input (1, 3, h, w) (see `as_drawing` for accepted inputs)."""
        gray = _resize(as_drawing(drawing), self.input_size)  # (h, w) in [0, 1]
        x = np.repeat(gray[None], 3, axis=0)  # (3, h, w) RGB
        if self.preprocessing == "imagenet":
            mean = np.asarray(IMAGENET_MEAN, dtype=np.float32)[:, None, None]
            std = np.asarray(IMAGENET_STD, dtype=np.float32)[:, None, None]
            x = (x - mean) / std
        return x[None].astype(self.input_dtype)  # (1, 3, h, w)

    def predict(self, drawing) -> np.ndarray:
        """Relative inverse depth (H, W) float32 at the drawing's own size (larger = closer)."""
        gray = as_drawing(drawing)  # (H, W)
        out = self.session.run([self.output_name], {self.input_name: self.preprocess(gray)})[0]
        out = np.asarray(out, dtype=np.float32).reshape(out.shape[-2:])  # (h, w)
        return _resize(out, gray.shape)  # (H, W)

    __call__ = predict

    def predict_layers(self, drawing) -> np.ndarray:
        """Layered camera depth ``c_z`` (K, H, W) float32 at the drawing's own size: each ray's
        first K surface crossings the model believes in, 0 elsewhere (a layered export only)."""
        if not self.layered:
            raise DepthModelError(f"{self.path}: not a layered depth model (no {LAYERS_NAME!r} output)")
        gray = as_drawing(drawing)  # (H, W)
        depth, presence = self.session.run([LAYERS_NAME, PRESENCE_NAME], {self.input_name: self.preprocess(gray)})
        depth, presence = np.asarray(depth, dtype=np.float32)[0], np.asarray(presence, dtype=np.float32)[0]  # (K, h, w)
        layers = np.where(presence > 0.5, depth + EYE_DISTANCE, 0.0).astype(np.float32)
        if layers.shape[-2:] != gray.shape:  # nearest neighbour: no pixel mixes two surfaces
            rows = (np.arange(gray.shape[0]) * layers.shape[1] // gray.shape[0])
            cols = (np.arange(gray.shape[1]) * layers.shape[2] // gray.shape[1])
            layers = layers[:, rows][:, :, cols]
        return layers  # (K, H, W)


# --------------------------------------------------------------------------------------------
# lifting
# --------------------------------------------------------------------------------------------
def _cameras(camera, shape: tuple[int, int]) -> list[OrthoCamera]:
    if camera is None:
        return [iso_camera(image_size=shape)]
    if isinstance(camera, OrthoCamera):
        return [camera]
    if isinstance(camera, dict):
        return [OrthoCamera.from_dict(camera)]
    return [c if isinstance(c, OrthoCamera) else OrthoCamera.from_dict(c) for c in camera]


def fit_camera_depth(inverse_depth: np.ndarray, mask: np.ndarray, camera=None) -> np.ndarray:
    """Camera depth ``c_z`` (H, W) float32 (0 = background) from relative inverse depth.

    Args:
        inverse_depth: (H, W) relative inverse depth (larger = closer, any scale and shift).
        mask: (H, W) bool foreground.
        camera: an `OrthoCamera`, a list of them (three-view sheet: each viewport is fitted on
            its own) or their dicts; None = the iso camera at this size.

    Per viewport: ``1 / c_z = alpha + beta * r``, with the outline's median ``r`` at
    `EYE_DISTANCE` and the 2nd-98th percentile range of ``r`` spanning `DEPTH_EXTENT_RATIO` x
    the silhouette's larger side (see the module doc).
    """
    from scipy import ndimage

    inv = np.asarray(inverse_depth, dtype=np.float64)
    mask = np.asarray(mask, dtype=bool)
    if inv.ndim != 2 or inv.shape != mask.shape:
        raise ValueError(f"inverse_depth {inv.shape} and mask {mask.shape} must be the same (H, W)")
    depth = np.zeros(inv.shape, dtype=np.float32)
    for cam in _cameras(camera, inv.shape):
        m = mask & cam.pixel_mask() & np.isfinite(inv)
        if not m.any():
            continue
        rows, cols = np.nonzero(m.any(axis=1))[0], np.nonzero(m.any(axis=0))[0]
        extent = max(rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1) / cam.scale  # world units
        span = DEPTH_EXTENT_RATIO * extent
        outline = m & ~ndimage.binary_erosion(m, iterations=OUTLINE_WIDTH, border_value=0)
        r = inv[m]  # (P,)
        r_far, r_near = np.percentile(r, [2.0, 98.0])
        r_mid = float(np.median(inv[outline])) if outline.any() else (r_far + r_near) / 2
        u_mid = 1.0 / EYE_DISTANCE  # inverse depth of the outline
        beta = _fit_beta(r_near - r_mid, r_far - r_mid, u_mid, span)
        lo, hi = max(EYE_DISTANCE - span, 1e-3), EYE_DISTANCE + span
        z = 1.0 / np.clip(u_mid + beta * (r - r_mid), 1.0 / hi, 1.0 / lo)
        depth[m] = z
    return depth


def _fit_beta(a: float, b: float, u_mid: float, span: float) -> float:
    """``beta >= 0`` with ``1 / (u_mid + beta * b) - 1 / (u_mid + beta * a) = span``, where
    ``a >= b`` are the near / far percentiles of ``r`` minus the outline's; 0 for a flat ``r``.
    The left side grows with ``beta`` (from 0), so bisection finds it."""
    if a - b <= 1e-9 * max(1.0, abs(a), abs(b)):
        return 0.0

    def extent(beta: float) -> float:
        near, far = u_mid + beta * a, u_mid + beta * b
        return np.inf if far <= 0 else 1.0 / far - 1.0 / max(near, 1e-12)

    hi = u_mid / -b if b < 0 else 1.0
    while b >= 0 and extent(hi) < span:  # the outline is at the far end: no pole, grow the bracket
        hi *= 2.0
    lo = 0.0
    for _ in range(100):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if extent(mid) < span else (lo, mid)
    return lo


def lift_drawing(drawing, inverse_depth, camera=None, *, mask=None) -> np.ndarray:
    """A drawing's relative inverse depth map lifted to a point cloud.

    Args:
        drawing: the line drawing (anything `as_drawing` takes), (H, W).
        inverse_depth: (H, W) relative inverse depth, e.g. `DepthEstimator.predict`; another
            size is resized to the drawing's.
        camera: the drawing's recorded camera(s) (`OrthoCamera`, a list, or their dicts as in a
            dataset's meta ``cameras``); None = the iso camera of `cad3d.geometry.camera`.
        mask: (H, W) bool foreground; default `silhouette_mask` of the drawing.

    Returns:
        (N, 3) float32 world points (normalized object frame), one per foreground pixel, as
        `cad3d.geometry.transforms.depth_to_points` orders them. Raises `ConversionError` when the
        drawing has no foreground.
    """
    gray = as_drawing(drawing)  # (H, W)
    inv = _resize(np.asarray(inverse_depth, dtype=np.float32), gray.shape)  # (H, W)
    mask = silhouette_mask(gray) if mask is None else np.asarray(mask, dtype=bool)
    if mask.shape != gray.shape:
        raise ValueError(f"mask {mask.shape} must match the drawing {gray.shape}")
    cams = _cameras(camera, gray.shape)
    depth = fit_camera_depth(inv, mask, cams)  # (H, W)
    if not (depth > 0).any():
        raise ConversionError("the drawing has no part to lift (empty silhouette)")
    return depth_to_points(depth, cams, mask=depth > 0)  # (N, 3)
