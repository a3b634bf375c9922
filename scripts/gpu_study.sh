# The device command of the reproduction study (docs/reproduction.md): `bash scripts/gpu_study.sh`.
# `main`: the teacher and dense / MLA-SVD / MLA-random students; `sweep`: the d_c / RoPE sweep;
# `default`: only the shipped default model (teacher + rope32 student, the study's step counts);
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
elif [ "$PHASE" = default ]; then  # the embedded default model in one call, replaying the study's step counts
  S="--steps docs/reproduction/study-main.json docs/reproduction/study-sweep.json"
  timeout 530 python3 scripts/reproduce.py default --out $R $S --skip-eval 2>&1 | grep -v "it/s\]" | tee $OUT/default.log
else
  T=$R/teacher-model; [ -f $T/model.safetensors ] || T=carry/teacher-model
  timeout 530 python3 scripts/reproduce.py sweep --out $R --teacher $T --budget 30 --skip-eval 2>&1 | grep -v "it/s\]" | tee $OUT/sweep.log
fi
