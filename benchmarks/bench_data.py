"""Synthesis throughput: samples/s of `cad3d data synth` with 1 and 2 workers, start-up included;
clean vs varied style vs procedural parts side by side (2 workers, one run); where the time of
one sample goes; and how varied the part families are (near-duplicate pairs).

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


# Side-by-side variants of one run: (label, extra `cad3d data synth` arguments).
VARIANTS = (("clean, 13 families", []), ("varied, 13 families", ["--style", "varied"]),
            ("clean, procedural", ["--families", "procedural"]),
            ("varied, procedural", ["--families", "procedural", "--style", "varied"]))


def time_cli(num_samples: int, workers: int, out: Path, extra: list | None = None) -> float:
    cmd = [sys.executable, "-m", "cad3d", "data", "synth", "--out", str(out), "--num-samples", str(num_samples),
           "--workers", str(workers), "--num-points", "4096", "--image-size", "256", "--no-progress", *(extra or [])]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True)
    return time.perf_counter() - t0


def stage_times(n: int = 40) -> dict[str, float]:
    """Median milliseconds per stage of one sample, in-process."""
    from cad3d.data.parts import FAMILIES, make_part
    from cad3d.data.render import render_drawing
    from cad3d.data.synth import _npy_bytes, _png_bytes, cameras_for, normalize_mesh
    from cad3d.geometry.sampling import sample_surface

    times: dict[str, list[float]] = {"part": [], "render": [], "sample": [], "encode": []}
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
        _png_bytes(drawing.image), _npy_bytes(np.asarray(pts)), _npy_bytes(drawing.depth)
        t4 = time.perf_counter()
        for key, dt in zip(times, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
            times[key].append(dt * 1000)
    return {k: statistics.median(v) for k, v in times.items()}


def near_duplicates(family: str | None, n: int = 150, points: int = 384) -> tuple[float, float]:
    """(share of pairs closer than two samplings of one part, median pairwise Chamfer) over ``n``
    parts of ``family`` (None: the 13 families mixed), clouds normalized into the unit sphere."""
    from scipy.spatial import cKDTree

    from cad3d.data.parts import FAMILIES, make_part
    from cad3d.data.synth import normalize_mesh
    from cad3d.geometry.sampling import sample_surface

    clouds = []
    for i in range(n):
        rng = np.random.default_rng([11, i])
        fam = family or FAMILIES[int(rng.integers(len(FAMILIES)))]
        mesh, _ = normalize_mesh(make_part(fam, rng)[0])
        clouds.append(np.asarray(sample_surface(mesh, points, rng), dtype=np.float64))
    trees = [cKDTree(c) for c in clouds]
    # The same part sampled twice: the floor of the measure.
    again = np.asarray(sample_surface(normalize_mesh(make_part(family or FAMILIES[0], np.random.default_rng(5))[0])[0],
                                      points, np.random.default_rng(6)))
    first = np.asarray(sample_surface(normalize_mesh(make_part(family or FAMILIES[0], np.random.default_rng(5))[0])[0],
                                      points, np.random.default_rng(7)))
    floor = 0.5 * (cKDTree(again).query(first)[0].mean() + cKDTree(first).query(again)[0].mean())
    dist = np.array([0.5 * (trees[j].query(clouds[i])[0].mean() + trees[i].query(clouds[j])[0].mean())
                     for i in range(n) for j in range(i + 1, n)])
    return float(np.mean(dist < 1.5 * floor)), float(np.median(dist)), float(floor)


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
        styles = {}
        for label, extra in VARIANTS:
            seconds = time_cli(args.num_samples, 2, Path(tmp) / label.replace(", ", "_").replace(" ", ""), extra)
            styles[label] = args.num_samples / seconds
            print(f"{label}: {styles[label]:.1f} samples/s (2 workers)")
    variety = {name: near_duplicates(fam) for name, fam in (("13 families", None), ("procedural", "procedural"))}
    print("variety:", variety)
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
    md += ["", f"Styles and part families side by side, same command with 2 workers (`--style varied`, "
               "`--families procedural`):", "", "| data | samples/s | ratio to clean, 13 families |", "|---|---|---|"]
    base = styles[VARIANTS[0][0]]
    md += [f"| {k} | {v:.1f} | {v / base:.2f}x |" for k, v in styles.items()]
    md += ["", "Variety: 150 parts each, 384-point normalized clouds, pairwise Chamfer (mean nearest-neighbour "
               "distance, both ways); a near-duplicate pair is closer than 1.5x the distance between two "
               "samplings of one part:", "", "| parts | near-duplicate pairs | median pairwise Chamfer | same part "
               "resampled |", "|---|---|---|---|"]
    md += [f"| {k} | {v[0]:.2%} | {v[1]:.3f} | {v[2]:.3f} |" for k, v in variety.items()]
    md += ["", "Median time of one sample's stages, in one process (ms):", "",
           "| stage | ms | share |", "|---|---|---|"]
    md += [f"| {k} | {v:.1f} | {v / total:.0%} |" for k, v in stages.items()]
    md += ["", f"Target: >= 25 samples/s with 2 workers. Limit: the slowest stage above "
               f"({max(stages, key=stages.get)}); both cores are busy with 2 workers."]
    write_section("data", "\n".join(md))


if __name__ == "__main__":
    main()
