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
    train_model("depth", tiny_dataset, out_dir=runs / "depth", epochs=1, task_overrides={"onnx_path": str(onnx)}, **common)
    return root
