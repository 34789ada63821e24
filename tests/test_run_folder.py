"""A run folder as a busy cluster treats it: two writers, a killed holder, ``--resume auto`` with
nothing usable, a full disk, an unwritable ``--out``, a second signal under DDP."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from cad3d.cli import main
from cad3d.errors import CheckpointError
from cad3d.io import HashingWriter
from cad3d.training import distributed as D
from cad3d.training.checkpoint import CheckpointManager
from cad3d.training.checkpoint_io import load_checkpoint, read_manifest
from cad3d.training.engine import Engine, EngineConfig, TrainingConfigError
from cad3d.training.run_lock import HOLDER_NAME, RunFolderLocked, RunLock, read_holder
from toy_task import ToyConfig, ToyDataset, ToyTask, full_disk_write

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent


def fit(out, *, epochs=2, resume=None, hidden=16, **cfg):
    config = EngineConfig(epochs=epochs, batch_size=8, lr=1e-2, out_dir=str(out), resume=resume, progress=False, **cfg)
    engine = Engine(ToyTask(ToyConfig(hidden=hidden)), ToyDataset(16, seed=1), ToyDataset(8, split=1, augment=False), config)
    return engine, engine.fit()


def snapshot(folder: Path) -> dict:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file() and not p.name.startswith(".cad3d.lock")}


def hold_lock_in_subprocess(folder: Path) -> subprocess.Popen:
    code = ("import sys, time\nfrom cad3d.training.run_lock import RunLock\n"
            "RunLock(sys.argv[1], 'training toy').acquire()\nprint('locked', flush=True)\ntime.sleep(120)")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen([sys.executable, "-c", code, str(folder)], stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout.readline().strip() == "locked"
    return proc


# -- one writer per run folder ----------------------------------------------------------------
def test_a_second_writer_is_refused_naming_the_holder_and_a_killed_holder_is_taken_over(tmp_path, capsys, caplog):
    out = tmp_path / "run"
    fit(out, epochs=1)
    before = snapshot(out)
    holder = hold_lock_in_subprocess(out)
    try:
        with pytest.raises(RunFolderLocked) as info:
            fit(out, epochs=2, resume="auto")
        message = str(info.value)
        assert f"pid {holder.pid} on host {socket.gethostname()} since " in message and "training toy" in message
        assert main(["ckpt", "prune", str(out), "--keep-last", "0", "--model", "toy"]) == 1
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and f"pid {holder.pid}" in err
        assert snapshot(out) == before  # neither writer touched anything
    finally:
        holder.kill()  # SIGKILL: no clean-up, its holder record stays behind
        holder.wait()
    assert read_holder(out)["pid"] == holder.pid
    with caplog.at_level("WARNING"):
        _, report = fit(out, epochs=2, resume="auto")
    assert report["completed"] and f"taking over the lock left by pid {holder.pid}" in caplog.text
    assert not (out / HOLDER_NAME).exists()  # released at the end


def test_ckpt_prune_while_training_holds_the_folder(tmp_path, capsys):
    fit(tmp_path, epochs=3)
    with RunLock(tmp_path, "training toy"):
        assert main(["ckpt", "prune", str(tmp_path), "--keep-last", "1", "--model", "toy"]) == 1
        assert f"pid {os.getpid()}" in capsys.readouterr().err
        assert main(["ckpt", "prune", str(tmp_path), "--keep-last", "1", "--model", "toy", "--dry-run"]) == 0  # reads only
    assert (tmp_path / "toy_epoch_1.pth").is_file()
    assert main(["ckpt", "prune", str(tmp_path), "--keep-last", "1", "--model", "toy"]) == 0
    assert not (tmp_path / "toy_epoch_1.pth").exists() and (tmp_path / "toy_epoch_3.pth").is_file()


def test_holder_records_when_the_file_lock_is_free(tmp_path):
    """Where the filesystem does not enforce file locks, the record decides: a live holder on this
    host (same pid and start time) is refused, a dead one is taken over."""
    from cad3d.training.run_lock import _start_time

    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        record = {"pid": sleeper.pid, "host": socket.gethostname(), "started": _start_time(sleeper.pid),
                  "since": "2026-01-01T00:00:00+00:00", "purpose": "training vae"}
        (tmp_path / HOLDER_NAME).write_text(json.dumps(record))
        with pytest.raises(RunFolderLocked, match=f"pid {sleeper.pid} .*still running.*does not enforce file locks"):
            RunLock(tmp_path, "ckpt prune").acquire()
        assert read_holder(tmp_path)["pid"] == sleeper.pid  # refused: the record is left as it was
    finally:
        sleeper.kill()
        sleeper.wait()
    with RunLock(tmp_path, "ckpt prune"):  # the same record, its process now gone
        assert read_holder(tmp_path)["pid"] == os.getpid()
    assert not (tmp_path / HOLDER_NAME).exists()


def test_an_unwritable_out_fails_before_training(tmp_path, capsys, monkeypatch):
    (tmp_path / "a_file").write_text("x")
    out = tmp_path / "a_file" / "run"
    steps = []
    monkeypatch.setattr(ToyTask, "training_step", lambda self, *a: steps.append(1))
    with pytest.raises(CheckpointError, match="cannot write to the run folder"):
        fit(out)
    assert steps == []
    data = tmp_path / "data"
    data.mkdir()
    (data / "toy.json").write_text(json.dumps({"num_train": 8, "num_val": 4}))
    assert main(["train", "toy", "--data", str(data), "--out", str(out), "--preset", "tiny", "--no-progress"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(out) in err[0] and "cannot write" in err[0]


# -- --resume auto resumes or refuses ----------------------------------------------------------
def test_resume_auto_refuses_when_no_checkpoint_is_usable_and_lists_why(tmp_path, capsys):
    fit(tmp_path, epochs=2)
    for name in ("toy_last.pth", "toy_epoch_2.pth"):
        data = bytearray((tmp_path / name).read_bytes())
        data[len(data) // 2] ^= 0xFF
        (tmp_path / name).write_bytes(bytes(data))
    (tmp_path / "toy_best.pth").write_bytes(b"\x80\x02a.")  # a damaged legacy pickle
    (tmp_path / "toy_epoch_1.pth").write_bytes((tmp_path / "toy_epoch_1.pth").read_bytes()[:500])
    before = snapshot(tmp_path)
    with pytest.raises(TrainingConfigError) as info:
        fit(tmp_path, epochs=3, resume="auto")
    message = str(info.value)
    for name in ("toy_last.pth", "toy_epoch_2.pth", "toy_best.pth", "toy_epoch_1.pth"):
        assert f"{name}: " in message, name
    assert "sha256" in message and "--overwrite" in message
    assert snapshot(tmp_path) == before  # nothing started fresh over them
    data = tmp_path / "data"
    data.mkdir()
    (data / "toy.json").write_text(json.dumps({"num_train": 16, "num_val": 8}))
    assert main(["train", "toy", "--data", str(data), "--out", str(tmp_path), "--preset", "tiny", "--resume", "auto",
                 "--no-progress"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "none of the checkpoints" in err[0] and "toy_best.pth" in err[0]


def test_resume_auto_falls_back_past_a_corrupt_legacy_pickle(tmp_path, caplog):
    fit(tmp_path, epochs=2)
    (tmp_path / "toy_last.pth").write_bytes(b"\x80\x02a.")  # the reproducer
    with caplog.at_level("WARNING"):
        engine, report = fit(tmp_path, epochs=3, resume="auto")
    assert engine.resumed_from == tmp_path / "toy_epoch_2.pth" and report["completed"]
    assert "not resuming from" in caplog.text and "toy_last.pth: truncated or corrupt" in caplog.text


def test_resume_auto_refuses_files_without_resume_state_and_resumes_a_good_one(tmp_path):
    engine, _ = fit(tmp_path, epochs=1)
    mgr = CheckpointManager(tmp_path, ToyTask.schema)
    for name in ("toy_last.pth", "toy_epoch_1.pth", "toy_best.pth"):  # as `ckpt migrate` leaves files
        payload = load_checkpoint(tmp_path / name)
        payload.pop("cad3d_resume")
        mgr.publish(name, payload)
    with pytest.raises(TrainingConfigError, match="toy_last.pth: no 'cad3d_resume' resume state"):
        fit(tmp_path, epochs=2, resume="auto")
    engine, report = fit(tmp_path, epochs=2, resume=str(tmp_path / "toy_last.pth"))  # by path: continues after it
    assert report["completed"] and engine.resumed_from == tmp_path / "toy_last.pth"
    _, report = fit(tmp_path, epochs=3, resume="auto")  # the new files carry resume state
    assert report["completed"] and load_checkpoint(tmp_path / "toy_last.pth")["cad3d_meta"]["epoch"] == 3


# -- a full disk ---------------------------------------------------------------------------------
def fill_after(monkeypatch, budget: int) -> None:
    monkeypatch.setattr(HashingWriter, "write", full_disk_write(budget))


def check_disk_full_run(out: Path, exc: BaseException, before: dict) -> None:
    message = str(exc)
    assert isinstance(exc, CheckpointError) and "the disk is full" in message and "intact" in message, message
    assert "Traceback" not in message and "\n" not in message
    manifest = read_manifest(out)["files"]
    for name, data in before.items():  # every file saved before is still there and still valid
        if name.endswith(".pth"):
            assert load_checkpoint(out / name)["cad3d_meta"]["epoch"] >= 1
    for name in manifest:
        if (out / name).is_file():
            load_checkpoint(out / name)  # hash-checked against the manifest
    assert not [p for p in out.iterdir() if ".tmp-" in p.name]


@pytest.mark.parametrize("budget", [2_000, 20_000, 60_000])
def test_a_full_disk_simulated_is_a_checkpoint_error_and_keeps_the_previous_checkpoint(tmp_path, monkeypatch, budget):
    out = tmp_path / "run"
    fit(out, epochs=1)
    before = snapshot(out)
    if budget == 2_000:  # full before the run starts: said at once, when the lock record is written
        fill_after(monkeypatch, 0)
        with pytest.raises(CheckpointError, match="cannot write to the run folder .the disk is full"):
            fit(out, epochs=3, resume="auto")
        assert snapshot(out) == before
        monkeypatch.undo()
    fill_after(monkeypatch, budget)
    with pytest.raises(CheckpointError) as info:
        fit(out, epochs=3, resume="auto")
    check_disk_full_run(out, info.value, before)
    monkeypatch.undo()  # space freed: the run continues from what was kept
    _, report = fit(out, epochs=3, resume="auto")
    assert report["completed"] and report["total_epochs"] == 3


@pytest.fixture
def small_filesystem(tmp_path):
    """A 2 MiB tmpfs (root on Linux only)."""
    mount = tmp_path / "small"
    mount.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root; the simulated full-disk test covers the same path")
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({proc.stderr.strip() or proc.returncode}); the simulated full-disk test covers the same path")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=False)


def test_a_full_disk_on_a_small_filesystem(small_filesystem):
    out = small_filesystem / "run"
    fit(out, epochs=1, hidden=2048)  # ~0.1 MiB per file: room for a few epochs, not for 40
    before = snapshot(out)
    with pytest.raises(CheckpointError) as info:
        fit(out, epochs=40, resume="auto", hidden=2048)
    check_disk_full_run(out, info.value, before)


# -- DDP: a second signal never raises inside a collective ---------------------------------------
def test_a_second_signal_raises_only_in_a_world_of_one(tmp_path):
    engine = Engine(ToyTask(), ToyDataset(8), None, EngineConfig(out_dir=str(tmp_path)))
    engine._handler_pid = os.getpid()
    engine.dist = D.DistInfo(rank=1, world_size=2)
    engine._on_signal(signal.SIGTERM, None)
    engine._on_signal(signal.SIGTERM, None)  # logged: the step ends and every rank saves, as after the first
    assert engine._stop_signal == signal.SIGTERM
    engine._stop_signal, engine.dist = None, D.DistInfo()
    engine._on_signal(signal.SIGINT, None)
    with pytest.raises(KeyboardInterrupt):
        engine._on_signal(signal.SIGINT, None)
