# The device command of the reproduction study (docs/reproduction.md): `bash scripts/gpu_study.sh`.
# Trains the main phase (teacher, dense / MLA-SVD / MLA-random students), then the d_c / RoPE sweep,
# each run sized by a wall-clock budget; scoring runs here too unless a phase runs out of time
# (then `python scripts/reproduce.py evaluate --study ...` finishes it on any machine).
export PYTHONPATH=src PYTHONUNBUFFERED=1
PHASE=${1:-main}
R=/tmp/repro
pack() {  # at most 8 files come back: the log, one tar of the small files, one safetensors per model
  cd $R && tar czf $OUT/repro-$PHASE.tar.gz study-*.json */metrics.csv */config.yaml *-model/config.json rank-*/ 2>/dev/null
  for m in $R/*-model; do [ -f $m/model.safetensors ] && cp $m/model.safetensors $OUT/$(basename $m).safetensors; done
}
trap pack EXIT
if [ "$PHASE" = main ]; then
  timeout 530 python3 scripts/reproduce.py main --out $R --teacher-budget 250 --budget 30 --skip-eval 2>&1 | grep -v "it/s\]" | tee $OUT/main.log
else
  T=$R/teacher-model; [ -f $T/model.safetensors ] || T=carry/teacher-model
  timeout 530 python3 scripts/reproduce.py sweep --out $R --teacher $T --budget 30 --skip-eval 2>&1 | grep -v "it/s\]" | tee $OUT/sweep.log
fi
