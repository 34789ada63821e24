"""VAE throughput: training samples/s (forward, Chamfer + KL + soft-voxel + kNN-smoothness loss,
backward, AdamW step) for the ``tiny`` and ``full`` presets on CPU and (if present) CUDA, and
how the step's time splits over the loss parts. Inputs are random clouds of the right shapes:
data loading is not timed.

    .venv/bin/python benchmarks/bench_vae.py [--steps 10] [--threads 0] [--no-full-cpu]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine_info, task_train_rate, write_section  # noqa: E402

from cad3d.training.tasks.vae import VAETask  # noqa: E402


def train_rate(preset: str, device: torch.device, batch_size: int, steps: int, precision: str = "fp32", **overrides) -> float:
    """Training samples per second (median over ``steps`` timed steps after 2 warm-up steps)."""
    torch.manual_seed(0)
    task = VAETask(dataclasses.replace(VAETask.presets()[preset], **overrides))
    task.on_epoch_start(1, 10)
    return task_train_rate(task, device, batch_size, steps, precision, lr=1e-3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--no-full-cpu", action="store_true", help="skip the full preset on CPU")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cpu = torch.device("cpu")
    rows = []  # (preset, device, precision, batch, variant, samples/s)

    def run(preset, device, batch, precision="fp32", variant="all parts", **overrides):
        rate = train_rate(preset, device, batch, args.steps, precision, **overrides)
        rows.append((preset, device.type, precision, batch, variant, rate))
        print(f"{preset:5s} {device.type:4s} {precision} batch {batch:3d} {variant:22s} {rate:9.1f} samples/s")

    run("tiny", cpu, 8)
    run("tiny", cpu, 8, variant="chamfer + kl only", voxel_weight=0.0, smooth_weight=0.0)
    if not args.no_full_cpu:
        run("full", cpu, 8)
        run("full", cpu, 8, variant="chamfer + kl only", voxel_weight=0.0, smooth_weight=0.0)
    if torch.cuda.is_available():
        gpu = torch.device("cuda")
        run("full", gpu, 32)
        run("full", gpu, 32, "bf16")
        run("full", gpu, 32, variant="chamfer + kl only", voxel_weight=0.0, smooth_weight=0.0)

    tiny, full = VAETask.presets()["tiny"], VAETask.presets()["full"]
    md = [
        "## VAE training throughput (`benchmarks/bench_vae.py`)",
        "",
        f"Machine: {machine_info()}; torch threads {torch.get_num_threads()}",
        "",
        f"One training step (forward, loss, backward, AdamW) on random clouds, median of {args.steps} steps. "
        f"tiny: {tiny.num_points} points, latent {tiny.latent_dim}, voxel grid {tiny.voxel_resolution}^3; "
        f"full: {full.num_points} points, latent {full.latent_dim}, voxel grid {full.voxel_resolution}^3. "
        "\"chamfer + kl only\" sets the voxel and smoothness weights to 0 (those parts are then not computed).",
        "",
        "| preset | device | precision | batch | loss | samples/s |",
        "|---|---|---|---|---|---|",
    ]
    md += [f"| {p} | {d} | {pr} | {b} | {v} | {r:.1f} |" for p, d, pr, b, v, r in rows]
    write_section("vae", "\n".join(md))


if __name__ == "__main__":
    main()
