#!/usr/bin/env bash
# Prepares a GPU session on a machine that cannot see the dataset: builds the `cuda` binary
# here (scripts/build-cuda.sh, no GPU needed), and puts in .gpu/ (git-ignored) what has to
# travel: the binary (stripped, xz), the training and validation crops of the 64 px crop cache
# packed as JPEGs (scripts/gpu/pack-crops.py), and the detector (its length is part of the
# cache's name), and the safetensors wheel unpacking needs there. About 56 MB in all. Then, on the GPU machine, in a checkout carrying .gpu/:
#   bash scripts/gpu/session.sh      (DEADLINE=seconds bounds it; results land in $OUT)
#
#   scripts/gpu/prepare.sh [CROP_CACHE]   # default: the 64 px cache under runs/cache
# The cache comes from any `faceage-host train` run at the default settings on the dataset.
set -euo pipefail
cd "$(dirname "$0")/../.."
cache="${1:-}"
# The crop cache is a safetensors file: the Python tools read it with numpy and safetensors.
python3 -c 'import numpy, safetensors, PIL' 2>/dev/null || python3 -m pip install -q numpy safetensors pillow
if [ -z "$cache" ]; then
  # The cache whose crops serve the default 64 px input (80 px crops with the margin).
  cache=$(python3 -c 'import sys; sys.path.insert(0, "scripts"); from crop_cache import find_cache; print(find_cache("runs/cache", 64) or "")')
fi
[ -n "$cache" ] && [ -f "$cache" ] || {
  echo "no 64 px crop cache under runs/cache: run faceage-host train --data DIR once (a --limit run does not cover every image)" >&2
  exit 1
}
scripts/build-cuda.sh 90
mkdir -p .gpu
strip -o .gpu/faceage-host target/cuda/release/faceage-host
xz -T0 -6 -f .gpu/faceage-host
python3 scripts/gpu/pack-crops.py "$cache" .gpu/crops.pack
# The GPU machine cannot reach PyPI: the safetensors wheel (abi3, any CPython 3.8+) travels.
rm -rf .gpu/wheels && python3 -m pip download -q --no-deps --only-binary=:all: safetensors -d .gpu/wheels
cp models/face_detection_back_256x256_barracuda.onnx .gpu/detector.onnx
du -ch .gpu/* | tail -1
