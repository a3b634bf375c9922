"""The small-scale reproduction study of docs/reproduction.md, on one GPU.

    python scripts/reproduce.py main  --out runs/repro            # teacher, dense / MLA-SVD / MLA-random students
    python scripts/reproduce.py sweep --out runs/repro --teacher runs/repro/teacher-model
    python scripts/reproduce.py main  --out runs/repro --steps runs/repro/study-main.json   # replay exact steps
    python scripts/reproduce.py default --out runs/default     # only what the shipped default model needs

Every model is a ``world`` preset (~6 M parameters) trained on the procedural world with the
project's own trainer (``videomla.training``). Runs are sized by a wall-clock budget per run on the
first machine (the chosen step counts are recorded in ``study-<phase>.json``; ``--steps`` replays
them exactly). Each student is then rolled out at 1x, 6x and 12x the 21-frame training horizon
(one 252-frame rollout per prompt: generation is causal, so its prefixes are the shorter
rollouts), scored by ``videomla.evaluation``, timed, and its effective rank measured.
"""

from __future__ import annotations

import argparse
import copy
import json
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import torch

from videomla.checkpoint import RESERVED_METADATA, load_metadata, load_model, save_model
from videomla.cli import main as videomla_cli
from videomla.codecs import PixelCodec
from videomla.config import StreamConfig
from videomla.data.world import caption, clip_params_at, render
from videomla.evaluation import METRICS, evaluate
from videomla.sampler import LatentGeometry, stream_latents
from videomla.schedule import FOUR_STEPS, SamplingSchedule
from videomla.tables import render_table
from videomla.text import HashTextEncoder
from videomla.training.config import config_from_dict
from videomla.training.trainer import Trainer

HORIZON = 21  # latent frames per training clip (= video frames: the pixel codec has no time stride)
HORIZONS = {"1x": HORIZON, "6x": 6 * HORIZON, "12x": 12 * HORIZON}
EVAL_PROMPTS = 8
EVAL_SEED = 12345
# Standardise the world's pixels (mean -0.76, std 0.34 over 64 clips) to ~unit-variance latents.
WORLD = {"num_clips": 1_000_000, "spatial_stride": 4, "offset": -0.76, "scale": 2.9}
STREAM = {"frames_per_chunk": 3, "sink_frames": 1, "window_frames": 6, "rope_mode": "window-relative"}
TEACHER_STEPS = (1000, 875, 750, 625, 500, 375, 250, 125)  # the stage-1 model is sampled with 8 steps


def base_config(stage: str, out: Path, seed: int) -> dict[str, Any]:
    return {
        "stage": stage,
        "steps": 1,
        "seed": seed,
        "out_dir": str(out),
        "precision": "bf16",
        "stream": dict(STREAM),
        "data": {
            "kind": "world",
            "batch_size": BATCH,
            "num_frames": HORIZON,
            "workers": 8,
            "world": {**WORLD, "seed": seed},
        },
        "checkpoint": {"every": 10**9, "keep_last": 8},
        "log": {"every": 10, "tensorboard": False},
    }


def teacher_forcing(out: Path, model: dict, lr: float, seed: int) -> dict:
    cfg = base_config("teacher_forcing", out, seed)
    cfg.update(model=model, optim={"lr": lr})
    cfg["data"]["text_dropout"] = 0.1
    return cfg


def consistency(out: Path, student: str, teacher: str, seed: int) -> dict:
    cfg = base_config("consistency", out, seed)
    cfg.update(
        model={"checkpoint": student},
        teacher={"checkpoint": teacher, "cfg_scale": 3.0},
        optim={"lr": 2e-5},
        consistency={"ode_steps": 48},
    )
    return cfg


PROBE_STEPS = 20  # steps run before a budgeted run is sized; the ones after the warm-up are timed
WARMUP_STEPS = 5
MIN_STEPS = 40
BATCH = 16


def train(name: str, raw: dict, budget_s: float, snapshots: int, steps: dict[str, int], root: Path) -> dict:
    """Train one run: ``steps[name]`` steps if given, else as many as fit ``budget_s`` seconds."""
    out = root / name
    raw = copy.deepcopy(raw)
    raw["out_dir"] = str(out)
    raw["steps"] = steps.get(name, 10**9)
    trainer = Trainer(config_from_dict(raw), out)
    start = time.perf_counter()
    try:
        if name not in steps:  # time a few steps after a warm-up, then size the run to the budget
            for i in range(PROBE_STEPS):
                if i == WARMUP_STEPS:
                    sync()
                    warm = time.perf_counter()
                trainer.train_step()  # its metrics are logged by run(), at the next logged step
            sync()
            now = time.perf_counter()
            per_step = (now - warm) / (PROBE_STEPS - WARMUP_STEPS)
            left = budget_s - (now - start)
            trainer.cfg.steps = max(MIN_STEPS, PROBE_STEPS + 1, PROBE_STEPS + int(left / per_step))
        trainer.cfg.checkpoint.every = max(1, trainer.cfg.steps // snapshots)
        history = trainer.run()
    finally:
        trainer.close()
    seconds = time.perf_counter() - start
    last = {k: v for k, v in history[-1].items() if k != "step"} if history else {}
    print(f"[{name}] {trainer.cfg.steps} steps in {seconds:.0f} s: {last}", flush=True)
    return {"steps": trainer.cfg.steps, "seconds": seconds, "final": last, "model": str(out)}


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def eval_prompts() -> list[str]:
    return [caption(clip_params_at(EVAL_SEED, i)) for i in range(EVAL_PROMPTS)]


@torch.no_grad()
def rollout_scores(model_dir: str, device: torch.device, steps: tuple[int, ...]) -> dict:
    """Roll out every eval prompt to the 12x horizon in one batch; score the 1x / 6x / 12x prefixes."""
    model = load_model(model_dir, device=device, dtype=torch.bfloat16 if device.type == "cuda" else torch.float32)
    prompts = eval_prompts()
    result = score_horizons(list(rollout(model, prompts, steps)), prompts)
    result["speed"] = speed(model, StreamConfig(**STREAM), device, next(model.parameters()).dtype)
    result["kv_numbers_per_token_per_layer"] = sum(
        s.numbers_per_token for s in model.cache_specs(torch.bfloat16)[0].values()
    )
    return result


@torch.no_grad()
def rollout(model, prompts: list[str], steps: tuple[int, ...] = FOUR_STEPS) -> torch.Tensor:
    """Every prompt streamed to the 12x horizon in one batch (noise seed 0): videos [B, 3, T, 64, 64] on CPU."""
    device, dtype = next(model.parameters()).device, next(model.parameters()).dtype
    text = model.embed_text(HashTextEncoder(model.config.text_dim).encode(prompts).to(device, dtype))
    stream = StreamConfig(**STREAM)
    chunks = HORIZONS["12x"] // stream.frames_per_chunk
    gen = torch.Generator(device).manual_seed(0)
    geometry = LatentGeometry(48, 16, 16)
    schedule = SamplingSchedule(steps)
    latents = stream_latents(model, text, geometry, stream, chunks, schedule, generator=gen, batch=len(prompts))
    codec = PixelCodec(WORLD["spatial_stride"], WORLD["scale"], WORLD["offset"])
    return codec.decode(torch.cat(list(latents), dim=2).float()).cpu()


def speed(model, stream: StreamConfig, device: torch.device, dtype: torch.dtype) -> dict:
    """Frames per second of 4-step streaming at batch 1 (transformer only), after a warm-up."""
    text = model.embed_text(torch.zeros(1, 16, model.config.text_dim, device=device, dtype=dtype))
    geometry = LatentGeometry(48, 16, 16)
    for _ in stream_latents(model, text, geometry, stream, 4):
        pass
    sync()
    start = time.perf_counter()
    chunks = 40
    for _ in stream_latents(model, text, geometry, stream, chunks):
        pass
    sync()
    return {"device": device.type, "fps": chunks * stream.frames_per_chunk / (time.perf_counter() - start)}


def real_clip_scores() -> dict:
    videos = [render(clip_params_at(EVAL_SEED, i), HORIZONS["12x"]) for i in range(EVAL_PROMPTS)]
    return score_horizons(videos, eval_prompts())


def score_horizons(videos: list[torch.Tensor], prompts: list[str]) -> dict[str, Any]:
    """Mean evaluator scores of every video's 1x / 6x / 12x prefix, scored in parallel on the CPU cores."""
    jobs = [(v[:, :frames], p) for frames in HORIZONS.values() for v, p in zip(videos, prompts)]
    workers = max(1, min(len(jobs), (os.cpu_count() or 1) - 1))
    context = multiprocessing.get_context("spawn")  # no CUDA state in the scoring processes
    with ProcessPoolExecutor(workers, mp_context=context, initializer=torch.set_num_threads, initargs=(1,)) as pool:
        scores = list(pool.map(score_one, jobs))
    result: dict[str, Any] = {}
    for i, label in enumerate(HORIZONS):
        chunk = scores[i * len(videos) : (i + 1) * len(videos)]
        result[label] = {m: sum(s[m] for s in chunk) / len(chunk) for m in (*METRICS, "overall")}
    return result


def score_one(job: tuple[torch.Tensor, str]) -> dict[str, float]:
    return evaluate(*job).overall


def mla_model(checkpoint: str, init: str, **dims: int) -> dict:
    return {"checkpoint": checkpoint, "mla": True, "mla_init": init, **{f"mla_{k}": v for k, v in dims.items()}}


def student(name, model, teacher, budget, steps, root, seed, runs) -> str:
    """Teacher-forcing recovery (or continuation) then consistency distillation, same budget for all."""
    runs[f"{name}-tf"] = train(f"{name}-tf", teacher_forcing(root, model, 1e-4, seed), budget, 4, steps, root)
    cd = consistency(root, str(root / f"{name}-tf"), teacher, seed)
    runs[f"{name}-cd"] = train(f"{name}-cd", cd, budget, 2, steps, root)
    return str(root / f"{name}-cd")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("phase", choices=("main", "sweep", "default", "evaluate", "report", "figure"))
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--teacher", help="sweep / evaluate: the stage-1 teacher model folder from the main phase")
    ap.add_argument("--steps", type=Path, nargs="+", help="study-*.json files whose recorded step counts to replay")
    ap.add_argument("--teacher-budget", type=float, default=180.0, help="seconds of stage-1 training")
    ap.add_argument("--budget", type=float, default=35.0, help="seconds per student run (recovery, then CD)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-eval", action="store_true", help="train and export only (score later: evaluate)")
    ap.add_argument("--study", type=Path, help="evaluate: the study-*.json whose pending students to score")
    ap.add_argument("--figure-out", type=Path, default=Path("docs/reproduction/samples.png"))
    ap.add_argument("--dry-run", action="store_true", help="2 steps per run: check the pipeline end to end")
    args = ap.parse_args()
    if args.dry_run:
        global PROBE_STEPS, WARMUP_STEPS, MIN_STEPS, BATCH
        PROBE_STEPS = MIN_STEPS = BATCH = 2
        WARMUP_STEPS = 1
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    root = args.out
    root.mkdir(parents=True, exist_ok=True)
    if args.phase == "figure":
        print(f"wrote {figure(root, args.figure_out)}")
        return
    if args.phase == "report":
        print(report([json.loads((root / f"study-{p}.json").read_text()) for p in ("main", "sweep")]))
        return
    if args.phase == "evaluate":
        if not args.study:
            ap.error("evaluate needs --study (a study-*.json written with --skip-eval)")
        evaluate_pending(args.study, root, device)
        return
    steps = {}
    for recorded in args.steps or []:
        steps |= {k: v["steps"] for k, v in json.loads(recorded.read_text())["runs"].items()}
    study = root / f"study-{args.phase}.json"
    results: dict[str, Any] = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu"}
    results |= {"runs": {}, "students": {}, "pending": {}}
    runs = results["runs"]

    def save() -> None:  # after every run, so a cut-off call still leaves what finished
        study.write_text(json.dumps(results, indent=1, default=str))

    def add_student(name: str, model: dict | str) -> None:
        # a folder name under --out, so the study can be scored on another machine after copying --out
        results["pending"][name] = export(student(name, model, teacher, args.budget, steps, root, args.seed, runs)).name
        save()

    if args.phase in ("main", "default"):
        dense = {"preset": "world", "mla": False}
        runs["teacher"] = train(
            "teacher", teacher_forcing(root, dense, 3e-4, args.seed), args.teacher_budget, 4, steps, root
        )
        teacher = str(root / "teacher")
        to_bf16(teacher_model_dir(root / "teacher"), root / "teacher-model")
        save()
    if args.phase == "default":  # the shipped model alone: teacher, then the rope32 student as in the sweep
        teacher = str(root / "teacher-model")
        add_student("rope32", mla_model(teacher, "svd", rope_head_dim=32))
    elif args.phase == "main":
        add_student("dense", {"checkpoint": teacher})
        for init in ("svd", "random"):
            add_student(f"mla-{init}", mla_model(teacher, init))
        for run in ("mla-svd-tf", "mla-random-tf", "teacher"):
            results[f"rank_{run}"] = rank(root, run)
        save()
    else:
        if not args.teacher:
            ap.error("sweep needs --teacher (the teacher-model folder of the main phase)")
        teacher = args.teacher
        variants = {
            "dc8": {"kv_latent_dim": 8},
            "dc16": {"kv_latent_dim": 16},
            "dc64": {"kv_latent_dim": 64},
        }  # + main: 32
        variants |= {"rope8": {"rope_head_dim": 8}, "rope32": {"rope_head_dim": 32}}
        for name, dims in variants.items():
            add_student(name, mla_model(teacher, "svd", **dims))
    if not args.skip_eval:
        evaluate_pending(study, root, device)
    print(f"wrote {study}")


def export(run: str) -> Path:
    """The run's final model as a bf16 safetensors folder ``<run>-model`` (what is shipped and scored)."""
    return to_bf16(teacher_model_dir(Path(run)), Path(f"{run}-model"))


def to_bf16(source: str, target: Path) -> Path:
    metadata = {k: v for k, v in load_metadata(source).items() if k not in RESERVED_METADATA}
    return save_model(load_model(source, dtype=torch.bfloat16), target, metadata)


def evaluate_pending(study: Path, root: Path, device: torch.device) -> None:
    """Score every pending student of a study file (and the 8-step teacher, for the main phase)."""
    results = json.loads(study.read_text())
    if "real_clips" not in results:
        results["real_clips"] = real_clip_scores()
    if "rank_teacher" in results and "teacher_8_steps" not in results:
        results["teacher_8_steps"] = rollout_scores(str(root / "teacher-model"), device, TEACHER_STEPS)
    for name, path in list(results["pending"].items()):
        results["students"][name] = rollout_scores(str(root / Path(path).name), device, FOUR_STEPS)
        del results["pending"][name]
        print(f"[eval {name}] {json.dumps(results['students'][name])}", flush=True)
        study.write_text(json.dumps(results, indent=1, default=str))
    study.write_text(json.dumps(results, indent=1, default=str))


def rank(root: Path, run: str) -> dict:
    """``videomla rank`` over a run's exported checkpoints (its rank-over-training), plots included."""
    ckpts = sorted(str(c) for c in (root / run / "checkpoints").glob("step_*/model"))
    out = root / f"rank-{run}"
    if videomla_cli(["rank", *ckpts, "--out", str(out), "--rank", "32"]) != 0:
        raise RuntimeError(f"videomla rank failed on {run}")
    return json.loads((out / "ranks.json").read_text())


def teacher_model_dir(run: Path) -> str:
    """The newest exported model of a training run folder."""
    from videomla.checkpoint import resolve_checkpoint

    return str(resolve_checkpoint(run))


FIGURE_FRAMES = (0, 10, 20, 60, 125, 250)  # 1x ends at 21 frames, 6x at 126, 12x at 252
FIGURE_ROWS = {"dense": "dense-cd-model", "mla-svd": "mla-svd-cd-model", "rope32": "rope32-cd-model"}


@torch.no_grad()
def figure(root: Path, out: Path, prompt_index: int = 0) -> Path:
    """One evaluation prompt: the real clip and each student's rollout (noise seed 0), frames along 12x."""
    from PIL import Image

    prompt = eval_prompts()[prompt_index]
    rows = [render(clip_params_at(EVAL_SEED, prompt_index), HORIZONS["12x"])]
    for folder in FIGURE_ROWS.values():
        rows.append(rollout(load_model(root / folder, dtype=torch.float32), [prompt])[0])
    frames = [torch.cat([v[:, f] for f in FIGURE_FRAMES], dim=-1) for v in rows]  # [3, 64, 64 * n]
    grid = ((torch.cat(frames, dim=-2).clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
    out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid).resize((grid.shape[1] * 2, grid.shape[0] * 2), Image.NEAREST).save(out)
    return out


def report(studies: list[dict]) -> str:
    """The markdown tables of docs/reproduction.md, from the study files (nothing typed by hand)."""
    runs = [
        [name, s["device"], r["steps"], f"{r['seconds']:.0f}", f"{r['final']['loss']:.4f}"]
        for s in studies
        for name, r in s["runs"].items()
    ]
    rows = {"real clips": studies[0]["real_clips"], "teacher, 8 steps": studies[0]["teacher_8_steps"]}
    rows |= {name: scores for s in studies for name, scores in s["students"].items()}
    header = ["model", "KV numbers / token / layer", *(f"overall {h}" for h in HORIZONS)]
    header += [*(f"{m} 12x" for m in METRICS), "CPU FPS"]
    scores = []
    for name, r in rows.items():
        kv = r.get("kv_numbers_per_token_per_layer", "-")
        fps = f"{r['speed']['fps']:.1f}" if "speed" in r else "-"
        cells = [f"{r[h]['overall']:.3f}" for h in HORIZONS] + [f"{r['12x'][m]:.3f}" for m in METRICS]
        scores.append([name, kv, *cells, fps])
    return "\n\n".join([
        render_table(["run", "device", "steps", "seconds", "final loss"], runs, markdown=True),
        render_table(header, scores, markdown=True),
    ])  # fmt: skip


if __name__ == "__main__":
    main()
