"""Score a stage-1 (teacher) model's samples with the current evaluator, on held-out prompts, on the CPU.

    python scripts/score_teacher.py MODEL_DIR --out FILE.json [--prompts 16] [--noise 2] [--steps 8 32]
        [--solver euler] [--shift 5] [--given-chunks 1] [--figure FILE.png] [--device cuda]

Prompts: captions of clips 0..N-1 of world seed 777 (no model was chosen on them). Each prompt is
streamed (no guidance; text features from the checkpoint's own encoder) from noise seeds
0..noise-1, to 1x (21 frames), 6x (126) and/or 12x (252) (``--horizons``), with the listed step counts
of ``--solver`` (renoise: the few-step sampler, the default; euler: the flow-matching ODE), the
steps warped by ``--shift`` (the sampling shift; default: the one the checkpoint records); real
clips of the same prompts are scored alongside as the ceiling. ``--given-chunks K`` scores video
continuation: the real clip's first K chunks are committed to the cache as given frames, the model
streams the rest, and only the frames it made are scored (a horizon's frames minus the given ones),
so copying the given frames earns nothing; degenerate continuations are scored beside them. Videos
are scored in parallel on the CPU cores. Writes per-video scores and means; prints a table.
``--figure`` also saves, for the first 6 prompts, the real clip's frames above the first step
count's noise-0 sample.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from reproduce import STREAM, WORLD

from videomla.checkpoint import load_model
from videomla.codecs import PixelCodec
from videomla.config import StreamConfig
from videomla.data.world import caption, clip_params_at, render, render_batch
from videomla.engine.engine import EngineOptions, StreamEngine
from videomla.evaluation import AGGREGATES, METRICS, evaluate
from videomla.pipeline.pipeline import build_text_encoder, resolve_spec
from videomla.sampler import LatentGeometry
from videomla.schedule import DEFAULT_SHIFT, SOLVERS, SamplingSchedule, even_steps
from videomla.tables import render_table

PROMPT_SEED = 777
HORIZONS = {"1x": 21, "6x": 126, "12x": 252}


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
    given: torch.Tensor | None = None,
) -> torch.Tensor:
    """The prompts streamed in one batch from noise seed ``noise``: videos [B, 3, T, 64, 64] on the CPU.

    ``given``: clean latents [B, 48, F, 16, 16] (whole chunks) the stream continues; they are the
    video's first F frames.
    """
    device = next(model.parameters()).device
    text = model.embed_text(encoder.encode(prompts).to(device))
    stream = StreamConfig(**STREAM)
    gen = torch.Generator(device).manual_seed(noise)
    schedule = SamplingSchedule(even_steps(steps), shift, solver=solver)
    engine = StreamEngine(
        model, stream, LatentGeometry(48, 16, 16), batch=len(prompts), schedule=schedule,
        options=EngineOptions(compile=False, cuda_graphs=False),
    )  # fmt: skip
    latents = []
    if given is not None:
        engine.prefill(given, text)
        latents.append(given.to(device))
    done = sum(x.shape[2] for x in latents)
    latents += [engine.step(text, gen) for _ in range((frames - done) // stream.frames_per_chunk)]
    codec = PixelCodec(WORLD["spatial_stride"], WORLD["scale"], WORLD["offset"])
    return codec.decode(torch.cat(latents, dim=2).float().cpu())


def real_latents(count: int, chunks: int) -> torch.Tensor:
    """The first ``chunks`` chunks of the real clips of prompts 0..count-1, encoded: [B, 48, F, 16, 16]."""
    params = [clip_params_at(PROMPT_SEED, i) for i in range(count)]
    codec = PixelCodec(WORLD["spatial_stride"], WORLD["scale"], WORLD["offset"])
    return codec.encode(render_batch(params, chunks * StreamConfig(**STREAM).frames_per_chunk))


def continuation_baselines(clip: torch.Tensor, given_frames: int) -> dict[str, torch.Tensor]:
    """What copying the given frames earns: the real clip's first ``given_frames`` frames, then the
    last of them frozen, background-coloured Gaussian noise, or the bare background."""
    head, rest = clip[:, :given_frames], clip[:, given_frames:]
    gen = torch.Generator().manual_seed(0)
    background = clip.flatten(1).mode(dim=1).values[:, None, None, None]  # the world's flat background
    tails = {
        "given + last given frame frozen": head[:, -1:].expand_as(rest),
        "given + noise N(0, 0.5)": (0.5 * torch.randn(rest.shape, generator=gen)).clamp(-1, 1),
        "given + background only": background.expand_as(rest),
    }
    return {name: torch.cat([head, tail], dim=1) for name, tail in tails.items()}


def score_one(job: tuple[torch.Tensor, str]) -> dict[str, float]:
    return evaluate(*job).overall


def score_all(jobs: list[tuple[torch.Tensor, str]]) -> list[dict[str, float]]:
    """Evaluator scores of (video, prompt) pairs, in parallel over the CPU cores (spawned: no CUDA state)."""
    workers = max(1, min(len(jobs), (os.cpu_count() or 1) - 1))
    if workers == 1:
        return [score_one(job) for job in jobs]
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=context, initializer=torch.set_num_threads, initargs=(1,)) as pool:
        return list(pool.map(score_one, jobs, chunksize=4))


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
    ap.add_argument("--steps", type=int, nargs="*", default=[8, 32], help="none: real, baseline rows")
    ap.add_argument("--figure", type=Path, help="PNG: real clips above samples (first --steps value, noise 0)")
    ap.add_argument("--horizons", nargs="+", default=list(HORIZONS), choices=list(HORIZONS))
    ap.add_argument("--solver", choices=SOLVERS, default="renoise", help="the sampler (videomla.schedule)")
    ap.add_argument("--shift", type=float, help="sampling shift of the step list (default: the checkpoint's)")
    ap.add_argument("--given-chunks", type=int, default=0, help="continue the real clip's first K chunks")
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
        "given_chunks": args.given_chunks,
        "runs": {},
    }
    horizons = {h: HORIZONS[h] for h in args.horizons}
    longest = max(horizons.values())
    given = real_latents(len(prompts), args.given_chunks) if args.given_chunks else None
    skip = 0 if given is None else given.shape[2]  # pixel frames = latent frames (the world's codec)
    result["scored_frames"] = f"from frame {skip} (the generated ones)" if skip else "all"
    real = score_all([(render(clip_params_at(PROMPT_SEED, i), longest)[:, skip:], p) for i, p in enumerate(prompts)])
    result["runs"][f"real clips {max(horizons, key=horizons.get)}"] = {"mean": mean(real), "videos": real}
    if args.given_chunks:  # degenerate continuations, scored like the samples
        clips = [render(clip_params_at(PROMPT_SEED, i), longest) for i in range(len(prompts))]
        made = [continuation_baselines(c, given.shape[2]) for c in clips]
        for name in made[0]:
            for h, frames in horizons.items():
                rows = score_all([(m[name][:, skip:frames], p) for m, p in zip(made, prompts)])
                result["runs"][f"{name} {h}"] = {"mean": mean(rows), "videos": rows}
    for steps in args.steps:
        per = {h: [] for h in horizons}
        start = time.perf_counter()
        for noise in range(args.noise):
            videos = rollout(model, encoder, prompts, steps, noise, longest, args.solver, args.shift, given)
            if args.figure and noise == 0 and steps == args.steps[0]:
                clips = [render(clip_params_at(PROMPT_SEED, i), longest) for i in range(min(6, len(prompts)))]
                figure(clips, videos[:, :, : HORIZONS[args.horizons[0]]], args.figure)
            for h, frames in horizons.items():
                scores = score_all([(v[:, skip:frames], p) for p, v in zip(prompts, videos)])
                per[h] += [{**score, "noise_seed": noise, "prompt": p} for score, p in zip(scores, prompts)]
        for h in horizons:
            shift = "" if args.shift == DEFAULT_SHIFT else f" shift {args.shift:g}"
            cont = f" given {args.given_chunks}" if args.given_chunks else ""
            name = f"{steps}{' euler' if args.solver == 'euler' else ''} steps{shift}{cont} {h}"
            result["runs"][name] = {"mean": mean(per[h]), "videos": per[h]}
        print(f"{steps} steps: {time.perf_counter() - start:.0f} s", flush=True)
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    cols = (*METRICS, *AGGREGATES)
    rows = ([name, *(f"{run['mean'][c]:.3f}" for c in cols)] for name, run in result["runs"].items())
    print(render_table(["run", *cols], rows))
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
