"""Checkpoint throughput: MB/s of an atomic, hashed save (`CheckpointManager.save_last`), of
`load_checkpoint` (sha256 check included and excluded), and the time of `read_metadata`
(memory-mapped: should not grow with the file).

    .venv/bin/python benchmarks/bench_checkpoint.py [--mb 64 256] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine_info, write_section  # noqa: E402

from cad3d.training.checkpoint import CheckpointManager
from cad3d.training.checkpoint_io import build_metadata, load_checkpoint, read_metadata
from cad3d.training.tasks.base import CheckpointSchema  # noqa: E402

SCHEMA = CheckpointSchema(model="bench", module_keys={"model": "state_dict"}, epoch_file="bench_epoch_{epoch}.pth", last_file="bench_last.pth")


def payload(mb: int) -> dict:
    """A state dict of 1 MB float32 tensors, ``mb`` of them."""
    sd = {f"layer{i}.weight": torch.randn(512, 512) for i in range(mb)}
    return {"state_dict": sd, "cad3d_meta": build_metadata(task="bench", epoch=1, global_step=1), "cad3d_resume": {}}


def median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mb", type=int, nargs="+", default=[64, 256], help="checkpoint sizes in MB")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for mb in args.mb:
            p = payload(mb)
            mgr = CheckpointManager(tmp, SCHEMA)
            save = median_time(lambda: mgr.save_last(p, epoch=1, global_step=1), args.repeats)
            path = Path(tmp) / SCHEMA.last_file
            load_h = median_time(lambda: load_checkpoint(path), args.repeats)
            load = median_time(lambda: load_checkpoint(path, verify_hash=False), args.repeats)
            meta = median_time(lambda: read_metadata(path), args.repeats)
            size = path.stat().st_size / 2**20
            rows.append(f"| {size:.0f} MB | {size / save:.0f} MB/s | {size / load_h:.0f} MB/s | {size / load:.0f} MB/s | {meta * 1000:.1f} ms |")
            print(rows[-1], flush=True)
    md = [
        "## Checkpoints",
        "",
        f"Machine: {machine_info()}. Median of {args.repeats}; CPU, page cache warm.",
        "",
        "| size | save (atomic, fsync, sha256) | load (sha256 checked) | load (no hash) | read_metadata |",
        "|---|---|---|---|---|",
        *rows,
    ]
    print("\n".join(md))
    if not args.no_write:
        write_section("checkpoint", "\n".join(md))


if __name__ == "__main__":
    main()
