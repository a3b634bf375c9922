"""Arguments several subcommands share."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from ..config import StreamConfig

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def add_stream_args(p: argparse.ArgumentParser, window: int | None = 6, sink: int = 1) -> None:
    g = p.add_argument_group("streaming window")
    g.add_argument("--sink", type=int, default=sink, help="sink latent frames kept forever (default %(default)s)")
    g.add_argument(
        "--window",
        type=int,
        default=window,
        help="recent cached latent frames attended besides the sink, current chunk not counted (default %(default)s)",
    )
    g.add_argument("--frames-per-chunk", type=int, default=3, help="latent frames per chunk (default 3)")
    g.add_argument(
        "--rope", choices=("window-relative", "absolute"), default="window-relative", help="temporal RoPE positions"
    )


def stream_from_args(args: argparse.Namespace) -> StreamConfig:
    return StreamConfig(
        frames_per_chunk=args.frames_per_chunk,
        sink_frames=args.sink,
        window_frames=args.window,
        rope_mode=args.rope,
    )


SEED_MAX = 2**64 - 1  # torch.Generator.manual_seed takes 64-bit seeds


def seed_arg(text: str) -> int:
    """argparse type of ``--seed``: an integer from 0 to 2**64 - 1 (torch's range), said in one line."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"seed must be an integer, got {text!r}") from None
    if not 0 <= value <= SEED_MAX:
        raise argparse.ArgumentTypeError(f"seed must be from 0 to 2**64 - 1 = {SEED_MAX}, got {text}")
    return value


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def check_video_size(height: int, width: int, stride: int, patch: tuple[int, ...] = (1, 2, 2)) -> tuple[int, int]:
    """The latent (height, width) of a video, refusing sizes that do not map onto whole latents and patches."""
    if stride < 1:
        raise ValueError(f"--vae-stride must be >= 1 (pixels per latent row/column), got {stride}")
    for name, value in (("height", height), ("width", width)):
        if value < 1:
            raise ValueError(f"--{name} must be a positive number of pixels, got {value}")
        if value % stride:
            raise ValueError(
                f"--{name} {value} is not a multiple of the VAE stride {stride}; "
                f"use {max(stride, value // stride * stride)} or {(value // stride + 1) * stride}"
            )
    lh, lw = height // stride, width // stride
    ph, pw = patch[-2], patch[-1]
    if lh % ph or lw % pw:
        raise ValueError(
            f"a {height}x{width} video is {lh}x{lw} latents, not divisible by the patch {ph}x{pw}; "
            f"use a height that is a multiple of {stride * ph} and a width that is a multiple of {stride * pw}"
        )
    return lh, lw


def _path_problem(path: Path) -> str | None:
    """Why ``path`` cannot be used (a symbolic link loop, an unreadable part), or None."""
    import errno
    import os

    try:
        os.stat(path)
    except FileNotFoundError:
        return None
    except OSError as err:
        if err.errno == errno.ELOOP:
            return "is a symbolic link loop"
        return f"cannot be used: {err.strerror or err}"
    return None


def check_output_folder(path: Path, flag: str) -> None:
    """Fail before any work if the output folder ``path`` cannot be made or replaced."""
    path = Path(path)
    problem = _path_problem(path) or _path_problem(path.parent)
    if problem:
        raise ValueError(f"{flag} {path} {problem}")
    if path.exists() and not path.is_dir():
        raise ValueError(f"{flag} {path} exists and is not a folder")
    parent = next((p for p in (path, *path.parents) if p.exists()), Path("."))
    if not parent.is_dir():
        raise ValueError(f"{flag} {path}: {parent} is not a folder")
    import os

    if not os.access(parent, os.W_OK | os.X_OK):
        raise PermissionError(f"cannot write {flag} {path}: {parent} is not writable")


def check_output_file(path: Path, flag: str) -> None:
    """Fail before any work if the output file ``path`` cannot be written."""
    path = Path(path)
    problem = _path_problem(path) or _path_problem(path.parent)
    if problem:
        raise ValueError(f"{flag} {path} {problem}")
    if path.is_dir():
        raise ValueError(f"{flag} {path} is a folder; give a file name")
    check_output_folder(path.parent if str(path.parent) else Path("."), f"{flag}'s folder")


def parse_dtype(name: str) -> torch.dtype:
    try:
        return DTYPES[name]
    except KeyError:
        raise ValueError(f"unknown dtype {name!r}; choose from {sorted(DTYPES)}") from None


def add_model_args(p: argparse.ArgumentParser, preset_help: str, attention_help: str | None = None) -> None:
    """The architecture options of commands that read checkpoints or build presets: ``--preset``
    (a config for checkpoints that carry none, or the model to build), ``--attention`` (dense / mla,
    where the command builds one), ``--which``. The help says what each means for that command."""
    from ..config import PRESETS

    p.add_argument("--preset", choices=sorted(PRESETS), help=preset_help)
    if attention_help is not None:
        p.add_argument("--attention", choices=("dense", "mla"), help=attention_help)
    add_which_arg(p)


def add_which_arg(p: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """``--which``: Self-Forcing ``.pt`` files hold ``generator_ema`` and ``generator`` weights."""
    from ..checkpoint import WHICH

    p.add_argument(
        "--which",
        choices=WHICH,
        default="auto",
        help="Self-Forcing .pt: generator_ema or generator weights (auto: EMA when present)",
    )
