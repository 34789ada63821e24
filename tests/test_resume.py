"""Exact resume on CPU: N epochs straight == k + (N - k) with an interruption and resume="auto".

Interruptions at an epoch boundary and mid-epoch (max_steps, SIGTERM), with 0 and 2 DataLoader
workers. Everything must be bit-identical: parameters, optimizer and scheduler state, the epoch
log (minus wall time) and the RNG streams that continue after the end.
"""

from __future__ import annotations

import json
import logging
import signal

import pytest
import torch

from cad3d.training.engine import Engine, EngineConfig, TrainingConfigError, TrainingInterrupted
from toy_task import ToyConfig, ToyDataset, ToyTask

EPOCHS = 3
STEPS_PER_EPOCH = 5  # 36 samples, batch 8: the last batch of each epoch is partial


def train(out_dir, *, workers=0, max_steps=None, resume=None, config=None, epochs=EPOCHS):
    cfg = EngineConfig(
        epochs=epochs, batch_size=8, lr=1e-2, out_dir=str(out_dir), num_workers=workers,
        max_steps=max_steps, resume=resume, progress=False, warmup_steps=2,
    )
    engine = Engine(ToyTask(config), ToyDataset(36, seed=3), ToyDataset(8, split=1, augment=False), cfg)
    report = engine.fit()
    return engine, report


def state_of(engine, out_dir):
    log = json.loads((out_dir / "toy_epoch_log.json").read_text())
    return {
        "params": {k: v.clone() for k, v in engine.modules["model"].state_dict().items()},
        "optimizer": engine.optimizer.state_dict(),
        "scheduler": engine.scheduler.state_dict(),
        "log": [{k: v for k, v in e.items() if k != "time"} for e in log],
        "after": (torch.rand(3), engine.generator.get_state()),  # RNG streams continue identically
    }


def assert_identical(a, b):
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            assert_identical(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert_identical(x, y)
    else:
        assert a == b


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    out = tmp_path_factory.mktemp("straight")
    engine, report = train(out)
    assert report["completed"] and report["total_steps"] == EPOCHS * STEPS_PER_EPOCH
    return state_of(engine, out)


@pytest.mark.parametrize(
    "workers,stop_at",
    [(0, STEPS_PER_EPOCH), (0, 7), pytest.param(2, 7, marks=pytest.mark.slow), pytest.param(2, 2 * STEPS_PER_EPOCH, marks=pytest.mark.slow)],
    ids=["boundary-w0", "mid-w0", "mid-w2", "boundary-w2"],
)
def test_interrupted_and_resumed_run_is_bit_identical(tmp_path, straight, workers, stop_at):
    _, first = train(tmp_path, workers=workers, max_steps=stop_at)
    assert not first["completed"] and first["total_steps"] == stop_at
    meta = torch.load(tmp_path / "toy_last.pth", weights_only=True)["cad3d_meta"]
    assert meta["epoch_complete"] == (stop_at % STEPS_PER_EPOCH == 0)
    engine, report = train(tmp_path, workers=workers, resume="auto")
    assert report["completed"] and report["total_steps"] == EPOCHS * STEPS_PER_EPOCH
    assert [e["epoch"] for e in json.loads((tmp_path / "toy_epoch_log.json").read_text())] == [1, 2, 3]
    assert_identical(state_of(engine, tmp_path), straight)


def test_sigterm_mid_epoch_saves_last_and_resumes_exactly(tmp_path, straight):
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(TrainingInterrupted) as info:
        train(tmp_path, config=ToyConfig(signal_at_step=8))
    exc = info.value
    assert exc.signal_number == signal.SIGTERM and exc.global_step == 9
    assert exc.path == tmp_path / "toy_last.pth" and "SIGTERM" in str(exc)
    assert signal.getsignal(signal.SIGTERM) is before  # handlers restored
    meta = torch.load(exc.path, weights_only=True)["cad3d_meta"]
    assert (meta["epoch"], meta["global_step"], meta["epoch_complete"]) == (2, 9, False)
    # the signal step is in the past now: the same config trains to the end
    engine, report = train(tmp_path, resume="auto", config=ToyConfig(signal_at_step=8))
    assert report["completed"]
    assert_identical(state_of(engine, tmp_path), straight)


def test_resume_from_explicit_epoch_file_and_finished_run(tmp_path, straight):
    train(tmp_path)
    # resuming a finished run trains nothing and reports the same
    engine, report = train(tmp_path, resume="auto")
    assert report["completed"] and report["total_epochs"] == EPOCHS
    assert_identical(state_of(engine, tmp_path)["params"], straight["params"])
    # any epoch file carries the full resume state
    engine, _ = train(tmp_path, resume=str(tmp_path / "toy_epoch_1.pth"))
    assert_identical(state_of(engine, tmp_path), straight)


def test_resume_auto_without_checkpoints_starts_fresh(tmp_path, straight):
    engine, report = train(tmp_path, resume="auto")
    assert report["completed"]
    assert_identical(state_of(engine, tmp_path), straight)


def test_auto_resume_is_unaffected_by_the_fresh_run_check(tmp_path, straight):
    train(tmp_path, max_steps=7)
    with pytest.raises(TrainingConfigError, match="--resume auto"):
        train(tmp_path)  # a fresh run would mix with the interrupted one
    engine, report = train(tmp_path, resume="auto")
    assert report["completed"]
    assert_identical(state_of(engine, tmp_path), straight)


def test_resume_with_other_epochs_warns(tmp_path, caplog):
    train(tmp_path, max_steps=STEPS_PER_EPOCH)  # epoch 1 of a 3-epoch run
    with caplog.at_level(logging.WARNING, logger="cad3d.training.engine"):
        _, report = train(tmp_path, resume="auto", epochs=4)
    assert report["completed"] and report["total_epochs"] == 4
    text = caplog.text
    assert "run of 3 epochs" in text and "epochs=4" in text and "LR schedule is rebuilt" in text
    assert "nothing to train" not in text

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="cad3d.training.engine"):
        _, report = train(tmp_path, resume="auto", epochs=2)  # 4 epochs done already
    assert report["total_epochs"] == 4 and report["total_steps"] == 4 * STEPS_PER_EPOCH
    assert "run of 4 epochs" in caplog.text and "epochs=2" in caplog.text
    assert "4 complete epoch(s)" in caplog.text and "nothing to train" in caplog.text

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="cad3d.training.engine"):
        train(tmp_path, resume="auto", epochs=4)  # the same total: no warning
    assert "LR schedule" not in caplog.text
