import sys, json, torch, time
sys.path.insert(0, "/work/main/scripts")
from score_teacher import rollout, PROMPT_SEED
from reproduce import WORLD
from videomla.checkpoint import load_model
from videomla.data.world import caption, clip_params_at, WorldSpec
from videomla.evaluation import evaluate
from videomla.pipeline.pipeline import build_text_encoder, resolve_spec
torch.set_num_threads(2)
path = sys.argv[1]; steps=int(sys.argv[2]); solver=sys.argv[3]
model = load_model(path, dtype=torch.float32).eval()
spec = resolve_spec(path) if False else None
from videomla.text import HashTextEncoder
import json as js, pathlib
meta = js.load(open(pathlib.Path(path)/"config.json")) if (pathlib.Path(path)/"config.json").exists() else {}
enc = build_text_encoder(resolve_spec(path)[1].text_encoder, model.config.text_dim, "cpu", torch.float32)
prompts = [caption(clip_params_at(PROMPT_SEED, i)) for i in range(16)]
t0=time.time()
rows = {}
for noise in range(2):
    vids = rollout(model, enc, prompts, steps, noise, 21, solver)
    for p, v in zip(prompts, vids):
        e = evaluate(v, p, fps=8, window_seconds=3/8)
        n = p.count(",") + p.count(" and ") + 1
        rows.setdefault(n, []).append([[w["adherence"], w["persistence"], w["shape"], w["overall"]] for w in e.windows])
print("time", time.time()-t0)
for n, r in sorted(rows.items()):
    t = torch.tensor(r)  # videos, windows, 4
    print(n, "objects, videos", len(r))
    for k, name in enumerate(["adherence","persistence","shape","overall"]):
        print(f"  {name:12s}", " ".join(f"{x:.2f}" for x in t[:, :, k].mean(0).tolist()))
