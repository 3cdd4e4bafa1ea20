#!/usr/bin/env bash
# The test suite: formatting, lints, then every unit and end-to-end test of the workspace.
# Needs the set-up (detector in models/) and UTKFace ($FACEAGE_UTKFACE or
# ../shared/datasets/utkface/UTKFace).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
# The end-to-end tests run the two binaries; cargo test builds only the test package's own.
# The board binary is built with its opt-in TLS for brokers (tests/fleet.rs checks it).
cargo clippy -p faceage-device --features mqtt-tls --all-targets -- -D warnings
cargo build --workspace --bins --features faceage-device/mqtt-tls
cargo test --workspace "$@"
# The opt-in `multithread` feature (rayon in tract: 4 MB more binary, so off by default).
cargo clippy -p faceage-device --features multithread --all-targets -- -D warnings
cargo test -p faceage-device --features multithread --lib "$@"
