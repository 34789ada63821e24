"""Checkpoint manager and safe loading: a user's session with a tiny model in tmp_path."""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import os
import random
import signal
import time
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from cad3d.errors import CheckpointError
from cad3d.training.checkpoint import CheckpointManager
from cad3d.training.checkpoint_io import MANIFEST_NAME, CheckpointEnvironmentWarning, atomic_torch_save, build_metadata, load_checkpoint, load_state_dict_strict, read_manifest, read_metadata, sha256_file
from cad3d.io import atomic_write_json
from cad3d.training.tasks.base import CheckpointSchema

SCHEMA = CheckpointSchema(
    model="toy",
    module_keys={"model": "state_dict"},
    epoch_file="toy_epoch_{epoch}.pth",
    last_file="toy_last.pth",
    best_file="toy_best.pth",
    optimizer_key="opt",
    scheduler_key="scheduler",
)


def make_model(width: int = 8) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, width), nn.ReLU(), nn.Linear(width, 2))


def payload(model: nn.Module, epoch: int, step: int, metrics: dict | None = None, **meta) -> dict:
    return {
        "epoch": epoch,
        "global_step": step,
        "state_dict": model.state_dict(),
        "opt": {},
        "scheduler": {},
        "val_loss": (metrics or {}).get("val_loss", 0.0),
        "cad3d_meta": build_metadata(task="toy", epoch=epoch, global_step=step, metrics=metrics or {}, **meta),
        "cad3d_resume": {"batch_in_epoch": 0, "rng": torch.zeros(4, dtype=torch.uint8)},
    }


def run_epochs(tmp_path: Path, losses: list[float], schema=SCHEMA, keep_last=None, steps_per_epoch=10) -> CheckpointManager:
    mgr = CheckpointManager(tmp_path, schema, keep_last=keep_last)
    model = make_model()
    for epoch, loss in enumerate(losses, start=1):
        with torch.no_grad():
            model[0].weight.add_(0.1)
        m = {"val_loss": loss}
        mgr.save_epoch(payload(model, epoch, epoch * steps_per_epoch, m), epoch=epoch, global_step=epoch * steps_per_epoch, metrics=m)
    return mgr


def names(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()}


# -- atomic writes, round trip ---------------------------------------------------------------
def test_round_trip_and_manifest(tmp_path):
    model = make_model()
    mgr = CheckpointManager(tmp_path, SCHEMA)
    written = mgr.save_epoch(payload(model, 1, 10, {"val_loss": 0.5}), epoch=1, global_step=10, metrics={"val_loss": 0.5})
    assert {p.name for p in written} == {"toy_last.pth", "toy_epoch_1.pth", "toy_best.pth"}
    assert names(tmp_path) == {"toy_last.pth", "toy_epoch_1.pth", "toy_best.pth", MANIFEST_NAME}  # no temp files left
    loaded = load_checkpoint(tmp_path / "toy_epoch_1.pth", expected_task="toy")
    fresh = make_model(8)
    load_state_dict_strict(fresh, loaded["state_dict"], path="x", key="state_dict")
    for a, b in zip(fresh.state_dict().values(), model.state_dict().values()):
        assert torch.equal(a, b)
    meta = read_metadata(tmp_path / "toy_best.pth")
    assert meta["file_kind"] == "best" and meta["epoch"] == 1 and meta["global_step"] == 10
    assert meta["metrics"] == {"val_loss": 0.5} and meta["versions"]["torch"] == torch.__version__
    manifest = read_manifest(tmp_path)
    entry = manifest["files"]["toy_epoch_1.pth"]
    assert entry["sha256"] == sha256_file(tmp_path / "toy_epoch_1.pth") and entry["kind"] == "epoch"
    assert "pending" not in entry and manifest["best"]["value"] == 0.5


def test_atomic_helpers_leave_no_temp_files(tmp_path):
    atomic_write_json(tmp_path / "log.json", [{"epoch": 1}])
    sha = atomic_torch_save({"a": torch.ones(3)}, tmp_path / "x.pth")
    assert sha == sha256_file(tmp_path / "x.pth")
    assert names(tmp_path) == {"log.json", "x.pth"}
    assert json.loads((tmp_path / "log.json").read_text()) == [{"epoch": 1}]

    class Boom:
        def __reduce__(self):
            raise RuntimeError("cannot pickle")

    with pytest.raises(RuntimeError):
        atomic_torch_save({"b": Boom()}, tmp_path / "x.pth")
    assert names(tmp_path) == {"log.json", "x.pth"}  # failed write: old file intact, temp removed
    assert torch.equal(torch.load(tmp_path / "x.pth", weights_only=True)["a"], torch.ones(3))


def test_non_writer_rank_saves_nothing(tmp_path):
    mgr = CheckpointManager(tmp_path, SCHEMA, is_writer=False)
    p = payload(make_model(), 1, 10)
    assert mgr.save_epoch(p, epoch=1, global_step=10, metrics={"val_loss": 1.0}) == []
    assert mgr.save_last(p, epoch=1, global_step=5) is None
    assert list(tmp_path.iterdir()) == []


# -- safe loading: every bad file is a CheckpointError naming file and cause ------------------
@pytest.fixture
def one_ckpt(tmp_path):
    run_epochs(tmp_path, [1.0])
    return tmp_path / "toy_epoch_1.pth"


def test_missing_and_empty(tmp_path):
    with pytest.raises(CheckpointError, match=r"nope\.pth: checkpoint file not found"):
        load_checkpoint(tmp_path / "nope.pth")
    (tmp_path / "empty.pth").write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"empty\.pth: checkpoint is empty \(0 bytes\)"):
        load_checkpoint(tmp_path / "empty.pth")


def test_random_bytes(tmp_path):
    (tmp_path / "junk.pth").write_bytes(os.urandom(4096))
    with pytest.raises(CheckpointError, match=r"junk\.pth: .*(not a PyTorch checkpoint|corrupt)"):
        load_checkpoint(tmp_path / "junk.pth")


def test_truncated(one_ckpt):
    data = one_ckpt.read_bytes()
    (one_ckpt.parent / "cut.pth").write_bytes(data[: len(data) // 2])  # not in the manifest
    with pytest.raises(CheckpointError, match=r"cut\.pth: truncated or corrupt"):
        load_checkpoint(one_ckpt.parent / "cut.pth")
    one_ckpt.write_bytes(data[: len(data) // 2])  # listed: corrupt, and the hash differs too
    with pytest.raises(CheckpointError, match=r"toy_epoch_1\.pth: truncated or corrupt.*sha256 also differs"):
        load_checkpoint(one_ckpt)


def _flip_tensor_byte(path: Path) -> None:
    """Flip one byte inside a tensor's data record, keeping the zip structure valid."""
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as z:
        info = next(i for i in z.infolist() if "/data/" in i.filename and i.file_size >= 16)
    offset = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    # the local header's extra field may differ from the central one: read its real length
    fname_len = int.from_bytes(data[info.header_offset + 26 : info.header_offset + 28], "little")
    extra_len = int.from_bytes(data[info.header_offset + 28 : info.header_offset + 30], "little")
    offset = info.header_offset + 30 + fname_len + extra_len
    data[offset + 5] ^= 0xFF
    path.write_bytes(bytes(data))


def test_tampered_listed_file(one_ckpt):
    _flip_tensor_byte(one_ckpt)
    torch.load(one_ckpt, weights_only=True)  # torch alone does not notice
    with pytest.raises(CheckpointError, match=r"toy_epoch_1\.pth: sha256 .* does not match .*tampered"):
        load_checkpoint(one_ckpt)


def test_tampered_resaved_file(one_ckpt):
    obj = torch.load(one_ckpt, weights_only=True)
    obj["state_dict"]["0.weight"] += 1.0
    torch.save(obj, one_ckpt)  # a valid file, but not the one the manifest recorded
    with pytest.raises(CheckpointError, match=r"toy_epoch_1\.pth: sha256 .* does not match"):
        load_checkpoint(one_ckpt)
    load_checkpoint(one_ckpt, verify_hash=False)  # the caller may opt out explicitly


def test_tampered_unlisted_file_caught_by_crc(one_ckpt):
    (one_ckpt.parent / MANIFEST_NAME).unlink()
    _flip_tensor_byte(one_ckpt)
    with pytest.raises(CheckpointError, match=r"toy_epoch_1\.pth: corrupt or tampered.*CRC"):
        load_checkpoint(one_ckpt)


def test_foreign_state_dict(tmp_path):
    torch.save(make_model().state_dict(), tmp_path / "plain.pth")
    with pytest.raises(CheckpointError, match=r"plain\.pth: foreign checkpoint.*cad3d ckpt migrate"):
        load_checkpoint(tmp_path / "plain.pth")
    torch.save([1, 2], tmp_path / "list.pth")
    with pytest.raises(CheckpointError, match=r"list\.pth: foreign checkpoint \(not a dict\)"):
        load_checkpoint(tmp_path / "list.pth")


class Evil:
    """Unpickling this would run code; weights_only must refuse it."""

    def __reduce__(self):
        return (os.system, ("touch PWNED",))


def test_unsafe_pickle_is_refused_never_loaded(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    torch.save({"x": Evil(), "cad3d_meta": {}}, tmp_path / "evil.pth")
    for fn in (load_checkpoint, read_metadata):
        with pytest.raises(CheckpointError, match=r"evil\.pth: refused to load.*arbitrary code"):
            fn(tmp_path / "evil.pth")
    assert not (tmp_path / "PWNED").exists()


def test_task_mismatch_and_newer_schema(one_ckpt):
    with pytest.raises(CheckpointError, match=r"toy_epoch_1\.pth: checkpoint is for task 'toy', expected 'vae'"):
        load_checkpoint(one_ckpt, expected_task="vae")
    p = payload(make_model(), 1, 1)
    p["cad3d_meta"]["schema_version"] = 99
    torch.save(p, one_ckpt.parent / "future.pth")
    with pytest.raises(CheckpointError, match=r"future\.pth: .*schema_version 99 is newer"):
        load_checkpoint(one_ckpt.parent / "future.pth")


def test_architecture_mismatch_lists_keys(one_ckpt):
    sd = load_checkpoint(one_ckpt)["state_dict"]
    wider = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 2), nn.Linear(2, 2))
    with pytest.raises(CheckpointError) as err:
        load_state_dict_strict(wider, sd, path=one_ckpt, key="state_dict")
    msg = str(err.value)
    assert "toy_epoch_1.pth" in msg and "'state_dict'" in msg
    assert "missing keys: 3.weight, 3.bias" in msg
    assert "0.weight: checkpoint (8, 4) vs model (16, 4)" in msg
    sd2 = dict(sd, extra=torch.zeros(1))
    with pytest.raises(CheckpointError, match="unexpected keys: extra"):
        load_state_dict_strict(make_model(), sd2, path=one_ckpt, key="state_dict")


def test_environment_difference_warns(tmp_path):
    p = payload(make_model(), 1, 1, device="cuda:0")
    p["cad3d_meta"]["versions"]["torch"] = "1.0.0"
    torch.save(p, tmp_path / "old.pth")
    with pytest.warns(CheckpointEnvironmentWarning) as record:
        load_checkpoint(tmp_path / "old.pth")
    messages = [str(w.message) for w in record]
    assert any(m.endswith("old.pth: saved with torch 1.0.0, running torch " + torch.__version__) for m in messages)
    if not torch.cuda.is_available():
        assert any("old.pth: trained on cuda:0, CUDA is not available here" in m for m in messages)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        torch.save(payload(make_model(), 1, 1, device="cpu" if not torch.cuda.is_available() else "cuda"), tmp_path / "same.pth")
        load_checkpoint(tmp_path / "same.pth")


# -- retention, every_n, best ---------------------------------------------------------------
def test_default_keeps_every_epoch_file(tmp_path):
    run_epochs(tmp_path, [6, 5, 4, 3, 2, 1])
    assert {f"toy_epoch_{e}.pth" for e in range(1, 7)} <= names(tmp_path)


def test_keep_last_keeps_best_last_and_newest(tmp_path):
    mgr = run_epochs(tmp_path, [1.0, 3, 4, 5, 6, 7], keep_last=2)  # best stays at epoch 1
    assert names(tmp_path) == {"toy_last.pth", "toy_best.pth", "toy_epoch_5.pth", "toy_epoch_6.pth", MANIFEST_NAME}
    assert set(read_manifest(tmp_path)["files"]) == names(tmp_path) - {MANIFEST_NAME}
    assert read_metadata(tmp_path / "toy_best.pth")["epoch"] == 1
    assert mgr.prune(1, dry_run=True) == [tmp_path / "toy_epoch_5.pth"]
    assert (tmp_path / "toy_epoch_5.pth").exists()
    assert mgr.prune(0) == [tmp_path / "toy_epoch_5.pth", tmp_path / "toy_epoch_6.pth"]
    assert names(tmp_path) == {"toy_last.pth", "toy_best.pth", MANIFEST_NAME}


def test_every_n_epochs_and_final(tmp_path):
    schema = dataclasses.replace(SCHEMA, every_n_epochs=5, epoch_file="checkpoint_epoch_{epoch}.pth", best_file=None, final_file="final_model.pth")
    mgr = run_epochs(tmp_path, [5, 4, 3, 2, 1, 0.5, 0.4, 0.3, 0.2, 0.1, 0.05], schema=schema)
    assert names(tmp_path) == {"checkpoint_epoch_5.pth", "checkpoint_epoch_10.pth", "toy_last.pth", MANIFEST_NAME}
    assert mgr.best_metric == 0.05  # tracked without a best file
    final = mgr.save_final(payload(make_model(), 11, 110))
    assert final.name == "final_model.pth" and read_metadata(final)["file_kind"] == "final"


@pytest.mark.parametrize(
    "mode,losses,best_epoch",
    [("min", [3, 1, 2, float("nan"), 1.5], 2), ("max", [0.1, 0.5, float("nan"), 0.4, 0.7], 5), ("min", [float("nan"), 2.0], 2)],
)
def test_best_by_mode_nan_never_best(tmp_path, mode, losses, best_epoch):
    schema = dataclasses.replace(SCHEMA, mode=mode)
    mgr = run_epochs(tmp_path, losses, schema=schema)
    assert read_metadata(tmp_path / "toy_best.pth")["epoch"] == best_epoch
    assert mgr.best_metric == losses[best_epoch - 1]
    resumed = CheckpointManager(tmp_path, schema)  # a resumed run keeps "best" right
    assert resumed.best_metric == losses[best_epoch - 1]
    (tmp_path / MANIFEST_NAME).unlink()  # even without the manifest: from the best file's metadata
    assert CheckpointManager(tmp_path, schema).best_metric == losses[best_epoch - 1]


# -- resume -------------------------------------------------------------------------------
def test_find_resume_by_step_not_mtime(tmp_path):
    mgr = run_epochs(tmp_path, [3, 2, 1])
    assert mgr.find_resume() == tmp_path / "toy_last.pth"
    (tmp_path / "toy_last.pth").unlink()
    old = tmp_path / "toy_epoch_1.pth"
    future = time.time() + 1000
    os.utime(old, (future, future))  # newest by mtime, oldest by step
    assert CheckpointManager(tmp_path, SCHEMA).find_resume() == tmp_path / "toy_epoch_3.pth"


def test_find_resume_mid_epoch_last_and_skips_invalid(tmp_path):
    mgr = run_epochs(tmp_path, [3, 2])
    p = payload(make_model(), 3, 25, epoch_complete=False)
    mgr.save_last(p, epoch=3, global_step=25)
    assert read_metadata(tmp_path / "toy_last.pth")["epoch_complete"] is False
    assert mgr.find_resume() == tmp_path / "toy_last.pth"  # preempted mid-epoch: resume there
    _flip_tensor_byte(tmp_path / "toy_last.pth")
    with pytest.warns(UserWarning, match=r"toy_last\.pth: sha256 does not match"):
        assert mgr.find_resume() == tmp_path / "toy_epoch_2.pth"
    (tmp_path / "toy_epoch_2.pth").write_bytes(b"")
    with pytest.warns(UserWarning) as record:
        assert mgr.find_resume() == tmp_path / "toy_best.pth"  # best is epoch 2 too
    assert sorted(Path(str(w.message).split(": ")[1]).name for w in record) == ["toy_epoch_2.pth", "toy_last.pth"]


def test_find_resume_empty_folder(tmp_path):
    assert CheckpointManager(tmp_path / "new", SCHEMA).find_resume() is None


def test_read_metadata_does_not_read_weights(tmp_path):
    big = {"w": torch.zeros(8_000_000), "cad3d_meta": build_metadata(task="toy", epoch=1, global_step=1)}  # 32 MB
    torch.save(big, tmp_path / "big.pth")
    t0 = time.perf_counter()
    meta = read_metadata(tmp_path / "big.pth")
    assert meta["epoch"] == 1 and time.perf_counter() - t0 < 1.0


# -- crash safety: SIGKILL at random moments -------------------------------------------------
_WIDE = 256  # ~0.3 MB per file: a save takes long enough to be killed in every phase


def _save_forever(folder: str, start_step: int) -> None:
    """Child process: train-like loop that saves every step (values encode the step).

    Forked from a process whose OpenMP pool may be running: tensors are made with numpy so the
    child never enters a parallel torch kernel (that can hang after fork)."""
    torch.set_num_threads(1)
    mgr = CheckpointManager(folder, SCHEMA, keep_last=2)
    step = start_step
    while True:
        step += 1
        epoch = step
        sd = {
            "0.weight": torch.from_numpy(np.full((_WIDE, _WIDE), step, dtype=np.float32)),
            "0.bias": torch.from_numpy(np.full((_WIDE,), step, dtype=np.float32)),
        }
        p = {
            "epoch": epoch,
            "global_step": step,
            "state_dict": sd,
            "cad3d_meta": build_metadata(task="toy", epoch=epoch, global_step=step, metrics={"val_loss": 1.0 / step}),
            "cad3d_resume": {"step": step},
        }
        mgr.save_epoch(p, epoch=epoch, global_step=step, metrics={"val_loss": 1.0 / step})


def _check_consistent(path: Path) -> int:
    obj = load_checkpoint(path)
    step = obj["cad3d_meta"]["global_step"]
    assert obj["global_step"] == step and obj["cad3d_resume"]["step"] == step
    assert (obj["state_dict"]["0.weight"].numpy() == step).all() and (obj["state_dict"]["0.bias"].numpy() == step).all()
    return step


@pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(), reason="needs fork (POSIX)")
def test_sigkill_at_random_moments_leaves_a_valid_checkpoint(tmp_path):
    ctx = multiprocessing.get_context("fork")
    rng = random.Random(1234)
    resume_step, trials, deadline = 0, 0, time.monotonic() + 25
    while trials < 40 and time.monotonic() < deadline:
        child = ctx.Process(target=_save_forever, args=(str(tmp_path), resume_step))
        child.start()
        time.sleep(rng.uniform(0.01, 0.25))
        os.kill(child.pid, signal.SIGKILL)
        child.join()
        trials += 1
        # A reader that does not repair anything (another rank, `cad3d ckpt`) sees a valid state.
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no file of ours may be skipped as invalid
            found = CheckpointManager(tmp_path, SCHEMA, is_writer=False).find_resume()
        if found is None:
            assert resume_step == 0, "a checkpoint existed before this trial and was lost"
        else:
            step = _check_consistent(found)
            assert step >= resume_step
            resume_step = step
        for p in tmp_path.iterdir():
            if p.suffix == ".pth" and not p.name.startswith("."):
                try:
                    _check_consistent(p)  # whatever load_checkpoint accepts is intact
                except CheckpointError as exc:
                    pytest.fail(f"an unreadable checkpoint was published: {exc}")
        # The writer of the next run cleans temp files and resolves the manifest.
        CheckpointManager(tmp_path, SCHEMA)
        assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]
        assert not [e for e in read_manifest(tmp_path)["files"].values() if e.get("pending")]
    assert trials >= 30 and resume_step > 0


# -- existing files and clear() (a fresh run with overwrite) ----------------------------------
def test_existing_files_and_clear_remove_only_this_schemas_files(tmp_path):
    other_schema = dataclasses.replace(SCHEMA, model="other", epoch_file="other_epoch_{epoch}.pth",
                                       last_file="other_last.pth", best_file=None)
    run_epochs(tmp_path, [0.5, 0.4], schema=other_schema)
    schema = dataclasses.replace(SCHEMA, epoch_log_file="toy_epoch_log.json", report_file="toy_report.json")
    mgr = run_epochs(tmp_path, [0.3, 0.1, 0.2], schema=schema)
    (tmp_path / "toy_epoch_log.json").write_text("[]")
    (tmp_path / "toy_report.json").write_text("{}")
    (tmp_path / "notes.txt").write_text("mine")
    unlisted = tmp_path / "toy_epoch_9.pth"  # a file of the schema the manifest does not list
    unlisted.write_bytes((tmp_path / "toy_epoch_1.pth").read_bytes())
    found = {p.name for p in mgr.existing_files()}
    assert found == {"toy_last.pth", "toy_best.pth", "toy_epoch_1.pth", "toy_epoch_2.pth", "toy_epoch_3.pth", "toy_epoch_9.pth"}
    assert mgr.existing_files()[-1].name in found  # newest (by mtime) last
    assert mgr.best_metric == 0.1

    removed = {p.name for p in mgr.clear()}
    assert removed == found | {"toy_epoch_log.json", "toy_report.json"}
    assert names(tmp_path) == {"other_last.pth", "other_epoch_1.pth", "other_epoch_2.pth", "notes.txt", MANIFEST_NAME}
    manifest = read_manifest(tmp_path)
    assert set(manifest["files"]) == {"other_last.pth", "other_epoch_1.pth", "other_epoch_2.pth"}
    assert "best" not in manifest and mgr.best_metric is None and mgr.existing_files() == []
    # the next run writes its own best, even though it is worse than the deleted one
    again = CheckpointManager(tmp_path, schema)
    assert again.best_metric is None
    m = {"val_loss": 0.9}
    written = again.save_epoch(payload(make_model(), 1, 10, m), epoch=1, global_step=10, metrics=m)
    assert "toy_best.pth" in {p.name for p in written}


def test_clear_on_a_reader_rank_or_a_missing_folder_deletes_nothing(tmp_path):
    run_epochs(tmp_path, [0.5])
    reader = CheckpointManager(tmp_path, SCHEMA, is_writer=False)
    assert reader.clear() == [] and "toy_epoch_1.pth" in names(tmp_path)
    missing = CheckpointManager(tmp_path / "nope", SCHEMA)
    assert missing.existing_files() == [] and missing.clear() == []
    assert not (tmp_path / "nope").exists()
