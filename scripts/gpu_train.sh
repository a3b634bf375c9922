# One device call of a training run that may span several calls (docs/reproduction.md):
#   CONFIG=configs/world-teacher-2.yaml RUN=runs/world-teacher-2 TOTAL=7200 UNTIL=3200 bash scripts/gpu_train.sh
# Trains CONFIG from RUN's newest checkpoint (or from scratch if RUN holds none) up to step UNTIL of
# a TOTAL-step schedule, under a wall-clock guard so that the call always ends with what it made
# brought back: metrics.csv, config.yaml and the newest exported model as bf16 under $OUT/model
# (sharded under the call's 16 MiB a file).
# BENCH="b64-inductor ..." first times those scripts/train_throughput.py cases (10 steps each);
# SETS="--set key=value ..." adds config overrides (e.g. where the weights to start from lie).
# BASELINE=DIR: an older src/ the BENCH's before-* cases run on. SCORE=1: after the export, score it
# (scripts/score_teacher.py on the device: 16 held-out prompts x 2 noise seeds, by default 8 and 16 Euler
# steps; SCORE_ARGS replaces "--steps 8 16 --horizons 1x --solver euler", e.g. for a distilled model).
# Needs .carry/src (`git archive HEAD src | tar -x -C .carry`) and .carry/COMMIT (its hash).
set -o pipefail
export PYTHONPATH=.carry/src PYTHONUNBUFFERED=1 VIDEOMLA_COMMIT=$(cat .carry/COMMIT 2>/dev/null)
START=$(date +%s)
LIMIT=${LIMIT:-570}
: "${CONFIG:?}" "${RUN:?}" "${TOTAL:?}" "${UNTIL:?}"
pack() {
  cp $RUN/metrics.csv $RUN/config.yaml $OUT/ 2>/dev/null
  python3 - "$RUN" "$OUT/model" <<'PY' 2>&1 | tee -a $OUT/log
import sys
from pathlib import Path
import torch
from videomla.checkpoint import RESERVED_METADATA, load_metadata, load_model, resolve_checkpoint, save_model
src = resolve_checkpoint(Path(sys.argv[1]))
meta = {k: v for k, v in load_metadata(src).items() if k not in RESERVED_METADATA}
save_model(load_model(src, dtype=torch.bfloat16), Path(sys.argv[2]), meta, max_shard_bytes=15_000_000)  # 16 MiB a file back
print("exported", src, "as bf16 to", sys.argv[2])
PY
}
PACKED=
trap '[ -z "$PACKED" ] && pack' EXIT
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee -a $OUT/log
echo "commit $VIDEOMLA_COMMIT; CONFIG=$CONFIG RUN=$RUN TOTAL=$TOTAL UNTIL=$UNTIL SETS=$SETS" | tee -a $OUT/log
if [ -n "$BENCH" ]; then
  timeout ${BENCH_LIMIT:-150} python3 scripts/train_throughput.py --out $OUT/tp --cases $BENCH --steps 10 --warmup 3 \
    ${BASELINE:+--baseline-src $BASELINE} 2>&1 | tee -a $OUT/log
fi
RESUME=$(ls -d $RUN/checkpoints/step_* >/dev/null 2>&1 && echo --resume)
ELAPSED=$(( $(date +%s) - START ))
RESERVE=$([ -n "$SCORE" ] && echo 80 || echo 30)  # seconds kept for the export (and the scoring)
timeout $(( LIMIT - ELAPSED - RESERVE )) python3 -m videomla train $CONFIG --out $RUN --device cuda $RESUME \
  --set steps=$UNTIL --set optim.total_steps=$TOTAL $SETS 2>&1 | grep -v "it/s\]" | tee -a $OUT/log
echo "train exit $? after $(( $(date +%s) - START )) s" | tee -a $OUT/log
pack; PACKED=1
if [ -n "$SCORE" ]; then
  timeout $(( LIMIT - $(date +%s) + START )) python3 scripts/score_teacher.py $OUT/model --out $OUT/scores.json \
    ${SCORE_ARGS:---steps 8 16 --horizons 1x --solver euler} --device cuda 2>&1 | tail -25 | tee -a $OUT/log
fi
