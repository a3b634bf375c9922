export PYTHONPATH=src PYTHONUNBUFFERED=1
pack() { cd /tmp/repro && tar czf $OUT/repro-main.tar.gz study-main.json */metrics.csv */config.yaml rank-*/ 2>/dev/null; cp teacher-model/model.safetensors $OUT/teacher.safetensors; cp teacher-model/config.json $OUT/teacher-config.json; }
trap pack EXIT
timeout 540 python3 scripts/reproduce.py main --out /tmp/repro --teacher-budget 150 --budget 35 2>&1 | grep -v "it/s\]" | tee $OUT/main.log
python3 - <<'PY'
import torch
from videomla.checkpoint import load_model, save_model, load_metadata
from videomla.training.models import resolve_checkpoint_path
for n in ("mla-svd-cd", "dense-cd"):
    d = resolve_checkpoint_path(f"/tmp/repro/{n}")
    save_model(load_model(d, dtype=torch.bfloat16), f"/tmp/repro/{n}-bf16", load_metadata(d))
PY
cp /tmp/repro/mla-svd-cd-bf16/model.safetensors $OUT/mla-svd.safetensors; cp /tmp/repro/mla-svd-cd-bf16/config.json $OUT/mla-svd-config.json
