"""Score a stage-1 (teacher) model's samples with the current evaluator, on held-out prompts, on the CPU.

    python scripts/score_teacher.py MODEL_DIR --out FILE.json [--prompts 16] [--noise 2] [--steps 8 32]
        [--solver euler] [--shift 5] [--figure FILE.png] [--device cuda]

Prompts: captions of clips 0..N-1 of world seed 777 (no model was chosen on them). Each prompt is
streamed (no guidance; text features from the checkpoint's own encoder) from noise seeds
0..noise-1, to 1x (21 frames) and/or 6x (126 frames) (``--horizons``), with the listed step counts
of ``--solver`` (renoise: the few-step sampler, the default; euler: the flow-matching ODE), the
steps warped by ``--shift`` (the sampling shift; default: the one the checkpoint records); real
clips of the same prompts are scored alongside as the ceiling. Writes per-video scores and means;
prints a table. ``--figure`` also saves, for the first 6 prompts, the real clip's frames above the
first step count's noise-0 sample.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from reproduce import STREAM, WORLD

from videomla.checkpoint import load_model
from videomla.codecs import PixelCodec
from videomla.config import StreamConfig
from videomla.data.world import caption, clip_params_at, render
from videomla.evaluation import AGGREGATES, METRICS, evaluate
from videomla.pipeline.pipeline import build_text_encoder, resolve_spec
from videomla.sampler import LatentGeometry, stream_latents
from videomla.schedule import DEFAULT_SHIFT, SOLVERS, SamplingSchedule, even_steps
from videomla.tables import render_table

PROMPT_SEED = 777
HORIZONS = {"1x": 21, "6x": 126}


@torch.no_grad()
def rollout(
    model,
    encoder,
    prompts: list[str],
    steps: int,
    noise: int,
    frames: int,
    solver: str = "renoise",
    shift: float = DEFAULT_SHIFT,
) -> torch.Tensor:
    """The prompts streamed in one batch from noise seed ``noise``: videos [B, 3, T, 64, 64] on the CPU."""
    device = next(model.parameters()).device
    text = model.embed_text(encoder.encode(prompts).to(device))
    stream = StreamConfig(**STREAM)
    gen = torch.Generator(device).manual_seed(noise)
    chunks = frames // stream.frames_per_chunk
    schedule = SamplingSchedule(even_steps(steps), shift, solver=solver)
    geometry = LatentGeometry(48, 16, 16)
    latents = stream_latents(model, text, geometry, stream, chunks, schedule, generator=gen, batch=len(prompts))
    codec = PixelCodec(WORLD["spatial_stride"], WORLD["scale"], WORLD["offset"])
    return codec.decode(torch.cat(list(latents), dim=2).float().cpu())


def figure(real: list[torch.Tensor], sampled: torch.Tensor, out: Path, rows: int = 6) -> None:
    """Real clip above sample, per prompt; 7 frames along the clip, 2x nearest-neighbour."""
    from PIL import Image

    frames = list(range(0, sampled.shape[2], max(1, sampled.shape[2] // 7)))[:7]
    strips = [torch.cat([v[:, f] for f in frames], dim=-1) for pair in zip(real, sampled[:rows]) for v in pair]
    grid = ((torch.cat(strips, dim=-2).clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
    Image.fromarray(grid).resize((grid.shape[1] * 2, grid.shape[0] * 2), Image.NEAREST).save(out)


def mean(rows: list[dict]) -> dict:
    return {k: sum(r[k] for r in rows) / len(rows) for k in (*METRICS, *AGGREGATES)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model")
    ap.add_argument("--out", required=True)
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--noise", type=int, default=2)
    ap.add_argument("--steps", type=int, nargs="+", default=[8, 32])
    ap.add_argument("--figure", type=Path, help="PNG: real clips above samples (first --steps value, noise 0)")
    ap.add_argument("--horizons", nargs="+", default=list(HORIZONS), choices=list(HORIZONS))
    ap.add_argument("--solver", choices=SOLVERS, default="renoise", help="the sampler (videomla.schedule)")
    ap.add_argument("--shift", type=float, help="sampling shift of the step list (default: the checkpoint's)")
    ap.add_argument("--device", default="cpu", help="where the model runs (scores are computed on the CPU)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    model = load_model(args.model, dtype=torch.float32).to(args.device)
    spec = resolve_spec(args.model)[1]
    encoder = build_text_encoder(spec.text_encoder, model.config.text_dim, args.device, torch.float32)
    if args.shift is None:
        args.shift = spec.schedule.shift
    prompts = [caption(clip_params_at(PROMPT_SEED, i)) for i in range(args.prompts)]
    result: dict = {
        "model": args.model,
        "text_context": getattr(encoder, "context", 0),
        "prompts": prompts,
        "prompt_seed": PROMPT_SEED,
        "solver": args.solver,
        "shift": args.shift,
        "runs": {},
    }
    horizons = {h: HORIZONS[h] for h in args.horizons}
    longest = max(horizons.values())
    real = [evaluate(render(clip_params_at(PROMPT_SEED, i), longest), p).overall for i, p in enumerate(prompts)]
    result["runs"][f"real clips {max(horizons, key=horizons.get)}"] = {"mean": mean(real), "videos": real}
    for steps in args.steps:
        per = {h: [] for h in horizons}
        start = time.perf_counter()
        for noise in range(args.noise):
            videos = rollout(model, encoder, prompts, steps, noise, longest, args.solver, args.shift)
            if args.figure and noise == 0 and steps == args.steps[0]:
                clips = [render(clip_params_at(PROMPT_SEED, i), longest) for i in range(min(6, len(prompts)))]
                figure(clips, videos[:, :, : HORIZONS[args.horizons[0]]], args.figure)
            for h, frames in horizons.items():
                for p, v in zip(prompts, videos):
                    per[h].append({**evaluate(v[:, :frames], p).overall, "noise_seed": noise, "prompt": p})
        for h in horizons:
            shift = "" if args.shift == DEFAULT_SHIFT else f" shift {args.shift:g}"
            name = f"{steps}{' euler' if args.solver == 'euler' else ''} steps{shift} {h}"
            result["runs"][name] = {"mean": mean(per[h]), "videos": per[h]}
        print(f"{steps} steps: {time.perf_counter() - start:.0f} s", flush=True)
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    cols = (*METRICS, *AGGREGATES)
    rows = ([name, *(f"{run['mean'][c]:.3f}" for c in cols)] for name, run in result["runs"].items())
    print(render_table(["run", *cols], rows))
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
