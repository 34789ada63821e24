"""Shared fixtures: tiny datasets made once per test session."""

from __future__ import annotations

import pytest

TINY = dict(num_points=512, image_size=128, seed=7)


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory):
    """A 16-sample synthetic dataset (iso views) shared by read-only tests."""
    from cad3d.data.synth import create_synthetic_training_data

    out = tmp_path_factory.mktemp("tiny_dataset")
    create_synthetic_training_data(out, 16, workers=1, progress=False, **TINY)
    return out


@pytest.fixture(scope="session")
def trained_runs(tiny_dataset, tmp_path_factory):
    """A trained_models/ folder of tiny ViT, diffusion, VAE and depth runs (one or two epochs
    each, seconds on a CPU) and the depth model's ONNX export in a models/ folder beside it."""
    from cad3d.training.engine import train_model

    root = tmp_path_factory.mktemp("project")
    runs = root / "trained_models"
    common = dict(preset="tiny", progress=False, seed=0, device="cpu")
    for name in ("vit", "diffusion", "vae"):
        train_model(name, tiny_dataset, out_dir=runs / name, epochs=2, **common)
    onnx = root / "models" / "cad3d_depth_256.onnx"
    train_model("depth", tiny_dataset, out_dir=runs / "depth", epochs=1, task_overrides={"publish_onnx": str(onnx)}, **common)
    return root


@pytest.fixture(scope="session")
def app_server(trained_runs, tiny_dataset, tmp_path_factory):
    """`cad3d serve` as a user starts it, in a subprocess on a free localhost port, from a project
    folder holding the tiny trained runs (`trained_runs`) and an evaluation in outputs/eval.
    Yields url, root (the project folder) and startup_s (start until the page answers)."""
    import os
    import socket
    import subprocess
    import sys
    import time
    import urllib.request
    from pathlib import Path
    from types import SimpleNamespace

    import cad3d
    from cad3d.evaluation.evaluate import evaluate
    from cad3d.conversion.converter import HybridCAD3DConverter

    root = trained_runs
    bare = HybridCAD3DConverter(device="cpu", enable_learning=False, models_dir=root / "no_models")
    evaluate(tiny_dataset, "test", ["geometric", "mean"], bare, root / "outputs" / "eval")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    tmp = tmp_path_factory.mktemp("gradio")
    src = str(Path(cad3d.__file__).resolve().parents[1])
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "GRADIO_TEMP_DIR": str(tmp / "cache"),
           "PYTHONPATH": os.pathsep.join([src, *filter(None, [os.environ.get("PYTHONPATH")])])}
    log = open(tmp / "serve.log", "w")
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "cad3d", "serve", "--port", str(port), "--device", "cpu"],
                            cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        while True:
            if proc.poll() is not None or time.perf_counter() - t0 > 120:
                pytest.fail(f"cad3d serve did not start:\n{(tmp / 'serve.log').read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(url, timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                time.sleep(0.25)
        yield SimpleNamespace(url=url, root=root, startup_s=time.perf_counter() - t0, log=tmp / "serve.log")
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
