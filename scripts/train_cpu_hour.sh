#!/usr/bin/env bash
# The largest run that fits in about an hour on a 2-core CPU: 1000 synthetic parts, every model
# with its `tiny` preset trained longer than the demo does, then the evaluation of every path.
# This is what the README's CPU results table comes from.
#
#   scripts/train_cpu_hour.sh [ROOT]      (default ROOT: runs/cpu_hour)
set -euo pipefail
ROOT=${1:-runs/cpu_hour}
PY=${PYTHON:-python}
mkdir -p "$ROOT" && cd "$ROOT"
DATA=training_data/diffusion_synthetic
T0=$(date +%s)
stamp() { echo "== $1 at $(( $(date +%s) - T0 )) s"; }

"$PY" -m cad3d data synth --out "$DATA" --num-samples 1000 --seed 0 --workers 2 --no-progress
stamp "data"
train() { "$PY" -m cad3d train "$1" --data "$DATA" --out "trained_models/$1" --preset tiny --device cpu \
            --resume auto --no-progress "${@:2}"; stamp "train $1"; }
train vae --epochs 15
train vit --epochs 60
train depth --epochs 25
train diffusion --epochs 80
"$PY" -m cad3d eval --data "$DATA" --split test -o outputs/eval --device cpu --steps 20 --no-progress
stamp "eval"
