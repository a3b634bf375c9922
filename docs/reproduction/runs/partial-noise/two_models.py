"""A first chunk from one teacher, the rest of the video from another. CPU.

Ad-hoc diagnostic (session of 2026-12-03, docs/reproduction.md "Teacher 9"), from the repository root:

    python docs/reproduction/runs/partial-noise/two_models.py FIRST_MODEL REST_MODEL OUT.json [STEPS] [NOISE_SEEDS]

The first chunk is sampled by FIRST_MODEL (its Euler steps from pure noise), committed to
REST_MODEL's cache by REST_MODEL's own cache-writing pass, and chunks 2-7 are sampled by
REST_MODEL; prompts, noise draws and scoring as scripts/score_teacher.py (16 held-out prompts of
world seed 777, 1x). FIRST_MODEL = REST_MODEL is plain sampling. A teacher (Euler-sampled) model
runs STEPS Euler steps; a distilled FIRST_MODEL (a re-noising sampler recorded) runs its own
recorded schedule. DEVICE=cuda runs the models there (its noise draws differ from the CPU's: pair
only runs on the same device).
"""

import json
import os
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
from videomla.schedule import SamplingSchedule, even_steps

torch.set_num_threads(1)
device = torch.device(os.environ.get("DEVICE", "cpu"))
first_path, rest_path, out = sys.argv[1], sys.argv[2], Path(sys.argv[3])
steps = int(sys.argv[4]) if len(sys.argv) > 4 else 16
seeds = int(sys.argv[5]) if len(sys.argv) > 5 else 2
prompts = [caption(clip_params_at(PROMPT_SEED, i)) for i in range(16)]
B = len(prompts)
codec = PixelCodec(WORLD["spatial_stride"], WORLD["scale"], WORLD["offset"])


def loaded(path: str):
    model = load_model(path, dtype=torch.float32).eval().to(device)
    spec = resolve_spec(path)[1]
    enc = build_text_encoder(spec.text_encoder, model.config.text_dim, device, torch.float32)
    own = spec.schedule
    schedule = own if own.solver != "euler" else SamplingSchedule(even_steps(steps), own.shift, "euler")
    print(path, "samples with", schedule, flush=True)
    engine = StreamEngine(
        model, StreamConfig(**STREAM), LatentGeometry(48, 16, 16), batch=B, schedule=schedule,
        options=EngineOptions(compile=False, cuda_graphs=False),
    )  # fmt: skip
    return model.embed_text(enc.encode(prompts).to(device)), engine


@torch.no_grad()
def run(noise_seed: int) -> torch.Tensor:
    (first_text, first), (rest_text, rest) = loaded(first_path), loaded(rest_path)
    gen = torch.Generator(device).manual_seed(noise_seed)  # one generator: the scorer's noise draws, chunk by chunk
    chunks = [first.step(first_text, gen)]
    rest.prefill(chunks[0], rest_text)  # REST_MODEL's own clean pass writes the first chunk to its cache
    chunks += [rest.step(rest_text, gen) for _ in range(6)]
    return codec.decode(torch.cat(chunks, dim=2).cpu())


start = time.time()
videos = []
for seed in range(seeds):
    v = run(seed)
    videos += [{**evaluate(v[i], p).overall, "noise_seed": seed, "prompt": p} for i, p in enumerate(prompts)]
scored = {"mean": mean(videos), "videos": videos}  # score_teacher.py's layout: scripts/compare_scores.py reads it
result = {"first_model": first_path, "rest_model": rest_path, "steps": steps, "device": str(device),
          "runs": {"two models": scored}}
out.write_text(json.dumps(result, indent=1) + "\n")
m = scored["mean"]
print(first_path, "->", rest_path, " ".join(f"{k} {m[k]:.3f}" for k in ("overall", "adherence", "persistence", "shape",
      "pass_rate")), f"{time.time() - start:.0f} s", flush=True)  # fmt: skip
