#!/usr/bin/env bash
# Builds faceage-host with the `cuda` feature, with no GPU and no system CUDA: nvcc, the CUDA
# headers and libraries come from PyPI (NVIDIA's own wheels) into a cached virtualenv.
#
#   scripts/build-cuda.sh [CUDA_COMPUTE_CAP]   # default 90 (H100/H200); 80 A100, 89 L4/4090
#
# The binary goes to target/cuda/release/faceage-host (beside, not over, the CPU build). Then,
# on a machine with an NVIDIA GPU and driver:
#   LD_LIBRARY_PATH=$(scripts/build-cuda.sh --libs) target/cuda/release/faceage-host train --device cuda ...
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${FACEAGE_CUDA_VENV:-$HOME/.cache/faceage-cuda/venv}"
SITE() { "$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])'; }
if [ "${1:-}" = "--libs" ]; then
  echo "$(SITE)/nvidia/cu13/lib"
  exit 0
fi
CAP="${1:-90}"
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
# CUDA 13's wheels carry the whole compiler (CUDA 12's nvcc wheel holds only ptxas); 13.0
# needs the oldest driver of the 13 line (580). Every part of the compiler is pinned to the same
# release: nvcc's own dependencies float, and a newer nvvm writes PTX its ptxas cannot read.
"$VENV/bin/pip" install -q --disable-pip-version-check \
  'nvidia-cuda-nvcc==13.0.*' 'nvidia-nvvm==13.0.*' 'nvidia-cuda-crt==13.0.*' \
  'nvidia-cuda-runtime==13.0.*' 'nvidia-cuda-nvrtc==13.0.*' 'nvidia-cuda-cccl==13.0.*' \
  'nvidia-cublas==13.0.*' 'nvidia-curand<10.5'
root="$(SITE)/nvidia/cu13"  # laid out like a toolkit: bin/ (nvcc), include/, lib/, nvvm/
# The wheels ship versioned sonames only; the linker wants the plain names.
for lib in "$root"/lib/lib*.so.*; do
  plain="${lib%%.so.*}.so"
  [ -e "$plain" ] || ln -s "$(basename "$lib")" "$plain"
done
stubs="$VENV/stubs"
mkdir -p "$stubs"
# libcuda comes with the driver, not with the toolkit: link against a stub that defines every
# driver entry point cudarc declares (as the CUDA toolkit's lib64/stubs does); the real driver
# library is loaded at run time.
cudarc_version=$(grep -A1 '^name = "cudarc"' Cargo.lock | sed -n 's/^version = "\(.*\)"/\1/p')
cargo fetch -q
driver_sys=$(ls "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/"cudarc-$cudarc_version"/src/driver/sys/mod.rs | head -1)
grep -oP '^\s+(pub )?fn \Kcu[A-Za-z0-9_]+(?=\()' "$driver_sys" | sort -u \
  | sed 's/.*/void &(void) {}/' > "$stubs/libcuda_stub.c"
gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$stubs/libcuda.so" "$stubs/libcuda_stub.c"
echo "libcuda stub: $(wc -l < "$stubs/libcuda_stub.c") driver symbols from cudarc $cudarc_version"
export PATH="$root/bin:$PATH"
export CUDA_ROOT="$root" CUDA_PATH="$root" CUDA_TOOLKIT_ROOT_DIR="$root"
export CUDA_COMPUTE_CAP="$CAP"
export LIBRARY_PATH="$root/lib:$stubs:${LIBRARY_PATH:-}"
export RUSTFLAGS="${RUSTFLAGS:-} -L $root/lib -L $stubs"
nvcc --version | tail -1
out="${FACEAGE_CUDA_TARGET_DIR:-target/cuda}"
cargo build --release -p faceage-host --features cuda --target-dir "$out"
echo "built $out/release/faceage-host with CUDA (compute capability $CAP)"
