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
