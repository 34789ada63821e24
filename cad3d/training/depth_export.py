"""Export of a trained depth network to ONNX under the MiDaS contract
(`cad3d.models.depth_contract`), checked against PyTorch before it is published."""

from __future__ import annotations

import inspect
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cad3d.models.depth_contract import (
    DEFAULT_ONNX_PATH,
    LAYERS_NAME,
    PRESENCE_NAME,
    FOREGROUND_THRESHOLD,
    INPUT_NAME,
    ONNX_IMAGE_SIZE,
    ONNX_OPSET,
    OUTPUT_NAME,
    SIDECAR_FORMAT,
    DepthModelError,
    sidecar_path,
)


class OnnxDepthWrapper(nn.Module):
    """The exported graph: (B, 3, S, S) RGB in [0, 1] -> (B, S, S) relative inverse depth, and for
    a layered network also (B, K, S, S) relative layered depth and presence probabilities.

    When the network was trained at another resolution, the input is resized to it and the
    outputs back to S (layers by nearest neighbour, so no pixel mixes two surfaces), so the file
    keeps the MiDaS contract whatever the training size."""

    def __init__(self, model: nn.Module, train_size: int, size: int = ONNX_IMAGE_SIZE):
        super().__init__()
        self.model, self.train_size, self.size = model, int(train_size), int(size)
        self.layers = int(getattr(getattr(model, "config", None), "layers", 0) or 0)

    def forward(self, x: torch.Tensor):
        resize = self.train_size != self.size
        if resize:
            x = F.interpolate(x, size=(self.train_size, self.train_size), mode="bilinear", align_corners=False)
        if not self.layers:
            y = self.model(x)  # (B, s, s)
            if resize:
                y = F.interpolate(y.unsqueeze(1), size=(self.size, self.size), mode="bilinear", align_corners=False).squeeze(1)
            return y  # (B, S, S)
        inv, depth, logits = self.model.forward_all(x)  # (B, s, s), (B, K, s, s) x2
        presence = torch.sigmoid(logits)
        if resize:
            inv = F.interpolate(inv.unsqueeze(1), size=(self.size, self.size), mode="bilinear", align_corners=False).squeeze(1)
            depth = F.interpolate(depth, size=(self.size, self.size), mode="nearest")
            presence = F.interpolate(presence, size=(self.size, self.size), mode="nearest")
        return inv, depth, presence  # (B, S, S), (B, K, S, S), (B, K, S, S)

    @property
    def output_names(self) -> list[str]:
        return [OUTPUT_NAME] + ([LAYERS_NAME, PRESENCE_NAME] if self.layers else [])


@dataclass
class ExportResult:
    path: Path  # the .onnx file
    sidecar: Path  # its JSON preprocessing description
    max_abs_diff: float  # largest |onnxruntime - PyTorch| over the check inputs
    tolerance: float  # the bound it had to stay under


def _torch_onnx_export(module: OnnxDepthWrapper, example: torch.Tensor, path: Path, opset: int) -> None:
    names = module.output_names
    kwargs: dict[str, Any] = dict(
        input_names=[INPUT_NAME],
        output_names=names,
        opset_version=opset,
        dynamic_axes={INPUT_NAME: {0: "batch"}, **{name: {0: "batch"} for name in names}},
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
        out = wrapper(inputs)
        expected = [o.numpy() for o in (out if isinstance(out, tuple) else (out,))]  # (2, S, S) [, (2, K, S, S) x2]
    tmp = temp_path(path)  # exported and checked there, published only when it matches
    try:
        _torch_onnx_export(wrapper, inputs[:1], tmp, opset)
        session = ort.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
        runs = [session.run(None, {INPUT_NAME: inputs[i : i + 1].numpy()}) for i in range(len(inputs))]
        got = [np.concatenate([r[j] for r in runs]) for j in range(len(expected))]
        if [g.shape for g in got] != [e.shape for e in expected]:
            raise DepthModelError(f"{path}: exported ONNX outputs have shapes {[g.shape for g in got]}, PyTorch {[e.shape for e in expected]}")
        # Presence near 0.5 may flip under float noise; the depths and probabilities are compared.
        diff = max(float(np.abs(g - e).max()) for g, e in zip(got, expected))
        tolerance = atol + rtol * max(float(np.abs(e).max()) for e in expected)
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
                "layers": None if not wrapper.layers else {
                    "count": wrapper.layers, "depth_output": LAYERS_NAME, "presence_output": PRESENCE_NAME,
                    "meaning": "camera depth of each ray's first K surface crossings minus the camera distance, "
                               "in units of the part normalized into the unit sphere (the drawing frames that sphere)",
                },
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


def publish_export(result: ExportResult, dest: str | os.PathLike) -> Path:
    """Copy an export (sidecar first, then the model, each atomically, as `export_depth_onnx`
    publishes) to ``dest``, e.g. ``models/cad3d_depth_256.onnx`` where the converter looks.
    Returns ``dest``; an unwritable place is an OSError naming it."""
    import json

    from cad3d.io import atomic_write_bytes, atomic_write_json

    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    sidecar = json.loads(result.sidecar.read_text(encoding="utf-8"))
    atomic_write_json(sidecar_path(dest), {**sidecar, "model": dest.name})
    atomic_write_bytes(dest, result.path.read_bytes())
    return dest


def export_depth_checkpoint(checkpoint: str | os.PathLike, path: str | os.PathLike = DEFAULT_ONNX_PATH, **kwargs) -> ExportResult:
    """`export_depth_onnx` of the network in a depth checkpoint (e.g. ``depth_best.pth``)."""
    from cad3d.training.loader import load_trained

    model = load_trained(checkpoint, kind="depth").model
    extra = {"checkpoint": str(checkpoint), **(kwargs.pop("extra_info", None) or {})}
    return export_depth_onnx(model, path, extra_info=extra, **kwargs)
