"""``videomla generate``: stream a video of any length to mp4 / gif / png-grid, chunk by chunk.

Frames are decoded and appended to the file as each chunk is produced, in constant memory,
with a progress bar (frames, FPS, cache memory) and a final summary (frames, FPS, peak cache
bytes against a dense cache of the same window).
"""

from __future__ import annotations

import argparse
import dataclasses
import re

from .common import DTYPES, add_stream_args, parse_dtype

# Streaming-window options whose default is the checkpoint's own (metadata "stream" section).
_STREAM_FIELDS = {
    "sink": "sink_frames",
    "window": "window_frames",
    "frames_per_chunk": "frames_per_chunk",
    "rope": "rope_mode",
}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "generate",
        help="stream a video from a prompt (or a timed list of prompts) to mp4 / gif / png",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
        '  videomla generate --prompt "a paper boat on a river" --seconds 60 --out boat.mp4\n'
        '  videomla generate --prompt "a calm sea@0" --prompt "a storm@20s" --recache --seconds 40 --out sea.mp4',
    )
    p.add_argument(
        "--prompt",
        action="append",
        required=True,
        metavar="TEXT[@SECONDS]",
        help="prompt; repeat with TEXT@SECONDS (e.g. 'a storm@20s') to switch prompts at that time",
    )
    p.add_argument("--seconds", type=float, required=True, help="video length in seconds (any length: memory is fixed)")
    p.add_argument("--out", required=True, help="output file (.mp4, .gif or .png)")
    p.add_argument("--format", choices=("mp4", "gif", "png-grid"), help="output format (default: from --out's suffix)")
    p.add_argument("--grid-frames", type=int, default=16, help="frames sampled into a png-grid (default 16)")
    p.add_argument("--checkpoint", help="model checkpoint (default: the embedded default model)")
    p.add_argument("--vae", help="Wan2.1 VAE folder (diffusers AutoencoderKLWan) for Wan-scale checkpoints")
    p.add_argument("--text-encoder", help="UMT5-XXL folder (text_encoder/ + tokenizer/) for Wan-scale checkpoints")
    p.add_argument(
        "--attention",
        choices=("dense", "mla"),
        help="assert the checkpoint's attention kind (converts nothing; default: whatever it has)",
    )
    p.add_argument(
        "--mla-path",
        choices=("auto", "materialised", "absorbed"),
        default="auto",
        help="how MLA layers compute attention (default auto)",
    )
    p.add_argument(
        "--recache", action="store_true", help="on a prompt switch, rebuild the KV cache under the new prompt"
    )
    p.add_argument("--seed", type=int, help="noise seed (default: random, printed in the summary)")
    p.add_argument("--device", choices=("cpu", "cuda"), help="default: cuda when available")
    p.add_argument("--dtype", choices=sorted(DTYPES), help="model and cache dtype (default: bf16 on cuda, fp32 on cpu)")
    p.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    add_stream_args(p)
    _default_to_checkpoint(p, set(_STREAM_FIELDS))
    p.set_defaults(func=run)


def _default_to_checkpoint(p: argparse.ArgumentParser, dests: set[str]) -> None:
    """Unset options mean "the checkpoint's value", and the help says so."""
    for action in p._actions:
        if action.dest in dests:
            action.default = None
            action.help = (
                re.sub(r"\s*\(default (%\(default\)s|[^)]*)\)", "", action.help or "").strip()
                + " (default: the checkpoint's)"
            )


def run(args: argparse.Namespace) -> int:
    from ..pipeline import Pipeline, parse_prompt, prompt_schedule
    from ..video_io import check_writable, format_for

    # Check everything cheap before loading any weights.
    schedule = prompt_schedule([parse_prompt(arg) for arg in args.prompt])
    if not args.seconds > 0:
        raise ValueError(f"--seconds must be positive, got {args.seconds:g}")
    check_writable(args.out)
    fmt = format_for(args.out, args.format)
    dtype = parse_dtype(args.dtype) if args.dtype else None
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise ValueError("--device cuda, but no CUDA device is available")

    pipe = Pipeline.from_checkpoint(
        args.checkpoint,
        device=args.device,
        dtype=dtype,
        vae=args.vae,
        text_encoder=args.text_encoder,
        attention=args.attention,
        mla_path=args.mla_path,
    )
    given = {field: getattr(args, dest) for dest, field in _STREAM_FIELDS.items() if getattr(args, dest) is not None}
    stream = dataclasses.replace(pipe.spec.stream, **given)
    chunks = pipe.stream(
        schedule,
        args.seconds,
        stream=stream,
        seed=args.seed,
        recache=args.recache,
        out=args.out,
        format=fmt,
        grid_frames=args.grid_frames,
        progress=not args.quiet,
    )
    interrupted = False
    try:
        for _ in chunks:
            pass
    except KeyboardInterrupt:
        interrupted = True  # the file is finished below with every frame made so far
    finally:
        chunks.close()
    if not args.quiet:
        state = "interrupted; wrote what was generated to" if interrupted else "wrote"
        print(f"{state} {args.out} ({fmt})")
        print(pipe.stats.summary())
    return 130 if interrupted else 0
