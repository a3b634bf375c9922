# The 2-GPU smoke run of docs/train.md (device kind nvidia-h200-x2): all three stages under torchrun
# with NCCL + FSDP2, a resume across process counts, then the same teacher-forcing run on one GPU to
# compare losses. Logs and metrics land in $OUT (committed under benchmarks/multi-gpu/).
set -o pipefail
export PYTHONPATH=src PYTHONUNBUFFERED=1
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1  # no NVLink multicast
OUT=${OUT:-runs/multi}; mkdir -p $OUT
V="python3 -m videomla"
T="torchrun --standalone --nproc_per_node 2 -m videomla"  # NCCL on GPUs, gloo with DEV=cpu
S="--device ${DEV:-cuda} --set steps=20 --set checkpoint.every=10 --set data.batch_size=8 --set log.every=1"
R=/tmp/multi
{
  nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
  python3 -c "import torch; print('torch', torch.__version__, 'nccl', torch.cuda.nccl.version())"
  $T train configs/world-1-teacher-forcing.yaml --out $R/tf-2gpu $S --set steps=10 &&
  $T train configs/world-1-teacher-forcing.yaml --out $R/tf-2gpu $S --resume &&
  $V train configs/world-1-teacher-forcing.yaml --out $R/tf-1gpu $S &&
  $T train configs/world-2-consistency.yaml --out $R/cd-2gpu $S --set model.checkpoint=$R/tf-2gpu --set teacher.checkpoint=$R/tf-2gpu &&
  $T train configs/world-3-dmd.yaml --out $R/dmd-2gpu $S --set steps=10 --set checkpoint.every=5 --set model.checkpoint=$R/cd-2gpu --set teacher.checkpoint=$R/tf-2gpu --set activation_checkpointing=true &&
  python3 scripts/compare_losses.py $R/tf-1gpu/metrics.csv $R/tf-2gpu/metrics.csv &&
  $V generate --checkpoint $R/dmd-2gpu --prompt "a large red circle bouncing" --seconds 10 --out $R/smoke.gif
} 2>&1 | grep --line-buffered -v "it/s\]" | tee $OUT/multi-gpu.log
rc=$?
cd $R && tar czf $OUT/multi-gpu-runs.tar.gz */metrics.csv */config.yaml smoke.gif 2>/dev/null
exit $rc
