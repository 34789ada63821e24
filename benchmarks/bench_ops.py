"""Geometry ops against reference implementations, side by side in one run.

    .venv/bin/python benchmarks/bench_ops.py [--rounds R] [--threads T]

* Chamfer, B=8, N=M=4096, float32 on CPU (and CUDA when present): ours (chunked) vs the dense
  ``torch.cdist(a, b)`` followed by ``min`` (with indices, what most code writes) or ``amin``.
  Time: best and median over interleaved rounds (the machine may be shared, so the best is the
  least-disturbed figure). Peak memory on CPU: each case runs in a fresh subprocess that builds
  its inputs, resets the kernel's peak-RSS counter (``/proc/self/clear_refs``) and reports
  ``VmHWM - VmRSS`` afterwards, i.e. the extra resident memory the call needed at its peak,
  whatever allocated it. On CUDA: ``torch.cuda.max_memory_allocated`` minus the inputs.
* Farthest point sampling 4096 -> 1024, B=8, at 1 thread and at ``--threads``: ours (the numba
  kernel, the default on CPU) vs our torch loop (the reference, the default before it),
  fpsample's ``bucket_fps_kdline_sampling`` (QuickFPS, C++; one call per cloud, single-threaded)
  and its vanilla ``fps_sampling``, and the naive pure-torch loop of most PointNet++ ports.
* kNN and ball query at the first U-Net level (B=8, 1024 centres in 4096 points, k=32) and the
  feature-propagation kNN (4096 points in 1024, k=3): the numba kernels vs the chunked torch code.
* A training check: the tiny diffusion model, a few dozen AdamW steps on a tiny synthetic set,
  once with the compiled kernels and once with the torch code, same seeds; losses side by side.

Writes the ``ops`` section of benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import machine_info, write_section  # noqa: E402
from cad3d.geometry import ball_query, chamfer_distance, farthest_point_sample, knn  # noqa: E402

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


@contextlib.contextmanager
def torch_threads(n: int):
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def bench_fps(rounds: int, threads: int) -> list[str]:
    g = torch.Generator().manual_seed(1)
    x = torch.rand(B, FPS_N, 3, generator=g) * 2 - 1
    xn = x.numpy()
    farthest_point_sample(x[:1, :64], 8)  # load the compiled kernel before timing
    ours = farthest_point_sample(x, FPS_M).numpy()
    torch_ref = farthest_point_sample(x, FPS_M, backend="torch").numpy()
    assert (ours == torch_ref).all(), "the numba kernel disagrees with the torch loop"
    fns, same = {}, {}
    for t in sorted({1, threads}):
        fns[f"ours: numba kernel, {t} thread(s)"] = lambda t=t: _with_threads(t, farthest_point_sample, x, FPS_M)
        same[f"ours: numba kernel, {t} thread(s)"] = 1.0
        fns[f"ours: torch loop (reference, the old default), {t} thread(s)"] = lambda t=t: _with_threads(t, farthest_point_sample, x, FPS_M, backend="torch")
        same[f"ours: torch loop (reference, the old default), {t} thread(s)"] = float((torch_ref == ours).mean())
    fns["naive torch loop (PointNet++ ports), 1 thread"] = lambda: _with_threads(1, fps_naive_torch, x, FPS_M)
    same["naive torch loop (PointNet++ ports), 1 thread"] = float((fps_naive_torch(x, FPS_M).numpy() == ours).mean())
    kd_key = None
    try:
        import fpsample

        kd_key = f"fpsample bucket_fps_kdline_sampling (h={FPSAMPLE_H}), 1 thread"
        fns[kd_key] = lambda: [fpsample.bucket_fps_kdline_sampling(xn[i], FPS_M, h=FPSAMPLE_H, start_idx=0) for i in range(B)]
        kd = np.stack([fpsample.bucket_fps_kdline_sampling(xn[i], FPS_M, h=FPSAMPLE_H, start_idx=0) for i in range(B)])
        same[kd_key] = float((kd == ours).mean())
        fns["fpsample fps_sampling (vanilla), 1 thread"] = lambda: [fpsample.fps_sampling(xn[i], FPS_M, start_idx=0) for i in range(B)]
        va = np.stack([fpsample.fps_sampling(xn[i], FPS_M, start_idx=0) for i in range(B)])
        same["fpsample fps_sampling (vanilla), 1 thread"] = float((va == ours).mean())
    except ImportError:
        pass
    t = interleaved(fns, rounds)
    ref_key = kd_key or "naive torch loop (PointNet++ ports), 1 thread"
    lines = [
        f"### Farthest point sampling {FPS_N} -> {FPS_M}, B={B}, float32, CPU",
        "",
        "Same = share of the (B, m) indices equal to ours, all starting at index 0. The numba kernel "
        "splits the batch over threads; fpsample makes one single-threaded call per cloud.",
        "",
        f"| implementation | best s | median s | time / {ref_key.split(' (')[0]} (best) | same as ours |",
        "|---|---:|---:|---:|---:|",
    ]
    for k in fns:
        lines.append(f"| {k} | {t[k][0]:.4f} | {t[k][1]:.4f} | {t[k][0] / t[ref_key][0]:.2f}x | {same[k]:.3f} |")
    if torch.cuda.is_available():
        xc = x.cuda()
        tc = interleaved(
            {"triton": lambda: farthest_point_sample(xc, FPS_M), "torch loop": lambda: farthest_point_sample(xc, FPS_M, backend="torch")},
            rounds,
            torch.cuda.synchronize,
        )
        eq = torch.equal(farthest_point_sample(xc, FPS_M).cpu(), torch.from_numpy(ours))
        lines += ["", f"On CUDA ({torch.cuda.get_device_name(0)}): Triton kernel {tc['triton'][0] * 1e3:.1f} ms, torch loop "
                  f"{tc['torch loop'][0] * 1e3:.1f} ms; Triton indices equal to the CPU kernel's: {eq}."]
    return lines


def _with_threads(n: int, fn, *args, **kwargs):
    with torch_threads(n):
        return fn(*args, **kwargs)


def bench_neighbors(rounds: int, threads: int) -> list[str]:
    g = torch.Generator().manual_seed(2)
    pts = torch.rand(B, N, 3, generator=g) * 2 - 1  # (B, 4096, 3)
    centres = pts[:, :: N // 1024]  # (B, 1024, 3)
    cases = {
        "kNN, 1024 centres in 4096 points, k=32": lambda be: knn(centres, pts, 32, backend=be),
        "ball query r=0.2, 1024 centres in 4096 points, k=32": lambda be: ball_query(centres, pts, 0.2, 32, backend=be),
        "kNN, 4096 points in 1024 centres, k=3 (feature propagation)": lambda be: knn(pts, centres, 3, backend=be),
    }
    lines = [
        f"### Neighbourhood queries at the first U-Net level, B={B}, float32, CPU",
        "",
        "| query | threads | numba kernel best s | torch code best s | torch / numba | same indices |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, fn in cases.items():
        a, b = fn("auto"), fn("torch")
        ia, ib = (a[1], b[1]) if isinstance(a, tuple) else (a, b)
        same = float((ia == ib).float().mean())
        for th in sorted({1, threads}):
            calls = {be: functools.partial(_with_threads, th, fn, be) for be in ("auto", "torch")}
            t = interleaved(calls, rounds)
            lines.append(f"| {name} | {th} | {t['auto'][0]:.4f} | {t['torch'][0]:.4f} | {t['torch'][0] / t['auto'][0]:.1f}x | {same:.4f} |")
    return lines


@contextlib.contextmanager
def unet_backend(backend: str):
    """Make the PointNet++ U-Net use the given backend for FPS, kNN and ball query."""
    import cad3d.models.pointnet2_unet as unet

    names = ("farthest_point_sample", "knn", "ball_query")
    saved = {n: getattr(unet, n) for n in names}
    for n in names:
        setattr(unet, n, functools.partial(saved[n], backend=backend))
    try:
        yield
    finally:
        for n in names:
            setattr(unet, n, saved[n])


def bench_unet_training(steps: int, threads: int, batch: int = 4) -> list[str]:
    """The tiny diffusion model trained ``steps`` AdamW steps on 8 synthetic parts, with the
    compiled kernels and with the torch code: same seeds, losses side by side."""
    from cad3d.data.dataset import CAD2D3DDataset
    from cad3d.data.synth import create_synthetic_training_data
    from cad3d.diffusion_3d_model import create_diffusion_model

    with tempfile.TemporaryDirectory() as tmp:
        create_synthetic_training_data(tmp, 8, seed=7, num_points=512, image_size=64, workers=1, progress=False)
        ds = CAD2D3DDataset(tmp, image_size=64, num_points=512, augment=False)
        images = torch.stack([ds[i][0] for i in range(len(ds))])  # (8, 3, 64, 64)
        points = torch.stack([ds[i][1] for i in range(len(ds))])  # (8, 512, 3)
    warm = torch.rand(1, 64, 3)  # load the compiled kernels before timing
    farthest_point_sample(warm, 8), knn(warm, warm, 4), ball_query(warm, warm, 0.5, 4)
    runs = {}
    for label, backend in (("compiled kernels (numba)", "auto"), ("torch code (before)", "torch")):
        torch.manual_seed(0)
        model = create_diffusion_model(num_points=512, device="cpu", preset="tiny")
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        g = torch.Generator().manual_seed(0)
        losses = []
        with unet_backend(backend), torch_threads(threads):
            t0 = time.perf_counter()
            for step in range(steps):
                sel = [(step * batch + j) % len(images) for j in range(batch)]
                loss, _ = model.get_loss(images[sel], points[sel], g)
                opt.zero_grad()
                loss.backward()
                opt.step()
                losses.append(float(loss.detach()))
            seconds = (time.perf_counter() - t0) / steps
        runs[label] = (np.array(losses), seconds)
    (la, _), (lb, _) = runs.values()
    k = max(1, steps // 5)
    lines = [
        f"### U-Net training check: tiny diffusion model (512 points, kNN grouping), {steps} AdamW steps, batch {batch}, CPU",
        "",
        "| neighbourhoods | loss, first 1/5 of steps | loss, last 1/5 | s/step |",
        "|---|---:|---:|---:|",
    ]
    for label, (l, s) in runs.items():
        lines.append(f"| {label} | {l[:k].mean():.4f} | {l[-k:].mean():.4f} | {s:.3f} |")
    lines += ["", f"Largest per-step loss difference between the two runs: {np.abs(la - lb).max():.2e} "
              f"(FPS indices are identical by construction; kNN differs only where the torch code's float32 "
              f"ranking orders near-ties differently)."]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--train-steps", type=int, default=40, help="steps of the U-Net training check (0: skip)")
    parser.add_argument("--only", choices=("chamfer", "fps", "neighbors", "train"), action="append", help="run only these parts (repeatable)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--backward", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child:
        _measure_child(args.child, args.backward)
        return
    parts = set(args.only or ("chamfer", "fps", "neighbors", "train"))
    threads = torch.get_num_threads()
    lines = ["## Geometry ops", "", machine_info(), ""]
    if "chamfer" in parts:
        lines += bench_chamfer_cpu(args.rounds) + [""]
        if torch.cuda.is_available():
            lines += bench_chamfer_cuda(args.rounds) + [""]
    if "fps" in parts:
        lines += bench_fps(args.rounds, threads) + [""]
    if "neighbors" in parts:
        lines += bench_neighbors(args.rounds, threads) + [""]
    if "train" in parts and args.train_steps > 0:
        lines += bench_unet_training(args.train_steps, threads) + [""]
    load = os.getloadavg()[0]
    shared = " (the machine was shared with other jobs: figures are inflated and noisy; compare within a table)" if load > 1.5 else ""
    lines[3:3] = ["", f"1-minute load average at the end of the run: {load:.1f} on {os.cpu_count()} logical cores{shared}."]
    md = "\n".join(lines)
    if args.only:
        print(md)  # a partial run does not replace the section
        return
    write_section("ops", md)
    print(md)


if __name__ == "__main__":
    main()
