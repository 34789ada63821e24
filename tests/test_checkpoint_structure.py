"""Seed 000's layouts and keys, produced by the engine for toy tasks with each model's schema.

The toys (tests/toy_task.py) use the VAE, diffusion and ViT file names and checkpoint keys; the
real models' tasks replace them and must keep passing the same checks.
"""

from __future__ import annotations

import json

import torch

from cad3d.training.engine import Engine, EngineConfig
from toy_task import ToyDataset, ToyDiffusionTask, ToyVAETask, ToyViTTask

ENGINE_KEYS = {"cad3d_meta", "cad3d_resume"}


def train(task, out_dir, epochs, *, val=True):
    cfg = EngineConfig(epochs=epochs, batch_size=8, lr=1e-2, out_dir=str(out_dir), progress=False)
    val_set = ToyDataset(8, split=1, augment=False) if val else None
    return Engine(task, ToyDataset(16, seed=2), val_set, cfg).fit()


def load(path):
    return torch.load(path, map_location="cpu", weights_only=True)  # what users' tools do


def test_vae_layout_and_keys(tmp_path):
    train(ToyVAETask(), tmp_path, epochs=2)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != ".cad3d.lock") == [
        "checkpoints_manifest.json", "vae_best.pth", "vae_epoch_1.pth", "vae_epoch_2.pth",
        "vae_epoch_log.json", "vae_last.pth", "vae_training_report.json",
    ]
    for name in ("vae_epoch_1.pth", "vae_epoch_2.pth", "vae_best.pth", "vae_last.pth"):
        ckpt = load(tmp_path / name)
        assert set(ckpt) - ENGINE_KEYS == {"epoch", "global_step", "state_dict", "opt", "scheduler", "val_loss",
                                           "loss_history", "last_parts", "kl_weight"}
        assert isinstance(ckpt["epoch"], int) and isinstance(ckpt["val_loss"], float)
        assert all(isinstance(v, torch.Tensor) for v in ckpt["state_dict"].values())
        assert {"state", "param_groups"} <= set(ckpt["opt"]) and "last_epoch" in ckpt["scheduler"]
        assert set(ckpt["last_parts"]) == {"chamfer", "kl", "voxel", "smooth"}
    assert load(tmp_path / "vae_epoch_2.pth")["epoch"] == 2
    log = json.loads((tmp_path / "vae_epoch_log.json").read_text())
    assert [(e["epoch"], e["kl_weight"]) for e in log] == [(1, 1e-4), (2, 2e-4)]
    assert all({"train_loss", "val_loss"} <= e.keys() for e in log)
    best = load(tmp_path / "vae_best.pth")
    assert best["val_loss"] == min(e["val_loss"] for e in log)
    report = json.loads((tmp_path / "vae_training_report.json").read_text())
    assert report["total_epochs"] == 2 and len(report["loss_history"]) == 2


def test_diffusion_layout_keys_and_report(tmp_path):
    train(ToyDiffusionTask(), tmp_path, epochs=4, val=False)  # epoch files every 2, best by train loss
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != ".cad3d.lock") == [
        "checkpoints_manifest.json", "diffusion_best.pth", "diffusion_epoch_2.pth", "diffusion_epoch_4.pth",
        "diffusion_last.pth", "training_report.json",
    ]
    ckpt = load(tmp_path / "diffusion_epoch_4.pth")
    assert set(ckpt) - ENGINE_KEYS == {"epoch", "global_step", "image_encoder_state", "unet_state", "optimizer_state",
                                       "scheduler_state", "loss", "best_loss", "loss_history"}
    assert (ckpt["epoch"], ckpt["global_step"]) == (4, 8) and len(ckpt["loss_history"]) == 4
    assert ckpt["loss"] == ckpt["loss_history"][-1] and ckpt["best_loss"] == min(ckpt["loss_history"])
    report = json.loads((tmp_path / "training_report.json").read_text())
    assert {"model", "architecture", "total_epochs", "total_steps", "best_loss", "final_loss", "training_time_hours",
            "loss_history", "replay_buffer_size", "device", "hyperparameters"} <= set(report)
    assert (report["model"], report["architecture"]) == ("3D Diffusion Model", "DDPM with U-Net + PointNet++")
    assert (report["total_epochs"], report["total_steps"]) == (4, 8)
    assert report["best_loss"] == min(report["loss_history"]) and report["final_loss"] == report["loss_history"][-1]
    assert report["hyperparameters"]["learning_rate"] == 1e-2


def test_vit_layout_and_keys(tmp_path):
    train(ToyViTTask(), tmp_path, epochs=5)  # epoch files every 5, final_model.pth, no best file
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != ".cad3d.lock") == [
        "checkpoint_epoch_5.pth", "checkpoint_last.pth", "checkpoints_manifest.json", "final_model.pth",
        "training_history.json",
    ]
    for name in ("checkpoint_epoch_5.pth", "final_model.pth"):
        ckpt = load(tmp_path / name)
        assert set(ckpt) - ENGINE_KEYS == {"epoch", "global_step", "model_state_dict", "optimizer_state_dict",
                                           "best_val_loss", "model_config", "train_config", "scheduler_state_dict"}
        assert ckpt["epoch"] == 5 and ckpt["model_config"]["hidden"] == 16 and ckpt["train_config"]["epochs"] == 5
    history = json.loads((tmp_path / "training_history.json").read_text())
    assert [e["epoch"] for e in history] == [1, 2, 3, 4, 5]
    assert load(tmp_path / "final_model.pth")["best_val_loss"] == min(e["val_loss"] for e in history)
