"""Checkpoint bytes against what a checkpoint must hold (weights + optimizer state + EMA weights),
per model: ``tiny`` from real training runs (every file of a 2-epoch run), ``full`` from the
modules built with their optimizer state after one step (no training, no data), serialized the
way the engine saves them. The diffusion replay buffer is one run-state file per run; its size
is shown apart.

    .venv/bin/python benchmarks/bench_checkpoint_size.py [--no-write] [--presets tiny full]
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine_info, write_section  # noqa: E402

MODELS = ("vae", "vit", "diffusion", "depth")
MB = 2**20


def full_payload(model: str) -> tuple[dict, object]:
    """The engine's checkpoint dict of the ``full`` preset after one optimizer step of zero
    gradients (the optimizer state then has its final shapes), with EMA if the preset keeps one."""
    from cad3d.training.checkpoint_io import EMA_KEY, build_metadata
    from cad3d.training.ema import make_ema
    from cad3d.training.tasks.base import get_task_class

    cls = get_task_class(model)
    task = cls(cls.presets()["full"])
    modules = task.build_modules()
    opt = task.configure_optimizer(modules, lr=1e-4, weight_decay=0.0)
    for m in modules.values():
        for p in m.parameters():
            p.grad = torch.zeros_like(p)
    opt.step()
    ema = make_ema(modules, cls.engine_presets().get("full", {}).get("ema_decay"))
    payload = {key: modules[role].state_dict() for role, key in task.schema.module_keys.items()}
    payload[task.schema.optimizer_key] = opt.state_dict()
    if ema is not None:
        payload[EMA_KEY] = ema.state_dicts()
    payload.update(task.checkpoint_extras())
    payload["cad3d_meta"] = build_metadata(task=model, config={"task": task.config_dict()})
    return payload, task


def full_rows() -> list[tuple]:
    from cad3d.training.inspect import weight_bytes

    rows = []
    for model in MODELS:
        payload, task = full_payload(model)
        buf = io.BytesIO()
        torch.save(payload, buf)
        b = weight_bytes(payload, task.schema)
        extra = ""
        if model == "diffusion":  # what the run-state file holds at capacity: grey drawings + float32 clouds
            c = task.config
            per = c.model.image_size ** 2 + c.model.num_points * 3 * 4
            extra = f"replay buffer file at capacity {c.replay_size}: {c.replay_size * per / MB:.1f} MB (was {c.replay_size * (3 * c.model.image_size ** 2 + c.model.num_points * 12) / MB:.1f} MB in every checkpoint)"
        rows.append(("full", model, "built, 1 step", buf.tell(), b, extra))
        print(rows[-1][:4], flush=True)
    return rows


def tiny_rows(tmp: Path) -> list[tuple]:
    from cad3d.data.synth import create_synthetic_training_data
    from cad3d.training.engine import train_model
    from cad3d.training.inspect import weight_bytes
    from cad3d.training.tasks.base import get_task_class

    data = tmp / "data"
    create_synthetic_training_data(data, 16, num_points=512, image_size=128, workers=1, progress=False, seed=7)
    rows = []
    for model in MODELS:
        over = {"export_onnx": False} if model == "depth" else None
        out = tmp / model
        train_model(model, data, preset="tiny", out_dir=out, epochs=2, progress=False, device="cpu", task_overrides=over)
        schema = get_task_class(model).schema
        worst = max(sorted(out.glob("*.pth")), key=lambda p: p.stat().st_size)
        b = weight_bytes(torch.load(worst, weights_only=True), schema)
        extra = ", ".join(f"{p.name}: {p.stat().st_size / MB:.2f} MB" for p in out.glob("*.state"))
        rows.append(("tiny", model, worst.name, worst.stat().st_size, b, extra))
        print(rows[-1][:4], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", choices=["tiny", "full"], default=["tiny", "full"])
    parser.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        if "tiny" in args.presets:
            rows += tiny_rows(Path(tmp))
    if "full" in args.presets:
        rows += full_rows()
    md = ["## Checkpoint size against weights + optimizer + EMA (`benchmarks/bench_checkpoint_size.py`)", "",
          f"Machine: {machine_info()}", "",
          "tiny: the largest file of a 2-epoch CPU run; full: the engine's payload of the built modules after one "
          "optimizer step (no training). MB = 2^20 bytes.", "",
          "| preset | model | file | file MB | weights MB | optimizer MB | EMA MB | file / (w + opt + EMA) | run state |",
          "|---|---|---|---:|---:|---:|---:|---:|---|"]
    for preset, model, name, size, b, extra in rows:
        md.append(f"| {preset} | {model} | {name} | {size / MB:.2f} | {b['weights'] / MB:.2f} | {b['optimizer'] / MB:.2f} | "
                  f"{b['ema'] / MB:.2f} | {size / b['total']:.3f} | {extra} |")
    print("\n".join(md))
    if not args.no_write:
        write_section("checkpoint_size", "\n".join(md))


if __name__ == "__main__":
    main()
