"""Depth network, its training task, ONNX export/runner and depth lifting."""

from __future__ import annotations

import inspect
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from cad3d.data.dataset import CAD2D3DDataset, load_drawing, load_points
from cad3d.conversion.depth import DepthEstimator, lift_drawing
from cad3d.conversion.drawing import silhouette_mask
from cad3d.models.depth_contract import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    MIDAS_MODEL_NAMES,
    OUR_MODEL_NAME,
    DepthModelError,
    find_depth_model,
)
from cad3d.training.depth_export import export_depth_checkpoint, export_depth_onnx
from cad3d.errors import ConversionError
from cad3d.geometry.camera import OrthoCamera
from cad3d.geometry.ops import chamfer_distance
from cad3d.geometry.transforms import depth_to_points
from cad3d.models.depth_net import DepthNet, DepthNetConfig
from cad3d.training.tasks.depth import DepthTask, DepthTaskConfig, depth_loss, ssi_loss

TINY_NET = DepthNetConfig(base_channels=4, max_channels=16, levels=2, image_size=64)


def test_depth_net_shapes_and_ssi_loss_invariance():
    net = DepthNet(TINY_NET)
    out = net(torch.rand(2, 3, 64, 64))
    assert out.shape == (2, 64, 64)
    assert net(torch.rand(1, 3, 50, 70)).shape == (1, 50, 70)  # any size
    g = torch.Generator().manual_seed(0)
    depth = torch.zeros(2, 32, 32)
    depth[:, 8:24, 8:24] = 2.5 + torch.rand(2, 16, 16, generator=g)
    mask = depth > 0
    inv = torch.where(mask, 1.0 / depth.clamp_min(1e-6), torch.zeros_like(depth))
    assert float(ssi_loss(3.0 * inv + 5.0, inv, mask)) < 1e-4  # scale and shift invariant
    assert float(ssi_loss(torch.full_like(inv, 0.3), inv, mask)) == pytest.approx(1.0, abs=1e-4)  # constant
    assert float(ssi_loss(-inv, inv, mask)) > 1.0  # larger must mean closer
    loss, parts = depth_loss(torch.where(mask, 1.0 + inv, -0.5), depth, 1.0)
    assert float(parts["fg"]) == 0.0 and float(loss) < 1e-4


def test_task_registered_and_schema():
    from cad3d.training.tasks.base import get_task_class

    assert get_task_class("depth") is DepthTask
    s = DepthTask.schema
    assert (s.epoch_name(3), s.best_file, s.last_file) == ("depth_epoch_3.pth", "depth_best.pth", "depth_last.pth")
    task = DepthTask.from_config_dict(json.loads(json.dumps(DepthTask(DepthTaskConfig(model=TINY_NET)).config_dict())))
    assert task.config.model == TINY_NET
    out = task.forward_check(task.build_modules(), task.example_batch(2))
    assert out.shape == (2, 64, 64) and torch.isfinite(out).all()


def test_export_matches_pytorch_and_runner_reads_it(tmp_path):
    model = DepthNet(TINY_NET).eval()
    result = export_depth_onnx(model, tmp_path / "models" / OUR_MODEL_NAME)
    assert result.path.is_file() and result.max_abs_diff <= result.tolerance
    side = json.loads(result.sidecar.read_text())
    assert side["preprocessing"] == "unit" and side["input"]["shape"] == ["batch", 3, 256, 256]

    est = DepthEstimator(result.path)
    assert (est.kind, est.preprocessing, est.input_size) == ("cad3d", "unit", (256, 256))
    drawing = np.ones((256, 256), dtype=np.float32)
    drawing[64:192, 64] = drawing[64:192, 191] = drawing[64, 64:192] = drawing[191, 64:192] = 0.0
    got = est.predict(drawing)  # (256, 256)
    with torch.no_grad():
        x = torch.from_numpy(drawing)[None, None].expand(1, 3, -1, -1)
        x = torch.nn.functional.interpolate(x, size=(64, 64), mode="bilinear", align_corners=False)
        ref = torch.nn.functional.interpolate(model(x)[:, None], size=(256, 256), mode="bilinear", align_corners=False)[0, 0]
    assert got.shape == (256, 256)
    np.testing.assert_allclose(got, ref.numpy(), atol=1e-3)
    batch = est.session.run(None, {est.input_name: np.repeat(est.preprocess(drawing), 3, axis=0)})[0]
    assert batch.shape == (3, 256, 256)  # dynamic batch axis
    assert est.predict(np.ones((100, 80), dtype=np.float32)).shape == (100, 80)  # back to the drawing's size


class _UserMidas(nn.Module):
    """A stand-in for a user's MiDaS file: brighter (after ImageNet normalization) = closer."""

    def forward(self, x):  # (1, 3, 256, 256) -> (1, 256, 256)
        return 2.0 * x.mean(dim=1) + 1.0


def test_user_midas_contract_file_is_accepted(tmp_path):
    path = tmp_path / MIDAS_MODEL_NAMES[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript exporter, deprecated on new torch
        torch.onnx.export(
            _UserMidas(), (torch.rand(1, 3, 256, 256),), str(path), input_names=["input.1"], output_names=["output"],
            opset_version=17, **({"dynamo": False} if "dynamo" in inspect.signature(torch.onnx.export).parameters else {}),
        )
    assert find_depth_model(tmp_path) == path
    est = DepthEstimator(path)
    assert (est.kind, est.input_name, est.output_name, est.preprocessing) == ("midas", "input.1", "output", "imagenet")
    gray = np.linspace(0, 1, 256 * 256, dtype=np.float32).reshape(256, 256)
    expected = 2.0 * ((gray[None] - np.array(IMAGENET_MEAN)[:, None, None]) / np.array(IMAGENET_STD)[:, None, None]).mean(0) + 1.0
    np.testing.assert_allclose(est.predict(gray), expected, atol=1e-4)
    unit = DepthEstimator(path, preprocessing="unit")
    np.testing.assert_allclose(unit.predict(gray), 2.0 * gray + 1.0, atol=1e-4)


def test_find_depth_model_order(tmp_path):
    assert find_depth_model(tmp_path) is None
    for name in reversed(MIDAS_MODEL_NAMES):
        (tmp_path / name).write_bytes(b"x")
        assert find_depth_model(tmp_path) == tmp_path / name
    (tmp_path / OUR_MODEL_NAME).write_bytes(b"x")
    assert find_depth_model(tmp_path) == tmp_path / OUR_MODEL_NAME  # ours first


def test_bad_onnx_file_names_the_file(tmp_path):
    bad = tmp_path / "midas_v2_small_256.onnx"
    bad.write_bytes(b"this is not a protobuf")
    with pytest.raises(DepthModelError, match="midas_v2_small_256.onnx"):
        DepthEstimator(bad)
    with pytest.raises(DepthModelError, match="not found"):
        DepthEstimator(tmp_path / "missing.onnx")
    assert issubclass(DepthModelError, ConversionError)


def test_lifting_ground_truth_inverse_depth_lands_on_the_part(tiny_dataset):
    ds = CAD2D3DDataset(tiny_dataset, image_size=128, augment=False)
    lifted, flat, oracle = [], [], []
    for i in range(0, len(ds), 2):
        rec = ds.records[i]
        drawing, depth, cams = load_drawing(rec.image), ds.depth(i), ds.meta(i)["cameras"]
        mask_iou = (silhouette_mask(drawing) & (depth > 0)).sum() / (silhouette_mask(drawing) | (depth > 0)).sum()
        assert mask_iou > 0.85, rec.stem
        inverse = np.where(depth > 0, 1.0 / np.maximum(depth, 1e-6), 0.0)
        gt = torch.from_numpy(load_points(rec.points))
        relative = 7.0 * inverse - 0.3  # MiDaS-like: any positive scale and shift
        pts = lift_drawing(drawing, relative, cams)
        assert pts.dtype == np.float32 and pts.shape[1] == 3
        lifted.append(float(chamfer_distance(torch.from_numpy(pts), gt)))
        flat.append(float(chamfer_distance(torch.from_numpy(lift_drawing(drawing, np.ones_like(depth), cams)), gt)))
        oracle.append(float(chamfer_distance(torch.from_numpy(depth_to_points(depth, OrthoCamera.from_dict(cams[0]))), gt)))
    # Visible-surface lifting can't reach the back of the part (oracle > 0), but the fitted depth
    # must beat a flat cut-out clearly and sit near the oracle.
    assert np.mean(lifted) < 0.75 * np.mean(flat), (lifted, flat)
    assert np.mean(lifted) < 3.0 * np.mean(oracle), (lifted, oracle)
    with pytest.raises(ConversionError):
        lift_drawing(np.ones((64, 64), dtype=np.float32), np.zeros((64, 64)))  # blank paper


@pytest.mark.slow
def test_depth_task_trains_beats_constant_and_exports(tiny_dataset, tmp_path):
    from cad3d.training.engine import Engine, EngineConfig

    config = DepthTask.presets()["tiny"]
    config.publish_onnx = str(tmp_path / "models" / OUR_MODEL_NAME)
    task = DepthTask(config)
    train, val = task.build_datasets(tiny_dataset, seed=0)
    engine_cfg = EngineConfig(**{**DepthTask.engine_presets()["tiny"], "out_dir": str(tmp_path / "depth"), "progress": False})
    report = Engine(task, train, val, engine_cfg).fit()
    out = tmp_path / "depth"
    for name in ("depth_epoch_1.pth", "depth_best.pth", "depth_last.pth", "depth_epoch_log.json"):
        assert (out / name).is_file(), name
    log = json.loads((out / "depth_epoch_log.json").read_text())

    # Baseline: the best constant prediction (ssi 1, fg 0.25 at 0.5) on the same validation set.
    class Constant(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.c = c

        def forward(self, x):
            return torch.full(x.shape[:1] + x.shape[2:], self.c)

        def forward_all(self, x):  # constant layers too: depth at the part's centre, presence c
            k = config.model.layers
            shape = (x.shape[0], k) + x.shape[2:]
            return self.forward(x), torch.zeros(shape), torch.full(shape, self.c - 0.5)

    loader = torch.utils.data.DataLoader(val, batch_size=len(val))
    baseline = min(task.validation_step({"model": Constant(c)}, next(iter(loader)), None)["val_loss"] for c in (0.0, 0.5, 1.0))
    assert log[-1]["val_loss"] < 0.8 * baseline, (log[-1], baseline)
    assert log[-1]["val_ssi"] < 1.0  # a constant scores exactly 1 (the val split has 2 parts)
    # The relative depth itself is learned: on the (unaugmented) training parts SSI is well below 1.
    fit_set = DepthTask(config).build_datasets(tiny_dataset, seed=0)[0]
    fit_set.augment = False
    task._model.eval()
    with torch.no_grad():
        fit = task.validation_step({"model": task._model}, next(iter(torch.utils.data.DataLoader(fit_set, batch_size=len(fit_set)))), None)
    assert fit["val_ssi"] < 0.85, fit

    # The export at the end of training, and again from the best checkpoint.
    assert report["onnx"]["path"] == str(out / OUR_MODEL_NAME) and report["onnx"]["max_abs_diff"] < 1e-3
    assert report["onnx"]["published"] == config.publish_onnx  # the run's export, copied where converters look
    assert (out / OUR_MODEL_NAME).read_bytes() == Path(config.publish_onnx).read_bytes()
    est = DepthEstimator(config.publish_onnx)
    drawing = load_drawing(val.records[0].image)
    inv = est.predict(drawing)
    assert inv.shape == drawing.shape
    fg = inv[silhouette_mask(drawing)].mean()
    bg = inv[~silhouette_mask(drawing)].mean()
    assert fg > bg  # the part is closer than the paper
    again = export_depth_checkpoint(out / "depth_best.pth", tmp_path / "from_best.onnx")
    assert again.max_abs_diff <= again.tolerance


@pytest.mark.slow
def test_cli_depth_exports_under_out_publishes_on_request_and_a_failed_export_exits_1(tiny_dataset, tmp_path, capsys, monkeypatch):
    from cad3d.cli import main
    from cad3d.training.checkpoint_io import load_checkpoint

    monkeypatch.chdir(tmp_path)
    args = ["train", "depth", "--data", str(tiny_dataset), "--preset", "tiny", "--epochs", "1", "--no-progress"]
    # Stopped by --max-steps before its last epoch: resumable checkpoints, no export.
    assert main([*args, "--out", "stopped", "--max-steps", "1"]) == 0
    assert "ONNX: not exported: training stopped at max_steps" in capsys.readouterr().out
    assert (tmp_path / "stopped" / "depth_last.pth").is_file() and not list(tmp_path.rglob("*.onnx"))
    # Complete: the export goes under --out, and (asked) is published to models/.
    assert main([*args, "--out", "run", "--publish-onnx"]) == 0
    assert f"ONNX: run/{OUR_MODEL_NAME}; published models/{OUR_MODEL_NAME}" in capsys.readouterr().out
    assert (tmp_path / "models" / OUR_MODEL_NAME).read_bytes() == (tmp_path / "run" / OUR_MODEL_NAME).read_bytes()
    assert DepthEstimator(tmp_path / "models" / OUR_MODEL_NAME).predict(np.ones((64, 64), np.float32)).shape == (64, 64)

    def broken_exporter(*args, **kwargs):
        raise RuntimeError("exporter crashed")

    monkeypatch.setattr("cad3d.training.depth_export._torch_onnx_export", broken_exporter)
    assert main([*args, "--out", "broken"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "ONNX export to broken/cad3d_depth_256.onnx failed (exporter crashed)" in err[0]
    assert "depth_best.pth" in err[0]
    assert load_checkpoint(tmp_path / "broken" / "depth_best.pth")["cad3d_meta"]["epoch"] == 1  # saved first
    report = json.loads((tmp_path / "broken" / "depth_training_report.json").read_text())
    assert report["onnx"]["error"] == "exporter crashed" and not list((tmp_path / "broken").glob("*.onnx"))


def test_publish_onnx_is_for_depth_and_checked_before_training(tmp_path, capsys):
    from cad3d.cli import main

    with pytest.raises(SystemExit) as info:
        main(["train", "vae", "--data", str(tmp_path), "--publish-onnx"])
    assert info.value.code == 2 and "depth model only" in capsys.readouterr().err
    (tmp_path / "a_file").write_text("x")
    assert main(["train", "depth", "--data", str(tmp_path), "--publish-onnx", str(tmp_path / "a_file" / "m.onnx")]) == 1
    assert "cannot write there" in capsys.readouterr().err


def test_resuming_a_finished_run_keeps_the_exports_score(tiny_dataset, tmp_path):
    """`--resume auto` on a run that has nothing left to train exports again; the sidecar keeps the
    val_chamfer of the last validation (restored with the epoch log), so `auto` still ranks the path."""
    from cad3d.training.engine import train_model

    common = dict(preset="tiny", out_dir=tmp_path / "run", epochs=1, seed=0, device="cpu", progress=False)
    train_model("depth", tiny_dataset, **common)
    sidecar = tmp_path / "run" / "cad3d_depth_256.json"
    first = json.loads(sidecar.read_text())["val_chamfer"]
    train_model("depth", tiny_dataset, resume="auto", **common)
    assert json.loads(sidecar.read_text())["val_chamfer"] == pytest.approx(first)
