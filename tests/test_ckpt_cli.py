"""`cad3d ckpt ...` as a user runs it, on a folder made by a few epochs of a toy 2-layer MLP."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from torch import nn

from cad3d.cli import main
from cad3d.training.checkpoint import CheckpointManager
from cad3d.training.checkpoint_io import MANIFEST_NAME, build_metadata, read_manifest, read_metadata
from cad3d.io import atomic_write_json
from cad3d.training.tasks.base import CheckpointSchema, TrainTask, register_task


@dataclass
class MLPConfig:
    hidden: int = 8


@register_task
class CkptToyTask(TrainTask):
    """y = MLP(x) on random data: enough to restore and run a forward pass."""

    name = "ckpt_toy"
    config_class = MLPConfig
    schema = CheckpointSchema(
        model="ckpt_toy",
        module_keys={"model": "state_dict"},
        epoch_file="ckpt_toy_epoch_{epoch}.pth",
        last_file="ckpt_toy_last.pth",
        best_file="ckpt_toy_best.pth",
        optimizer_key="opt",
        scheduler_key="scheduler",
        epoch_log_file="ckpt_toy_epoch_log.json",
    )

    def build_modules(self):
        return {"model": nn.Sequential(nn.Linear(4, self.config.hidden), nn.ReLU(), nn.Linear(self.config.hidden, 1))}

    def training_step(self, modules, batch, ctx):
        x, y = batch
        loss = ((modules["model"](x) - y) ** 2).mean()
        return loss, {"mse": float(loss)}

    def validation_step(self, modules, batch, ctx):
        x, y = batch
        return {"val_loss": float(((modules["model"](x) - y) ** 2).mean())}

    def example_batch(self, batch_size=2, generator=None):
        return torch.randn(batch_size, 4, generator=generator), torch.zeros(batch_size, 1)

    def forward_check(self, modules, batch):
        return modules["model"](batch[0])


def train(folder: Path, epochs: int = 4, *, every_n: int = 1, keep_last=None, hidden: int = 8) -> Path:
    """A few real SGD epochs with the checkpoint manager and an epoch log, like the engine."""
    task = CkptToyTask(MLPConfig(hidden))
    schema = CkptToyTask.schema
    if every_n != 1:
        import dataclasses

        schema = dataclasses.replace(schema, every_n_epochs=every_n)
    mgr = CheckpointManager(folder, schema, keep_last=keep_last)
    torch.manual_seed(0)
    model = task.build_modules()["model"]
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(32, 4), torch.randn(32, 1)
    log = []
    for epoch in range(1, epochs + 1):
        loss = ((model(x) - y) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():
            val = float(((model(x) - y) ** 2).mean())
        metrics = {"train_loss": float(loss.detach()), "val_loss": val}
        payload = {
            "epoch": epoch,
            "global_step": epoch * 4,
            "state_dict": model.state_dict(),
            "opt": opt.state_dict(),
            "scheduler": {},
            "cad3d_meta": build_metadata(task="ckpt_toy", epoch=epoch, global_step=epoch * 4, metrics=metrics, config=task.config_dict(), device="cpu"),
            "cad3d_resume": {"batch_in_epoch": 0},
        }
        mgr.save_epoch(payload, epoch=epoch, global_step=epoch * 4, metrics=metrics)
        log.append({"epoch": epoch, **metrics})
        atomic_write_json(folder / schema.epoch_log_file, log)
    return folder


@pytest.fixture(scope="module")
def _trained(tmp_path_factory):
    return train(tmp_path_factory.mktemp("trained") / "run")


@pytest.fixture
def run(_trained, tmp_path):
    """A fresh copy of a 4-epoch run (training once per module keeps the tests fast)."""
    return Path(shutil.copytree(_trained, tmp_path / "run"))


def cli(capsys, *argv) -> tuple[int, str, str]:
    code = main(["ckpt", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


def test_help_explains_each_action(capsys):
    for action in ("ls", "inspect", "verify", "prune", "migrate"):
        with pytest.raises(SystemExit) as exc:
            main(["ckpt", action, "--help"])
        assert exc.value.code == 0
        out = capsys.readouterr().out
        assert f"ckpt {action}" in out and len(out) > 300


def test_ls_table_and_json(run, capsys):
    code, out, _ = cli(capsys, "ls", run)
    assert code == 0
    assert out.splitlines()[0].split() == ["FILE", "KIND", "EPOCH", "STEP", "METRICS", "SIZE", "SHA", "CREATED"]
    assert "ckpt_toy_epoch_3.pth" in out and " ok " in out
    code, out, _ = cli(capsys, "ls", run, "--json")
    rows = {r["file"]: r for r in json.loads(out)}
    assert set(rows) == {"ckpt_toy_last.pth", "ckpt_toy_best.pth"} | {f"ckpt_toy_epoch_{e}.pth" for e in range(1, 5)}
    assert rows["ckpt_toy_epoch_2.pth"]["step"] == 8 and rows["ckpt_toy_last.pth"]["kind"] == "last"
    assert all(r["sha"] == "ok" for r in rows.values())


def test_inspect(run, capsys):
    code, out, _ = cli(capsys, "inspect", run / "ckpt_toy_epoch_2.pth")
    assert code == 0 and "task: ckpt_toy" in out and "epoch: 2" in out
    assert "state dict: 4 tensors" in out and "0.weight: (8, 4) float32" in out
    code, out, _ = cli(capsys, "inspect", run / "ckpt_toy_epoch_2.pth", "--json")
    info = json.loads(out)
    assert info["meta"]["global_step"] == 8
    assert info["keys"]["state_dict"]["tensors"]["2.weight"] == [[1, 8], "float32"]


def test_verify_passes_on_a_good_run(run, capsys):
    code, out, _ = cli(capsys, "verify", run)
    assert code == 0, out
    status = {line.split()[1]: line.split()[0] for line in out.splitlines()[:-1]}
    assert status == {
        "loadable": "PASS",
        "hash": "PASS",
        "restore": "PASS",
        "forward": "PASS",
        "progression": "PASS",
        "weights_change": "PASS",
        "log_consistency": "PASS",
    }
    assert "val_loss decreased" in out
    code, out, _ = cli(capsys, "verify", run / "ckpt_toy_best.pth", "--json")
    report = json.loads(out)
    assert code == 0 and report["ok"]
    assert {c["name"]: c["status"] for c in report["checks"]}["progression"] == "SKIP"


def test_verify_restores_engine_style_nested_config(tmp_path, capsys):
    """The engine stores {"task": ..., "engine": ...}; restore must use the task part."""
    run = train(tmp_path / "wide", epochs=1, hidden=12)
    path = run / "ckpt_toy_epoch_1.pth"
    obj = torch.load(path, weights_only=True)
    obj["cad3d_meta"]["config"] = {"task": {"hidden": 12}, "engine": {"lr": 0.1}}
    CheckpointManager(run, CkptToyTask.schema).publish(path.name, obj)
    code, out, _ = cli(capsys, "verify", path)
    assert code == 0 and "PASS  restore" in out, out


def test_verify_every_n_gaps_are_not_failures(tmp_path, capsys):
    run = train(tmp_path / "vit_like", epochs=7, every_n=3)  # files at 3 and 6, log to 7 (seed 002)
    code, out, _ = cli(capsys, "verify", run)
    assert code == 0, out
    assert "epoch files every 3 epoch(s): 2/2 present" in out


def test_verify_keep_last_gaps_are_not_failures(tmp_path, capsys):
    run = train(tmp_path / "pruned", epochs=5, keep_last=2)
    code, out, _ = cli(capsys, "verify", run)
    assert code == 0, out
    assert "epoch files every 1 epoch(s): 2/5 present (older ones pruned)" in out


def test_verify_fails_on_tampering_architecture_and_log(run, capsys):
    obj = torch.load(run / "ckpt_toy_epoch_3.pth", weights_only=True)
    torch.save(obj, run / "ckpt_toy_epoch_3.pth")  # same content, re-saved: bytes differ from the manifest? keep going
    obj["state_dict"]["0.weight"] = torch.zeros(16, 4)  # wrong shape for the saved config
    torch.save(obj, run / "ckpt_toy_epoch_3.pth")
    log = json.loads((run / "ckpt_toy_epoch_log.json").read_text())
    atomic_write_json(run / "ckpt_toy_epoch_log.json", log + [log[-1]])  # duplicated epoch after a bad resume
    code, out, _ = cli(capsys, "verify", run)
    assert code == 1
    lines = {line.split()[1]: line for line in out.splitlines()[:-1]}
    assert lines["hash"].startswith("FAIL") and "ckpt_toy_epoch_3.pth" in lines["hash"]
    assert lines["restore"].startswith("FAIL") and "0.weight: checkpoint (16, 4) vs model (8, 4)" in lines["restore"]
    assert lines["log_consistency"].startswith("FAIL") and "duplicate epochs [4]" in lines["log_consistency"]
    assert lines["loadable"].startswith("PASS")
    assert "FAILED: hash, restore" in out.splitlines()[-1]


def test_verify_fails_when_weights_do_not_change(run, capsys):
    a = torch.load(run / "ckpt_toy_epoch_1.pth", weights_only=True)
    b = torch.load(run / "ckpt_toy_epoch_2.pth", weights_only=True)
    b["state_dict"] = a["state_dict"]
    CheckpointManager(run, CkptToyTask.schema).publish("ckpt_toy_epoch_2.pth", b)
    code, out, _ = cli(capsys, "verify", run)
    assert code == 1 and "FAIL  weights_change" in out and "ckpt_toy_epoch_1.pth == ckpt_toy_epoch_2.pth" in out


def test_verify_unloadable_file_fails_with_cause(run, capsys):
    (run / "ckpt_toy_epoch_9.pth").write_bytes(os.urandom(100))
    code, out, _ = cli(capsys, "verify", run)
    assert code == 1 and "FAIL  loadable" in out and "ckpt_toy_epoch_9.pth: not a PyTorch checkpoint" in out


def test_prune(run, capsys):
    code, out, _ = cli(capsys, "prune", run, "--keep-last", "1", "--dry-run")
    assert code == 0 and "would delete ckpt_toy_epoch_1.pth" in out
    assert (run / "ckpt_toy_epoch_1.pth").exists()
    code, out, _ = cli(capsys, "prune", run, "--keep-last", "1")
    assert code == 0
    assert {p.name for p in run.glob("*.pth")} == {"ckpt_toy_last.pth", "ckpt_toy_best.pth", "ckpt_toy_epoch_4.pth"}
    assert set(read_manifest(run)["files"]) == {"ckpt_toy_last.pth", "ckpt_toy_best.pth", "ckpt_toy_epoch_4.pth"}


def test_errors_are_one_line_exit_1(tmp_path, capsys):
    code, _, err = cli(capsys, "inspect", tmp_path / "missing.pth")
    assert code == 1 and err.strip() == f"cad3d: error: {tmp_path / 'missing.pth'}: checkpoint file not found"
    (tmp_path / "plain.pth").write_bytes(b"")
    torch.save({"w": torch.ones(2)}, tmp_path / "plain.pth")
    code, _, err = cli(capsys, "inspect", tmp_path / "plain.pth")
    assert code == 1 and "foreign checkpoint" in err and "cad3d ckpt migrate" in err


# -- migrate ---------------------------------------------------------------------------------
class Gadget:
    """A custom class: unpickling it needs arbitrary code."""


def make_old_layout(folder: Path) -> None:
    folder.mkdir()
    task = CkptToyTask()
    sd = task.build_modules()["model"].state_dict()
    torch.save({"epoch": 5, "model_state_dict": sd, "optimizer_state_dict": {}, "loss": 0.5}, folder / "epoch_5.pt")
    torch.save({"epoch": 5, "global_step": 123, "state_dict": sd}, folder / "epoch-05_step-000123.ckpt")  # same epoch: conflict
    torch.save({"state_dict": sd, "epoch": 6, "loss": 0.5}, folder / "checkpoint_6.pth")
    torch.save(sd, folder / "last.ckpt")  # a bare state dict
    torch.save({"state_dict": sd, "val_loss": 0.1, "epoch": 2}, folder / "best-val_loss-0.1000.ckpt")
    torch.save({"x": Gadget()}, folder / "checkpoint_7.pth")
    (folder / "notes.txt").write_text("keep me")


def test_migrate_dry_run_changes_nothing(tmp_path, capsys):
    folder = tmp_path / "old"
    make_old_layout(folder)
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    code, out, _ = cli(capsys, "migrate", folder, "--dry-run", "--model", "ckpt_toy")
    assert code == 0
    assert "epoch-05_step-000123.ckpt -> ckpt_toy_epoch_5.pth" in out and "checkpoint_6.pth -> ckpt_toy_epoch_6.pth" in out
    assert "last.ckpt -> ckpt_toy_last.pth" in out and "best-val_loss-0.1000.ckpt -> ckpt_toy_best.pth" in out
    assert "REFUSE" in out and "checkpoint_7.pth" in out and "arbitrary code" in out
    assert "SKIP" in out and "epoch_5.pt: epoch-05_step-000123.ckpt already becomes ckpt_toy_epoch_5.pth" in out
    assert "nothing changed" in out
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before


def test_migrate_applies_then_verify_and_resume_work(tmp_path, capsys):
    folder = tmp_path / "old"
    make_old_layout(folder)
    code, out, _ = cli(capsys, "migrate", folder, "--model", "ckpt_toy")
    assert code == 0 and "refused: checkpoint_7.pth" in out
    names = {p.name for p in folder.iterdir()}
    assert {"ckpt_toy_epoch_5.pth", "ckpt_toy_epoch_6.pth", "ckpt_toy_last.pth", "ckpt_toy_best.pth"} <= names
    assert not {"epoch-05_step-000123.ckpt", "checkpoint_6.pth", "last.ckpt", "best-val_loss-0.1000.ckpt"} & names
    assert {"epoch_5.pt", "checkpoint_7.pth", "notes.txt", MANIFEST_NAME} <= names  # left alone
    meta = read_metadata(folder / "ckpt_toy_epoch_5.pth")
    assert meta["task"] == "ckpt_toy" and meta["epoch"] == 5 and meta["global_step"] == 123
    assert meta["migrated_from"] == "epoch-05_step-000123.ckpt"
    assert read_metadata(folder / "ckpt_toy_epoch_6.pth")["metrics"] == {"loss": 0.5}
    best = read_metadata(folder / "ckpt_toy_best.pth")
    assert best["file_kind"] == "best" and best["metrics"]["val_loss"] == 0.1
    assert set(read_manifest(folder)["files"]) >= {"ckpt_toy_epoch_5.pth", "ckpt_toy_last.pth"}
    last = torch.load(folder / "ckpt_toy_last.pth", weights_only=True)  # was a bare state dict
    assert set(last["state_dict"]) == {"0.weight", "0.bias", "2.weight", "2.bias"}
    # a second run has nothing left to change but the two it cannot handle
    code, out, _ = cli(capsys, "migrate", folder, "--model", "ckpt_toy")
    assert code == 0 and "0 change(s) applied" in out
    # the migrated files restore into the task's modules
    (folder / "epoch_5.pt").unlink()
    (folder / "checkpoint_7.pth").unlink()
    code, out, _ = cli(capsys, "verify", folder)
    assert "PASS  restore" in out and "PASS  hash" in out and "PASS  forward" in out, out


def test_migrate_records_unlisted_cad3d_files(run, capsys):
    (run / MANIFEST_NAME).unlink()
    code, out, _ = cli(capsys, "verify", run)
    assert code == 0 and "SKIP  hash" in out
    code, out, _ = cli(capsys, "migrate", run)  # model from the metadata
    assert code == 0 and "RECORD" in out
    code, out, _ = cli(capsys, "verify", run)
    assert code == 0 and "PASS  hash" in out
