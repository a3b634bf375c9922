#!/usr/bin/env bash
# The engine's device run (issue 19): `videomla bench` and `videomla generate` side by side on the
# same variants, random weights at Wan2.1-1.3B shape, 832x480, batch 1. One call, about 8 minutes:
#   run(command="bash scripts/gpu_engine.sh", carry=[".whl"], timeout_s=600)
# .whl holds diffusers and importlib_metadata wheels (the device image has no diffusers; see the
# device README). Results land in $OUT (bench.json/.md, gen-*.json, engine.md, logs).
set -uo pipefail
export PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 VIDEOMLA_GIT_COMMIT=${VIDEOMLA_GIT_COMMIT:-unknown}
OUT=${OUT:-out/engine}; mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:src
else
  export PYTHONPATH=src
fi
V="python3 -m videomla"
W=/tmp/random-wan
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gen.log"
[ -d $W/vae ] || timeout 120 python3 scripts/make_random_wan.py $W 2>&1 | tail -2 | tee -a "$OUT/gen.log"
timeout 300 $V bench --variants sf21,dense-s1w6,mla-auto,mla-fp8c --horizons 5,60 --batched-variants "" \
  --concurrency "" --json "$OUT/bench.json" --markdown "$OUT/bench.md" --quiet 2>&1 | tail -20 >> "$OUT/gen.log"
# png-grid keeps 16 sampled frames: the writer costs nothing, so generate's FPS is the engine's and the decode's
common=(--vae $W/vae --text-encoder hash --prompt "a benchmark prompt" --seconds ${SECONDS_OF_VIDEO:-20} --seed 0 --quiet)
for run in "mla-auto:$W/mla:" "dense-s1w6:$W/dense:--stream videomla" "sf21:$W/dense:" \
  "mla-auto-sequential-decode:$W/mla:--no-decode-overlap"; do
  IFS=: read -r name ckpt extra <<<"$run"
  timeout 100 $V generate --checkpoint "$ckpt" $extra "${common[@]}" --out /tmp/$name.png \
    --summary "$OUT/gen-$name.json" 2>&1 | tail -3 | tee -a "$OUT/gen.log"
done
python3 scripts/engine_report.py "$OUT" | tee "$OUT/engine.md"
