"""``videomla evaluate``: ground-truth scores of generated videos of the procedural world."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from ..evaluation import AGGREGATES, METRICS, Evaluation, evaluate
from ..io_utils import atomic_write_json
from ..video_io import LOSSY_SUFFIXES, find_videos, load_video


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate", help="score world videos (adherence, persistence, ... per 5 s window)", description=__doc__
    )
    p.add_argument(
        "paths",
        nargs="+",
        metavar="PATH",
        help="video (.mp4/.gif/...), tensor (.pt/.npy), a folder of PNG frames, or a folder of videos/tensors",
    )
    p.add_argument(
        "--prompt",
        help="the prompt the videos were generated for (default: each video's sidecar: the NAME.json "
        "`videomla generate` writes beside batch videos or as --summary, else a NAME.txt)",
    )
    p.add_argument("--fps", type=float, help="frame rate (default: the file's own, else 8)")
    p.add_argument("--window", type=float, default=5.0, help="window length in seconds (default 5)")
    p.add_argument("--json", metavar="OUT", help="also write every score to this JSON file")
    p.add_argument(
        "--json-dir",
        metavar="DIR",
        help="also write one JSON per video (every window, overall, drift) as DIR/NAME.EXT.json",
    )
    p.set_defaults(func=run)


def prompt_for(path: Path, prompt: str | None) -> str:
    """--prompt, else the generate sidecar NAME.json (its run's prompt), else NAME.txt / prompt.txt."""
    if prompt:
        return prompt
    summary = path.with_suffix(".json")
    if not path.is_dir() and summary.is_file():
        return prompt_of_summary(summary)
    sidecar = path / "prompt.txt" if path.is_dir() else path.with_suffix(".txt")
    if not sidecar.is_file():
        raise FileNotFoundError(f"no prompt for {path}: pass --prompt, or write {summary} or {sidecar}")
    return sidecar.read_text().strip()


def prompt_of_summary(path: Path) -> str:
    """The one prompt of a ``videomla generate`` summary / sidecar (schema videomla.generate-summary)."""
    try:
        data = json.loads(path.read_text())
        prompts = data["run"]["prompts"]
    except (ValueError, KeyError, TypeError):
        raise ValueError(f"{path} is not a videomla generate sidecar (no run.prompts); pass --prompt") from None
    if len(prompts) != 1:
        raise ValueError(
            f"{path}: the video switches between {len(prompts)} prompts; the evaluator scores one, pass --prompt"
        )
    return str(prompts[0][0])


def run(args: argparse.Namespace) -> int:
    if args.fps is not None and args.fps <= 0:
        raise ValueError(f"--fps must be > 0, got {args.fps}")
    results: dict[str, Evaluation] = {}
    paths = find_videos(args.paths)
    if args.json_dir:
        os.makedirs(args.json_dir, exist_ok=True)
    for path in paths:
        video, file_fps = load_video(path)
        result = evaluate(video, prompt_for(path, args.prompt), fps=args.fps or file_fps, window_seconds=args.window)
        results[str(path)] = result
        lossy = (
            " (lossy format: scores are exact only on tensors, PNG/GIF or yuv444p video)"
            if path.suffix.lower() in LOSSY_SUFFIXES
            else ""
        )
        print(f"{path}: {result.num_frames} frames at {result.fps:g} fps, prompt {result.prompt!r}{lossy}")
        print(result.table())
        print()
        if args.json_dir:
            one = {"video": str(path), **result.to_dict()}
            atomic_write_json(os.path.join(args.json_dir, f"{path.name}.json"), one)
    keys = (*METRICS, *AGGREGATES)
    mean = {k: sum(r.overall[k] for r in results.values()) / len(results) for k in keys}
    if len(results) > 1:
        print(f"mean over {len(results)} videos: " + ", ".join(f"{k} {mean[k]:.3f}" for k in keys))
    if args.json:
        atomic_write_json(args.json, {"videos": {k: r.to_dict() for k, r in results.items()}, "mean": mean})
    return 0
