"""ViT throughput: training samples/s (forward, Chamfer + family loss, backward, AdamW step) and
inference milliseconds per drawing, for the ``tiny`` and ``full`` presets, on CPU and (if
present) CUDA. Inputs are random tensors of the right shapes: data loading is not timed.

    .venv/bin/python benchmarks/bench_vit.py [--steps 10] [--threads 0] [--no-full-cpu]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine_info, sync, task_train_rate, write_section  # noqa: E402

from cad3d.training.tasks.vit import ViTTask  # noqa: E402


def train_rate(preset: str, device: torch.device, batch_size: int, steps: int, precision: str = "fp32") -> float:
    """Training samples per second (median over ``steps`` timed steps after 2 warm-up steps)."""
    torch.manual_seed(0)
    return task_train_rate(ViTTask(ViTTask.presets()[preset]), device, batch_size, steps, precision, lr=1e-4)


@torch.no_grad()
def infer_ms(preset: str, device: torch.device, batch_size: int, reps: int, precision: str = "fp32") -> float:
    """Milliseconds per drawing of ``model(images)`` in eval mode (median over ``reps``)."""
    torch.manual_seed(0)
    task = ViTTask(ViTTask.presets()[preset])
    model = task.build_modules()["model"].to(device).eval()
    m = task.config.model
    x = torch.rand(batch_size, 3, m.image_size, m.image_size, device=device)
    dtype = {"fp32": None, "bf16": torch.bfloat16}[precision]
    times = []
    for i in range(reps + 2):
        sync(device)
        t0 = time.perf_counter()
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            model(x)
        sync(device)
        if i >= 2:
            times.append(time.perf_counter() - t0)
    return 1000.0 * statistics.median(times) / batch_size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=10, help="timed steps/repetitions per figure")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--no-full-cpu", action="store_true", help="skip the full preset on CPU")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []  # (preset, device, precision, batch, train samples/s, infer ms @1, infer ms @batch)
    cpu = torch.device("cpu")
    runs = [("tiny", cpu, "fp32", 8)] + ([] if args.no_full_cpu else [("full", cpu, "fp32", 4)])
    if torch.cuda.is_available():
        cuda = torch.device("cuda")
        runs += [("tiny", cuda, "fp32", 64), ("full", cuda, "fp32", 32), ("full", cuda, "bf16", 32)]
    for preset, device, precision, batch in runs:
        rate = train_rate(preset, device, batch, args.steps, precision)
        one = infer_ms(preset, device, 1, args.steps, precision)
        many = infer_ms(preset, device, batch, args.steps, precision)
        rows.append((preset, device.type, precision, batch, rate, one, many))
        print(f"{preset} {device.type} {precision} batch {batch}: train {rate:.1f} samples/s, "
              f"inference {one:.2f} ms/drawing (batch 1), {many:.2f} ms/drawing (batch {batch})")
    presets = ViTTask.presets()
    md = [
        "## Vision Transformer (`benchmarks/bench_vit.py`)",
        "",
        f"Machine: {machine_info()}; torch threads {torch.get_num_threads()}; "
        f"load average at the end {os.getloadavg()[0]:.1f} (other jobs share the cores: CPU figures are lower bounds)",
        "",
        "Training step = forward, Chamfer (CD-L2) + family cross-entropy, backward, AdamW step; "
        "random inputs of the preset's shapes (data loading not timed). Inference = `model(images)` "
        "in eval mode. Medians of "
        f"{args.steps} timed repetitions after 2 warm-ups.",
        "",
        "| preset | device | precision | batch | train samples/s | inference ms/drawing (batch 1) | inference ms/drawing (batch) |",
        "|---|---|---|---|---|---|---|",
    ]
    md += [f"| {p} | {d} | {pr} | {b} | {r:.1f} | {o:.2f} | {m:.2f} |" for p, d, pr, b, r, o, m in rows]
    md += ["", "Presets: " + "; ".join(
        f"{name}: {c.model.image_size}px, patch {c.model.patch_size}, width {c.model.width}, depth {c.model.depth}, "
        f"{c.model.num_points} points" for name, c in presets.items())]
    write_section("vit", "\n".join(md))


if __name__ == "__main__":
    main()
