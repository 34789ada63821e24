"""Layered depth: the first K crossings of each pixel's ray, checked against ray casting; lifting
them gives an even surface sample; the layered depth network learns them and exports them."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import trimesh

from cad3d.data.layers import depth_layers, sample_layers
from cad3d.geometry.camera import EYE_DISTANCE, iso_camera
from cad3d.geometry.ops import chamfer_distance, f_score
from cad3d.geometry.sampling import sample_surface


@pytest.fixture(scope="module")
def mesh():
    m = trimesh.creation.box((1.2, 0.8, 0.5))
    m.apply_translation((0.1, -0.05, 0.0))
    return m


def test_layers_match_brute_force_ray_casting(mesh):
    cam = iso_camera((48, 48))
    layers = depth_layers(mesh.vertices, mesh.faces, cam, num_layers=3)
    assert layers.shape == (3, 48, 48) and layers.dtype == np.float32
    rows, cols = np.mgrid[0:48, 0:48]
    uv = np.stack([cols.ravel() + 0.5, rows.ravel() + 0.5], axis=1)
    origins = cam.unproject(uv, np.zeros(len(uv)))  # on the eye plane
    direction = np.broadcast_to(cam.forward, origins.shape)
    # Moller-Trumbore, every ray against every triangle: the brute-force reference.
    tri = mesh.triangles  # (T, 3, 3)
    e1, e2 = tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]  # (T, 3)
    d = cam.forward
    p = np.cross(d, e2)  # (T, 3)
    det = np.einsum("tk,tk->t", e1, p)  # (T,)
    s_ = origins[:, None, :] - tri[None, :, 0]  # (R, T, 3)
    u = np.einsum("rtk,tk->rt", s_, p) / det
    q = np.cross(s_, e1[None])  # (R, T, 3)
    v = np.einsum("k,rtk->rt", d, q) / det
    t = np.einsum("rtk,tk->rt", q, e2) / det
    hit = (np.abs(det) > 1e-12) & (u >= 0) & (v >= 0) & (u + v <= 1) & (t > 0)
    depths = [sorted(set(np.round(t[r][hit[r]], 6))) for r in range(len(uv))]
    checked = 0
    for r, ds in enumerate(depths):
        i, j = divmod(r, 48)
        got = layers[:, i, j]
        if len(ds) not in (0, 2):  # grazing rays along an edge: either answer is fine
            continue
        expected = np.zeros(3, dtype=np.float32)
        expected[: len(ds)] = ds[:3]
        np.testing.assert_allclose(got, expected, atol=1e-4)
        checked += 1
    assert checked > 0.9 * 48 * 48
    assert (layers[2] == 0).all()  # a box is crossed twice at most
    assert ((layers[0] > 0) == (layers[1] > 0)).all()  # every entry has its exit


def test_lifted_layers_are_as_good_as_an_independent_surface_sample(mesh):
    cam = iso_camera((128, 128))
    layers = depth_layers(mesh.vertices, mesh.faces, cam, num_layers=4)
    rng = np.random.default_rng(0)
    lifted = sample_layers(layers, [cam], 2048, rng)
    assert lifted.shape == (2048, 3) and len(np.unique(lifted, axis=0)) == 2048
    dense = torch.from_numpy(np.asarray(sample_surface(mesh, 32768, rng), dtype=np.float32))[None]
    oracle = torch.from_numpy(np.asarray(sample_surface(mesh, 2048, rng), dtype=np.float32))[None]
    ours = torch.from_numpy(lifted)[None]
    assert float(chamfer_distance(ours, dense)) < 1.5 * float(chamfer_distance(oracle, dense))
    f_ours, _, _ = f_score(ours, dense, tau_rel=0.01)
    f_oracle, _, _ = f_score(oracle, dense, tau_rel=0.01)
    assert float(f_ours) > 0.9 * float(f_oracle)
    with pytest.raises(ValueError, match="no surface"):
        sample_layers(np.zeros_like(layers), [cam], 10, rng)


def test_synthesis_writes_layers_of_the_drawing_camera(tiny_dataset):
    from cad3d.data.dataset import index_dataset, load_depth, load_layers

    rec = index_dataset(tiny_dataset)[0]
    layers = load_layers(tiny_dataset / "layers" / f"{rec.stem}.npy")
    depth = load_depth(rec.depth)
    assert layers.shape[1:] == depth.shape
    # The first crossing is the visible surface: the drawing's depth map (float16 rounding).
    seen = depth > 0
    np.testing.assert_allclose(layers[0][seen], depth[seen], atol=4e-3)
    assert ((layers[0] > 0) == seen).mean() > 0.99
    assert (layers[1] > 0).sum() >= 0.9 * seen.sum()  # closed parts: every ray leaves again


@pytest.mark.slow
def test_layered_depth_network_learns_beats_a_flat_guess_and_exports(tiny_dataset, tmp_path):
    from cad3d.conversion.depth import DepthEstimator
    from cad3d.models.depth_net import DepthNetConfig
    from cad3d.training.engine import Engine, EngineConfig
    from cad3d.training.tasks.depth import DepthTask, DepthTaskConfig, layered_chamfer

    config = DepthTaskConfig(model=DepthNetConfig(base_channels=8, max_channels=32, levels=3, image_size=64, layers=4))
    task = DepthTask(config)
    train, val = task.build_datasets(tiny_dataset, seed=0)
    Engine(task, train, val, EngineConfig(epochs=30, batch_size=4, lr=3e-3, device="cpu", progress=False,
                                          out_dir=str(tmp_path / "run"))).fit()
    model = task._model.eval()
    # Depth is learned: on the crossings that exist in the (unaugmented) training parts, the
    # predicted depth is far nearer the truth than the part's centre (0) is ...
    fit_set = task.build_datasets(tiny_dataset, seed=0)[0]
    fit_set.augment = False
    fit_images, _, fit_layers = next(iter(torch.utils.data.DataLoader(fit_set, batch_size=len(fit_set))))
    with torch.no_grad():
        fit_depth = model.forward_all(fit_images)[1]
    present = fit_layers > 0
    rel = (fit_layers - EYE_DISTANCE)[present]
    ratio = float((fit_depth[present] - rel).abs().mean()) / float(rel.abs().mean())
    assert ratio < 0.7, ratio
    # ... and on the val parts, lifting the network's own crossings at their predicted depths beats
    # lifting them all at the centre.
    images, _, layers = next(iter(torch.utils.data.DataLoader(val, batch_size=len(val))))
    with torch.no_grad():
        _, depth, logits = model.forward_all(images)
    learned = layered_chamfer(depth, logits, layers)
    flat = layered_chamfer(torch.zeros_like(depth), logits, layers)
    assert learned < flat, (learned, flat)
    # The export carries the layers; the runtime lifts them at the drawing's size.
    est = DepthEstimator(tmp_path / "run" / "cad3d_depth_256.onnx")  # exported under the run folder
    assert est.layered and est.val_chamfer is not None
    drawing = images[0, 0].numpy()
    lifted = est.predict_layers(drawing)
    assert lifted.shape == (4,) + drawing.shape
    assert ((lifted == 0) | (np.abs(lifted - EYE_DISTANCE) < 1.5)).all()
