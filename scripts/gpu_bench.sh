# The device command behind benchmarks/h100.{json,md}: `bash scripts/gpu_bench.sh` on one H100.
# diffusers (the Wan VAE) travels as wheels in .whl/ (see the device notes); the bench itself is
# `videomla bench` with its defaults: every variant, batch 1 and batched streams, VAE decode.
set -o pipefail
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=src:$PYTHONPATH PYTHONUNBUFFERED=1
OUT=${OUT:-benchmarks}
trap 'cp benchmarks/h100.json.partial $OUT/ 2>/dev/null' EXIT
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee $OUT/bench.log
timeout ${BENCH_TIMEOUT:-560} python3 -m videomla bench --device cuda --json benchmarks/h100.json --markdown benchmarks/h100.md "$@" 2>&1 \
  | grep -v "it/s\]" | tee -a $OUT/bench.log
cp benchmarks/h100.json benchmarks/h100.md $OUT/ 2>/dev/null
