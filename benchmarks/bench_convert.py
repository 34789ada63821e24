"""Conversion latency per path: seconds per drawing with `HybridCAD3DConverter.convert_batch`,
batch 1 and batch 32, on CPU (and CUDA when present).

    .venv/bin/python benchmarks/bench_convert.py [--points 2048] [--no-write]

Models are the `tiny` presets with initial weights (latency does not depend on the weights);
the depth path runs our exported ONNX model; diffusion uses its fast sampler (DDIM, 20 steps).
Writes the ``convert`` section of benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine_info, write_section  # noqa: E402


def build_runs(root: Path) -> dict[str, Path]:
    """A tiny dataset and one step of each model, so the converter has real checkpoints."""
    from cad3d.data.synth import create_synthetic_training_data
    from cad3d.training.depth_export import export_depth_checkpoint
    from cad3d.training.engine import train_model

    data = root / "data"
    create_synthetic_training_data(data, 24, num_points=512, workers=2, progress=False)
    onnx = root / "models" / "cad3d_depth_256.onnx"
    common = dict(preset="tiny", epochs=1, max_steps=1, progress=False, device="cpu")
    train_model("vit", data, out_dir=root / "vit", **common)
    train_model("diffusion", data, out_dir=root / "diffusion", **common)
    train_model("depth", data, out_dir=root / "depth", **common)
    export_depth_checkpoint(root / "depth" / "depth_last.pth", onnx)  # a max_steps stop does not export itself
    images = sorted((data / "images").glob("*.png"))
    return {"vit": root / "vit" / "checkpoint_last.pth", "diffusion": root / "diffusion" / "diffusion_last.pth",
            "depth": onnx, "images": images}


def time_path(converter, method: str, drawings: list, batch: int, points: int) -> float:
    """Best seconds per drawing over 2 rounds (after one warm-up call)."""
    chunk = (drawings * (batch // len(drawings) + 1))[:batch]
    converter.convert_batch(chunk[:1], method, num_points=points, steps=20)
    best = float("inf")
    for _ in range(2):
        t0 = time.perf_counter()
        converter.convert_batch(chunk, method, num_points=points, steps=20)
        best = min(best, (time.perf_counter() - t0) / batch)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--points", type=int, default=2048)
    parser.add_argument("--no-write", action="store_true", help="print only, leave RESULTS.md alone")
    args = parser.parse_args()
    from cad3d.conversion.drawing import read_drawing
    from cad3d.conversion.converter import METHODS, HybridCAD3DConverter

    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        runs = build_runs(Path(tmp))
        drawings = [read_drawing(p) for p in runs["images"][:8]]
        for device in devices:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                conv = HybridCAD3DConverter(device, vit_model_path=runs["vit"], diffusion_model_path=runs["diffusion"],
                                            depth_model_path=runs["depth"], enable_learning=False)
            for method in METHODS:
                b1 = time_path(conv, method, drawings, 1, args.points)
                b32 = time_path(conv, method, drawings, 32, args.points)
                rows.append((device, method, b1, b32))
                print(f"{device} {method:<10} batch 1: {b1 * 1000:8.1f} ms/drawing   batch 32: {b32 * 1000:8.1f} ms/drawing")
    md = ["## Conversion latency (`benchmarks/bench_convert.py`)", "", f"Machine: {machine_info()}", "",
          f"`HybridCAD3DConverter.convert_batch`, {args.points} points per cloud, tiny presets, diffusion DDIM 20 "
          "steps; best of 2 rounds after a warm-up. Milliseconds per drawing:", "",
          "| device | path | batch 1 | batch 32 | batch-32 speed-up |", "|---|---|---|---|---|"]
    md += [f"| {d} | {m} | {a * 1000:.1f} | {b * 1000:.1f} | {a / b:.1f}x |" for d, m, a, b in rows]
    if not args.no_write:
        write_section("convert", "\n".join(md))


if __name__ == "__main__":
    main()
