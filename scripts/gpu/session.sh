#!/bin/bash
# One GPU session, on the GPU machine, in a checkout that carries .gpu/ (scripts/gpu/prepare.sh):
# unpack the crops, measure the GPU (bench-train; a 2-epoch run of the recipe alone: the GPU
# epoch time), then train a sweep of runs side by side until DEADLINE seconds after the start,
# and leave the log and every run's figures and weights (one .tgz each) in $OUT.
# DEADLINE (default 420 s) bounds the whole script, MAX_EPOCHS (default 36) each run of the sweep.
#
# A whole epoch of the recipe there takes 9.8 s (26 epochs in 255 s); runs side by side slow
# each other in proportion, so the sweep below picks one run unless that changes.
DEADLINE=${DEADLINE:-420}
source scripts/gpu/env.sh
nvidia-smi --query-gpu=memory.used --format=csv,noheader -l 2 > runs/gpu-memory.txt 2>&1 &
SMI=$!
/tmp/fh bench-train --device cuda --steps 30 2>&1 | tail -3 | tee -a "$OUT/log.txt"
S=$(el)
timeout 200 /tmp/fh train --device cuda --data $DATA --epochs 2 --out runs/gpu-recipe-e2 > runs/smoke.txt 2>&1
rc=$?
W=$(( $(el) - S ))
grep -E "^epoch +[0-9]+:|^training|rror|panic" runs/smoke.txt | tee -a "$OUT/log.txt"
log "2-epoch recipe run: rc $rc, wall $W s"
if [ $rc != 0 ]; then tail -40 runs/smoke.txt; exit 1; fi
cp runs/smoke.txt runs/gpu-recipe-e2/train.log
tar czf "$OUT/gpu-recipe-e2.tgz" -C runs gpu-recipe-e2
# How much slower is each process when N train side by side?
probe() {
  for i in $(seq "$1"); do /tmp/fh bench-train --device cuda --steps 20 > /tmp/probe.$1.$i 2>&1 & done; wait
  grep -ho 'median [0-9.]*' /tmp/probe.$1.* | awk '{s+=$2} END {printf "%.4f", s/NR}'
}
S1=$(probe 1); S2=$(probe 2); S4=$(probe 4)
log "step s/batch alone $S1, 2 side by side $S2, 4 side by side $S4"
# Wall per epoch (validation and checkpoints included) from the 2-epoch run, scaled; as many
# runs side by side as can finish 36 epochs before the deadline.
LEFT=$(( DEADLINE - $(el) - 25 ))
pick=$(python3 - "$W" "$S1" "$S2" "$S4" "$LEFT" "${MAX_EPOCHS:-36}" <<'PY'
import sys
w, s1, s2, s4, left, most = map(float, sys.argv[1:])
per = max(w, 1.0) / 2.0
for n, s in ((4, s4), (3, (s2 + s4) / 2), (2, s2), (1, s1)):
    epochs = int(left / (per * max(1.0, s / s1) * 1.1))
    if epochs >= most or n == 1:
        print(n, int(min(epochs, most))); break
PY
)
[ -n "$pick" ] || pick="1 30"
N=${pick% *}; E=${pick#* }
log "sweep: $N runs of $E epochs"
# The recipe first (a GPU re-run of the shipped recipe says how far GPU numerics move the
# figures), then variations the 2-core machine has not had time for (model card).
CONFIGS=(
  "recipe|"
  "aug15|--augment 1.5"
  "camera15|--camera 1.5"
  "wd1e-3|--weight-decay 1e-3"
)
RUNS=()
for c in "${CONFIGS[@]:0:$N}"; do
  name=${c%%|*}; flags=${c#*|}
  timeout --signal=TERM --kill-after=30 $(( DEADLINE - $(el) )) \
    /tmp/fh train --device cuda --data $DATA --epochs "$E" --patience 1000 $flags --out "runs/gpu-$name-e$E" \
    > "runs/gpu-$name.log" 2>&1 &
  RUNS+=($!)
done
# Only the runs: a bare `wait` also waits for the endless nvidia-smi sampler (it hung the
# first session until the tool's limit).
wait "${RUNS[@]}"
kill $SMI 2>/dev/null
log "sweep ended"
for c in "${CONFIGS[@]:0:$N}"; do
  name=${c%%|*}; d="runs/gpu-$name-e$E"
  grep -E "^epoch +[0-9]+:" "runs/gpu-$name.log" | tail -2 | sed "s/^/$name: /" | tee -a "$OUT/log.txt"
  cp "runs/gpu-$name.log" "$d/train.log" 2>/dev/null
  tar czf "$OUT/gpu-$name.tgz" -C runs "gpu-$name-e$E"
done
echo "GPU memory used, every 2 s: $(tr '\n' ' ' < runs/gpu-memory.txt | cut -c1-1500)" >> "$OUT/log.txt"
log "done"
