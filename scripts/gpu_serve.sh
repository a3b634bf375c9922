#!/usr/bin/env bash
# The H200 part of issue 15: Wan2.1-1.3B shape with random weights, MLA vs dense at the same window:
# aggregate and per-stream FPS over stream counts through the real server (benchmarks/serve_bench.py,
# every level warmed once first so compile and CUDA-graph capture per cohort size are not timed); the
# largest count at which every stream's steady FPS (after its first chunk) stays >= 16 is the
# real-time capacity.
# Usage: [COUNTS="1 2 4 8"] [STREAM_SECONDS=2] [KIND_LIMIT=250] bash scripts/gpu_serve.sh [OUT_DIR]
# (default OUT_DIR /tmp/videomla-serve-gpu; KIND_LIMIT: seconds for each of MLA and dense)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-/tmp/videomla-serve-gpu}
counts=${COUNTS:-1 2 4 8 16}
mkdir -p "$out"
[ -d "$out/ckpt/mla" ] || python3 scripts/make_random_wan.py "$out/ckpt" --preset wan2.1-t2v-1.3b --dtype bf16
for kind in mla dense; do  # dense at MLA's window (1 sink + 6, window-relative RoPE), not its peer default
  timeout "${KIND_LIMIT:-250}" python3 benchmarks/serve_bench.py --checkpoint "$out/ckpt/$kind" --vae "$out/ckpt/vae" --text-encoder hash \
    --stream videomla --device cuda --streams $counts --seconds "${STREAM_SECONDS:-2}" --warmup-each --out "$out/serve-$kind.json" 2>&1 \
    | tee "$out/serve-$kind.log" || true
done
python3 - "$out" <<'PY'
import json, sys
out = sys.argv[1]
for kind in ("mla", "dense"):
    try:
        levels = json.load(open(f"{out}/serve-{kind}.json"))["levels"]
    except (OSError, ValueError, KeyError) as err:
        print(kind, "no result:", err); continue
    rt = [lv["streams"] for lv in levels if (lv["steady_fps_per_stream"] or {"min": 0})["min"] >= 16]
    print(kind, "real-time streams (every stream's steady FPS >= 16):", max(rt) if rt else 0,
          "| aggregate FPS:", {lv["streams"]: lv["aggregate_fps"] for lv in levels})
PY
