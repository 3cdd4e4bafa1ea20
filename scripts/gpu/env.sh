# Sourced by the GPU scripts, on the GPU machine, in a checkout that carries .gpu/
# (scripts/gpu/prepare.sh): finds the machine's CUDA libraries, unpacks the cuda binary to
# /tmp/fh, the crops into runs/cache and the detector into models/. Gives the scripts el
# (seconds since they started), OUT (default runs/gpu-out) and log (to the screen and
# $OUT/log.txt).
#
# Measured on an H200 (driver 580): the machine's CUDA libraries are found in PyTorch's wheels
# and the driver's folder; /usr/local/cuda-*/compat holds a libcuda that the driver refuses
# (CUDA_ERROR_SYSTEM_DRIVER_MISMATCH), so it is skipped. Unpacking takes 7 s.
set -u
T0=$(date +%s)
el() { echo $(( $(date +%s) - T0 )); }
OUT=${OUT:-runs/gpu-out}
mkdir -p "$OUT"
log() { echo "[$(el)s] $*" | tee -a "$OUT/log.txt"; }
DATA=/work/shared/datasets/utkface/UTKFace
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | tee -a "$OUT/log.txt"
NV=$(python3 -c 'import nvidia; print(list(nvidia.__path__)[0])' 2>/dev/null)
LIBS=$(find $NV /usr/local/nvidia /usr/lib/x86_64-linux-gnu /usr/local/cuda* \
  \( -name 'libcublas.so.13' -o -name 'libcublasLt.so.13' -o -name 'libcurand.so.10' -o -name 'libcuda.so.1' \) \
  2>/dev/null | grep -v compat | xargs -r -n1 dirname | sort -u | tr '\n' ':')
export LD_LIBRARY_PATH="$LIBS${LD_LIBRARY_PATH:-}"
xz -dc .gpu/faceage-host.xz > /tmp/fh && chmod +x /tmp/fh
ldd /tmp/fh | grep -E 'cuda|cublas|curand' | tee -a "$OUT/log.txt"
python3 -c 'import safetensors' 2>/dev/null || python3 -m pip install -q --no-index --no-deps .gpu/wheels/safetensors-*.whl 2>&1 | tee -a "$OUT/log.txt"
python3 scripts/gpu/unpack-crops.py .gpu/crops.pack runs/cache 2>&1 | tee -a "$OUT/log.txt"
cp .gpu/detector.onnx models/face_detection_back_256x256_barracuda.onnx
mkdir -p runs
log "ready"
