#!/usr/bin/env bash
# Builds a release bundle per board target: a tarball with the `faceage` binary (Cargo.toml's
# `board` profile: fat LTO, stripped), the models, the systemd unit, a default config, the
# kiosk autostart and an install script.
#
#   scripts/package.sh [TARGET...]     # default: aarch64-unknown-linux-gnu
#
# TARGET is aarch64-unknown-linux-gnu or armv7-unknown-linux-gnueabihf. Builds with `cross`
# when it is installed (Docker), else with Debian's rustc-web as scripts/check-arm.sh does.
# Bundles land in dist/.
set -euo pipefail
cd "$(dirname "$0")/.."
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(aarch64-unknown-linux-gnu)
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
for f in models/faceage-run-int8.onnx models/faceage-int8.onnx models/faceage-f32.onnx models/face_detection_back_256x256_barracuda.onnx; do
  [ -f "$f" ] || { echo "error: $f missing (scripts/fetch-detector.sh fetches the detector)" >&2; exit 1; }
done
mkdir -p dist

build() {
  local target="$1"
  if command -v cross >/dev/null && docker info >/dev/null 2>&1; then
    cross build --profile board --target "$target" -p faceage-device --bin faceage
    echo "target/$target/board/faceage"
    return
  fi
  local dir="${FACEAGE_ARM_TARGET_DIR:-$HOME/.cache/faceage-arm/target}"
  local extra=()
  case "$target" in
    aarch64-unknown-linux-gnu)
      export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
      export BINDGEN_EXTRA_CLANG_ARGS_aarch64_unknown_linux_gnu="--sysroot=/usr/aarch64-linux-gnu"
      export CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc ;;
    armv7-unknown-linux-gnueabihf)
      export CARGO_TARGET_ARMV7_UNKNOWN_LINUX_GNUEABIHF_LINKER=arm-linux-gnueabihf-gcc
      export BINDGEN_EXTRA_CLANG_ARGS_armv7_unknown_linux_gnueabihf="--sysroot=/usr/arm-linux-gnueabihf"
      export CC_armv7_unknown_linux_gnueabihf=arm-linux-gnueabihf-gcc
      export RUSTC_BOOTSTRAP=1
      extra=(-Z build-std=std,panic_abort) ;;
    *) echo "unknown target $target" >&2; exit 2 ;;
  esac
  PATH=/usr/bin:/bin CARGO_TARGET_DIR="$dir" cargo build --profile board --target "$target" "${extra[@]}" \
    -p faceage-device --bin faceage >&2
  echo "$dir/$target/board/faceage"
}

for target in "${targets[@]}"; do
  bin=$(build "$target" | tail -1)
  name="faceage-$version-$target"
  stage=$(mktemp -d)/$name
  mkdir -p "$stage/bin" "$stage/models" "$stage/kiosk"
  cp "$bin" "$stage/bin/faceage"
  cp models/faceage-run-int8.onnx models/faceage-int8.onnx models/faceage-f32.onnx models/face_detection_back_256x256_barracuda.onnx "$stage/models/"
  cp models/MODEL_CARD.md "$stage/models/" 2>/dev/null || true
  [ -f models/BLAZEFACE-LICENSE.txt ] && cp models/BLAZEFACE-LICENSE.txt "$stage/models/"
  cp deploy/faceage.service deploy/faceage.env deploy/install.sh "$stage/"
  cp deploy/kiosk/kiosk.sh deploy/kiosk/autostart "$stage/kiosk/"
  chmod +x "$stage/install.sh" "$stage/kiosk/kiosk.sh"
  tar -C "$(dirname "$stage")" -czf "dist/$name.tar.gz" "$name"
  echo "dist/$name.tar.gz: $(stat -c %s "dist/$name.tar.gz") bytes; binary $(stat -c %s "$stage/bin/faceage") bytes"
done
