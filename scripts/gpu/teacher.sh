#!/bin/bash
# A wide teacher on the GPU (`train --net wide`: the standard design at twice the channels,
# too large for the board), for the shipped net to learn from on the CPU afterwards
# (`train --init models/faceage-f32.onnx --teacher RUN ...`, model card). On the GPU machine,
# in a checkout that carries .gpu/ (scripts/gpu/prepare.sh):
#   DEADLINE=540 bash scripts/gpu/teacher.sh
# It times a training step of the wide net at batch 64 and 128, takes the batch that reads
# more faces a second (128 only when that is 1.4 times as many, its peak learning rate scaled
# by the square root of the batch), fits as many epochs of the cosine schedule as finish before
# DEADLINE seconds after the start (at most MAX_EPOCHS, default 48), and leaves the log and the
# run (weights, figures; no optimizer checkpoint) in $OUT/$NAME.tgz (NAME default gpu-wide).
# TEACHER_ARGS adds training options (e.g. "--camera 1.5"): teachers that differ make a better
# ensemble, and the same options twice give nearly the same run (the CUDA device seeds the
# weights the same way each time). A run left by an earlier call on a machine still warm is
# replaced (train refuses to start in a run folder that has one).
DEADLINE=${DEADLINE:-540}
source scripts/gpu/env.sh
step() { /tmp/fh bench-train --device cuda --net wide --batch "$1" --steps 20 2>&1 | tee -a "$OUT/log.txt" | grep -o 'median [0-9.]*' | awk '{print $2}'; }
S64=$(step 64); S128=$(step 128)
log "wide net, s/step: batch 64 ${S64:-?}, batch 128 ${S128:-?}"
[ -n "$S64" ] || { log "bench-train failed"; exit 1; }
LEFT=$(( DEADLINE - $(el) - 45 ))
read -r BATCH LR EPOCHS < <(python3 - "$S64" "${S128:-0}" "$LEFT" "${MAX_EPOCHS:-48}" <<'PY'
import sys
s64, s128, left, most = float(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
faces = 16952
batch, step = (128, s128) if s128 > 0 and 128 / s128 >= 1.4 * 64 / s64 else (64, s64)
lr = 0.003 * (batch / 64) ** 0.5
# An epoch of the recipe measured 9.8 s whole against 7-8 s of steps: validation, batch-norm
# statistics and checkpoints add about a third.
# The recipe's camera augmentation runs on the CPU at about 9.8 s an epoch at the least.
epoch = max(9.8, faces / batch * step * 1.35 + 1.0)
print(batch, f"{lr:.4g}", max(2, min(most, int(left / epoch))))
PY
)
log "training: batch $BATCH, lr $LR, $EPOCHS epochs"
NAME=${NAME:-gpu-wide}
RUN=runs/$NAME
rm -rf "$RUN"
read -r -a EXTRA <<< "${TEACHER_ARGS:-}"
timeout --signal=TERM --kill-after=20 $(( DEADLINE - $(el) - 15 )) \
  /tmp/fh train --device cuda --data $DATA --net wide --batch "$BATCH" --lr "$LR" \
  --epochs "$EPOCHS" --patience 1000 "${EXTRA[@]}" --out "$RUN" > "$RUN.log" 2>&1
log "training ended: rc $?"
grep -E "^epoch +[0-9]+:" "$RUN.log" | tee -a "$OUT/log.txt" | tail -3
cp "$RUN.log" "$RUN/train.log"
tar czf "$OUT/$NAME.tgz" --exclude=checkpoint.safetensors -C runs "$NAME"
log "done"
