"""`scripts/gpu_check.sh --smoke`: the GPU check's code runs end to end on CPU at tiny sizes, so
the script does not rot while no GPU runs it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_check_smoke_runs_every_section(tmp_path):
    out = tmp_path / "gpu.md"
    env = {**os.environ, "PYTHON": sys.executable}
    proc = subprocess.run([str(ROOT / "scripts" / "gpu_check.sh"), "--smoke", "--out", str(out)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    md = out.read_text()
    assert "SMOKE" in md and "Versions: Python" in md
    for model in ("vae", "vit", "diffusion", "depth"):
        for mode in ("fp32", "bf16", "bf16 + compile"):
            row = next(line for line in md.splitlines() if line.startswith(f"| {model} | {mode} |"))
            assert float(row.split("|")[4]) > 0, row  # samples/s measured, no error
    for method in ("diffusion", "vit", "refine", "depth", "geometric"):
        row = next(line for line in md.splitlines() if line.startswith(f"| {method} | "))
        assert all(float(c) > 0 for c in row.split("|")[3:5]), row
    assert "2 processes, gloo" in md


def test_gpu_check_refuses_without_cuda_instead_of_inventing_figures(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    env = {**os.environ, "PYTHON": sys.executable}
    proc = subprocess.run([str(ROOT / "scripts" / "gpu_check.sh"), "--out", str(tmp_path / "x.md")], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "no CUDA device" in proc.stderr and not (tmp_path / "x.md").exists()
