"""EMA of the weights in the training engine: the update rule, validation on the EMA weights,
checkpoints (``ema_state``), bit-exact resume, and `load_trained` choosing EMA or raw weights."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from cad3d.errors import CheckpointError
from cad3d.training.ema import ModelEMA
from cad3d.training.engine import Engine, EngineConfig
from cad3d.training.loader import load_trained
from test_resume import assert_identical
from toy_task import ToyConfig, ToyDataset, ToyTask

DECAY = 0.9


def test_update_rule_with_warm_up_on_a_toy_model():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    ema = ModelEMA({"m": model}, decay=DECAY)
    expected = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    for n in range(30):
        model.train()
        loss = (model(torch.randn(8, 3)) - 1).square().mean()  # also moves the BatchNorm statistics
        opt.zero_grad()
        loss.backward()
        opt.step()
        d = min(DECAY, (1 + n) / (10 + n))
        assert ema.current_decay() == pytest.approx(d)
        ema.update({"m": model})
        for k, v in model.state_dict().items():
            expected[k] = d * expected[k] + (1 - d) * v if v.is_floating_point() else v.clone()
    shadow = ema.state_dicts()["m"]
    for k, v in expected.items():
        assert torch.allclose(shadow[k], v, atol=1e-6), k
    assert int(shadow["1.num_batches_tracked"]) == 30
    raw = model.state_dict()
    assert not torch.allclose(shadow["0.weight"], raw["0.weight"])  # an average, not a copy
    # applied(): the EMA weights inside the block, exactly the raw ones after it
    before = {k: v.clone() for k, v in raw.items()}
    with ema.applied({"m": model}):
        assert torch.equal(model.state_dict()["0.weight"], shadow["0.weight"])
    assert_identical(dict(model.state_dict()), before)


def train(out_dir, **kw):
    cfg = EngineConfig(epochs=3, batch_size=8, lr=1e-2, out_dir=str(out_dir), progress=False, warmup_steps=2,
                       ema_decay=DECAY, **kw)
    engine = Engine(ToyTask(ToyConfig()), ToyDataset(36, seed=3), ToyDataset(8, split=1, augment=False), cfg)
    engine.fit()
    return engine


def test_checkpoints_carry_ema_and_validation_scores_it(tmp_path):
    engine = train(tmp_path)
    payload = torch.load(tmp_path / "toy_last.pth", weights_only=True)
    ema, raw = payload["ema_state"]["model"], payload["model_state"]
    assert set(ema) == set(raw) and not torch.equal(ema["0.weight"], raw["0.weight"])
    assert payload["cad3d_resume"]["ema"] == {"decay": DECAY, "num_updates": 15}
    # The logged val_loss of the last epoch is that of the EMA weights.
    task, model = ToyTask(ToyConfig()), engine.modules["model"]
    model.load_state_dict(ema)
    model.eval()
    x, y = ToyDataset(8, split=1, augment=False)[:]
    log = json.loads((tmp_path / "toy_epoch_log.json").read_text())
    with torch.no_grad():
        assert log[-1]["val_loss"] == pytest.approx(float(task._loss({"model": model}, x, y)), rel=1e-6)


def test_ema_is_restored_exactly_on_resume(tmp_path):
    straight = train(tmp_path / "a")
    train(tmp_path / "b", max_steps=7)  # mid-epoch 2
    resumed = train(tmp_path / "b", resume="auto")
    assert resumed.ema.num_updates == straight.ema.num_updates == 15
    assert_identical(resumed.ema.state_dicts(), straight.ema.state_dicts())
    assert_identical(dict(resumed.modules["model"].state_dict()), dict(straight.modules["model"].state_dict()))


def test_load_trained_picks_ema_and_old_files_load(tmp_path):
    train(tmp_path)
    path = tmp_path / "toy_last.pth"
    payload = torch.load(path, weights_only=True)
    trained = load_trained(path)
    assert trained.weights == "ema"
    assert_identical(dict(trained.modules["model"].state_dict()), payload["ema_state"]["model"])
    raw = load_trained(path, weights="raw")
    assert raw.weights == "raw"
    assert_identical(dict(raw.modules["model"].state_dict()), payload["model_state"])
    # A file written before EMA existed (no ema_state) loads its raw weights.
    old = tmp_path / "old" / "toy_last.pth"
    old.parent.mkdir()
    torch.save({k: v for k, v in payload.items() if k != "ema_state"}, old)
    trained_old = load_trained(old)
    assert trained_old.weights == "raw"
    assert_identical(dict(trained_old.modules["model"].state_dict()), payload["model_state"])
    with pytest.raises(CheckpointError, match="no EMA weights"):
        load_trained(old, weights="ema")


def test_diffusion_presets_keep_an_ema():
    from cad3d.training.tasks.base import get_task_class

    presets = get_task_class("diffusion").engine_presets()
    assert presets["tiny"]["ema_decay"] == 0.99 and presets["full"]["ema_decay"] == 0.999
    assert "ema_decay" not in get_task_class("vae").engine_presets().get("full", {})
    with pytest.raises(ValueError, match="ema_decay"):
        EngineConfig(ema_decay=1.0)
