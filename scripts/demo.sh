#!/usr/bin/env bash
# The main job on a default: three people from UTKFace walk through a clip, `faceage run`
# counts them with the shipped model (`run`'s own, models/faceage-run-int8.onnx: each face read
# once; printing each person as a JSON line), and `faceage report`
# summarises the counts log it wrote. Builds through scripts/build.sh (a no-op after scripts/setup.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
T="${CARGO_TARGET_DIR:-target}/release"
out="${1:-runs/demo}"
mkdir -p "$out"
scripts/build.sh -q
"$T/examples/make_clip" "$out/clip.avi" walk 96 640x480
rm -f "$out/counts.jsonl"
"$T/faceage" run --source "$out/clip.avi" --counts-log "$out/counts.jsonl" --events \
  --detector models/face_detection_back_256x256_barracuda.onnx
echo
"$T/faceage" report "$out/counts.jsonl" --plot "$out/hours.png"
echo
echo "demo: $out/clip.avi, counts log $out/counts.jsonl, chart $out/hours.png"
echo "next: faceage run --source camera:0 --kiosk   (a camera), or train your own model:"
echo "      $T/faceage-host train --data \"\${FACEAGE_UTKFACE:-../shared/datasets/utkface/UTKFace}\" --out runs/main"
