#!/usr/bin/env bash
# Retrains the shipped model the way it was made: seven teacher runs (the recipes of the model
# card's "What was tried"), then the student taught by all of them (`train --teacher`), then
# the student fine-tuned for the camera (`--init`, `--scene-views`), then the f32 and int8
# files. About 10.5 hours on 2 CPU cores (each run about 70-100 minutes, the fine-tuning 20);
# minutes a run on a GPU (`--device cuda` with a cuda build: set FACEAGE_DEVICE=cuda).
# Stopped and started again, it resumes: finished runs are kept, an interrupted one resumes.
#   scripts/train-distilled.sh [DATA] [OUT]     (defaults: the shared UTKFace, runs/distilled)
# FACEAGE_TRAIN_ARGS are added to every training (the test's small settings), FACEAGE_HOST_ARGS
# to every command (e.g. --detector, --cache-dir); FACEAGE_HOST names a built faceage-host.
set -euo pipefail
cd "$(dirname "$0")/.."
data="${1:-${FACEAGE_UTKFACE:-../shared/datasets/utkface/UTKFace}}"
out="${2:-runs/distilled}"
device="${FACEAGE_DEVICE:-cpu}"
read -r -a train_args <<< "${FACEAGE_TRAIN_ARGS:-}"
read -r -a host_args <<< "${FACEAGE_HOST_ARGS:-}"
host="${FACEAGE_HOST:-}"
if [[ -z "$host" ]]; then
  scripts/build.sh -q
  host="${CARGO_TARGET_DIR:-target}/release/faceage-host"
fi

# One run: skipped when finished (its val-eval.json is written last), resumed when started.
run() {
  local dir="$1"; shift
  if [[ -f "$dir/val-eval.json" ]]; then
    echo "$dir: done"
  elif [[ -f "$dir/checkpoint.safetensors" ]]; then
    "$host" train --data "$data" --device "$device" --out "$dir" --resume "${host_args[@]}"
  else
    "$host" train --data "$data" --device "$device" --out "$dir" "$@" "${train_args[@]}" "${host_args[@]}"
  fi
}

# The teachers (every one with the default --seed 1, the student's split). The older recipes
# kept training's momentum batch-norm statistics; the student reads them re-estimated.
teachers=()
teach() { local name="$1"; shift; run "$out/teachers/$name" "$@"; teachers+=(--teacher "$out/teachers/$name"); }
teach recipe --bn-stats momentum
teach pooling --pooling learned --bn-stats momentum --patience 36
teach pooling-l1 --pooling learned --age-loss ldl --bn-stats momentum --patience 36
teach ema --ema 0.999 --bn-stats momentum
teach dldl --age-loss dldl --bn-stats momentum --patience 36
teach precise
teach size80 --size 80

run "$out/student" "${teachers[@]}"

# The student fine-tuned for the camera (the model card's "Fine-tuned for the camera"): started
# from its own file and taught by it, a share of its faces read from camera-sized frames.
if [[ ! -f "$out/student.onnx" ]]; then
  "$host" export --run "$out/student" --out "$out/student.onnx" "${host_args[@]}"
fi
run "$out/camera" --init "$out/student.onnx" --teacher "$out/student.onnx" \
  --lr 3e-4 --epochs 8 --camera 0.5 --scene-views 0.5
"$host" export --run "$out/camera" --out "$out/faceage-f32.onnx" --quantize int8 "${host_args[@]}"
echo "student: $out/student, fine-tuned: $out/camera (val-eval.md); files: $out/faceage-f32.onnx, $out/faceage-int8.onnx"
