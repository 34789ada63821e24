"""The procedural part family: random CAD programs, watertight, recorded, deterministic, varied."""

from __future__ import annotations

import json

import numpy as np
from scipy.spatial import cKDTree

from cad3d.data.parts import ALL_FAMILIES, make_part
from cad3d.data.synth import create_synthetic_training_data, normalize_mesh
from cad3d.geometry.sampling import sample_surface

FEATURES = {"hole", "pocket", "slot", "boss", "side_hole", "pattern", "wall_union", "chamfer_top"}


def _cloud(mesh, n=384):
    norm, _ = normalize_mesh(mesh)
    return np.asarray(sample_surface(norm, n, np.random.default_rng(0)), dtype=np.float64)


def test_procedural_parts_are_watertight_recorded_and_deterministic():
    assert "procedural" in ALL_FAMILIES
    ops = set()
    for i in range(30):
        mesh, params = make_part("procedural", np.random.default_rng([1, i]))
        again, params2 = make_part("procedural", np.random.default_rng([1, i]))
        assert mesh.is_watertight and mesh.is_winding_consistent and mesh.volume > 0, (i, params)
        assert np.array_equal(mesh.vertices, again.vertices) and np.array_equal(mesh.faces, again.faces)
        assert params == params2 and json.loads(json.dumps(params)) == params
        program = params["program"]
        assert program[0]["op"] in ("sketch", "revolve") and all("op" in step for step in program)
        ops |= {step["op"] for step in program}
    # Sketch booleans, both bases and most feature kinds show up within a few programs.
    assert {"extrude", "revolve"} <= ops and len(ops & FEATURES) >= 6 and ops & {"sketch_union", "sketch_difference"}


def test_procedural_parts_are_rarely_near_duplicates():
    clouds = [_cloud(make_part("procedural", np.random.default_rng([2, i]))[0]) for i in range(40)]
    trees = [cKDTree(c) for c in clouds]
    dist = []
    for i in range(len(clouds)):
        for j in range(i + 1, len(clouds)):
            d = 0.5 * (trees[j].query(clouds[i])[0].mean() + trees[i].query(clouds[j])[0].mean())
            dist.append(d)
    dist = np.array(dist)
    # Two samplings of one part are ~0.06 apart at 384 points (the floor); different parts are far more.
    assert np.mean(dist < 0.06) < 0.02, np.sort(dist)[:10]
    assert np.median(dist) > 0.1


def test_synth_selects_the_procedural_family(tmp_path):
    create_synthetic_training_data(tmp_path / "p", 2, families=["procedural"], image_size=64, num_points=128,
                                   progress=False)
    meta = json.loads((tmp_path / "p" / "meta" / "synthetic_0000.json").read_text())
    assert meta["family"] == "procedural" and meta["mesh"]["watertight"] and meta["parameters"]["program"]
