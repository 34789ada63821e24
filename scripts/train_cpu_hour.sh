#!/usr/bin/env bash
# The largest run that fits in an hour on a 2-core CPU, and the README's CPU tables.
#
# Trains the converters that matter (layered depth network, ViT, projection-conditioned diffusion,
# retrieve-then-refine)
# with their `tiny` presets on 1000 synthetic parts of 10 families, then scores every path, the
# retrieval and medoid baselines and the oracle on
#   (a) the held-out test split of those 10 families, and
#   (b) 100 parts of 3 families no model has seen (unseen families),
# against the dense ground truth, every method at 8192 points (the stored samples' count).
#
#   scripts/train_cpu_hour.sh [ROOT]      (default ROOT: runs/cpu_hour)
#   EPOCHS_DEPTH=.. EPOCHS_VIT=.. EPOCHS_DIFFUSION=.. EPOCHS_REFINE=.. scale the training to the time you have.
set -euo pipefail
# One torch thread per process: on a shared or oversubscribed machine two spinning threads run
# several times slower than one (measured here: 235 s vs 59 s per depth epoch).
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} MKL_NUM_THREADS=${MKL_NUM_THREADS:-1}
ROOT=${1:-runs/cpu_hour}
PY=${PYTHON:-python}
HELD=flange_bolt_circle,hex_nut,i_beam
SEEN="block_with_holes plate_hole_pattern l_bracket u_channel t_beam stepped_shaft tube gear wedge boolean_combo"
mkdir -p "$ROOT" && cd "$ROOT"
DATA=training_data/seen_families
UNSEEN=training_data/unseen_families
T0=$(date +%s)
stamp() { echo "== $1 at $(( $(date +%s) - T0 )) s"; }

[ -f "$DATA/manifest.json" ] || "$PY" -m cad3d data synth --out "$DATA" --num-samples 1000 --seed 0 --workers 2 --image-size 128 --num-points 8192 --no-progress \
    --families $SEEN
[ -f "$UNSEEN/manifest.json" ] || "$PY" -m cad3d data synth --out "$UNSEEN" --num-samples 100 --seed 1 --workers 2 --image-size 128 --num-points 8192 --no-progress \
    --families ${HELD//,/ }
stamp "data"
train() { "$PY" -m cad3d train "$1" --data "$DATA" --out "trained_models/$1" --preset tiny --device cpu \
            --resume auto --no-progress "${@:2}"; stamp "train $1"; }
train depth --epochs "${EPOCHS_DEPTH:-12}"
train vit --epochs "${EPOCHS_VIT:-10}"
train diffusion --epochs "${EPOCHS_DIFFUSION:-5}"
train refine --epochs "${EPOCHS_REFINE:-6}"
ONNX=$(ls trained_models/depth/*.onnx models/*.onnx 2>/dev/null | head -n 1 || true)
common=(--device cpu --steps 20 --no-progress --depth-model "$ONNX" --runs trained_models
        --vit trained_models/vit/final_model.pth --diffusion trained_models/diffusion/diffusion_best.pth
        --refine trained_models/refine/refine_best.pth)
"$PY" -m cad3d eval --data "$DATA" --split test -o outputs/eval_seen "${common[@]}"
stamp "eval seen families"
"$PY" -m cad3d eval --data "$UNSEEN" --split all --train-data "$DATA" --families "$HELD" -o outputs/eval_unseen "${common[@]}"
stamp "eval unseen families"
# Robustness tracks (40 unseen test parts each, scored with the same models): drawings as people
# draw them (varied style), three-view sheets of each standard, and procedural parts.
track() { "$PY" -m cad3d data synth --out "training_data/track_$1" --num-samples 40 --seed 2 --workers 2 --image-size 128 \
            --num-points 8192 --no-progress "${@:2}"
          "$PY" -m cad3d eval --data "training_data/track_$1" --split all --train-data "$DATA" -o "outputs/eval_$1" \
            --examples 2 "${common[@]}"; stamp "track $1"; }
track clean --families $SEEN
track varied --families $SEEN --style varied
track first_angle --families $SEEN --view three_view --projection first-angle
track third_angle --families $SEEN --view three_view --projection third-angle
track procedural --families procedural
