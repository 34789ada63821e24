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


def torchrun(script: str, work: Path) -> Path:
    """Run a test script under torchrun with 2 CPU processes (gloo); returns ``work``."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(TESTS), str(TESTS.parent)]), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           str(TESTS / script), str(work)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return work


@pytest.fixture(scope="module")
def ddp_work(tmp_path_factory):
    return torchrun("toy_task.py", tmp_path_factory.mktemp("ddp"))


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


# -- ranks that see different folders, a save that fails on rank 0 (tests/ddp_views.py) --------
@pytest.fixture(scope="module")
def ddp_views(tmp_path_factory):
    return torchrun("ddp_views.py", tmp_path_factory.mktemp("ddp_views"))


def outcome(work, scenario, rank):
    return json.loads((work / f"{scenario}_rank{rank}.json").read_text())


@pytest.mark.slow
def test_every_rank_resumes_from_rank_0s_choice(ddp_views):
    """Rank 1's folder also holds a newer valid file; alone it would resume from that one."""
    for rank in (0, 1):
        assert outcome(ddp_views, "extra", rank) == {**outcome(ddp_views, "extra", rank), "resumed_from": "toy_last.pth", "error": None}
    w0, w1 = weights(ddp_views / "extra_rank0.pt"), weights(ddp_views / "extra_rank1.pt")
    straight = weights(ddp_views / "straight_rank0.pt")
    for k in straight:
        assert torch.equal(w0[k], w1[k]) and torch.equal(w0[k], straight[k]), k


@pytest.mark.slow
def test_a_rank_that_cannot_see_the_chosen_file_stops_every_rank_at_once(ddp_views):
    r0, r1 = outcome(ddp_views, "missing", 0), outcome(ddp_views, "missing", 1)
    assert r1["error"].startswith("CheckpointError") and "rank 1 cannot find the checkpoint rank 0 resumes from" in r1["error"]
    assert r0["error"].startswith("RankFailed: rank 1 failed resuming from") and "toy_last.pth" in r0["error"]
    assert max(r0["seconds"], r1["seconds"]) < 30  # not the collective timeout (60 s in the script)


@pytest.mark.slow
def test_a_failed_save_on_rank_0_stops_every_rank_at_once(ddp_views):
    r0, r1 = outcome(ddp_views, "disk_full", 0), outcome(ddp_views, "disk_full", 1)
    assert r0["error"].startswith("CheckpointError") and "the disk is full" in r0["error"]
    assert "the previous toy_last.pth is intact" in r0["error"]
    assert r1["error"].startswith("RankFailed: rank 0 failed saving the checkpoint of epoch 2") and "the disk is full" in r1["error"]
    assert max(r0["seconds"], r1["seconds"]) < 30
    from cad3d.training.checkpoint_io import load_checkpoint

    for name in ("toy_last.pth", "toy_epoch_1.pth"):  # epoch 1, hash-checked
        assert load_checkpoint(ddp_views / "disk_full" / name)["cad3d_meta"]["epoch"] == 1
