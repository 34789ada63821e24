"""The web app (`cad3d serve`): start-up time, seconds per conversion through the app against
the CLI (same drawing, same method), and the time of the browser tests.

    .venv/bin/python benchmarks/bench_app.py [--points 2048] [--no-write]

A project folder with tiny ViT, diffusion and depth runs (one step each, as in
bench_convert.py) is served from a subprocess, as a user starts it. App: one drawing sent with
gradio_client (upload, convert, PLY/NPY/GLB/OBJ, preview and the 3D view's GLB written, files
downloaded). CLI: `cad3d convert DRAWING --format glb` as a whole process (start-up and model
loading included, as a user pays them per call). Medians of 3 after one warm-up.
Writes the ``app`` section of benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine_info, write_section  # noqa: E402
from bench_convert import build_runs  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
METHODS = ("geometric", "depth", "diffusion")


def env() -> dict:
    return {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False",
            "PYTHONPATH": os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])}


def layout(root: Path, runs: dict) -> None:
    """The default places `cad3d serve` and `cad3d convert` look in: trained_models/, models/."""
    for role, name in (("vit", "vit/final_model.pth"), ("diffusion", "diffusion/diffusion_best.pth")):
        dst = root / "trained_models" / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.write_bytes(Path(runs[role]).read_bytes())


def start_server(root: Path, log: Path) -> tuple[subprocess.Popen, str, float]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "cad3d", "serve", "--port", str(port), "--device", "cpu"],
                            cwd=root, env=env(), stdout=open(log, "w"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    while True:
        if proc.poll() is not None:
            raise SystemExit(f"cad3d serve exited:\n{log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return proc, url, time.perf_counter() - t0
        except OSError:
            time.sleep(0.1)


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    proc.wait(timeout=30)


def app_seconds(url: str, drawing: Path, method: str, points: int) -> float:
    from gradio_client import Client, handle_file

    client = Client(url, verbose=False)
    times = []
    for k in range(4):
        t0 = time.perf_counter()
        summary, _, _ = client.predict([handle_file(str(drawing))], [], method, points, 20, None, 0, api_name="/convert")
        times.append(time.perf_counter() - t0)
        assert summary.startswith("converted 1"), summary
    return statistics.median(times[1:])


def cli_seconds(root: Path, drawing: Path, method: str, points: int, threads: int | None = None) -> tuple[float, float]:
    """(whole-process seconds, model seconds the CLI reports), best of 2; ``threads`` sets
    OMP_NUM_THREADS (None: torch's default, one per core)."""
    walls, model = [], []
    extra = {} if threads is None else {"OMP_NUM_THREADS": str(threads)}
    for k in range(2):
        t0 = time.perf_counter()
        out = subprocess.run([sys.executable, "-m", "cad3d", "convert", str(drawing), "-o", str(root / "cli_out"),
                              "--method", method, "--num-points", str(points), "--steps", "20", "--format", "glb",
                              "--device", "cpu", "--no-progress"], cwd=root, env={**env(), **extra},
                             capture_output=True, text=True)
        walls.append(time.perf_counter() - t0)
        assert out.returncode == 0, out.stderr
        model.append(float(re.search(r", ([\d.]+) s\]", out.stdout).group(1)))
    return min(walls), min(model)


def browser_tests() -> tuple[float, float]:
    """(whole pytest run of tests/test_app_browser.py, the tests' own calls) in seconds."""
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--durations=0",
                          "tests/test_app_browser.py"], cwd=REPO, env=env(), capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if out.returncode != 0:
        raise SystemExit(out.stdout[-3000:])
    calls = sum(float(m) for m in re.findall(r"^([\d.]+)s call ", out.stdout, re.M))
    return wall, calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--points", type=int, default=2048)
    parser.add_argument("--no-write", action="store_true", help="print only, leave RESULTS.md alone")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        runs = build_runs(root)
        layout(root, runs)
        drawing = runs["images"][0]
        startups = []
        for k in range(2):
            proc, url, seconds = start_server(root, root / f"serve{k}.log")
            startups.append(seconds)
            if k == 0:
                stop(proc)
        rows = []
        try:
            for method in METHODS:
                app = app_seconds(url, drawing, method, args.points)
                rows.append((method, app, *cli_seconds(root, drawing, method, args.points),
                             *cli_seconds(root, drawing, method, args.points, threads=1)))
                print(method, " ".join(f"{v:.3f}" for v in rows[-1][1:]))
        finally:
            stop(proc)
    browser_wall, browser_calls = browser_tests()
    print(f"start-up {startups}; browser tests {browser_wall:.1f} s (calls {browser_calls:.1f} s)")
    md = ["## Web app (`benchmarks/bench_app.py`)", "",
          f"Machine: {machine_info()}; load average at the end {os.getloadavg()[0]:.1f} (other jobs share the cores: "
          "CPU figures are lower bounds)", "",
          f"`cad3d serve` with tiny ViT, diffusion and depth models: {min(startups):.1f} s from starting the process "
          f"until the page answers (best of {len(startups)}: {', '.join(f'{s:.1f}' for s in startups)} s; imports, "
          "model loading, example drawings).", "",
          f"Seconds per conversion of one drawing, {args.points} points, diffusion DDIM 20 steps. App: gradio_client "
          "round trip to the running app (upload, convert, every format, 3D-view GLB, download), median of 3 after a "
          "warm-up. CLI: one `cad3d convert --format glb` process, best of 2, with torch's default threads and with "
          "OMP_NUM_THREADS=1; model: the part of it spent in the model, as the CLI reports. The app runs the model "
          "in a worker thread; on a machine whose cores are oversubscribed (load average above) the CLI's "
          "multi-threaded main thread can be far slower than one thread.", "",
          "| path | app s | CLI s | CLI model s | CLI 1-thread s | CLI 1-thread model s | CLI / app |",
          "|---|---|---|---|---|---|---|"]
    md += [f"| {m} | {a:.2f} | {c:.2f} | {cm:.3f} | {c1:.2f} | {cm1:.3f} | {c / a:.1f}x |" for m, a, c, cm, c1, cm1 in rows]
    md += ["", f"Browser tests (`pytest tests/test_app_browser.py`, 3 tests in headless Chromium): {browser_calls:.1f} s "
               f"in the tests themselves; {browser_wall:.0f} s for the whole run, most of it the session fixtures "
               "(tiny training runs, then the server's start-up)."]
    if not args.no_write:
        write_section("app", "\n".join(md))


if __name__ == "__main__":
    main()
