#!/usr/bin/env bash
# The workstation build: both binaries and the examples, optimised (Cargo.toml's `release`
# profile), with the features in scripts/features.sh. The set-up, the demo, the test suite and
# the ARM check's x86 reference all build through here, so they share one build: another
# feature set or profile would compile faceage, tract and their dependencies again (a cold
# build is about 20 minutes on 2 cores). Arguments go to cargo (e.g. --timings, -q).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/features.sh
exec cargo build --release --workspace --bins --examples --features "$WORKSTATION_FEATURES" "$@"
