#!/usr/bin/env bash
# The test suite: formatting, lints, then every unit and end-to-end test of the workspace.
# Needs the set-up (detector in models/) and UTKFace ($FACEAGE_UTKFACE or
# ../shared/datasets/utkface/UTKFace). Arguments go to the main `cargo test` (e.g. a filter).
#
# Each configuration is built once: a feature change rebuilds faceage-device and everything
# above it, and `multithread` rebuilds tract. Lints are check builds (no code generated) and
# cannot share with the test build, so there are two lint builds and two test builds, each
# there for a reason said at its step. Each step prints how long it took (wall and CPU), and a
# summary ends the run.
set -euo pipefail
cd "$(dirname "$0")/.."

# The features of the one test build: the board binary's defaults with its opt-in TLS for
# brokers (tests/fleet.rs checks mqtts://). The binaries and the tests are built with the same
# ones, so faceage-device and the host are compiled once for both.
TEST_FEATURES=faceage-device/mqtt-tls

started=$SECONDS
timings=()
# CPU seconds (user + system) of the finished commands so far: on a machine busy with other
# work the wall time grows, the CPU time much less, so the summary gives both.
# (`times` must run in this shell, not in a $(...) subshell, to see this shell's children.)
cpu_file=$(mktemp)
cpu() {
  times > "$cpu_file"
  CPU=$(awk 'NR == 2 { t = 0; for (i = 1; i <= 2; i++) { split($i, a, /[ms]/); t += a[1] * 60 + a[2] } printf "%d", t }' "$cpu_file")
}
summary() {
  local rc=$?
  cpu
  rm -f "$cpu_file"
  echo
  echo "== scripts/test.sh: wall and CPU time of each step ($(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg))"
  printf '%s\n' "${timings[@]}"
  printf '%5d s %6d s  total%s\n' $((SECONDS - started)) "$CPU" "$([ "$rc" = 0 ] || echo " (FAILED, exit $rc)")"
}
trap summary EXIT
# step NAME COMMAND...: runs the command, prints and records how long it took.
step() {
  local name="$1" t0=$SECONDS c0
  cpu
  c0=$CPU
  shift
  echo "== $name: $*"
  "$@"
  cpu
  local wall=$((SECONDS - t0)) cpu_s=$((CPU - c0))
  timings+=("$(printf '%5d s %6d s  %s' "$wall" "$cpu_s" "$name")")
  echo "== $name: $wall s (CPU $cpu_s s)"
}

step "fmt" cargo fmt --all -- --check
# Every build below selects the whole workspace: with `-p faceage-device` alone cargo unifies
# the dependencies' features over that crate only (serde_json, syn, hashbrown, ... differ), and
# dozens of dependencies would be compiled again for that one configuration.
#
# Lints 1: every crate and target with the union of faceage-device's additive features (TLS and
# `multithread` on top of the defaults): all feature-gated code in one check build.
step "clippy, all features" \
  cargo clippy --workspace --all-targets --features "$TEST_FEATURES,faceage-device/multithread" -- -D warnings
# Lints 2: the default features, as the board binary ships (no TLS, no `multithread`): the code
# under `cfg(not(feature = ...))` (bench.rs's refusal of --threads without `multithread`).
# Only tract, rumqttc and our crates are checked again.
step "clippy, defaults" cargo clippy --workspace --all-targets -- -D warnings
# Build 1: the two binaries, which the end-to-end tests run (cargo test builds only the test
# package's own binaries, and the root package has none).
step "build binaries" cargo build --workspace --bins --features "$TEST_FEATURES"
# The same build 1 (same features, so nothing is compiled twice): every unit test, then the
# end-to-end tests (tests/main.rs, one binary).
step "test" cargo test --workspace --features "$TEST_FEATURES" "$@"
# Build 2: the opt-in `multithread` feature (rayon in tract: 4 MB more binary, so off by
# default and not in build 1, whose binaries the tests check refuse --threads 2 without it).
# The libraries' tests with tract built again; TLS stays on so rumqttc and the rest are reused.
step "test multithread" cargo test --workspace --lib --features "$TEST_FEATURES,faceage-device/multithread" "$@"
