"""One GPU check of every model (`scripts/gpu_check.sh`): what the ``full`` presets do on a CUDA device.

    scripts/gpu_check.sh                 # on a CUDA machine: writes benchmarks/RESULTS_GPU.md
    scripts/gpu_check.sh --smoke         # the same code on CPU at tiny sizes, in seconds (the test suite runs it)

Measures, per model (vae, vit, diffusion, depth): training samples/s and peak GPU memory in fp32,
bf16, and bf16 + ``torch.compile`` (`_common.task_train_rate`: forward, loss, backward, AdamW on
the task's example batch); the data loader's samples/s on a synthetic dataset of the preset's
sizes against what bf16 training consumes; conversion seconds per drawing per path at batch 1
and 32 (`bench_convert.time_path` on checkpoints of one training step); with 2 or more GPUs, one
2-process NCCL DDP training step. A time budget (``--budget-s``, default 420 s of the 8-minute
allowance) skips what is left and says so. Without CUDA it refuses (no invented figures) unless
``--smoke``: then the tiny presets run on the CPU, compile with the "eager" backend (dynamo
capture without code generation), DDP with gloo, and nothing is written unless ``--out``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import signal
import socket
import statistics
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine_info, sync, task_train_rate  # noqa: E402
from bench_convert import build_runs, time_path  # noqa: E402

MODELS = ("vae", "vit", "diffusion", "depth")
RESULTS_GPU = Path(__file__).with_name("RESULTS_GPU.md")


@dataclass
class Plan:
    """What one run measures: the full presets on CUDA, or the smoke sizes on CPU."""

    preset: str
    device: torch.device
    steps: int  # timed training steps per row
    samples: int  # synthetic dataset size
    batches: tuple[int, ...]  # conversion batch sizes
    sample_steps: int  # diffusion sampling steps in conversion
    compile_backend: str
    ddp_backend: str | None  # None: no DDP row
    budget_s: float
    row_limit_s: float = 120.0  # one training row at most (compilation included)
    start: float = field(default_factory=time.perf_counter)
    skipped: list[str] = field(default_factory=list)

    def over(self, what: str) -> bool:
        """True (and noted) when the budget is spent, so ``what`` is skipped."""
        if time.perf_counter() - self.start > self.budget_s:
            self.skipped.append(what)
            return True
        return False


def make_plan(smoke: bool, budget_s: float) -> Plan:
    if smoke:
        return Plan("tiny", torch.device("cpu"), steps=1, samples=8, batches=(1, 2), sample_steps=2,
                    compile_backend="eager", ddp_backend="gloo", budget_s=budget_s)
    if not torch.cuda.is_available():
        raise SystemExit("gpu_check: no CUDA device here; run with --smoke for the CPU check of this script")
    ddp = "nccl" if torch.cuda.device_count() >= 2 else None
    return Plan("full", torch.device("cuda", 0), steps=5, samples=256, batches=(1, 32), sample_steps=50,
                compile_backend="inductor", ddp_backend=ddp, budget_s=budget_s)


def task_for(model: str, preset: str):
    from cad3d.training.tasks.base import get_task_class

    cls = get_task_class(model)
    return cls, cls(cls.presets()[preset])


def batch_size(cls, plan: Plan) -> int:
    return 2 if plan.preset == "tiny" else int(cls.engine_presets().get("full", {}).get("batch_size", 8))


class RowTimeout(Exception):
    """A measurement ran past its share of the budget."""


@contextlib.contextmanager
def time_limit(seconds: float):
    """Raise `RowTimeout` in the block after ``seconds`` (SIGALRM, main thread): a compile that
    never ends must not eat the whole budget."""
    def expire(signum, frame):
        raise RowTimeout(f"over {seconds:.0f} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, max(1.0, seconds))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def peak_mib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None


def train_rows(plan: Plan, compiled: bool) -> list[dict]:
    """Samples/s and peak memory per model in fp32 and bf16, or (``compiled``) bf16 + compile."""
    modes = [("bf16 + compile", "bf16", plan.compile_backend)] if compiled else [("fp32", "fp32", None), ("bf16", "bf16", None)]
    rows = []
    for model in MODELS:
        cls, _ = task_for(model, plan.preset)
        bs = batch_size(cls, plan)
        for label, precision, backend in modes:
            if plan.over(f"training {model} {label}"):
                continue
            _, task = task_for(model, plan.preset)  # fresh modules per mode
            if plan.device.type == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(plan.device)
            if backend:
                torch._dynamo.reset()
            t0 = time.perf_counter()
            try:
                with time_limit(min(plan.row_limit_s, plan.budget_s - (time.perf_counter() - plan.start))):
                    rate = task_train_rate(task, plan.device, bs, plan.steps, precision, compile_backend=backend)
                error = ""
            except Exception as exc:  # a mode that fails here (e.g. compile) is a finding, not a crash
                rate, error = None, f"{type(exc).__name__}: {str(exc).splitlines()[0][:120]}"
            rows.append({"model": model, "mode": label, "batch": bs, "rate": rate, "peak": peak_mib(plan.device),
                         "seconds": time.perf_counter() - t0, "error": error})
            print(f"train {model:<9} {label:<15} batch {bs:>3}: {rate or 0:9.2f} samples/s {error}", flush=True)
    return rows


def loader_rows(plan: Plan, data: Path, train: list[dict]) -> list[dict]:
    """The data loader's samples/s per model against bf16 training's samples/s."""
    from torch.utils.data import DataLoader

    workers = 0 if plan.preset == "tiny" else min(8, os.cpu_count() or 1)
    rows = []
    for model in MODELS:
        if plan.over(f"loader {model}"):
            continue
        cls, task = task_for(model, plan.preset)
        train_set, _ = task.build_datasets(data, seed=0)
        loader = DataLoader(train_set, batch_size=batch_size(cls, plan), shuffle=True, num_workers=workers,
                            collate_fn=task.collate, pin_memory=plan.device.type == "cuda", drop_last=False)
        n, t0 = 0, time.perf_counter()
        for batch in loader:
            task.to_device(batch, plan.device)
            n += task.batch_size_of(batch)
        sync(plan.device)
        rate = n / (time.perf_counter() - t0)
        need = next((r["rate"] for r in train if r["model"] == model and r["mode"] == "bf16" and r["rate"]), None)
        rows.append({"model": model, "workers": workers, "rate": rate, "train": need})
        print(f"loader {model:<9} {workers} workers: {rate:9.1f} samples/s (bf16 training {need or 0:.1f})", flush=True)
    return rows


def convert_rows(plan: Plan, root: Path, data: Path) -> list[dict]:
    from cad3d.conversion.converter import METHODS, HybridCAD3DConverter
    from cad3d.conversion.drawing import read_drawing

    if plan.over("conversion"):
        return []
    runs = build_runs(root / "runs", preset=plan.preset, device=plan.device.type, data=data)
    drawings = [read_drawing(p) for p in runs["images"][:8]]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        conv = HybridCAD3DConverter(plan.device.type, vit_model_path=runs["vit"], diffusion_model_path=runs["diffusion"],
                                    depth_model_path=runs["depth"], refine_model_path=runs["refine"],
                                    enable_learning=False)
    rows = []
    for method in METHODS:
        times = {}
        for b in plan.batches:
            if plan.over(f"conversion {method} batch {b}"):
                continue
            times[b] = time_path(conv, method, drawings, b, conv.native_points(method), steps=plan.sample_steps, rounds=1)
        rows.append({"method": method, "points": conv.native_points(method), "times": times})
        print(f"convert {method:<10} " + "  ".join(f"batch {b}: {t:.4f} s/drawing" for b, t in times.items()), flush=True)
    return rows


def _ddp_worker(rank: int, world: int, backend: str, preset: str, port: int, steps: int, out: str) -> None:
    """One rank of the DDP row: the diffusion task's training step under DistributedDataParallel."""
    import torch.distributed as dist

    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        device = torch.device("cuda", rank) if backend == "nccl" else torch.device("cpu")
        if device.type == "cuda":
            torch.cuda.set_device(device)
        cls, task = task_for("diffusion", preset)
        modules = {k: torch.nn.parallel.DistributedDataParallel(m.to(device), device_ids=[rank] if device.type == "cuda" else None)
                   for k, m in task.build_modules().items()}
        opt = task.configure_optimizer(modules, lr=1e-4, weight_decay=0.0)
        from cad3d.training.tasks.base import StepContext

        bs = 2 if preset == "tiny" else int(cls.engine_presets()["full"].get("batch_size", 8))
        batch = task.to_device(task.example_batch(bs, torch.Generator().manual_seed(rank)), device)
        ctx = StepContext(1, 0, device, torch.Generator(device=device).manual_seed(rank), world_size=world, rank=rank)
        times = []
        for i in range(steps + 1):
            sync(device)
            t0 = time.perf_counter()
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                loss, _ = task.training_step(modules, batch, ctx)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sync(device)
            if i:
                times.append(time.perf_counter() - t0)
        if rank == 0:
            Path(out).write_text(f"{bs * world / statistics.median(times)}")
    finally:
        dist.destroy_process_group()


def ddp_row(plan: Plan, root: Path) -> dict | None:
    if plan.ddp_backend is None or plan.over("DDP step"):
        return None
    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = root / "ddp_rate.txt"
    mp.spawn(_ddp_worker, args=(2, plan.ddp_backend, plan.preset, port, max(plan.steps, 1), str(out)), nprocs=2, join=True)
    rate = float(out.read_text())
    print(f"ddp diffusion 2 x {plan.ddp_backend}: {rate:.2f} samples/s (global)", flush=True)
    return {"backend": plan.ddp_backend, "rate": rate}


def versions(plan: Plan) -> str:
    parts = [f"Python {platform.python_version()}", f"torch {torch.__version__}"]
    if plan.device.type == "cuda":
        props = torch.cuda.get_device_properties(plan.device)
        parts += [f"CUDA {torch.version.cuda}", f"cuDNN {torch.backends.cudnn.version()}",
                  f"{torch.cuda.device_count()} x {props.name} ({props.total_memory / 2**30:.0f} GiB)"]
    try:
        import triton

        parts.append(f"triton {triton.__version__}")
    except ImportError:
        pass
    return ", ".join(parts)


def fmt(x, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def report(plan: Plan, train, loaders, converts, ddp, elapsed: float) -> str:
    md = [f"# GPU check ({'SMOKE: tiny presets on CPU, not GPU figures' if plan.preset == 'tiny' else 'full presets'})", "",
          f"Machine: {machine_info()}", "", f"Versions: {versions(plan)}", "",
          f"`scripts/gpu_check.sh{' --smoke' if plan.preset == 'tiny' else ''}`: {elapsed:.0f} s in all.", "",
          "## Training (task example batch; median of timed steps after 2 warm-ups, which include compilation)", "",
          "| model | mode | batch | samples/s | peak MiB | vs fp32 | wall s | note |", "|---|---|---:|---:|---:|---:|---:|---|"]
    base = {r["model"]: r["rate"] for r in train if r["mode"] == "fp32"}
    for r in train:
        ratio = r["rate"] / base[r["model"]] if r["rate"] and base.get(r["model"]) else None
        md.append(f"| {r['model']} | {r['mode']} | {r['batch']} | {fmt(r['rate'], '.1f')} | {fmt(r['peak'], '.0f')} | "
                  f"{fmt(ratio, '.2f')} | {r['seconds']:.0f} | {r['error']} |")
    md += ["", "## Data loader against training", "", "| model | workers | loader samples/s | bf16 training samples/s | loader / training |",
           "|---|---:|---:|---:|---:|"]
    for r in loaders:
        ratio = r["rate"] / r["train"] if r["train"] else None
        md.append(f"| {r['model']} | {r['workers']} | {r['rate']:.1f} | {fmt(r['train'], '.1f')} | {fmt(ratio, '.2f')} |")
    md += ["", f"## Conversion (s/drawing; checkpoints of one training step; diffusion DDIM {plan.sample_steps} steps)", "",
           "| path | points | " + " | ".join(f"batch {b}" for b in plan.batches) + " |", "|---|---:|" + "---:|" * len(plan.batches)]
    for r in converts:
        md.append(f"| {r['method']} | {r['points']} | " + " | ".join(fmt(r["times"].get(b), ".4f") for b in plan.batches) + " |")
    md += ["", "## DDP", ""]
    if ddp:
        md.append(f"2 processes, {ddp['backend']}, diffusion training step: {ddp['rate']:.1f} samples/s (global)")
    else:
        md.append("Skipped (budget)." if "DDP step" in plan.skipped else "Not run: fewer than 2 GPUs.")
    if plan.skipped:
        md += ["", f"Skipped after the {plan.budget_s:.0f} s budget: {', '.join(plan.skipped)}"]
    return "\n".join(md) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny presets on CPU (checks the script, not the GPU)")
    parser.add_argument("--budget-s", type=float, default=420.0, help="skip what is left after this many seconds")
    parser.add_argument("--out", type=Path, help=f"report file (default {RESULTS_GPU.name}; none with --smoke)")
    args = parser.parse_args(argv)
    plan = make_plan(args.smoke, args.budget_s)
    if args.smoke:
        torch.set_num_threads(min(2, torch.get_num_threads()))
    from cad3d.data.synth import create_synthetic_training_data

    with tempfile.TemporaryDirectory(prefix="cad3d_gpu_check_") as tmp:
        root = Path(tmp)
        _, diff = task_for("diffusion", plan.preset)
        size, points = diff.config.model.image_size, max(diff.config.model.num_points, 2048 if plan.preset == "full" else 512)
        data = root / "data"
        create_synthetic_training_data(data, plan.samples, num_points=points, image_size=max(size, 128), progress=False,
                                       workers=1 if args.smoke else min(8, os.cpu_count() or 1))
        train = train_rows(plan, compiled=False)
        loaders = loader_rows(plan, data, train)
        converts = convert_rows(plan, root, data)
        ddp = ddp_row(plan, root)
        compiled = train_rows(plan, compiled=True)  # last: compilation is the least predictable in time
        train = sorted(train + compiled, key=lambda r: MODELS.index(r["model"]))
    md = report(plan, train, loaders, converts, ddp, time.perf_counter() - plan.start)
    out = args.out if args.out is not None else (None if args.smoke else RESULTS_GPU)
    if out is not None:
        out.write_text(md)
        print(f"wrote {out}")
    else:
        print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
