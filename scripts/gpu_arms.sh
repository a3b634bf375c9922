#!/usr/bin/env bash
# Arms of one experiment trained one after another in a single device call (docs/reproduction.md):
#   CONFIG=... TOTAL=1200 ARM_LIMIT=280 bash scripts/gpu_arms.sh "control=" "first7=--set loss.first_chunk_weight=7"
# Each argument is NAME=SETS (SETS: scripts/gpu_train.sh overrides, may be empty). Every arm runs
# scripts/gpu_train.sh (SCORE=1) from the config's start for TOTAL steps under ARM_LIMIT seconds, into
# runs/NAME, and comes back as $OUT/NAME/model/ (weights + config.json) and $OUT/NAME.tar (metrics,
# config, log, scores): three files an arm (a model under 15 MB), under the call's eight.
set -o pipefail
: "${CONFIG:?}" "${TOTAL:?}" "${ARM_LIMIT:?}" "${OUT:?}"
ROOT=$OUT
for arm in "$@"; do
  name=${arm%%=*}
  sets=${arm#*=}
  mkdir -p "$ROOT/$name"
  OUT=$ROOT/$name RUN=runs/$name UNTIL=$TOTAL LIMIT=$ARM_LIMIT SCORE=1 SETS="$sets" bash scripts/gpu_train.sh
  (cd "$ROOT/$name" && tar -cf "../$name.tar" --exclude=model ./* && find . -maxdepth 1 -type f -delete)
  ls -la "$ROOT/$name/model"
done
