#!/usr/bin/env bash
# The full GPU recipe: synthesize a real dataset, train every model with its `full` preset,
# export the depth network to ONNX, evaluate every conversion path on the test split.
#
#   scripts/train_all.sh [ROOT] [NUM_SAMPLES] [GPUS]
#
# The script works in ROOT (default .), which gets training_data/ trained_models/ models/ outputs/
# (the SPEC layout). GPUS > 1 trains each
# model with torchrun (DDP, one process per GPU; --batch-size is per process). Every step can be
# interrupted and re-run: training resumes from the newest checkpoint (--resume auto), and the
# synthesis of the same seed rewrites identical files.
set -euo pipefail
ROOT=${1:-.}
NUM_SAMPLES=${2:-20000}
GPUS=${3:-1}
PY=${PYTHON:-python}
mkdir -p "$ROOT" && cd "$ROOT"
DATA=training_data/diffusion_synthetic

"$PY" -m cad3d data synth --out "$DATA" --num-samples "$NUM_SAMPLES" --seed 0 --workers "$(nproc)"
"$PY" -m cad3d data check "$DATA"
"$PY" -m cad3d data preview "$DATA" -o outputs/dataset_preview.png

train() {  # train MODEL [extra flags]: one GPU, or torchrun over GPUS
  local model=$1; shift
  if [ "$GPUS" -gt 1 ]; then
    "$PY" -m torch.distributed.run --standalone --nproc-per-node "$GPUS" -m cad3d train "$model" \
      --data "$DATA" --out "trained_models/$model" --preset full --device cuda --resume auto "$@"
  else
    "$PY" -m cad3d train "$model" --data "$DATA" --out "trained_models/$model" --preset full \
      --device cuda --resume auto "$@"
  fi
}
train vae --precision bf16
train vit --precision bf16
train diffusion --precision bf16
train depth --precision bf16 --publish-onnx   # OUT/cad3d_depth_256.onnx, copied to models/

"$PY" -m cad3d eval --data "$DATA" --split test -o outputs/eval --device cuda
