"""Conversion latency per path: seconds per drawing with `HybridCAD3DConverter.convert_batch`,
batch 1 and batch 32, on CPU (and CUDA when present).

    .venv/bin/python benchmarks/bench_convert.py [--points 2048] [--no-write]
    .venv/bin/python benchmarks/bench_convert.py --preset full --methods diffusion --steps 2 --guidance 1 3 --section NAME

Models are the `tiny` presets (``--preset``) after one training step (latency does not depend on
the weights); the depth path runs our exported ONNX model; diffusion uses its fast sampler (DDIM,
``--steps`` 20) at each ``--guidance`` (default: the model's). Writes the ``convert`` section
(``--section``) of benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine_info, write_section  # noqa: E402


def build_runs(root: Path, *, preset: str = "tiny", device: str = "cpu", data: Path | None = None,
               samples: int = 24) -> dict[str, Path]:
    """One optimizer step of each converting model (``preset``) on a small synthetic dataset
    (made in ``root`` unless ``data`` is given), so the converter has real checkpoints."""
    from cad3d.data.synth import create_synthetic_training_data
    from cad3d.training.depth_export import export_depth_checkpoint
    from cad3d.training.engine import train_model

    if data is None:
        data = root / "data"
        create_synthetic_training_data(data, samples, num_points=512, workers=2, progress=False)
    onnx = root / "models" / "cad3d_depth_256.onnx"
    common = dict(preset=preset, epochs=1, max_steps=1, progress=False, device=device, batch_size=2)
    train_model("vit", data, out_dir=root / "vit", **common)
    train_model("diffusion", data, out_dir=root / "diffusion", **common)
    train_model("depth", data, out_dir=root / "depth", **common)
    train_model("refine", data, out_dir=root / "refine", **common)
    export_depth_checkpoint(root / "depth" / "depth_last.pth", onnx)  # a max_steps stop does not export itself
    images = sorted((data / "images").glob("*.png"))
    return {"vit": root / "vit" / "checkpoint_last.pth", "diffusion": root / "diffusion" / "diffusion_last.pth",
            "depth": onnx, "refine": root / "refine" / "refine_last.pth", "images": images}


def time_path(converter, method: str, drawings: list, batch: int, points: int, steps: int = 20, rounds: int = 2,
              guidance: float | None = None) -> float:
    """Best seconds per drawing over ``rounds`` rounds (after one warm-up call); diffusion
    samples with ``steps`` DDIM steps at ``guidance`` (None: the model's)."""
    chunk = (drawings * (batch // len(drawings) + 1))[:batch]
    kw = dict(num_points=points, steps=steps, guidance=guidance)
    converter.convert_batch(chunk[:1], method, **kw)
    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        converter.convert_batch(chunk, method, **kw)
        best = min(best, (time.perf_counter() - t0) / batch)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--points", type=int, default=2048)
    parser.add_argument("--preset", choices=["tiny", "full"], default="tiny")
    parser.add_argument("--methods", nargs="+", default=None, help="paths to time (default all)")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--steps", type=int, default=20, help="diffusion DDIM steps")
    parser.add_argument("--guidance", type=float, nargs="+", default=[None], help="diffusion guidance scales")
    parser.add_argument("--rounds", type=int, default=2, help="timed rounds (best is kept)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default torch's; 1 is steadier on a shared machine)")
    parser.add_argument("--strength", type=float, default=None,
                        help="diffusion: how far its start (the refine answer) is noised; 1 = from pure noise (default: "
                             "the converter's)")
    parser.add_argument("--section", default="convert", help="RESULTS.md section to write")
    parser.add_argument("--no-write", action="store_true", help="print only, leave RESULTS.md alone")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from cad3d.conversion.drawing import read_drawing
    from cad3d.conversion.converter import DEFAULT_REFINE_STRENGTH, METHODS, HybridCAD3DConverter

    if args.strength is None:
        args.strength = DEFAULT_REFINE_STRENGTH

    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        runs = build_runs(Path(tmp), preset=args.preset)
        drawings = [read_drawing(p) for p in runs["images"][:8]]
        for device in devices:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                conv = HybridCAD3DConverter(device, vit_model_path=runs["vit"], diffusion_model_path=runs["diffusion"],
                                            depth_model_path=runs["depth"], refine_model_path=runs["refine"],
                                            enable_learning=False, refine_strength=args.strength)
            for method in args.methods or METHODS:
                for g in args.guidance if method == "diffusion" else [None]:
                    times = [time_path(conv, method, drawings, b, args.points, steps=args.steps, rounds=args.rounds, guidance=g) for b in args.batches]
                    label = method if g is None else f"{method} (guidance {g:g})"
                    rows.append((device, label, times))
                    print(f"{device} {label:<24} " + "  ".join(f"batch {b}: {t * 1000:9.1f} ms/drawing" for b, t in zip(args.batches, times)), flush=True)
    title = "## Conversion latency (`benchmarks/bench_convert.py`)" + (", diffusion from pure noise" if args.strength >= 1 else "")
    md = [title, "", f"Machine: {machine_info()}", "",
          f"`HybridCAD3DConverter.convert_batch`, {args.points} points per cloud, {args.preset} presets, diffusion DDIM "
          + (f"{args.steps} steps from pure noise" if args.strength >= 1 else
             f"{args.steps} steps scaled by its strength {args.strength:g} (it starts from the refine answer: "
             f"{max(1, round(args.steps * args.strength))} step(s) run)")
          + f"; every path includes reading the drawing (its cameras, framing); best of {args.rounds} round(s) after "
          "a warm-up. Milliseconds per drawing:", "",
          "| device | path | " + " | ".join(f"batch {b}" for b in args.batches) + " | batch speed-up |",
          "|---|---|" + "---|" * (len(args.batches) + 1)]
    md += [f"| {d} | {m} | " + " | ".join(f"{t * 1000:.1f}" for t in ts) + f" | {ts[0] / ts[-1]:.1f}x |" for d, m, ts in rows]
    if not args.no_write:
        write_section(args.section, "\n".join(md))


if __name__ == "__main__":
    main()
