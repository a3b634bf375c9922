"""``videomla evaluate``: ground-truth scores of generated videos of the procedural world."""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

import numpy as np
import torch

from ..evaluation import AGGREGATES, METRICS, Evaluation, evaluate

VIDEO_SUFFIXES = (".mp4", ".gif", ".webm", ".avi", ".mov", ".mkv")
TENSOR_SUFFIXES = (".pt", ".npy")
LOSSY = (".mp4", ".webm", ".avi", ".mov", ".mkv")  # usually 4:2:0 chroma: small objects' edges smear


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
    p.add_argument("--prompt", help="the prompt the videos were generated for (default: a sidecar NAME.txt per video)")
    p.add_argument("--fps", type=float, help="frame rate (default: the file's own, else 8)")
    p.add_argument("--window", type=float, default=5.0, help="window length in seconds (default 5)")
    p.add_argument("--json", metavar="OUT", help="also write every score to this JSON file")
    p.add_argument(
        "--json-dir",
        metavar="DIR",
        help="also write one JSON per video (every window, overall, drift) as DIR/NAME.EXT.json",
    )
    p.set_defaults(func=run)


def to_video(array: np.ndarray | torch.Tensor, source: str) -> torch.Tensor:
    """An array in a common layout -> float video [3, T, H, W] in [-1, 1].

    Channels first [3, T, H, W] (this package's layout, floats in [-1, 1]) or last [T, H, W, 3]
    (what image readers give, uint8 0..255 or floats in [-1, 1]); a leading batch of 1 is dropped.
    """
    x = torch.as_tensor(np.asarray(array)) if not isinstance(array, torch.Tensor) else array
    if x.dim() == 5 and x.shape[0] == 1:
        x = x[0]
    if x.dim() != 4:
        raise ValueError(f"{source}: expected a video [3, T, H, W] or [T, H, W, 3], got shape {tuple(x.shape)}")
    if x.shape[0] not in (3, 4) and x.shape[-1] in (3, 4):
        x = x[..., :3].permute(3, 0, 1, 2)  # [T, H, W, C] -> [3, T, H, W], alpha dropped
    elif x.shape[0] != 3:
        raise ValueError(f"{source}: no RGB axis in shape {tuple(x.shape)} (need 3 channels first or last)")
    if x.dtype == torch.uint8:
        return x.float() / 127.5 - 1
    if not x.is_floating_point():
        raise ValueError(f"{source}: expected uint8 or float values, got {x.dtype}")
    lo, hi = float(x.min()), float(x.max())
    if lo < -1.05 or hi > 1.05:
        raise ValueError(f"{source}: float values must be in [-1, 1], got [{lo:.3f}, {hi:.3f}]")
    return x.float()


def load_video(path: Path) -> tuple[torch.Tensor, float | None]:
    """(video [3, T, H, W] in [-1, 1], the file's frame rate or None)."""
    if not path.exists():
        raise FileNotFoundError(f"no such video: {path}")
    if path.is_dir():
        frames = sorted(path.glob("*.png"))
        if not frames:
            raise FileNotFoundError(f"{path} holds no .png frames")
        import imageio.v3 as iio

        return to_video(np.stack([iio.imread(f) for f in frames]), str(path)), None
    suffix = path.suffix.lower()
    if suffix == ".pt":
        data = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(data, torch.Tensor):
            raise ValueError(f"{path}: expected a saved tensor, got {type(data).__name__}")
        return to_video(data, str(path)), None
    if suffix == ".npy":
        return to_video(np.load(path, allow_pickle=False), str(path)), None
    if suffix in VIDEO_SUFFIXES:
        try:
            import imageio.v3 as iio
        except ImportError as err:  # an optional extra
            raise ValueError("reading video files needs imageio: pip install 'videomla[video]'") from err
        meta = iio.immeta(path)
        fps = meta.get("fps") or (1000 / meta["duration"] if meta.get("duration") else None)
        return to_video(iio.imread(path, index=None), str(path)), fps
    raise ValueError(f"{path}: unknown format; use {', '.join(VIDEO_SUFFIXES + TENSOR_SUFFIXES)} or a folder of .png")


def expand(paths: list[str]) -> list[Path]:
    """Folders of videos/tensors become their files; a folder of PNG frames stays one video."""
    out = []
    for name in paths:
        path = Path(name)
        if path.is_dir() and not any(path.glob("*.png")):
            found = sorted(f for f in path.iterdir() if f.suffix.lower() in VIDEO_SUFFIXES + TENSOR_SUFFIXES)
            if not found:
                raise FileNotFoundError(f"{path} holds no videos, tensors or .png frames")
            out.extend(found)
        else:
            out.append(path)
    return out


def prompt_for(path: Path, prompt: str | None) -> str:
    if prompt:
        return prompt
    sidecar = path / "prompt.txt" if path.is_dir() else path.with_suffix(".txt")
    if not sidecar.is_file():
        raise FileNotFoundError(f"no prompt for {path}: pass --prompt or write {sidecar}")
    return sidecar.read_text().strip()


def write_json(path: str, data: dict) -> None:
    """Atomic: a temp file in the same folder, then renamed over the target."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, suffix=".json.tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def run(args: argparse.Namespace) -> int:
    if args.fps is not None and args.fps <= 0:
        raise ValueError(f"--fps must be > 0, got {args.fps}")
    results: dict[str, Evaluation] = {}
    paths = expand(args.paths)
    if args.json_dir:
        os.makedirs(args.json_dir, exist_ok=True)
    for path in paths:
        video, file_fps = load_video(path)
        result = evaluate(video, prompt_for(path, args.prompt), fps=args.fps or file_fps, window_seconds=args.window)
        results[str(path)] = result
        lossy = (
            " (lossy format: scores are exact only on tensors, PNG/GIF or yuv444p video)"
            if path.suffix.lower() in LOSSY
            else ""
        )
        print(f"{path}: {result.num_frames} frames at {result.fps:g} fps, prompt {result.prompt!r}{lossy}")
        print(result.table())
        print()
        if args.json_dir:
            write_json(os.path.join(args.json_dir, f"{path.name}.json"), {"video": str(path), **result.to_dict()})
    keys = (*METRICS, *AGGREGATES)
    mean = {k: sum(r.overall[k] for r in results.values()) / len(results) for k in keys}
    if len(results) > 1:
        print(f"mean over {len(results)} videos: " + ", ".join(f"{k} {mean[k]:.3f}" for k in keys))
    if args.json:
        write_json(args.json, {"videos": {k: r.to_dict() for k, r in results.items()}, "mean": mean})
    return 0
