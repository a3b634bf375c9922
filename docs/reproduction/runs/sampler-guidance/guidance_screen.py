"""Screen classifier-free guidance limited to a noise interval on a stage-1 teacher (Euler ODE). CPU.

Ad-hoc record of a screen (session of 2026-12-03), run from the repository root:

    python docs/reproduction/runs/sampler-guidance/guidance_screen.py MODEL OUT.json STEPS SPEC[,SPEC...] [NOISE_SEEDS]

Each SPEC is scale:t_lo:t_hi (guidance ``scale`` where lo < t <= hi, none elsewhere; scale 1: none)
and optionally :shift (a number), :first (guidance in the first chunk only) and :steps0=N (the first
chunk sampled with N Euler steps, the others with STEPS) and :renoise0=T (in the first chunk, the
steps above t = T re-noise the predicted clean chunk with fresh noise instead of an Euler step: a
stochastic layout pick). Prompts, noise and scoring as
scripts/score_teacher.py (16 held-out prompts of world seed 777, 1x = 21 frames, noise seeds
0..NOISE_SEEDS-1). The unconditional branch keeps its own cache rows (the cached frames' keys depend
on the text through every layer).
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
from videomla.data.world import caption, clip_params_at
from videomla.engine.engine import EngineOptions, LatentGeometry, StreamEngine
from videomla.evaluation import evaluate
from videomla.pipeline.pipeline import build_text_encoder, resolve_spec
from videomla.schedule import SamplingSchedule, add_noise, even_steps, sigma_of, to_x0

torch.set_num_threads(1)
path, out, steps, specs = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]), sys.argv[4].split(",")
seeds = int(sys.argv[5]) if len(sys.argv) > 5 else 2
model = load_model(path, dtype=torch.float32).eval()
spec = resolve_spec(path)[1]
enc = build_text_encoder(spec.text_encoder, model.config.text_dim, "cpu", torch.float32)
prompts = [caption(clip_params_at(PROMPT_SEED, i)) for i in range(16)]
B = len(prompts)
codec = PixelCodec(WORLD["spatial_stride"], WORLD["scale"], WORLD["offset"])
features = enc.encode(prompts)
cond, uncond = model.embed_text(features), model.embed_text(torch.zeros_like(features))


@torch.no_grad()
def run(
    scale: float, lo: float, hi: float, shift: float, noise_seed: int, first_only: bool = False,
    steps0: int | None = None, renoise0: float | None = None, frames: int = 21,
) -> torch.Tensor:  # fmt: skip
    guided = scale != 1
    text = torch.cat([cond, uncond]) if guided else cond
    eng = StreamEngine(
        model, StreamConfig(**STREAM), LatentGeometry(48, 16, 16), batch=text.shape[0],
        schedule=SamplingSchedule(even_steps(steps), shift, "euler"),
        options=EngineOptions(compile=False, cuda_graphs=False),
    )  # fmt: skip
    gen = torch.Generator().manual_seed(noise_seed)
    first_ts = SamplingSchedule(even_steps(steps0), shift, "euler").timesteps() if steps0 else eng.timesteps
    chunks = []
    for c in range(frames // 3):
        x = torch.randn(B, 48, 3, 16, 16, generator=gen)
        ts = first_ts if c == 0 else eng.timesteps
        for i, t in enumerate(ts):
            v = model.forward_chunk(torch.cat([x, x]) if guided else x, eng._timestep(t), text, eng.cache)
            if guided:
                on = lo < float(t) <= hi and (c == 0 or not first_only)
                v = v[B:] + (scale if on else 1.0) * (v[:B] - v[B:])
            if i + 1 == len(ts):
                x0 = to_x0(x, v, sigma_of(t))
            elif c == 0 and renoise0 is not None and float(t) > renoise0:
                x = add_noise(to_x0(x, v, sigma_of(t)), torch.randn(x.shape, generator=gen), sigma_of(ts[i + 1]))
            else:
                x = x + float(sigma_of(ts[i + 1]) - sigma_of(t)) * v
        model.forward_chunk(torch.cat([x0, x0]) if guided else x0, eng._timestep(0.0), text, eng.cache, write=True)
        chunks.append(x0)
    return codec.decode(torch.cat(chunks, dim=2))


results = json.loads(out.read_text()) if out.exists() else {"model": path, "steps": steps, "runs": {}}
for item in specs:
    parts = item.split(":")
    scale, lo, hi = float(parts[0]), float(parts[1]), float(parts[2])
    extra = parts[3:]
    shift = next((float(p) for p in extra if p.replace(".", "", 1).isdigit()), spec.schedule.shift)
    steps0 = next((int(p.split("=")[1]) for p in extra if p.startswith("steps0=")), None)
    renoise0 = next((float(p.split("=")[1]) for p in extra if p.startswith("renoise0=")), None)
    start = time.time()
    videos = []
    for seed in range(seeds):
        v = run(scale, lo, hi, shift, seed, "first" in extra, steps0, renoise0)
        videos += [{**evaluate(v[i], p).overall, "noise_seed": seed, "prompt": p} for i, p in enumerate(prompts)]
    results["runs"][item] = {"mean": mean(videos), "videos": videos}
    m = results["runs"][item]["mean"]
    print(item, " ".join(f"{k} {m[k]:.3f}" for k in ("overall", "adherence", "persistence", "shape", "pass_rate")),
          f"{time.time() - start:.0f} s", flush=True)  # fmt: skip
    out.write_text(json.dumps(results, indent=1) + "\n")
