#!/usr/bin/env bash
# Arms of one experiment trained in a single device call (docs/reproduction.md):
#   CONFIG=... TOTAL=1200 ARM_LIMIT=280 bash scripts/gpu_arms.sh "control=" "first7=--set loss.first_chunk_weight=7"
# Each argument is NAME=SETS (SETS: scripts/gpu_train.sh overrides, may be empty). Every arm runs
# scripts/gpu_train.sh (SCORE=1) from the config's start (or its run's newest checkpoint, on a warm
# machine) for TOTAL steps under ARM_LIMIT seconds, into runs/NAME.
# One after another (default), an arm comes back as $OUT/NAME/model/ (weights + config.json) and
# $OUT/NAME.tar (metrics, config, log, scores): three files an arm, under the call's eight.
# PARALLEL=1 runs the arms at once on the one GPU (the world model's step leaves it mostly idle) and
# brings each arm back as one file, $OUT/NAME.tar, model included (a bf16 model is under 15 MB).
set -o pipefail
: "${CONFIG:?}" "${TOTAL:?}" "${ARM_LIMIT:?}" "${OUT:?}"
ROOT=$OUT
train_arm() {  # NAME SETS
  mkdir -p "$ROOT/$1"
  OUT=$ROOT/$1 RUN=runs/$1 UNTIL=$TOTAL LIMIT=$ARM_LIMIT SCORE=1 SETS="$2" bash scripts/gpu_train.sh
}
if [ -n "$PARALLEL" ]; then
  for arm in "$@"; do
    name=${arm%%=*}
    train_arm "$name" "${arm#*=}" >"$ROOT/$name.stdout" 2>&1 &
  done
  wait
  for arm in "$@"; do
    name=${arm%%=*}
    tail -4 "$ROOT/$name/log"
    (cd "$ROOT/$name" && tar -cf "../$name.tar" ./*) && rm -rf "${ROOT:?}/$name" "$ROOT/$name.stdout"
  done
  exit 0
fi
for arm in "$@"; do
  name=${arm%%=*}
  train_arm "$name" "${arm#*=}"
  (cd "$ROOT/$name" && tar -cf "../$name.tar" --exclude=model ./* && find . -maxdepth 1 -type f -delete)
  ls -la "$ROOT/$name/model"
done
