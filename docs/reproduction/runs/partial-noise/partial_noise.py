"""Where does a teacher's sample go wrong: start its ODE part-way, from the real clip noised there. CPU.

Ad-hoc diagnostic (session of 2026-12-03, docs/reproduction.md "Teacher 8"), from the repository root:

    python docs/reproduction/runs/partial-noise/partial_noise.py MODEL OUT.json T_START[,T_START...] [NOISE_SEEDS]

A T_START written FIRST/LATER starts the first chunk at FIRST and the later ones at LATER (FIRST 0:
the real first chunk itself, as a given frame; 0/1000 asks whether a right first chunk is all a
sample lacks).

Each chunk of a 1x video (16 held-out prompts of world seed 777, as scripts/score_teacher.py) is
sampled with the model's own 16 Euler steps (shift 5), but only the steps at t <= T_START: it starts
from the real clip's chunk noised to the first of them (x = (1 - s) x0 + s eps), the cache holding
the model's own earlier chunks, as in sampling. T_START 1000 is plain sampling (the same noise as
the scorer). If starting at t = 500 gives real-clip scores, everything below 500 works and the
sample is lost above it (layout); if it is still wrong, the low-noise steps (shape, edges) are.
"""

import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[4] / "scripts"))
from reproduce import STREAM, WORLD
from score_teacher import PROMPT_SEED, mean

from videomla.checkpoint import load_model
from videomla.codecs import PixelCodec
from videomla.config import StreamConfig
from videomla.data.world import caption, clip_params_at, render_batch
from videomla.engine.engine import EngineOptions, LatentGeometry, StreamEngine
from videomla.evaluation import evaluate
from videomla.pipeline.pipeline import build_text_encoder, resolve_spec
from videomla.schedule import SamplingSchedule, add_noise, even_steps, sigma_of, to_x0

torch.set_num_threads(1)
path, out, starts = sys.argv[1], Path(sys.argv[2]), sys.argv[3].split(",")
seeds = int(sys.argv[4]) if len(sys.argv) > 4 else 2
model = load_model(path, dtype=torch.float32).eval()
spec = resolve_spec(path)[1]
enc = build_text_encoder(spec.text_encoder, model.config.text_dim, "cpu", torch.float32)
params = [clip_params_at(PROMPT_SEED, i) for i in range(16)]
prompts = [caption(p) for p in params]
B = len(prompts)
codec = PixelCodec(WORLD["spatial_stride"], WORLD["scale"], WORLD["offset"])
real = codec.encode(render_batch(params, 21))  # [B, 48, 21, 16, 16]
text = model.embed_text(enc.encode(prompts))


@torch.no_grad()
def run(first: float, later: float, noise_seed: int) -> torch.Tensor:
    eng = StreamEngine(
        model, StreamConfig(**STREAM), LatentGeometry(48, 16, 16), batch=B,
        schedule=SamplingSchedule(even_steps(16), spec.schedule.shift, "euler"),
        options=EngineOptions(compile=False, cuda_graphs=False),
    )  # fmt: skip
    gen = torch.Generator().manual_seed(noise_seed)
    chunks = []
    for c in range(7):
        eps = torch.randn(B, 48, 3, 16, 16, generator=gen)
        ts = [t for t in eng.timesteps if float(t) <= (first if c == 0 else later)]
        if not ts:  # start at 0: the real chunk, committed as it is
            x0 = real[:, :, 3 * c : 3 * c + 3].float()
            model.forward_chunk(x0, eng._timestep(0.0), text, eng.cache, write=True)
            chunks.append(x0)
            continue
        x = add_noise(real[:, :, 3 * c : 3 * c + 3], eps, sigma_of(ts[0])).float()
        for i, t in enumerate(ts):
            v = model.forward_chunk(x, eng._timestep(t), text, eng.cache)
            if i + 1 == len(ts):
                x0 = to_x0(x, v, sigma_of(t))
            else:
                x = x + float(sigma_of(ts[i + 1]) - sigma_of(t)) * v
        model.forward_chunk(x0, eng._timestep(0.0), text, eng.cache, write=True)
        chunks.append(x0)
    return codec.decode(torch.cat(chunks, dim=2))


results = json.loads(out.read_text()) if out.exists() else {"model": path, "runs": {}}
for item in starts:
    first, _, later = item.partition("/")
    start = time.time()
    videos = []
    for seed in range(seeds):
        v = run(float(first), float(later or first), seed)
        videos += [{**evaluate(v[i], p).overall, "noise_seed": seed, "prompt": p} for i, p in enumerate(prompts)]
    name = f"from t={item}"
    results["runs"][name] = {"mean": mean(videos), "videos": videos}
    m = results["runs"][name]["mean"]
    print(name, " ".join(f"{k} {m[k]:.3f}" for k in ("overall", "adherence", "persistence", "shape", "pass_rate")),
          f"{time.time() - start:.0f} s", flush=True)  # fmt: skip
    out.write_text(json.dumps(results, indent=1) + "\n")
