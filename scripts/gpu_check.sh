#!/usr/bin/env bash
# One GPU check of every model's full preset (training fp32/bf16/bf16+compile, data loader,
# conversion latency, 2-GPU DDP): writes benchmarks/RESULTS_GPU.md. Under 8 minutes on one H100/H200.
#   scripts/gpu_check.sh            # needs CUDA
#   scripts/gpu_check.sh --smoke    # the same code on CPU at tiny sizes (the test suite runs this)
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
[ -x "$PY" ] || PY=python3
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec "$PY" benchmarks/gpu_check.py "$@"
