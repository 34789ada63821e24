"""DDP on CPU: torchrun with 2 gloo processes trains the toy task (see `toy_task.ddp_main`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cad3d.training.engine import Engine, EngineConfig
from toy_task import ToyConfig, ToyDataset, ToyTask

TESTS = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def ddp_work(tmp_path_factory):
    work = tmp_path_factory.mktemp("ddp")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(TESTS), str(TESTS.parent)]), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           str(TESTS / "toy_task.py"), str(work)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return work


def weights(path):
    return torch.load(path, weights_only=True)


@pytest.mark.slow
def test_ranks_stay_in_sync_and_rank0_writes_one_set_of_files(ddp_work):
    for run in ("plain", "straight", "resumed"):
        w0, w1 = weights(ddp_work / f"{run}_rank0.pt"), weights(ddp_work / f"{run}_rank1.pt")
        for k in w0:
            assert torch.equal(w0[k], w1[k]), (run, k)
        names = sorted(p.name for p in (ddp_work / run).iterdir() if p.name != ".cad3d.lock")
        assert names == [
            "checkpoints_manifest.json", "toy_best.pth", "toy_epoch_1.pth", "toy_epoch_2.pth", "toy_epoch_3.pth",
            "toy_epoch_log.json", "toy_last.pth", "toy_report.json",
        ]
        log = json.loads((ddp_work / run / "toy_epoch_log.json").read_text())
        assert [e["epoch"] for e in log] == [1, 2, 3]
        meta = weights(ddp_work / run / "toy_last.pth")["cad3d_meta"]
        assert meta["world_size"] == 2 and meta["global_step"] == 9
    report = json.loads((ddp_work / "plain" / "toy_report.json").read_text())
    assert report["hyperparameters"]["global_batch_size"] == 8


@pytest.mark.slow
def test_a_sigterm_on_one_rank_stops_all_and_resume_is_exact(ddp_work):
    straight, resumed = weights(ddp_work / "straight_rank0.pt"), weights(ddp_work / "resumed_rank0.pt")
    for k in straight:
        assert torch.equal(straight[k], resumed[k]), k
    strip = lambda run: [{k: v for k, v in e.items() if k != "time"} for e in json.loads((ddp_work / run / "toy_epoch_log.json").read_text())]  # noqa: E731
    assert strip("straight") == strip("resumed")


@pytest.mark.slow
def test_ddp_equals_one_process_with_the_same_global_batch(ddp_work, tmp_path):
    cfg = EngineConfig(epochs=3, batch_size=8, lr=1e-2, out_dir=str(tmp_path), progress=False)
    engine = Engine(ToyTask(ToyConfig(dropout=0.0, noise=0.0)), ToyDataset(24, seed=1), ToyDataset(8, split=1, augment=False), cfg)
    report = engine.fit()
    ddp = weights(ddp_work / "plain_rank0.pt")
    for k, v in engine.modules["model"].state_dict().items():
        torch.testing.assert_close(ddp[k], v, rtol=1e-5, atol=1e-6)
    ddp_report = json.loads((ddp_work / "plain" / "toy_report.json").read_text())
    torch.testing.assert_close(torch.tensor(ddp_report["loss_history"]), torch.tensor(report["loss_history"]), rtol=1e-5, atol=1e-6)
