"""Geometry ops against reference implementations, side by side in one run.

    .venv/bin/python benchmarks/bench_ops.py [--rounds R] [--threads T]

* Chamfer, B=8, N=M=4096, float32 on CPU (and CUDA when present): ours (chunked) vs the dense
  ``torch.cdist(a, b)`` followed by ``min`` (with indices, what most code writes) or ``amin``.
  Time: best and median over interleaved rounds (the machine may be shared, so the best is the
  least-disturbed figure). Peak memory on CPU: each case runs in a fresh subprocess that builds
  its inputs, resets the kernel's peak-RSS counter (``/proc/self/clear_refs``) and reports
  ``VmHWM - VmRSS`` afterwards, i.e. the extra resident memory the call needed at its peak,
  whatever allocated it. On CUDA: ``torch.cuda.max_memory_allocated`` minus the inputs.
* Farthest point sampling 4096 -> 1024, B=8: ours (pure torch, batched) vs fpsample's
  ``bucket_fps_kdline_sampling`` (QuickFPS, C++; one call per cloud) and its vanilla
  ``fps_sampling``, and the naive pure-torch loop found in most PointNet++ ports.

Writes the ``ops`` section of benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import machine_info, write_section  # noqa: E402
from cad3d.geometry import chamfer_distance, farthest_point_sample  # noqa: E402

B, N, M = 8, 4096, 4096
FPS_N, FPS_M = 4096, 1024
FPSAMPLE_H = 5  # bucket tree height; fpsample's guidance for medium workloads is 5-7


# ------------------------------------------------------------------------------- references
def chamfer_dense_min(a, b):
    d = torch.cdist(a, b)  # (B, N, M) the full matrix
    return (d.min(dim=2).values.square().mean(1) + d.min(dim=1).values.square().mean(1)).mean()


def chamfer_dense_amin(a, b):
    d = torch.cdist(a, b)  # (B, N, M)
    return (d.amin(dim=2).square().mean(1) + d.amin(dim=1).square().mean(1)).mean()


def chamfer_ours(a, b):
    return chamfer_distance(a, b)


CHAMFER = {"ours (chunked)": chamfer_ours, "dense cdist+min": chamfer_dense_min, "dense cdist+amin": chamfer_dense_amin}


def fps_naive_torch(x, m):
    """The loop of most PyTorch PointNet++ ports: allocates every step, argmax via torch.max."""
    bsz, n, _ = x.shape
    centroids = torch.zeros(bsz, m, dtype=torch.long)
    distance = torch.ones(bsz, n) * 1e10
    farthest = torch.zeros(bsz, dtype=torch.long)
    batch = torch.arange(bsz)
    for i in range(m):
        centroids[:, i] = farthest
        centroid = x[batch, farthest, :].view(bsz, 1, 3)
        dist = torch.sum((x - centroid) ** 2, -1)
        mask = dist < distance
        distance[mask] = dist[mask]
        farthest = torch.max(distance, -1)[1]
    return centroids


def _inputs(device="cpu"):
    g = torch.Generator().manual_seed(0)
    a = torch.rand(B, N, 3, generator=g) * 2 - 1
    b = torch.rand(B, M, 3, generator=g) * 2 - 1
    return a.to(device), b.to(device)


# ------------------------------------------------------------------------------- measurement
def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def _measure_child(name: str, backward: bool) -> None:
    """Runs in a subprocess: one call of CHAMFER[name], prints the extra peak RSS in MiB."""
    a, b = _inputs()
    if backward:
        a.requires_grad_(True)
    fn = CHAMFER[name]
    # Warm-up on tiny inputs so lazy initialisation is not counted.
    small = (a[:1, :64].detach().requires_grad_(backward), b[:1, :64])
    out = fn(*small)
    if backward:
        out.backward()
    before = _status_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    if backward:
        fn(a, b).backward()
    else:
        with torch.no_grad():
            fn(a, b)
    print(json.dumps({"peak_mib": (_status_kib("VmHWM") - before) / 1024}))


def peak_memory_mib(name: str, backward: bool) -> float | None:
    proc = subprocess.run(
        [sys.executable, __file__, "--child", name] + (["--backward"] if backward else []),
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())},
    )
    if proc.returncode != 0:
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])["peak_mib"]


def interleaved(fns: dict, rounds: int, sync=lambda: None) -> dict:
    """Best and median seconds per function, running the candidates in turn each round."""
    times = {k: [] for k in fns}
    for f in fns.values():
        f()
        sync()
    for _ in range(rounds):
        for k, f in fns.items():
            sync()
            t = time.perf_counter()
            f()
            sync()
            times[k].append(time.perf_counter() - t)
    return {k: (min(v), statistics.median(v)) for k, v in times.items()}


# ------------------------------------------------------------------------------- sections
def bench_chamfer_cpu(rounds: int) -> list[str]:
    a, b = _inputs()
    ref = chamfer_dense_amin(a, b).item()
    assert abs(chamfer_ours(a, b).item() - ref) < 1e-5 * max(ref, 1e-6), "chamfer disagrees with dense"

    def run(fn, backward):
        if backward:
            aa = a.detach().requires_grad_(True)
            return lambda: fn(aa, b).backward()

        def fwd():
            with torch.no_grad():
                fn(a, b)

        return fwd

    lines = [
        f"### Chamfer, B={B}, N=M={N}, float32, CPU ({torch.get_num_threads()} threads)",
        "",
        f"The dense (B, N, M) float32 matrix alone is {B * N * M * 4 / 2**20:.0f} MiB. Peak = extra resident memory "
        "of one call in a fresh process (VmHWM - VmRSS before the call).",
        "",
        "| pass | implementation | best s | median s | speed vs dense+min | peak MiB | peak vs dense+min |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for backward in (False, True):
        label = "forward+backward" if backward else "forward (no grad)"
        t = interleaved({k: run(f, backward) for k, f in CHAMFER.items()}, rounds)
        mem = {k: peak_memory_mib(k, backward) for k in CHAMFER}
        base_t, base_m = t["dense cdist+min"][0], mem["dense cdist+min"]
        for k in CHAMFER:
            m = mem[k]
            ms = f"{m:.0f}" if m is not None else "n/a"
            mr = f"{m / base_m:.2f}x" if m is not None and base_m else "n/a"
            lines.append(f"| {label} | {k} | {t[k][0]:.3f} | {t[k][1]:.3f} | {base_t / t[k][0]:.2f}x | {ms} | {mr} |")
    return lines


def bench_chamfer_cuda(rounds: int) -> list[str]:
    a, b = _inputs("cuda")
    sync = torch.cuda.synchronize
    lines = [
        f"### Chamfer, B={B}, N=M={N}, float32, CUDA ({torch.cuda.get_device_name(0)})",
        "",
        "| pass | implementation | best ms | speed vs dense+min | peak MiB over inputs |",
        "|---|---|---:|---:|---:|",
    ]
    for backward in (False, True):
        label = "forward+backward" if backward else "forward (no grad)"
        aa = a.detach().requires_grad_(backward)

        def make(fn):
            def call():
                if backward:
                    fn(aa, b).backward()
                else:
                    with torch.no_grad():
                        fn(a, b)

            return call

        fns = {k: make(f) for k, f in CHAMFER.items()}
        t = interleaved(fns, rounds, sync)
        mem = {}
        for k, f in fns.items():
            sync()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            f()
            sync()
            mem[k] = (torch.cuda.max_memory_allocated() - base) / 2**20
        for k in CHAMFER:
            lines.append(f"| {label} | {k} | {t[k][0] * 1e3:.2f} | {t['dense cdist+min'][0] / t[k][0]:.2f}x | {mem[k]:.0f} |")
    return lines


def bench_fps(rounds: int) -> list[str]:
    g = torch.Generator().manual_seed(1)
    x = torch.rand(B, FPS_N, 3, generator=g) * 2 - 1
    xn = x.numpy()
    fns = {
        "ours (pure torch, batched)": lambda: farthest_point_sample(x, FPS_M),
        "naive torch loop (PointNet++ ports)": lambda: fps_naive_torch(x, FPS_M),
    }
    try:
        import fpsample

        fns[f"fpsample bucket_fps_kdline_sampling (h={FPSAMPLE_H})"] = lambda: [
            fpsample.bucket_fps_kdline_sampling(xn[i], FPS_M, h=FPSAMPLE_H, start_idx=0) for i in range(B)
        ]
        fns["fpsample fps_sampling (vanilla)"] = lambda: [fpsample.fps_sampling(xn[i], FPS_M, start_idx=0) for i in range(B)]
    except ImportError:
        fpsample = None
    ours = farthest_point_sample(x, FPS_M).numpy()
    same = {"ours (pure torch, batched)": 1.0, "naive torch loop (PointNet++ ports)": float((fps_naive_torch(x, FPS_M).numpy() == ours).mean())}
    if fpsample is not None:
        kd = np.stack([fpsample.bucket_fps_kdline_sampling(xn[i], FPS_M, h=FPSAMPLE_H, start_idx=0) for i in range(B)])
        same[f"fpsample bucket_fps_kdline_sampling (h={FPSAMPLE_H})"] = float((kd == ours).mean())
        va = np.stack([fpsample.fps_sampling(xn[i], FPS_M, start_idx=0) for i in range(B)])
        same["fpsample fps_sampling (vanilla)"] = float((va == ours).mean())
    t = interleaved(fns, rounds)
    ref_key = next((k for k in fns if "kdline" in k), "naive torch loop (PointNet++ ports)")
    lines = [
        f"### Farthest point sampling {FPS_N} -> {FPS_M}, B={B}, float32, CPU",
        "",
        "Same = share of the (B, m) indices equal to ours, all starting at index 0.",
        "",
        f"| implementation | best s | median s | time / {ref_key.split(' (')[0]} | same as ours |",
        "|---|---:|---:|---:|---:|",
    ]
    for k in fns:
        lines.append(f"| {k} | {t[k][0]:.4f} | {t[k][1]:.4f} | {t[k][0] / t[ref_key][0]:.2f}x | {same[k]:.3f} |")
    if torch.cuda.is_available():
        xc = x.cuda()
        tc = interleaved({"ours": lambda: farthest_point_sample(xc, FPS_M)}, rounds, torch.cuda.synchronize)
        lines += ["", f"On CUDA ({torch.cuda.get_device_name(0)}) ours takes {tc['ours'][0] * 1e3:.1f} ms."]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--backward", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child:
        _measure_child(args.child, args.backward)
        return
    lines = ["## Geometry ops", "", machine_info(), ""]
    lines += bench_chamfer_cpu(args.rounds) + [""]
    if torch.cuda.is_available():
        lines += bench_chamfer_cuda(args.rounds) + [""]
    lines += bench_fps(args.rounds)
    md = "\n".join(lines)
    write_section("ops", md)
    print(md)


if __name__ == "__main__":
    main()
