"""The training engine as a user meets it: train the toy task, read the files, use the CLI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.data import DistributedSampler

from cad3d.cli import main
from cad3d.errors import Cad3dError
from cad3d.training.engine import Engine, EngineConfig, TrainingConfigError, make_grad_scaler
from cad3d.training.sampler import ResumableSampler
from toy_task import ToyDataset, ToyTask

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent


def fit(out_dir, **overrides):
    cfg = dict(epochs=2, batch_size=8, lr=1e-2, out_dir=str(out_dir), progress=False)
    cfg.update(overrides)
    engine = Engine(ToyTask(), ToyDataset(24, seed=1), ToyDataset(8, split=1, augment=False), EngineConfig(**cfg))
    return engine, engine.fit()


def test_fit_writes_log_report_and_checkpoints(tmp_path):
    engine, report = fit(tmp_path, warmup_steps=2)
    names = sorted(p.name for p in tmp_path.iterdir() if p.name != ".cad3d.lock")  # the run lock (hidden) stays
    assert names == [
        "checkpoints_manifest.json", "toy_best.pth", "toy_epoch_1.pth", "toy_epoch_2.pth",
        "toy_epoch_log.json", "toy_last.pth", "toy_report.json",
    ]
    log = json.loads((tmp_path / "toy_epoch_log.json").read_text())
    assert [e["epoch"] for e in log] == [1, 2] and [e["global_step"] for e in log] == [3, 6]
    for e in log:
        assert {"train_loss", "val_loss", "parts", "lr", "time"} <= e.keys()
        assert set(e["parts"]) == {"mse", "abs_mean"}
    assert log[0]["lr"] < 1e-2 and log[1]["lr"] == 0.0  # cosine to zero at the last step
    on_disk = json.loads((tmp_path / "toy_report.json").read_text())
    assert on_disk == json.loads(json.dumps(report))
    for key in ("model", "architecture", "total_epochs", "total_steps", "best_loss", "final_loss",
                "training_time_hours", "loss_history", "device", "hyperparameters"):
        assert key in report
    assert report["total_epochs"] == 2 and report["total_steps"] == 6 and report["device"] == "cpu"
    assert report["loss_history"] == [e["train_loss"] for e in log]
    assert report["best_loss"] == min(e["val_loss"] for e in log)
    assert report["hyperparameters"]["learning_rate"] == 1e-2 and report["hyperparameters"]["hidden"] == 16
    ckpt = torch.load(tmp_path / "toy_last.pth", weights_only=True)
    assert ckpt["loss_history"] == report["loss_history"] and ckpt["val_loss"] == log[-1]["val_loss"]
    meta = ckpt["cad3d_meta"]
    assert (meta["task"], meta["epoch"], meta["global_step"], meta["epoch_complete"]) == ("toy", 2, 6, True)
    assert meta["config"]["engine"]["lr"] == 1e-2 and meta["precision"] == "fp32"
    assert len(ckpt["cad3d_resume"]["ranks"]) == 1
    # the weights in the file are the engine's, without wrapper prefixes
    for k, v in engine.modules["model"].state_dict().items():
        assert torch.equal(ckpt["model_state"][k], v)


def test_bf16_autocast_on_cpu(tmp_path):
    _, report = fit(tmp_path, precision="bf16", epochs=1)
    assert report["completed"] and all(torch.isfinite(torch.tensor(report["loss_history"])))
    assert torch.load(tmp_path / "toy_last.pth", weights_only=True)["cad3d_meta"]["precision"] == "bf16"


def test_fp16_uses_a_grad_scaler_and_saves_its_state(tmp_path):
    assert make_grad_scaler(torch.device("cpu"), "fp16").is_enabled()
    assert not make_grad_scaler(torch.device("cpu"), "bf16").is_enabled()
    engine, report = fit(tmp_path, precision="fp16", epochs=1)
    assert report["completed"] and engine.scaler.is_enabled()
    scaler_state = torch.load(tmp_path / "toy_last.pth", weights_only=True)["cad3d_resume"]["scaler"]
    assert scaler_state["scale"] == engine.scaler.get_scale()


@pytest.mark.parametrize(
    "field,value",
    [("epochs", 0), ("batch_size", 0), ("precision", "fp8"), ("device", "tpu"), ("scheduler", "step"), ("max_steps", 0)],
)
def test_bad_config_is_a_clear_error(field, value):
    with pytest.raises(TrainingConfigError, match=field):
        EngineConfig(**{field: value})
    assert issubclass(TrainingConfigError, Cad3dError)


def test_tensorboard_scalars_or_a_clear_error(tmp_path):
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        with pytest.raises(TrainingConfigError, match="tensorboard"):
            fit(tmp_path, tensorboard=True, epochs=1)
    else:
        fit(tmp_path, tensorboard=True, epochs=1)
        assert any((tmp_path / "tensorboard").iterdir())


@pytest.mark.parametrize("length,world_size", [(10, 1), (10, 3), (7, 2), (2, 4)])
def test_sampler_matches_distributed_sampler_and_skips_consumed(length, world_size):
    data = list(range(length))
    for rank in range(world_size):
        ours = ResumableSampler(length, seed=5, rank=rank, world_size=world_size)
        ref = DistributedSampler(data, num_replicas=world_size, rank=rank, shuffle=True, seed=5)
        for epoch in (1, 2):
            ours.set_epoch(epoch)
            ref.set_epoch(epoch)
            assert list(ours) == list(ref) and len(ours) == len(ref)
        full = list(ours)
        ours.set_start(1)
        assert list(ours) == full[1:] and len(ours) == len(full) - 1
        ours.set_epoch(3)
        assert len(ours) == len(full)  # a new epoch starts at its beginning


def toy_data(tmp_path, num_train=20, num_val=4):
    data = tmp_path / "data"
    data.mkdir()
    (data / "toy.json").write_text(json.dumps({"num_train": num_train, "num_val": num_val}))
    return data


def test_cli_trains_a_registered_task_with_its_preset(tmp_path, capsys):
    data = toy_data(tmp_path)
    out = tmp_path / "out"
    rc = main(["train", "toy", "--data", str(data), "--out", str(out), "--preset", "tiny", "--epochs", "1", "--no-progress", "--keep-last", "1"])
    assert rc == 0
    assert "toy: done after 1 epochs" in capsys.readouterr().out
    meta = torch.load(out / "toy_last.pth", weights_only=True)["cad3d_meta"]
    assert meta["config"]["task"]["hidden"] == 8  # the tiny preset
    assert meta["config"]["engine"]["batch_size"] == 4 and meta["config"]["engine"]["keep_last"] == 1


def test_cli_errors(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        main(["train", "no_such_model", "--data", str(tmp_path)])
    assert info.value.code == 2
    assert "unknown model 'no_such_model'; known:" in capsys.readouterr().err
    assert main(["train", "toy", "--data", str(tmp_path / "missing")]) == 1
    assert "data folder not found" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:  # a bad flag value is a usage error (SPEC §8)
        main(["train", "toy", "--data", str(tmp_path), "--epochs", "0"])
    assert info.value.code == 2
    assert "argument --epochs: must be a positive integer" in capsys.readouterr().err


@pytest.mark.slow
def test_sigterm_in_a_cli_subprocess_saves_last_and_resume_continues(tmp_path, capsys):
    data = toy_data(tmp_path)
    args = ["train", "toy", "--data", str(data), "--preset", "tiny", "--epochs", "3", "--no-progress"]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(TESTS), str(REPO)]), CAD3D_TASK_MODULES="toy_task", TOY_SIGNAL_AT_STEP="7")
    interrupted = tmp_path / "interrupted"
    proc = subprocess.run([sys.executable, "-m", "cad3d", *args, "--out", str(interrupted)], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, proc.stderr
    assert "interrupted by SIGTERM" in proc.stderr and "toy_last.pth" in proc.stderr and "--resume auto" in proc.stderr
    meta = torch.load(interrupted / "toy_last.pth", weights_only=True)["cad3d_meta"]
    assert (meta["epoch"], meta["global_step"], meta["epoch_complete"]) == (2, 8, False)

    assert main([*args, "--out", str(interrupted), "--resume", "auto"]) == 0
    straight = tmp_path / "straight"
    assert main([*args, "--out", str(straight)]) == 0
    a = torch.load(interrupted / "toy_last.pth", weights_only=True)
    b = torch.load(straight / "toy_last.pth", weights_only=True)
    for k in b["model_state"]:
        assert torch.equal(a["model_state"][k], b["model_state"][k])
    strip = lambda p: [{k: v for k, v in e.items() if k != "time"} for e in json.loads(p.read_text())]  # noqa: E731
    assert strip(interrupted / "toy_epoch_log.json") == strip(straight / "toy_epoch_log.json")


# -- a fresh run never mixes with an earlier one in its folder (overwrite) ---------------------
def snapshot(folder: Path) -> dict:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def test_fresh_run_into_a_used_folder_is_an_error_and_deletes_nothing(tmp_path):
    fit(tmp_path, epochs=2)
    before = snapshot(tmp_path)
    with pytest.raises(TrainingConfigError) as info:
        fit(tmp_path, epochs=1)
    msg = str(info.value)
    assert str(tmp_path) in msg and "toy_" in msg and ".pth" in msg
    assert "--resume auto" in msg and "--out" in msg and "--overwrite" in msg
    assert snapshot(tmp_path) == before  # nothing deleted, nothing written


def test_overwrite_replaces_the_earlier_run(tmp_path, capsys):
    fit(tmp_path, epochs=3, lr=5e-2)  # a good earlier run: a best the new run will not beat
    old_best = json.loads((tmp_path / "checkpoints_manifest.json").read_text())["best"]["value"]
    (tmp_path / "notes.txt").write_text("not a checkpoint: kept")
    _, report = fit(tmp_path, epochs=2, lr=1e-6, overwrite=True)
    assert report["completed"]
    names = {p.name for p in tmp_path.iterdir()}
    assert "toy_epoch_3.pth" not in names and "notes.txt" in names
    assert {"toy_epoch_1.pth", "toy_epoch_2.pth", "toy_best.pth", "toy_last.pth"} <= names
    best = torch.load(tmp_path / "toy_best.pth", weights_only=True)["cad3d_meta"]
    assert best["config"]["engine"]["lr"] == 1e-6  # written by the new run
    assert best["metrics"]["val_loss"] > old_best  # although worse than the deleted best
    log = json.loads((tmp_path / "toy_epoch_log.json").read_text())
    assert [e["epoch"] for e in log] == [1, 2]
    assert json.loads((tmp_path / "toy_report.json").read_text())["total_epochs"] == 2
    capsys.readouterr()
    assert main(["ckpt", "verify", str(tmp_path), "--no-forward"]) == 0, capsys.readouterr().out
    # overwrite is for fresh runs only
    with pytest.raises(TrainingConfigError, match="overwrite"):
        EngineConfig(overwrite=True, resume="auto")


def test_cli_fresh_run_into_a_used_folder(tmp_path, capsys):
    data = toy_data(tmp_path)
    out = tmp_path / "out"
    args = ["train", "toy", "--data", str(data), "--out", str(out), "--preset", "tiny", "--epochs", "1", "--no-progress"]
    assert main(args) == 0
    before = snapshot(out)
    capsys.readouterr()
    assert main(args) == 1
    err = capsys.readouterr().err
    assert err.startswith("cad3d: error: ") and str(out) in err and "--overwrite" in err and "--resume auto" in err
    assert snapshot(out) == before
    assert main([*args, "--resume", "auto"]) == 0  # continuing is fine (nothing left to train)
    assert main([*args, "--overwrite"]) == 0
    assert "toy: done after 1 epochs" in capsys.readouterr().out
    with pytest.raises(SystemExit) as info:
        main([*args, "--overwrite", "--resume", "auto"])
    assert info.value.code == 2 and "--overwrite" in capsys.readouterr().err
