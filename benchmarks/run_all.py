"""Regenerate benchmarks/RESULTS.md: run every benchmark script, one after another (so none
competes with another for the cores), each writing its own section.

    .venv/bin/python benchmarks/run_all.py [--only data ops ...]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SCRIPTS = ["data", "ops", "checkpoint", "checkpoint_size", "vae", "vit", "diffusion", "depth", "convert", "app"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", choices=SCRIPTS, default=SCRIPTS)
    args = parser.parse_args()
    failed = []
    for name in args.only:
        t0 = time.perf_counter()
        print(f"== bench_{name}", flush=True)
        code = subprocess.run([sys.executable, str(HERE / f"bench_{name}.py")]).returncode
        print(f"== bench_{name}: exit {code}, {time.perf_counter() - t0:.0f} s", flush=True)
        if code:
            failed.append(name)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
