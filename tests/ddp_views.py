"""Run under torchrun (2 CPU processes, gloo) by tests/test_ddp.py: ranks that see different run
folders, and a save that fails on rank 0. Each rank writes ``work/<scenario>_rank<r>.json``
(what it resumed from, the error it stopped with and how long that took) and, for runs that
finish, its final weights ``work/<scenario>_rank<r>.pt``.

- ``extra``: rank 1's folder also holds a newer valid checkpoint that rank 0's does not: both
  must resume from rank 0's choice and stay in sync (they would diverge with their own choices);
- ``missing``: rank 1's folder lacks the file rank 0 chose: every rank stops at once;
- ``disk_full``: rank 0's writes fail with ENOSPC in epoch 2: every rank stops at once.
"""

from __future__ import annotations

import datetime
import json
import shutil
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

from cad3d.io import HashingWriter
from cad3d.training.engine import Engine, EngineConfig
from toy_task import ToyConfig, ToyDataset, ToyTask, full_disk_write


def fit(out: Path, **overrides):
    cfg = EngineConfig(epochs=3, batch_size=4, lr=1e-2, out_dir=str(out), progress=False, **overrides)
    engine = Engine(ToyTask(ToyConfig()), ToyDataset(24, seed=1), ToyDataset(8, split=1, augment=False), cfg)
    engine.fit()
    return engine


def attempt(work: Path, scenario: str, rank: int, out: Path, **overrides) -> None:
    record: dict = {"resumed_from": None, "error": None}
    start = time.perf_counter()
    try:
        engine = fit(out, **overrides)
        record["resumed_from"] = engine.resumed_from.name if engine.resumed_from else None
        torch.save(engine.modules["model"].state_dict(), work / f"{scenario}_rank{rank}.pt")
    except Exception as exc:  # noqa: BLE001 - recorded for the test to judge
        record["error"] = f"{type(exc).__name__}: {exc}"
    record["seconds"] = time.perf_counter() - start
    (work / f"{scenario}_rank{rank}.json").write_text(json.dumps(record))


def main(work: Path) -> None:
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=60))  # a hang fails fast
    rank = dist.get_rank()
    fit(work / "base", max_steps=5)  # stops mid-epoch 2: toy_last.pth at step 5
    fit(work / "longer", max_steps=7)  # the same run further: toy_epoch_2.pth at step 6
    fit(work / "straight")  # uninterrupted, for comparison
    torch.save(torch.load(work / "straight" / "toy_last.pth", weights_only=True)["model_state"], work / f"straight_rank{rank}.pt")
    if rank == 0:
        for name in ("extra0", "extra1", "missing0", "missing1"):
            shutil.copytree(work / "base", work / name)
        shutil.copy(work / "longer" / "toy_epoch_2.pth", work / "extra1" / "toy_epoch_2.pth")
        (work / "missing1" / "toy_last.pth").unlink()
    dist.barrier()
    attempt(work, "extra", rank, work / f"extra{rank}", resume="auto")
    attempt(work, "missing", rank, work / f"missing{rank}", resume="auto")
    if rank == 0:
        HashingWriter.write = full_disk_write(180_000)  # enough for epoch 1 (three files of ~50 kB), not for the rest
    attempt(work, "disk_full", rank, work / "disk_full")
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
