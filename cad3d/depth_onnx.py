"""Depth models as ONNX files: export of our `DepthNet`, a runner for it or a user's MiDaS file,
and lifting of a predicted relative inverse depth map to a 3D point cloud.

    from cad3d.depth_onnx import DepthEstimator, find_depth_model, lift_drawing

    path = find_depth_model("models")            # ours first, else a MiDaS file, else None
    est = DepthEstimator(path)                    # tensor names/shapes read from the session
    inv = est.predict("drawing.png")              # (H, W) relative inverse depth, larger = closer
    cloud = lift_drawing("drawing.png", inv)      # (N, 3) float32, normalized object frame

The ONNX contract (SPEC §3) is that of the official MiDaS v2.1 small export: one input
``1x3x256x256`` float32 RGB, one output ``1x256x256`` relative inverse depth (larger = closer,
unknown scale and shift). Our export (`export_depth_onnx`) has a dynamic batch axis and writes a
JSON sidecar next to the file (``cad3d_depth_256.json``) with its preprocessing ("unit": RGB in
[0, 1]); a file without a sidecar is taken for MiDaS ("imagenet": RGB in [0, 1], then
``(x - mean) / std`` with the ImageNet mean and std).

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
`cad3d.geometry.ops.depth_to_points` lifts the pixels with the drawing's camera (default: the iso
camera of `cad3d.geometry.camera` at the drawing's size).
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cad3d.errors import ConversionError
from cad3d.geometry.camera import EYE_DISTANCE, OrthoCamera, iso_camera
from cad3d.geometry.ops import depth_to_points

logger = logging.getLogger(__name__)

MODELS_DIR = Path("models")
OUR_MODEL_NAME = "cad3d_depth_256.onnx"
MIDAS_MODEL_NAMES = ("midas_v2_small_256.onnx", "midas_v21_small_256.onnx", "model-small.onnx")
# find_depth_model's order: ours is trained on drawings, MiDaS on photographs.
KNOWN_MODEL_NAMES = (OUR_MODEL_NAME,) + MIDAS_MODEL_NAMES
DEFAULT_ONNX_PATH = MODELS_DIR / OUR_MODEL_NAME

ONNX_IMAGE_SIZE = 256  # the MiDaS v2.1 small input size (H = W)
ONNX_OPSET = 17
INPUT_NAME, OUTPUT_NAME = "image", "inverse_depth"
SIDECAR_FORMAT = "cad3d-depth-onnx"
PREPROCESSINGS = ("unit", "imagenet")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Lifting prior for iso views of normalized parts (see the module doc): visible depth extent
# over the silhouette's larger side.
DEPTH_EXTENT_RATIO = 0.69
OUTLINE_WIDTH = 2  # pixels of the silhouette's rim that count as its outline
FOREGROUND_THRESHOLD = 0.5  # our network: <= 0 on paper, >= 1 on the part


class DepthModelError(ConversionError):
    """A depth model file that is missing, not ONNX, or not of the MiDaS contract; or an export
    whose ONNX output does not match PyTorch. The message names the file and the cause."""


# --------------------------------------------------------------------------------------------
# export
# --------------------------------------------------------------------------------------------
class OnnxDepthWrapper(nn.Module):
    """The exported graph: (B, 3, S, S) RGB in [0, 1] -> (B, S, S) relative inverse depth.

    When the network was trained at another resolution, the input is resized to it and the
    output back to S, so the file keeps the MiDaS contract whatever the training size."""

    def __init__(self, model: nn.Module, train_size: int, size: int = ONNX_IMAGE_SIZE):
        super().__init__()
        self.model, self.train_size, self.size = model, int(train_size), int(size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.train_size != self.size:
            x = F.interpolate(x, size=(self.train_size, self.train_size), mode="bilinear", align_corners=False)
        y = self.model(x)  # (B, s, s)
        if self.train_size != self.size:
            y = F.interpolate(y.unsqueeze(1), size=(self.size, self.size), mode="bilinear", align_corners=False).squeeze(1)
        return y  # (B, S, S)


@dataclass
class ExportResult:
    path: Path  # the .onnx file
    sidecar: Path  # its JSON preprocessing description
    max_abs_diff: float  # largest |onnxruntime - PyTorch| over the check inputs
    tolerance: float  # the bound it had to stay under


def sidecar_path(onnx_path: str | os.PathLike) -> Path:
    """The JSON sidecar of an ONNX file: same folder and stem, ``.json``."""
    return Path(onnx_path).with_suffix(".json")


def _torch_onnx_export(module: nn.Module, example: torch.Tensor, path: Path, opset: int) -> None:
    kwargs: dict[str, Any] = dict(
        input_names=[INPUT_NAME],
        output_names=[OUTPUT_NAME],
        opset_version=opset,
        dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
    )
    if "dynamo" in inspect.signature(torch.onnx.export).parameters:
        # The TorchScript exporter: the same graph on torch 2.4 .. 2.x without onnxscript.
        kwargs["dynamo"] = False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)  # GroupNorm's batch-size check: B is dynamic anyway
        torch.onnx.export(module, (example,), str(path), **kwargs)


def _check_inputs(size: int) -> torch.Tensor:
    """(2, 3, S, S): random pixels and a blank sheet with a drawn square (both RGB in [0, 1])."""
    g = torch.Generator().manual_seed(0)
    noise = torch.rand(1, 3, size, size, generator=g)
    sheet = torch.ones(1, 3, size, size)
    q = size // 4
    sheet[..., q : 3 * q, q] = sheet[..., q : 3 * q, 3 * q] = sheet[..., q, q : 3 * q] = sheet[..., 3 * q, q : 3 * q] = 0.0
    return torch.cat([noise, sheet])


def export_depth_onnx(
    model: nn.Module,
    path: str | os.PathLike = DEFAULT_ONNX_PATH,
    *,
    train_size: int | None = None,
    size: int = ONNX_IMAGE_SIZE,
    opset: int = ONNX_OPSET,
    atol: float = 1e-3,
    rtol: float = 1e-3,
    extra_info: dict | None = None,
) -> ExportResult:
    """Export a depth network (e.g. `DepthNet`) to ONNX with the MiDaS v2.1 small contract.

    Args:
        model: (B, 3, s, s) RGB in [0, 1] -> (B, s, s) relative inverse depth; exported in eval
            mode on CPU (a copy; the module passed is left as it was).
        path: the .onnx file; its folder is created; the sidecar goes next to it.
        train_size: the resolution ``s`` the model expects (default ``model.config.image_size``
            or ``size``); the graph resizes from and to ``size``.
        size: the file's input size S (input ``(batch, 3, S, S)``, output ``(batch, S, S)``).
        atol, rtol: right after the export, onnxruntime must reproduce PyTorch on check inputs
            within ``atol + rtol * max|PyTorch output|``.
        extra_info: more fields for the sidecar (e.g. the checkpoint it came from).

    Raises `DepthModelError` naming the file when the check fails (no file is left then). The
    file and sidecar are published atomically (written beside, then renamed).
    """
    import copy

    import onnxruntime as ort

    from cad3d.io import atomic_write_json, temp_path

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if train_size is None:
        train_size = int(getattr(getattr(model, "config", None), "image_size", size))
    net = copy.deepcopy(model).to("cpu").float().eval()
    wrapper = OnnxDepthWrapper(net, train_size, size).eval()
    inputs = _check_inputs(size)  # (2, 3, S, S)
    with torch.no_grad():
        expected = wrapper(inputs).numpy()  # (2, S, S)
    tmp = temp_path(path)  # exported and checked there, published only when it matches
    try:
        _torch_onnx_export(wrapper, inputs[:1], tmp, opset)
        session = ort.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
        got = np.concatenate([session.run(None, {INPUT_NAME: inputs[i : i + 1].numpy()})[0] for i in range(len(inputs))])
        if got.shape != expected.shape:
            raise DepthModelError(f"{path}: exported ONNX output has shape {got.shape}, PyTorch {expected.shape}")
        diff = float(np.abs(got - expected).max())
        tolerance = atol + rtol * float(np.abs(expected).max())
        if not diff <= tolerance:
            raise DepthModelError(f"{path}: exported ONNX output differs from PyTorch by {diff:.3g} (> {tolerance:.3g})")
        # Sidecar first, model last: a crash in between leaves the previous model beside the new
        # sidecar, whose preprocessing ("unit") is that of every export, so it still runs right.
        sidecar = sidecar_path(path)
        atomic_write_json(
            sidecar,
            {
                "format": SIDECAR_FORMAT,
                "version": 1,
                "model": path.name,
                "input": {"name": INPUT_NAME, "shape": ["batch", 3, size, size], "dtype": "float32"},
                "output": {"name": OUTPUT_NAME, "shape": ["batch", size, size], "dtype": "float32"},
                "preprocessing": "unit",
                "color": "RGB",
                "value_range": [0.0, 1.0],
                "mean": None,
                "std": None,
                "output_meaning": "relative inverse depth, larger = closer; <= 0 on paper, >= 1 on the part",
                "foreground_threshold": FOREGROUND_THRESHOLD,
                "train_image_size": int(train_size),
                "opset": int(opset),
                "max_abs_diff": diff,
                "torch": torch.__version__,
                **(extra_info or {}),
            },
        )
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return ExportResult(path=path, sidecar=sidecar, max_abs_diff=diff, tolerance=tolerance)


def load_depth_net(checkpoint: str | os.PathLike, map_location="cpu") -> nn.Module:
    """The `DepthNet` of a depth checkpoint (``depth_best.pth`` etc.), in eval mode.

    Loads with `cad3d.training.checkpoint.load_checkpoint` (weights_only, verified); raises
    `CheckpointError` naming the file for a bad or foreign checkpoint."""
    from cad3d.training.checkpoint import META_KEY, load_checkpoint, load_state_dict_strict
    from cad3d.training.depth_task import DepthTask

    payload = load_checkpoint(checkpoint, map_location=map_location, expected_task=DepthTask.name)
    config = (payload.get(META_KEY) or {}).get("config") or {}
    task = DepthTask.from_config_dict(config.get("task", config))
    model = task.build_modules()["model"]
    key = DepthTask.schema.module_keys["model"]
    load_state_dict_strict(model, payload.get(key), path=checkpoint, key=key)
    return model.eval()


def export_depth_checkpoint(checkpoint: str | os.PathLike, path: str | os.PathLike = DEFAULT_ONNX_PATH, **kwargs) -> ExportResult:
    """`export_depth_onnx` of the network in a depth checkpoint (e.g. ``depth_best.pth``)."""
    model = load_depth_net(checkpoint)
    extra = {"checkpoint": str(checkpoint), **(kwargs.pop("extra_info", None) or {})}
    return export_depth_onnx(model, path, extra_info=extra, **kwargs)


# --------------------------------------------------------------------------------------------
# finding and running a model
# --------------------------------------------------------------------------------------------
def find_depth_model(models_dir: str | os.PathLike = MODELS_DIR) -> Path | None:
    """The first existing file of `KNOWN_MODEL_NAMES` in ``models_dir`` (our export first, then
    the MiDaS names), or None."""
    for name in KNOWN_MODEL_NAMES:
        candidate = Path(models_dir) / name
        if candidate.is_file():
            return candidate
    return None


def drawing_to_gray(drawing) -> np.ndarray:
    """A drawing as (H, W) float32 in [0, 1] (1 = white paper).

    ``drawing``: a path (read like training data: `cad3d.data.dataset.load_drawing`), a PIL
    image, a numpy array (H, W), (H, W, 3) or (H, W, 4) — uint8 in [0, 255] or float in [0, 1] —
    or a torch tensor (H, W) / (C, H, W) in [0, 1]."""
    if isinstance(drawing, (str, os.PathLike)):
        from cad3d.data.dataset import load_drawing
        from cad3d.errors import DatasetError

        try:
            return load_drawing(Path(drawing))
        except DatasetError as exc:
            raise ConversionError(str(exc)) from None
    if isinstance(drawing, torch.Tensor):
        t = drawing.detach().float().cpu()
        if t.dim() == 3:
            t = t[:3].mean(0)
        arr = t.numpy()
    elif hasattr(drawing, "convert") and hasattr(drawing, "size"):  # PIL image
        arr = np.asarray(drawing.convert("L"), dtype=np.float32) / 255.0
    else:
        arr = np.asarray(drawing)
        if arr.dtype == np.uint8:
            arr = arr.astype(np.float32) / 255.0
        if arr.ndim == 3 and arr.shape[-1] in (3, 4):
            arr = arr[..., :3].mean(-1)
    if arr.ndim != 2 or arr.size == 0:
        raise ConversionError(f"a drawing must be an (H, W) or (H, W, 3) image, got shape {arr.shape}")
    return np.clip(arr.astype(np.float32), 0.0, 1.0)


def _resize(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(H, W) -> (h, w) bilinear (anti-aliased when shrinking)."""
    if tuple(x.shape) == tuple(size):
        return x.astype(np.float32, copy=False)
    t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))[None, None]  # (1, 1, H, W)
    shrink = size[0] < x.shape[0] or size[1] < x.shape[1]
    out = F.interpolate(t, size=size, mode="bilinear", align_corners=False, antialias=shrink)
    return out[0, 0].numpy()


def _read_sidecar(onnx_path: Path) -> dict | None:
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
        self.sidecar = _read_sidecar(self.path)
        self.kind = "cad3d" if self.sidecar is not None else "midas"
        if preprocessing == "auto":
            preprocessing = (self.sidecar or {}).get("preprocessing", "imagenet")
            if preprocessing not in PREPROCESSINGS:
                raise DepthModelError(f"{sidecar_path(self.path)}: unknown preprocessing {preprocessing!r}")
        self.preprocessing = preprocessing
        # Only our network promises a background level; for MiDaS use the drawing's silhouette.
        self.foreground_threshold = (self.sidecar or {}).get("foreground_threshold")

    def __repr__(self) -> str:
        return (f"DepthEstimator({str(self.path)!r}, kind={self.kind!r}, preprocessing={self.preprocessing!r}, "
                f"input={self.input_name!r}{self.input_size}, output={self.output_name!r})")

    def preprocess(self, drawing) -> np.ndarray:
        """Drawing -> the model input (1, 3, h, w) (see `drawing_to_gray` for accepted inputs)."""
        gray = _resize(drawing_to_gray(drawing), self.input_size)  # (h, w) in [0, 1]
        x = np.repeat(gray[None], 3, axis=0)  # (3, h, w) RGB
        if self.preprocessing == "imagenet":
            mean = np.asarray(IMAGENET_MEAN, dtype=np.float32)[:, None, None]
            std = np.asarray(IMAGENET_STD, dtype=np.float32)[:, None, None]
            x = (x - mean) / std
        return x[None].astype(self.input_dtype)  # (1, 3, h, w)

    def predict(self, drawing) -> np.ndarray:
        """Relative inverse depth (H, W) float32 at the drawing's own size (larger = closer)."""
        gray = drawing_to_gray(drawing)  # (H, W)
        out = self.session.run([self.output_name], {self.input_name: self.preprocess(gray)})[0]
        out = np.asarray(out, dtype=np.float32).reshape(out.shape[-2:])  # (h, w)
        return _resize(out, gray.shape)  # (H, W)

    __call__ = predict


# --------------------------------------------------------------------------------------------
# lifting
# --------------------------------------------------------------------------------------------
def silhouette_mask(drawing, ink_threshold: float = 0.5) -> np.ndarray:
    """(H, W) bool: the part's filled silhouette in a line drawing.

    Ink is darker than ``ink_threshold``; it is thickened by one pixel so a small gap in an
    outline does not let the paper in; paper reachable from the image border (4-connected) is
    background; everything else (ink and enclosed paper) is the part."""
    from scipy import ndimage

    gray = drawing_to_gray(drawing)
    ink = gray < ink_threshold  # (H, W)
    thick = ndimage.binary_dilation(ink)
    labels, _ = ndimage.label(~thick)
    border = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    background = np.isin(labels, border[border > 0])
    return ndimage.binary_erosion(~background, border_value=0) | ink


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
        drawing: the line drawing (anything `drawing_to_gray` takes), (H, W).
        inverse_depth: (H, W) relative inverse depth, e.g. `DepthEstimator.predict`; another
            size is resized to the drawing's.
        camera: the drawing's recorded camera(s) (`OrthoCamera`, a list, or their dicts as in a
            dataset's meta ``cameras``); None = the iso camera of `cad3d.geometry.camera`.
        mask: (H, W) bool foreground; default `silhouette_mask` of the drawing.

    Returns:
        (N, 3) float32 world points (normalized object frame), one per foreground pixel, as
        `cad3d.geometry.ops.depth_to_points` orders them. Raises `ConversionError` when the
        drawing has no foreground.
    """
    gray = drawing_to_gray(drawing)  # (H, W)
    inv = _resize(np.asarray(inverse_depth, dtype=np.float32), gray.shape)  # (H, W)
    mask = silhouette_mask(gray) if mask is None else np.asarray(mask, dtype=bool)
    if mask.shape != gray.shape:
        raise ValueError(f"mask {mask.shape} must match the drawing {gray.shape}")
    cams = _cameras(camera, gray.shape)
    depth = fit_camera_depth(inv, mask, cams)  # (H, W)
    if not (depth > 0).any():
        raise ConversionError("the drawing has no part to lift (empty silhouette)")
    return depth_to_points(depth, cams, mask=depth > 0)  # (N, 3)
