"""The point-cloud VAE: model pieces, learning on a tiny synthetic set, its seed-000 files and
keys, exact resume through the engine, and `VAEConverter` (round trip, no weights, bad file)."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from cad3d.errors import CheckpointError
from cad3d.geometry.ops import chamfer_distance
from cad3d.models.vae import PointCloudVAE, VAEConfig, kl_weight_at, smoothness_loss, vae_loss
from cad3d.training.engine import Engine, EngineConfig
from cad3d.training.tasks.base import get_task_class
from cad3d.training.tasks.vae import VAETask
from cad3d.vae_integration import UntrainedModelWarning, VAEConverter

SEED000_KEYS = {"epoch", "state_dict", "opt", "scheduler", "val_loss", "loss_history", "last_parts", "kl_weight"}
PARTS = {"chamfer", "kl", "voxel", "smooth"}


def tiny_task(**overrides) -> VAETask:
    return VAETask(dataclasses.replace(VAETask.presets()["tiny"], **overrides))


def train(task, data_dir, out_dir, **engine):
    train_set, val_set = task.build_datasets(data_dir, seed=0)
    cfg = EngineConfig(**{**VAETask.engine_presets()["tiny"], "out_dir": str(out_dir), "progress": False, **engine})
    e = Engine(task, train_set, val_set, cfg)
    return e, e.fit()


def read_log(out_dir):
    return json.loads((out_dir / "vae_epoch_log.json").read_text())


@pytest.fixture(scope="module")
def vae_data(tmp_path_factory):
    """64 samples of every family (48 train / 16 val + test), 512 points, 32 px drawings."""
    from cad3d.data.synth import create_synthetic_training_data

    out = tmp_path_factory.mktemp("vae_data")
    create_synthetic_training_data(out, 64, num_points=512, image_size=32, seed=3, workers=1, progress=False)
    return out


# -- model pieces --------------------------------------------------------------------------
def test_kl_schedules():
    linear = VAEConfig(kl_weight_max=1e-3, kl_schedule="linear", kl_warmup_epochs=10)
    assert [kl_weight_at(e, linear) for e in (1, 2, 10, 30)] == pytest.approx([1e-4, 2e-4, 1e-3, 1e-3])
    cyclic = VAEConfig(kl_weight_max=1.0, kl_schedule="cyclic", kl_cycle_epochs=4, kl_cycle_ratio=0.5)
    assert [kl_weight_at(e, cyclic) for e in range(1, 9)] == pytest.approx([0.5, 1, 1, 1, 0.5, 1, 1, 1])
    assert kl_weight_at(7, VAEConfig(kl_weight_max=0.3, kl_schedule="constant")) == 0.3
    with pytest.raises(ValueError, match="kl_schedule"):
        VAEConfig(kl_schedule="step")


def test_shapes_seeded_latent_and_order_invariant_encoder():
    cfg = VAETask.presets()["tiny"]
    torch.manual_seed(0)
    model = PointCloudVAE(cfg)
    x = torch.rand(3, 300, 3) * 2 - 1  # (B, N, 3): any N in
    recon, mu, logvar = model(x, torch.Generator().manual_seed(1))
    assert recon.shape == (3, cfg.num_points, 3) and mu.shape == logvar.shape == (3, cfg.latent_dim)
    again, _, _ = model(x, torch.Generator().manual_seed(1))
    other, _, _ = model(x, torch.Generator().manual_seed(2))
    assert torch.equal(recon, again) and not torch.equal(recon, other)
    mu_perm, _ = model.encode(x[:, torch.randperm(300)])
    assert torch.allclose(mu, mu_perm, atol=1e-6)
    assert torch.equal(model.sample(2, torch.Generator().manual_seed(5)), model.sample(2, torch.Generator().manual_seed(5)))


def test_loss_parts():
    cfg = VAETask.presets()["tiny"]
    target = torch.rand(2, 128, 3) * 2 - 1
    mu, logvar = torch.zeros(2, cfg.latent_dim), torch.zeros(2, cfg.latent_dim)
    loss, parts = vae_loss(target.clone(), target, mu, logvar, 1.0, cfg)
    assert set(parts) == PARTS
    assert parts["chamfer"] == 0 and parts["kl"] == 0 and parts["voxel"] == 0 and loss == cfg.smooth_weight * parts["smooth"]
    # a cloud on a line is locally smoother than a noisy one
    line = torch.linspace(-1, 1, 256)[None, :, None] * torch.tensor([1.0, 0.0, 0.0])
    assert smoothness_loss(line, 4) < 1e-4 < smoothness_loss(torch.rand(1, 256, 3), 4)


def test_task_is_registered():
    assert get_task_class("vae") is VAETask


# -- training ------------------------------------------------------------------------------
@pytest.mark.slow
def test_learns_beats_the_mean_cloud_baseline_and_writes_seed000_files(vae_data, tmp_path):
    task = tiny_task()
    engine, report = train(task, vae_data, tmp_path, epochs=3)
    log = read_log(tmp_path)
    assert [e["epoch"] for e in log] == [1, 2, 3]
    assert log[-1]["train_loss"] < 0.7 * log[0]["train_loss"]
    assert [e["kl_weight"] for e in log] == pytest.approx([kl_weight_at(e, task.config) for e in (1, 2, 3)])
    assert all(set(e["parts"]) == PARTS and {"val_loss", "val_chamfer", "kl_weight"} <= set(e) for e in log)

    # Baseline: one constant cloud, the training cloud closest (mean Chamfer) to all the others.
    # Scored on every held-out sample (val + test) so that a handful of shapes cannot decide it.
    from cad3d.data.dataset import CAD2D3DDataset

    def clouds(*splits):
        return torch.stack([p for s in splits for _, p in CAD2D3DDataset(vae_data, 32, 512, augment=False, split=s)])

    train_clouds, held_out = clouds("train"), clouds("val", "test")
    n = len(train_clouds)
    to_all = torch.stack([chamfer_distance(train_clouds, train_clouds[j].expand(n, -1, -1), reduction="none").mean() for j in range(n)])
    mean_cloud = train_clouds[to_all.argmin()]
    baseline = float(chamfer_distance(mean_cloud.expand_as(held_out), held_out))
    model = engine.modules["model"].eval()
    with torch.no_grad():
        chamfer = float(chamfer_distance(model(held_out, sample_latent=False)[0], held_out))
    print(f"held-out Chamfer {chamfer:.4f} (val {log[-1]['val_chamfer']:.4f}) vs mean-training-cloud baseline {baseline:.4f}")
    assert chamfer < 0.85 * baseline

    for name in ["vae_epoch_1.pth", "vae_epoch_3.pth", "vae_best.pth", "vae_last.pth", "vae_training_report.json"]:
        assert (tmp_path / name).exists(), name
    ckpt = torch.load(tmp_path / "vae_epoch_3.pth", weights_only=True)
    assert SEED000_KEYS <= set(ckpt)
    assert set(ckpt["last_parts"]) == PARTS and ckpt["kl_weight"] == log[-1]["kl_weight"]
    assert ckpt["val_loss"] == log[-1]["val_loss"] and ckpt["loss_history"] == [e["train_loss"] for e in log]
    assert report["model"] == "Point Cloud VAE" and report["total_epochs"] == 3


def test_cyclic_kl_schedule_in_the_epoch_log(tiny_dataset, tmp_path):
    task = tiny_task(kl_schedule="cyclic", kl_cycle_epochs=2, kl_cycle_ratio=1.0, kl_weight_max=1e-3)
    train(task, tiny_dataset, tmp_path, epochs=3, batch_size=8)
    log = read_log(tmp_path)
    assert [e["kl_weight"] for e in log] == pytest.approx([5e-4, 1e-3, 5e-4])
    ckpt = torch.load(tmp_path / "vae_epoch_3.pth", weights_only=True)
    assert ckpt["kl_weight"] == pytest.approx(5e-4)


# -- exact resume ----------------------------------------------------------------------------
def _state(engine, out_dir):
    return {
        "params": engine.modules["model"].state_dict(),
        "optimizer": engine.optimizer.state_dict(),
        "log": [{k: v for k, v in e.items() if k != "time"} for e in read_log(out_dir)],
        "extras": engine.task.checkpoint_extras(),
        "generator": engine.generator.get_state(),
    }


def _assert_identical(a, b):
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            _assert_identical(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            _assert_identical(x, y)
    else:
        assert a == b


@pytest.fixture(scope="module")
def straight_run(tiny_dataset, tmp_path_factory):
    """Two uninterrupted tiny epochs on the shared 16-sample set."""
    out = tmp_path_factory.mktemp("vae_straight")
    engine, report = train(tiny_task(), tiny_dataset, out, epochs=2)
    assert report["completed"]
    return out, engine.steps_per_epoch, _state(engine, out)


def test_interrupted_and_resumed_run_is_bit_identical(tiny_dataset, tmp_path, straight_run):
    _, steps_per_epoch, straight = straight_run
    stop = steps_per_epoch + 1  # mid-epoch 2
    _, first = train(tiny_task(), tiny_dataset, tmp_path, epochs=2, max_steps=stop)
    assert not first["completed"] and first["total_steps"] == stop
    engine, report = train(tiny_task(), tiny_dataset, tmp_path, epochs=2, resume="auto")
    assert report["completed"] and [e["epoch"] for e in read_log(tmp_path)] == [1, 2]
    _assert_identical(_state(engine, tmp_path), straight)


# -- converter -------------------------------------------------------------------------------
def test_converter_round_trips_a_saved_checkpoint(straight_run):
    out, _, _ = straight_run
    ckpt = torch.load(out / "vae_best.pth", weights_only=True)
    model = PointCloudVAE(VAETask.presets()["tiny"])
    model.load_state_dict(ckpt["state_dict"])
    model.eval()
    points = torch.rand(2, 400, 3) * 2 - 1

    converter = VAEConverter("cpu", checkpoint=out / "vae_best.pth", num_points=512)
    assert converter.trained and converter.num_points == 512
    with torch.no_grad():
        expected, mu, _ = model(points, sample_latent=False)
    assert torch.equal(converter.encode(points), mu)
    assert torch.equal(converter.reconstruct(points), expected)
    assert converter.reconstruct(points[0].numpy()).shape == (512, 3)
    assert torch.allclose(converter.decode(mu[0]), expected[0], atol=1e-6)  # batch of 1: other BLAS path
    assert converter.sample(3, seed=4).shape == (3, 512, 3)
    assert torch.equal(converter.sample(3, seed=4), converter.sample(3, seed=4))


def test_converter_without_weights_warns_and_works(tmp_path):
    with pytest.warns(UntrainedModelWarning, match="no checkpoint"):
        converter = VAEConverter("cpu", num_points=256)
    assert not converter.trained
    assert converter.reconstruct(torch.rand(100, 3)).shape == (256, 3)
    assert torch.isfinite(converter.sample(2, seed=0)).all()
    with pytest.warns(UntrainedModelWarning, match="not found"):
        VAEConverter("cpu", checkpoint=tmp_path / "vae_best.pth", num_points=256)


def test_corrupt_checkpoint_is_a_checkpoint_error(tmp_path, straight_run):
    garbage = tmp_path / "vae_best.pth"
    garbage.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="vae_best.pth"):
        VAEConverter("cpu", checkpoint=garbage)
    out, _, _ = straight_run
    data = (out / "vae_last.pth").read_bytes()
    truncated = tmp_path / "vae_last.pth"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="vae_last.pth"):
        VAEConverter("cpu", checkpoint=truncated)
