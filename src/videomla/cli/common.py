"""Arguments several subcommands share."""

from __future__ import annotations

import argparse

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


def parse_dtype(name: str) -> torch.dtype:
    try:
        return DTYPES[name]
    except KeyError:
        raise ValueError(f"unknown dtype {name!r}; choose from {sorted(DTYPES)}") from None
