"""Synthesis throughput: samples/s of `cad3d data synth` with 1 and 2 workers, start-up included,
and where the time of one sample goes.

    .venv/bin/python benchmarks/bench_data.py [--num-samples 200]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine_info, write_section  # noqa: E402


def time_cli(num_samples: int, workers: int, out: Path) -> float:
    cmd = [sys.executable, "-m", "cad3d", "data", "synth", "--out", str(out), "--num-samples", str(num_samples),
           "--workers", str(workers), "--num-points", "4096", "--image-size", "256", "--no-progress"]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True)
    return time.perf_counter() - t0


def stage_times(n: int = 40) -> dict[str, float]:
    """Median milliseconds per stage of one sample, in-process."""
    from cad3d.data.parts import FAMILIES, make_part
    from cad3d.data.render import render_drawing
    from cad3d.data.synth import DENSE_POINTS, DENSE_STREAM, _npy_bytes, _png_bytes, cameras_for, normalize_mesh
    from cad3d.geometry.sampling import sample_surface

    times: dict[str, list[float]] = {"part": [], "render": [], "sample": [], "dense": [], "encode": []}
    for i in range(n):
        rng = np.random.default_rng([0, i])
        t0 = time.perf_counter()
        mesh, _ = make_part(FAMILIES[i % len(FAMILIES)], rng)
        mesh, _ = normalize_mesh(mesh)
        t1 = time.perf_counter()
        drawing = render_drawing(mesh, cameras_for("iso", rng, 256))
        t2 = time.perf_counter()
        pts = sample_surface(mesh, 4096, rng)
        t3 = time.perf_counter()
        dense = sample_surface(mesh, DENSE_POINTS, np.random.default_rng([0, i, DENSE_STREAM])).astype(np.float16)
        t4 = time.perf_counter()
        _png_bytes(drawing.image), _npy_bytes(np.asarray(pts)), _npy_bytes(drawing.depth), _npy_bytes(dense)
        t5 = time.perf_counter()
        for key, dt in zip(times, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4)):
            times[key].append(dt * 1000)
    return {k: statistics.median(v) for k, v in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--num-samples", type=int, default=200)
    args = parser.parse_args()
    rates = {}
    with tempfile.TemporaryDirectory() as tmp:
        for workers in (1, 2):
            seconds = time_cli(args.num_samples, workers, Path(tmp) / f"w{workers}")
            rates[workers] = args.num_samples / seconds
            print(f"{workers} worker(s): {seconds:.1f} s, {rates[workers]:.1f} samples/s")
    stages = stage_times()
    print("median ms per stage:", {k: round(v, 1) for k, v in stages.items()})
    total = sum(stages.values())
    md = [
        "## Data synthesis (`benchmarks/bench_data.py`)",
        "",
        f"Machine: {machine_info()}",
        "",
        f"`cad3d data synth --num-samples {args.num_samples} --num-points 4096 --image-size 256`, whole process "
        "timed (interpreter start-up, imports and pool start included):",
        "",
        "| workers | samples/s | ratio to 1 worker |",
        "|---|---|---|",
    ]
    md += [f"| {w} | {r:.1f} | {r / rates[1]:.2f}x |" for w, r in rates.items()]
    md += ["", "Median time of one sample's stages, in one process (ms):", "",
           "| stage | ms | share |", "|---|---|---|"]
    md += [f"| {k} | {v:.1f} | {v / total:.0%} |" for k, v in stages.items()]
    md += ["", f"Target: >= 25 samples/s with 2 workers. Limit: the slowest stage above "
               f"({max(stages, key=stages.get)}); both cores are busy with 2 workers."]
    write_section("data", "\n".join(md))


if __name__ == "__main__":
    main()
