"""Shared by the benchmark scripts: machine facts and the section-wise RESULTS.md writer."""

from __future__ import annotations

import os
import platform
import re
import subprocess
from pathlib import Path

RESULTS = Path(__file__).with_name("RESULTS.md")


def machine_info() -> str:
    """One line naming the machine a figure was measured on."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    except OSError:
        commit = "?"
    return (
        f"{cpu}, {os.cpu_count()} logical cores, {gpu}; Python {platform.python_version()}, "
        f"torch {torch.__version__}; commit {commit or '?'}"
    )


def write_section(name: str, markdown: str) -> None:
    """Replace (or append) the section `name` of RESULTS.md, leaving the others as they are."""
    begin, end = f"<!-- begin {name} -->", f"<!-- end {name} -->"
    block = f"{begin}\n{markdown.strip()}\n{end}"
    text = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n\nEach section is written by its script; rerun with `make bench`.\n"
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip() + "\n\n" + block + "\n"
    RESULTS.write_text(text)


def sync(device) -> None:
    """Wait for queued GPU work, so wall-clock timings cover it."""
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def task_train_rate(task, device, batch_size: int, steps: int, precision: str = "fp32", lr: float = 1e-3,
                    compile_backend: str | None = None) -> float:
    """Training samples per second of one `TrainTask` (forward, loss, backward, AdamW step on the
    task's example batch): the median over ``steps`` timed steps after 2 warm-up steps (which
    include compilation when ``compile_backend`` names a `torch.compile` backend)."""
    import statistics
    import time

    import torch

    from cad3d.training.tasks.base import StepContext

    modules = {k: m.to(device).train() for k, m in task.build_modules().items()}
    opt = task.configure_optimizer(modules, lr=lr, weight_decay=0.0)
    if compile_backend:
        modules = {k: torch.compile(m, backend=compile_backend) for k, m in modules.items()}
    batch = task.to_device(task.example_batch(batch_size, torch.Generator().manual_seed(0)), device)
    ctx = StepContext(1, 0, device, torch.Generator(device=device).manual_seed(0))
    dtype = {"fp32": None, "bf16": torch.bfloat16}[precision]
    times = []
    for i in range(steps + 2):
        sync(device)
        t0 = time.perf_counter()
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            loss, _ = task.training_step(modules, batch, ctx)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sync(device)
        if i >= 2:
            times.append(time.perf_counter() - t0)
    return batch_size / statistics.median(times)
