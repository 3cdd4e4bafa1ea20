#!/usr/bin/env bash
# Proof that the board binary builds and works on ARM without Docker: Debian's own Rust
# (rustc-web 1.96 with the arm64 standard library) cross-compiles `faceage` for aarch64, qemu
# runs the device library's tests and `faceage classify` on a photo with both shipped models,
# and the readings must agree with the x86 build's, per face: the f32 model to 0.05 years of age
# and 0.005 of p(female); the int8 model to 0.5 years and 0.02, because its activations are
# rounded to uint8 steps and a last-bit float difference between the two CPUs' kernels can move
# a value across a step (measured: 0.15 years where f32 differs by 0.01).
#
#   scripts/check-arm.sh             # aarch64 (what CI runs)
#   scripts/check-arm.sh --armv7     # and armv7 (-Z build-std): a build and classify under qemu-arm
#   scripts/check-arm.sh --size      # and the stripped size of the board (LTO) aarch64 binary
#
# FACEAGE_ARM_PROFILE: cargo profile of the checks (default `release`: optimised, no LTO; the
# `board` profile adds fat LTO and takes much longer). The ARM target directory is cached in
# FACEAGE_ARM_TARGET_DIR (default ~/.cache/faceage-arm/target) so repeat runs are quick.
# Timings under qemu mean nothing; only correctness does.
set -euo pipefail
cd "$(dirname "$0")/.."

armv7=0
size=0
for arg in "$@"; do
  case "$arg" in
    --armv7) armv7=1 ;;
    --size) size=1 ;;
    *) echo "usage: scripts/check-arm.sh [--armv7] [--size]" >&2; exit 2 ;;
  esac
done
PROFILE="${FACEAGE_ARM_PROFILE:-release}"
ARM_TARGET_DIR="${FACEAGE_ARM_TARGET_DIR:-$HOME/.cache/faceage-arm/target}"
start=$(date +%s)
log() { echo "[arm $(( $(date +%s) - start )) s] $*"; }

SUDO=""
[ "$(id -u)" = 0 ] || SUDO=sudo
PACKAGES=(rustc-web cargo-web libstd-rust-web-dev:arm64 gcc-aarch64-linux-gnu libc6-dev-arm64-cross
          qemu-user-static libclang-dev rust-web-src gcc-arm-linux-gnueabihf libc6-dev-armhf-cross)
dpkg --print-foreign-architectures | grep -qx arm64 || $SUDO dpkg --add-architecture arm64
missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  log "installing Debian's cross toolchain: ${missing[*]}"
  $SUDO apt-get update -qq || true  # a foreign mirror mid-sync must not stop the check
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# The host binary and a photo to compare readings on (the x86 build is the reference: the
# workstation build, which the set-up and the tests have already made).
log "x86 reference build"
scripts/build.sh -q
X86_TARGET="${CARGO_TARGET_DIR:-target}/release"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$X86_TARGET/examples/make_clip" "$work/photo.png" 2>/dev/null
DETECTOR=models/face_detection_back_256x256_barracuda.onnx
# Model files are copied first, so a model exported while this runs cannot mix two models.
MODELS=(f32 int8)
for m in "${MODELS[@]}"; do
  cp "models/faceage-$m.onnx" "$work/$m.onnx"
  "$X86_TARGET/faceage" classify --json --model "$work/$m.onnx" --detector "$DETECTOR" "$work/photo.png" > "$work/x86-$m.json"
done

# Debian's cargo and rustc, ahead of rustup's; linker, runner and bindgen sysroot per target.
export PATH="/usr/bin:/bin"
export CARGO_TARGET_DIR="$ARM_TARGET_DIR"
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
# `-L /`, not `-L /usr/aarch64-linux-gnu`: with two aarch64 libc copies every thread start hangs.
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64-static -L /"
export BINDGEN_EXTRA_CLANG_ARGS_aarch64_unknown_linux_gnu="--sysroot=/usr/aarch64-linux-gnu"
export CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc
export CARGO_TARGET_ARMV7_UNKNOWN_LINUX_GNUEABIHF_LINKER=arm-linux-gnueabihf-gcc
export CARGO_TARGET_ARMV7_UNKNOWN_LINUX_GNUEABIHF_RUNNER="qemu-arm-static -L /usr/arm-linux-gnueabihf"
export BINDGEN_EXTRA_CLANG_ARGS_armv7_unknown_linux_gnueabihf="--sysroot=/usr/arm-linux-gnueabihf"
export CC_armv7_unknown_linux_gnueabihf=arm-linux-gnueabihf-gcc
rustc --version

# classify_on ARCH RUNNER... : both models on the photo, each compared with x86.
classify_on() {
  local arch="$1"; shift
  for m in "${MODELS[@]}"; do
    "$@" classify --json --model "$work/$m.onnx" --detector "$DETECTOR" "$work/photo.png" > "$work/$arch-$m.json"
    case "$m" in f32) tol="0.05 0.005" ;; *) tol="0.5 0.02" ;; esac
    # shellcheck disable=SC2086
    compare "$work/x86-$m.json" "$work/$arch-$m.json" "$arch $m" $tol
  done
}

compare() {  # x86.json arm.json name max_age_diff max_p_diff
  python3 - "$@" <<'PY'
import json, sys
a, b, name = json.load(open(sys.argv[1])), json.load(open(sys.argv[2])), sys.argv[3]
max_age, max_p = float(sys.argv[4]), float(sys.argv[5])
fa, fb = a[0]["faces"], b[0]["faces"]
assert len(fa) == len(fb) and len(fa) > 0, f"{name}: {len(fb)} faces vs {len(fa)} on x86"
worst_age = max(abs(x["age"] - y["age"]) for x, y in zip(fa, fb))
worst_p = max(abs(x["female"] - y["female"]) for x, y in zip(fa, fb))
worst_box = max(abs(x[k] - y[k]) for x, y in zip(fa, fb) for k in "xywh")
print(f"{name} vs x86: {len(fa)} faces, max |age diff| {worst_age:.3f} (bar {max_age}), max |p diff| {worst_p:.4f} (bar {max_p}), max box diff {worst_box:.1f} px")
assert worst_age <= max_age and worst_p <= max_p and worst_box <= 1.0, f"{name} readings differ from x86"
PY
}

log "aarch64: device library tests under qemu ($PROFILE profile)"
cargo test --profile "$PROFILE" --target aarch64-unknown-linux-gnu -p faceage-device --lib
log "aarch64: faceage binary"
cargo build --profile "$PROFILE" --target aarch64-unknown-linux-gnu -p faceage-device --bin faceage
ARM_BIN="$ARM_TARGET_DIR/aarch64-unknown-linux-gnu/$PROFILE/faceage"
file "$ARM_BIN" | grep -q "ARM aarch64" || { echo "not an aarch64 binary: $ARM_BIN" >&2; exit 1; }
classify_on aarch64 qemu-aarch64-static -L / "$ARM_BIN"

if [ "$armv7" = 1 ]; then
  log "armv7: faceage binary (-Z build-std with Debian's rust-web-src)"
  RUSTC_BOOTSTRAP=1 cargo build --profile "$PROFILE" --target armv7-unknown-linux-gnueabihf \
    -Z build-std=std,panic_abort -p faceage-device --bin faceage
  V7_BIN="$ARM_TARGET_DIR/armv7-unknown-linux-gnueabihf/$PROFILE/faceage"
  classify_on armv7 qemu-arm-static -L /usr/arm-linux-gnueabihf "$V7_BIN"
fi

if [ "$size" = 1 ]; then
  log "aarch64: board binary (fat LTO, codegen-units 1, stripped)"
  cargo build --profile board --target aarch64-unknown-linux-gnu -p faceage-device --bin faceage
  BOARD="$ARM_TARGET_DIR/aarch64-unknown-linux-gnu/board/faceage"
  bytes=$(stat -c %s "$BOARD")
  echo "aarch64 board binary: $bytes bytes ($(( bytes / 1024 / 1024 )) MiB), bar 15 MB"
  [ "$bytes" -lt 15000000 ] || { echo "over the 15 MB bar" >&2; exit 1; }
fi
log "ARM check passed"
