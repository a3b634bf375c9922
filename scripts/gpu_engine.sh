#!/usr/bin/env bash
# The engine's device run (issue 19): `videomla bench` and `videomla generate` side by side on the
# same variants, random weights at Wan2.1-1.3B shape, 832x480, batch 1. One call, about 8 minutes:
#   run(command="bash scripts/gpu_engine.sh", timeout_s=600)
# Results land in $OUT (bench.json/.md, gen-*.json, engine.md); commit them under benchmarks/engine/.
set -euo pipefail
export PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 VIDEOMLA_GIT_COMMIT=${VIDEOMLA_GIT_COMMIT:-$(git rev-parse HEAD 2>/dev/null || echo unknown)}
OUT=${OUT:-out/engine}; mkdir -p "$OUT"
pip install -q --no-deps -e . >/dev/null
W=/tmp/random-wan
[ -d $W/vae ] || python scripts/make_random_wan.py $W 2>&1 | tee "$OUT/make.log"
videomla bench --variants sf21,dense-s1w6,mla-auto,mla-fp8c --horizons 5,60 --batch-sizes 4 --concurrency "" \
  --json "$OUT/bench.json" --markdown "$OUT/bench.md" --quiet 2>&1 | tee "$OUT/bench.log"
common=(--vae $W/vae --text-encoder hash --prompt "a benchmark prompt" --seconds 30 --seed 0 --quiet)
videomla generate --checkpoint $W/mla "${common[@]}" --out /tmp/mla.mp4 --summary "$OUT/gen-mla-auto.json"
videomla generate --checkpoint $W/dense --stream videomla "${common[@]}" --out /tmp/d.mp4 --summary "$OUT/gen-dense-s1w6.json"
videomla generate --checkpoint $W/dense "${common[@]}" --out /tmp/sf.mp4 --summary "$OUT/gen-sf21.json"
python scripts/engine_report.py "$OUT" | tee "$OUT/engine.md"
