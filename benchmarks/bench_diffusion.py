"""Diffusion model throughput: training samples/s and sampling seconds per cloud (4096 points).

    python benchmarks/bench_diffusion.py [--preset tiny|full] [--batch 8] [--steps 20] [--device cpu|cuda]

Training: optimizer steps of `Diffusion3DModel.get_loss` at batch 1 and ``--batch``; sampling: the
fast sampler (DDIM, ``--steps`` steps, guidance 2 = two network passes per step) at batch 1 and
``--batch``. Writes the "diffusion" section of benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine_info, write_section  # noqa: E402

from cad3d.models.diffusion_model import create_diffusion_model  # noqa: E402


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def bench_train(model, batch: int, device: torch.device, iters: int, precision: str) -> float:
    """Training samples per second."""
    cfg = model.config
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    g = torch.Generator(device=device).manual_seed(0)
    images = torch.rand(batch, 3, cfg.image_size, cfg.image_size, device=device)
    points = torch.rand(batch, cfg.num_points, 3, device=device) * 2 - 1
    dtype = {"bf16": torch.bfloat16, "fp32": None}[precision]

    def step():
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            loss, _ = model.get_loss(images, points, g)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step()  # warm-up
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(iters):
        step()
    _sync(device)
    return batch * iters / (time.perf_counter() - t0)


def bench_sample(model, batch: int, device: torch.device, steps: int, guidance: float) -> float:
    """Seconds per cloud."""
    cfg = model.config
    images = torch.rand(batch, 3, cfg.image_size, cfg.image_size, device=device)
    model.sample(images, steps=2, guidance=guidance, seed=0)  # warm-up
    _sync(device)
    t0 = time.perf_counter()
    model.sample(images, steps=steps, guidance=guidance, seed=0)
    _sync(device)
    return (time.perf_counter() - t0) / batch


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="tiny", choices=["tiny", "full"], help="architecture (num_points is always --points)")
    ap.add_argument("--points", type=int, default=4096)
    ap.add_argument("--batch", type=int, default=8, help="the larger batch")
    ap.add_argument("--steps", type=int, default=20, help="DDIM steps")
    ap.add_argument("--iters", type=int, default=3, help="timed training steps")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    ap.add_argument("--no-write", action="store_true", help="print only")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = create_diffusion_model(num_points=args.points, device=device, preset=args.preset)
    n_params = sum(p.numel() for p in model.parameters()) / 1e6
    rows = []
    for batch in (1, args.batch):
        train = bench_train(model, batch, device, args.iters, args.precision)
        sample = bench_sample(model, batch, device, args.steps, guidance=2.0)
        rows.append(f"| {batch} | {train:.2f} | {sample:.2f} |")
    md = "\n".join(
        [
            f"## Diffusion ({args.preset} architecture, {n_params:.1f} M parameters, {args.points} points, "
            f"{args.device} {args.precision})",
            "",
            f"Training = AdamW steps of the DDPM loss; sampling = DDIM {args.steps} steps with guidance 2 "
            "(conditional + null pass per step).",
            "",
            "| batch | train samples/s | sampling s/cloud |",
            "|---:|---:|---:|",
            *rows,
            "",
            f"Machine: {machine_info()}",
        ]
    )
    print(md)
    if not args.no_write:
        write_section(f"diffusion-{args.preset}-{args.device}" if (args.preset, args.device) != ("tiny", "cpu") else "diffusion", md)


if __name__ == "__main__":
    main()
