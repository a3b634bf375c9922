# One device call: training throughput before/after (scripts/train_throughput.py), then the dense
# world teacher (configs/world-teacher.yaml) for as many steps as the rest of the call holds.
#   bash scripts/gpu_teacher.sh        (through the device tool; needs .carry/src and .baseline/src)
# .carry/src: `git archive HEAD src` (the committed code, not other work in progress), and
# .carry/COMMIT its hash (`git rev-parse --short HEAD > .carry/COMMIT`);
# .baseline/src: the trainer before this work (`git archive 52dd9a9 src`), timed as "before".
# The step count is fixed before training starts (STEPS=N, or from the measured s/step of the
# fastest b64 variant, so that the run and its LR schedule end inside the call); plan.txt records it.
set -o pipefail
export PYTHONPATH=.carry/src PYTHONUNBUFFERED=1 VIDEOMLA_COMMIT=$(cat .carry/COMMIT 2>/dev/null)
START=$(date +%s)
LIMIT=${LIMIT:-580}
R=runs/world-teacher
pack() {
  python3 - "$R" "$OUT/teacher" <<'PY' 2>&1 | tee -a $OUT/log
import sys
from pathlib import Path
import torch
from videomla.checkpoint import RESERVED_METADATA, load_metadata, load_model, save_model
from videomla.checkpoint import resolve_checkpoint
src = resolve_checkpoint(Path(sys.argv[1]))
meta = {k: v for k, v in load_metadata(src).items() if k not in RESERVED_METADATA}
save_model(load_model(src, dtype=torch.bfloat16), Path(sys.argv[2]), meta)
print("exported", src, "as bf16 to", sys.argv[2])
PY
  cp $R/metrics.csv $R/config.yaml $OUT/ 2>/dev/null
  ls -la $OUT $OUT/teacher 2>/dev/null
}
trap pack EXIT
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader | tee $OUT/log
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a $OUT/log
timeout ${BENCH_S:-230} python3 scripts/train_throughput.py --out $OUT/tp --baseline-src .baseline/src \
  --cases b16 b64 b64-eager b64-inductor b128-inductor b64-inductor-cudnn cpu-render-b16 --steps 10 --warmup 3 2>&1 \
  | tee -a $OUT/log
ELAPSED=$(( $(date +%s) - START ))
SETS=$(python3 - $OUT/tp/throughput.json $(( LIMIT - ELAPSED )) <<'PY' | tee $OUT/plan.txt
import json, sys
cases = json.load(open(sys.argv[1]))["cases"]
left = float(sys.argv[2]) - 45  # start-up, held-out bank, final export
kernels = {"b64": "null", "b64-eager": "eager", "b64-inductor": "inductor"}
ok = {k: cases[k] for k in kernels if k in cases and "error" not in cases[k]}
best = max(ok, key=lambda k: ok[k]["clips_per_s"])
s = ok[best]["s_per_step"]
compile_s = ok[best]["warmup_s"]
steps = int((left - compile_s) / (s * 1.06)) // 10 * 10  # +6%: held-out loss every 100 steps, saves
print(f"--set kernels.backend={kernels[best]} --set steps={steps} --set optim.decay_steps={steps // 3} "
      f"--set checkpoint.every={max(100, steps // 4)}")
print(f"# best {best}: {s:.4f} s/step, warm-up {compile_s:.0f} s, {left:.0f} s left -> {steps} steps", file=sys.stderr)
PY
)
if [ -n "$STEPS" ]; then  # a fixed step count (a replay): STEPS=2400 bash scripts/gpu_teacher.sh
  SETS="$(echo $SETS | sed 's/--set steps=[0-9]* --set optim.decay_steps=[0-9]*//') --set steps=$STEPS --set optim.decay_steps=$(( STEPS / 3 ))"
fi
echo "plan: $SETS" | tee -a $OUT/log
ELAPSED=$(( $(date +%s) - START ))
timeout $(( LIMIT - ELAPSED - 25 )) python3 -m videomla train configs/world-teacher.yaml --out $R --device cuda $SETS 2>&1 \
  | grep -v "it/s\]" | tee -a $OUT/log
echo "train exit $? after $(( $(date +%s) - START )) s" | tee -a $OUT/log
