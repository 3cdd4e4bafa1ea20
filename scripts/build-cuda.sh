#!/usr/bin/env bash
# Builds faceage-host with the `cuda` feature, with no GPU and no system CUDA: nvcc, the CUDA
# headers and libraries come from PyPI (NVIDIA's own wheels) into a cached virtualenv.
#
#   scripts/build-cuda.sh [CUDA_COMPUTE_CAP]   # default 90 (H100/H200); 80 A100, 89 L4/4090
#
# Then, on a machine with an NVIDIA GPU and driver:
#   LD_LIBRARY_PATH=$(scripts/build-cuda.sh --libs) target/release/faceage-host train --device cuda ...
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${FACEAGE_CUDA_VENV:-$HOME/.cache/faceage-cuda/venv}"
SITE() { "$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])'; }
if [ "${1:-}" = "--libs" ]; then
  site=$(SITE)
  ls -d "$site"/nvidia/*/lib | paste -sd: -
  exit 0
fi
CAP="${1:-90}"
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
"$VENV/bin/pip" install -q --disable-pip-version-check \
  nvidia-cuda-nvcc-cu12 nvidia-cuda-runtime-cu12 nvidia-cuda-nvrtc-cu12 nvidia-cublas-cu12 \
  nvidia-curand-cu12 nvidia-cuda-cccl-cu12
site=$(SITE)
root="$VENV/cuda"
# Lay the wheels out like a CUDA toolkit: bin/, include/, lib64/ (cudarc and nvcc look there).
rm -rf "$root" && mkdir -p "$root/bin" "$root/include" "$root/lib64"
for pkg in "$site"/nvidia/*/; do
  [ -d "$pkg/bin" ] && cp -rs "$pkg/bin/." "$root/bin/" 2>/dev/null || true
  [ -d "$pkg/include" ] && cp -rs "$pkg/include/." "$root/include/" 2>/dev/null || true
  [ -d "$pkg/lib" ] && cp -rs "$pkg/lib/." "$root/lib64/" 2>/dev/null || true
done
# The wheels ship versioned sonames only; the linker wants the plain names.
for lib in "$root"/lib64/lib*.so.*; do
  plain="${lib%%.so.*}.so"
  [ -e "$plain" ] || ln -s "$(basename "$lib")" "$plain"
done
# libcuda comes with the driver, not with the toolkit: link against a stub (as the CUDA
# toolkit's lib64/stubs does); the real driver library is loaded at run time.
if [ ! -e "$root/lib64/libcuda.so" ]; then
  echo 'void cuInit(void) {}' > "$root/stub.c"
  gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$root/lib64/libcuda.so" "$root/stub.c"
fi
export PATH="$root/bin:$PATH"
export CUDA_ROOT="$root" CUDA_PATH="$root" CUDA_TOOLKIT_ROOT_DIR="$root"
export CUDA_COMPUTE_CAP="$CAP"
export LIBRARY_PATH="$root/lib64:${LIBRARY_PATH:-}"
export RUSTFLAGS="${RUSTFLAGS:-} -L $root/lib64"
nvcc --version | tail -1
cargo build --release -p faceage-host --features cuda
echo "built target/release/faceage-host with CUDA (compute capability $CAP)"
