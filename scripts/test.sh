#!/usr/bin/env bash
# The test suite: formatting, lints, then every unit and end-to-end test of the workspace.
# Needs the set-up (detector in models/) and UTKFace ($FACEAGE_UTKFACE or
# ../shared/datasets/utkface/UTKFace). Arguments go to the main `cargo test` (e.g. a filter).
#
# One configuration, built once: the set-up's (scripts/build.sh: the `release` profile with the
# features in scripts/features.sh), so after scripts/setup.sh only our three crates are
# compiled here, and the tests run the binaries a user runs. A feature or profile change
# rebuilds faceage-device and everything above it (`multithread` rebuilds tract). The lints run
# inside that build (clippy-driver compiles our crates), not in check builds of their own: a
# check build compiles every dependency a second time, metadata only. (A cold run on 2 cores
# with two lint builds and a second test build for `multithread` took 44.5 minutes: lints 490
# + 59 s, the binaries 892 s, tests 606 s, `multithread` 626 s.)
# Each step prints how long it took (wall and CPU), and a summary ends the run.
set -euo pipefail
cd "$(dirname "$0")/.."

# The features of the one build (the board binary's defaults with its two opt-in ones; why in
# the file). The binaries and the tests are built with the same ones, so faceage-device and the
# host are compiled once for both.
. scripts/features.sh

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

# Lints: clippy-driver is the compiler of the workspace's own crates in the build below (cargo
# passes RUSTC_WORKSPACE_WRAPPER only to workspace members; dependencies go to rustc as ever),
# with every warning an error (CLIPPY_ARGS is how `cargo clippy -- -D warnings` hands its
# arguments to the driver). Each of our crates is linted as it is compiled, for every target
# (libraries, binaries, tests, examples) and with every feature's code in: what `cargo clippy
# --all-targets -- -D warnings` checked, without compiling the ~360 dependencies again as
# metadata. A lint failure stops the build like a compile error.
# Always clippy-driver, whatever the caller's environment holds: another wrapper would build
# without the lints, and the suite would pass unlinted.
export RUSTC_WORKSPACE_WRAPPER="$(command -v clippy-driver || true)"
if [[ -z "$RUSTC_WORKSPACE_WRAPPER" ]]; then
  echo "clippy-driver not found: install clippy (rustup component add clippy)" >&2
  exit 1
fi
export CLIPPY_ARGS="-D__CLIPPY_HACKERY__warnings__CLIPPY_HACKERY__"
# CLIPPY_ARGS is the driver's private protocol with cargo-clippy: if a toolchain changed it,
# lints would stop failing the build without a word. So first a file with a lint (a needless
# vec!) must fail to compile through the driver as our crates are compiled.
probe=$(mktemp -d)
printf 'fn main() {
    let v = vec![1, 2];
    println!("{}", v.len());
}
' > "$probe/probe.rs"
if "$RUSTC_WORKSPACE_WRAPPER" rustc "$probe/probe.rs" --edition 2021 --emit=metadata --out-dir "$probe" \
  >/dev/null 2>&1; then
  echo "clippy-driver compiled a file with a lint: CLIPPY_ARGS no longer denies warnings" >&2
  exit 1
fi
rm -rf "$probe"

# The build selects the whole workspace: with `-p faceage-device` alone cargo unifies the
# dependencies' features over that crate only (serde_json, syn, hashbrown, ... differ), and
# dozens of dependencies would be compiled again for that one configuration.
#
# The two binaries, which the end-to-end tests run (cargo test builds only the test package's
# own binaries, and the root package has none), and the examples. `--timings` leaves a report
# of where the build's time went in target/cargo-timings/.
step "build binaries" scripts/build.sh --timings
# The same build (same profile: `cargo test --release` uses `bench`, which is `release`
# unchanged; same features; so nothing is compiled twice): every target's unit tests
# (libraries, binaries, examples), then the end-to-end tests (tests/main.rs, one binary, and
# tests/several_sources.rs). The crates have no doc tests: `--all-targets` skips looking.
# One test thread more than there are cores: the end-to-end tests spend part of their time
# waiting (brokers, real-time clips, the kiosk's browser), and with a thread per core the cores
# sat idle then (2 cores, e2e binary: 2 threads 227 s, 3 threads 200 s, 4 threads 205 s).
export RUST_TEST_THREADS="${RUST_TEST_THREADS:-$(($(nproc) + 1))}"
step "test" cargo test --release --timings --workspace --all-targets --features "$WORKSTATION_FEATURES" "$@"
