#!/usr/bin/env bash
# Issue 16's GPU run (needs nvidia-h200-x4): one stream split over 1, 2 and 4 GPUs by tokens,
# Wan2.1-1.3B shape, random weights, 832x480; per-chunk latency and FPS, then scaling efficiency.
#   run(command="bash scripts/gpu_parallel.sh", kind="nvidia-h200-x4", timeout_s=600)
set -euo pipefail
export PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 VIDEOMLA_GIT_COMMIT=${VIDEOMLA_GIT_COMMIT:-$(git rev-parse HEAD 2>/dev/null || echo unknown)}
OUT=${OUT:-out/parallel}; mkdir -p "$OUT"
pip install -q --no-deps -e . >/dev/null
args=(--variants dense-s1w6,mla-auto --horizons 5 --batch-sizes 1 --batched-variants "" --concurrency "" --no-vae --quiet)
videomla bench "${args[@]}" --json "$OUT/gpus1.json" 2>&1 | tee "$OUT/gpus1.log"
for n in 2 4; do
  torchrun --standalone --nproc_per_node $n --no-python videomla bench --sequence-parallel "${args[@]}" \
    --json "$OUT/gpus$n.json" 2>&1 | tee "$OUT/gpus$n.log"
done
python - "$OUT" <<'PY' | tee "$OUT/parallel.md"
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
runs = {n: {v["name"]: v["stream"] for v in json.loads((out / f"gpus{n}.json").read_text())["variants"]} for n in (1, 2, 4)}
print("| variant | GPUs | steady chunk ms | FPS | speed-up | scaling efficiency |\n|---|---|---|---|---|---|")
for name in runs[1]:
    for n in (1, 2, 4):
        s, base = runs[n][name], runs[1][name]["fps_transformer"]
        print(f"| {name} | {n} | {s['steady_chunk_ms']:.1f} | {s['fps_transformer']:.1f} | {s['fps_transformer'] / base:.2f} | {s['fps_transformer'] / base / n:.2f} |")
PY
