"""``videomla generate``: stream a video of any length to mp4 / gif / png-grid, chunk by chunk.

Frames are decoded and appended to the file as each chunk is produced, in constant memory,
with a progress bar and a final summary: frames, FPS with and without decode, time to first
chunk, the window, RoPE mode and sampler that ran, and the peak cache bytes against a dense
cache of the same window (``--summary PATH.json`` writes the same as JSON).

The window defaults to the checkpoint's: what a videomla checkpoint records, or for a
Self-Forcing / Wan / diffusers checkpoint Self-Forcing's own (no sink, 18 cached frames,
absolute RoPE). ``--stream`` picks a peer's semantics by name; ``--sink/--window/--rope``
override single fields.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys

from ..config import STREAM_PRESETS
from ..schedule import SOLVERS, even_steps
from .common import DTYPES, add_which_arg, parse_dtype


def _steps(text: str) -> tuple[int, ...]:
    try:
        steps = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated timesteps like 1000,750,500,250, got {text!r}"
        ) from None
    if not steps:
        raise argparse.ArgumentTypeError("--steps needs at least one timestep")
    return steps


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "generate",
        help="stream a video from a prompt (or a timed list of prompts) to mp4 / gif / png",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
        '  videomla generate --prompt "a paper boat on a river" --seconds 60 --out boat.mp4\n'
        '  videomla generate --prompt "a calm sea@0" --prompt "a storm@20s" --recache --seconds 40 --out sea.mp4\n'
        "  videomla generate --prompt-file prompts.txt --out-dir videos/ --num-samples 2 --seconds 10\n"
        "  torchrun --nproc_per_node 4 --no-python videomla generate --prompt-file p.jsonl --out-dir v/ --seconds 60\n"
        "  videomla generate --checkpoint self_forcing_dmd.pt --vae Wan2.1-T2V-1.3B-Diffusers "
        '--text-encoder Wan2.1-T2V-1.3B-Diffusers --prompt "a fox" --seconds 10 --out fox.mp4',
    )
    p.add_argument(
        "--prompt",
        action="append",
        metavar="TEXT[@SECONDS]",
        help="prompt; repeat with TEXT@SECONDS (e.g. 'a storm@20s') to switch prompts at that time",
    )
    p.add_argument("--seconds", type=float, required=True, help="video length in seconds (any length: memory is fixed)")
    p.add_argument("--out", help="output file (.mp4, .gif or .png)")
    p.add_argument(
        "--prompt-file",
        help="batch mode: a .txt (one prompt per line) or .jsonl (LongLive's {'prompts': [...], "
        "'switch_frame_indices': [...]}) file; one video per entry into --out-dir",
    )
    p.add_argument("--out-dir", help="batch mode: folder for the videos and their .json sidecars")
    p.add_argument(
        "--continue-from",
        metavar="VIDEO",
        help="continue this video (mp4/gif at the model's size): its last whole chunks fill the cache first",
    )
    p.add_argument(
        "--image",
        metavar="IMAGE",
        help="image-to-video: animate this picture (png/jpg; centre-cropped and resized to the model's size); "
        "it is the stream's first frame and the video of the frames after it is written",
    )
    p.add_argument("--num-samples", type=int, default=1, help="batch mode: videos per prompt entry (default 1)")
    p.add_argument("--format", choices=("mp4", "gif", "png-grid"), help="output format (default: from --out's suffix)")
    p.add_argument("--grid-frames", type=int, default=16, help="frames sampled into a png-grid (default 16)")
    p.add_argument("--crf", type=int, help="mp4 quality: x264 constant rate factor (lower is better)")
    p.add_argument("--pix-fmt", choices=("yuv420p", "yuv444p"), help="mp4 pixel format (default yuv420p)")
    p.add_argument("--summary", metavar="PATH.json", help="also write the run summary as JSON")
    g = p.add_argument_group("model")
    g.add_argument("--checkpoint", help="model checkpoint, run folder or diffusers root (default: the embedded model)")
    add_which_arg(g)
    g.add_argument("--lora", help="a LoRA file merged into the weights (LongLive's lora.pt: peft lora_A/lora_B)")
    g.add_argument("--lora-alpha", type=float, help="LoRA alpha (scale alpha / rank; default alpha = rank)")
    g.add_argument(
        "--vae",
        help="Wan2.1 VAE folder (diffusers AutoencoderKLWan) for Wan-scale checkpoints, or a TAEHV weight file "
        "(taew2_1.pth / .safetensors): a tiny preview decoder, much cheaper than the VAE",
    )
    g.add_argument(
        "--text-encoder",
        help="UMT5-XXL folder (text_encoder/ + tokenizer/) for Wan-scale checkpoints, or 'hash' for built-in "
        "hash features (benchmarks, smoke tests)",
    )
    g.add_argument(
        "--attention",
        choices=("dense", "mla"),
        help="assert the checkpoint's attention kind (converts nothing; default: whatever it has)",
    )
    g.add_argument(
        "--mla-path",
        choices=("auto", "naive", "materialised", "absorbed"),
        default="auto",
        help="how MLA layers attend (naive: the reference)",
    )
    g.add_argument("--kv-fp8", action="store_true", help="store MLA latents in fp8 e4m3 (half the cache)")
    s = p.add_argument_group("streaming window and sampler (default: the checkpoint's)")
    s.add_argument("--stream", choices=sorted(STREAM_PRESETS), help="a peer's streaming semantics by name")
    s.add_argument("--sink", type=int, help="sink latent frames kept forever")
    s.add_argument(
        "--window", type=int, help="recent cached latent frames besides the sink (current chunk not counted)"
    )
    s.add_argument("--frames-per-chunk", type=int, help="latent frames per chunk")
    s.add_argument("--rope", choices=("window-relative", "absolute"), help="temporal RoPE positions")
    steps = s.add_mutually_exclusive_group()
    steps.add_argument("--steps", type=_steps, help="denoising timesteps, e.g. 1000,750,500,250")
    steps.add_argument("--num-steps", type=int, help="N evenly spaced denoising timesteps from 1000 (before the shift)")
    s.add_argument("--shift", type=float, help="timestep shift of the sampler")
    s.add_argument(
        "--solver",
        choices=SOLVERS,
        help="renoise: the few-step sampler of distilled students; euler: the flow-matching ODE (teachers)",
    )
    s.add_argument(
        "--recache", action="store_true", help="on a prompt switch, rebuild the KV cache under the new prompt"
    )
    s.add_argument(
        "--keep-sink", action="store_true", help="with --recache: keep the sink frames (LongLive global_sink)"
    )
    s.add_argument("--seed", type=int, help="noise seed (default: random, printed in the summary)")
    r = p.add_argument_group("runtime")
    r.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when available)")
    r.add_argument("--dtype", choices=sorted(DTYPES), help="model and cache dtype (default: bf16 on cuda, fp32 on cpu)")
    r.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="fused kernels and CUDA-graph replay (default: on for CUDA)",
    )
    r.add_argument(
        "--compute",
        choices=("bf16", "fp8"),
        default="bf16",
        help="fp8: the blocks' linear layers in e4m3 with row-wise scales (Hopper fp8 tensor cores)",
    )
    r.add_argument("--decode-overlap", action=argparse.BooleanOptionalAction, default=True, help="CUDA only")
    r.add_argument(
        "--sequence-parallel",
        action="store_true",
        help="under torchrun: split one stream's tokens over the processes (NCCL on GPUs, gloo on CPU)",
    )
    r.add_argument("--threads", type=int, help="CPU threads (default: 1 for small models, else one per core)")
    r.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    p.set_defaults(func=run)


def _mode(args: argparse.Namespace) -> str:
    if args.prompt_file is not None:
        if args.prompt or args.out:
            raise ValueError("--prompt-file writes into --out-dir; it takes no --prompt or --out")
        if not args.out_dir:
            raise ValueError("--prompt-file needs --out-dir (the folder the videos go to)")
        return "batch"
    if not args.prompt or not args.out:
        raise ValueError("give --prompt and --out (or --prompt-file and --out-dir)")
    if args.out_dir or args.num_samples != 1:
        raise ValueError("--out-dir and --num-samples go with --prompt-file")
    return "single"


def run(args: argparse.Namespace) -> int:
    from ..engine import EngineOptions
    from ..io_utils import atomic_write_text
    from ..pipeline import GenerationRequest, Pipeline, parse_prompt, resolve_device, resolve_spec

    # Everything cheap first: requests are validated from config.json before any weights load.
    mode = _mode(args)
    if not args.seconds > 0:
        raise ValueError(f"--seconds must be positive, got {args.seconds:g}")
    _, spec = resolve_spec(args.checkpoint, args.vae, args.text_encoder)
    options_of_request = dict(
        stream=args.stream,
        sink=args.sink,
        window=args.window,
        frames_per_chunk=args.frames_per_chunk,
        rope=args.rope,
        steps=args.steps if args.num_steps is None else even_steps(args.num_steps, "--num-steps"),
        shift=args.shift,
        solver=args.solver,
        recache=args.recache,
        keep_sink=args.keep_sink,
        format=args.format,
        grid_frames=args.grid_frames,
        output="none",
        crf=args.crf,
        pix_fmt=args.pix_fmt,
    )

    def build(prompts, out, seed) -> GenerationRequest:
        return GenerationRequest.build(spec, prompts, args.seconds, out=out, seed=seed, **options_of_request)

    shard = None
    if args.sequence_parallel:
        if mode == "batch":
            raise ValueError("--sequence-parallel splits one stream; a --prompt-file batch is shared out by torchrun")
        shard = _init_sequence_parallel(args)
    if args.continue_from:
        if mode == "batch":
            raise ValueError("--continue-from continues one video; it does not go with --prompt-file")
        options_of_request["context"] = _read_context(args.continue_from, spec, args.frames_per_chunk)
    if args.image:
        if mode == "batch" or args.continue_from:
            raise ValueError(
                "--image starts one video from a picture; it does not go with --prompt-file or --continue-from"
            )
        from ..video_io import read_image

        options_of_request["context"] = read_image(args.image, spec.video.height, spec.video.width)
    if mode == "single":
        jobs = [(build([parse_prompt(arg) for arg in args.prompt], args.out, args.seed), args.summary)]
    else:
        jobs = _batch_jobs(args, spec, build)
    device = resolve_device(_local_device(args.device))
    options = EngineOptions(compile=args.compile, cuda_graphs=args.compile if device.type == "cuda" else False)
    pipe = Pipeline.from_checkpoint(
        args.checkpoint,
        device=device,
        dtype=parse_dtype(args.dtype) if args.dtype else None,
        vae=args.vae,
        text_encoder=args.text_encoder,
        attention=args.attention,
        mla_path=args.mla_path,
        which=args.which,
        kv_fp8=args.kv_fp8,
        options=options,
        decode_overlap=args.decode_overlap,
        threads=args.threads,
        shard=shard,
        compute=args.compute,
        lora=args.lora,
        lora_alpha=args.lora_alpha,
    )
    leader = shard is None or shard.rank == 0  # with sequence parallelism rank 0 writes and reports
    for request, summary_path in jobs:
        chunks = pipe.run(request, progress=not args.quiet)
        interrupted = False
        try:
            for _ in chunks:
                pass
        except KeyboardInterrupt:
            interrupted = True  # the file is finished below with every frame made so far
        finally:
            chunks.close()
        summary = pipe.summary
        summary.interrupted = interrupted
        summary.run["checkpoint"] = args.checkpoint or "the embedded default model"
        summary.run["sequence_parallel"] = None if shard is None else shard.world
        if summary_path and leader:
            atomic_write_text(summary_path, json.dumps(summary.to_dict(), indent=2) + "\n")
        if not args.quiet and leader:
            state = "interrupted; wrote what was generated to" if interrupted else "wrote"
            print(f"{state} {request.out} ({request.format})", file=sys.stderr if interrupted else sys.stdout)
            print(summary.text())
        if interrupted:
            return 130
    return 0


def _init_sequence_parallel(args: argparse.Namespace):
    import torch

    from ..parallel import init_from_torchrun

    return init_from_torchrun(torch.cuda.is_available() and args.device != "cpu")


def _read_context(path: str, spec, frames_per_chunk: int | None):
    """The video's last frames that make whole chunks (the cache holds only the latest ones anyway)."""
    from ..pipeline import chunks_for_frames
    from ..video_io import read_frames

    frames, _ = read_frames(path)
    stream = (
        spec.stream if frames_per_chunk is None else dataclasses.replace(spec.stream, frames_per_chunk=frames_per_chunk)
    )
    c = stream.frames_per_chunk
    k = chunks_for_frames(spec, stream, len(frames) + 1) - 1  # whole chunks that fit in the video
    if k < 1:
        raise ValueError(f"--continue-from: {path} has {len(frames)} frames, fewer than one chunk")
    return frames[len(frames) - spec.codec.frames_for(k * c) :]


def _local_device(device: str | None) -> str | None:
    """Under torchrun each process takes its own GPU (LOCAL_RANK) unless --device names one."""
    import os

    local = os.environ.get("LOCAL_RANK")
    if local is not None and (device is None or device == "cuda"):
        import torch

        if torch.cuda.is_available():
            return f"cuda:{int(local)}"
    return device


def _batch_jobs(args: argparse.Namespace, spec, build) -> list:
    """This process's share of the prompt file: (request, sidecar path) per video."""
    import random
    from pathlib import Path

    from ..pipeline.batch import batch_items, read_prompt_file, shard

    out_dir = Path(args.out_dir)
    if not out_dir.is_dir():
        raise ValueError(f"--out-dir {out_dir} is not a folder (create it first)")
    if args.summary:
        raise ValueError("--summary goes with --out; in batch mode every video gets a .json sidecar")
    fpc = args.frames_per_chunk or spec.stream.frames_per_chunk
    entries = read_prompt_file(args.prompt_file, spec, fpc)
    base = random.randrange(2**31) if args.seed is None else args.seed
    suffix = {"mp4": ".mp4", "gif": ".gif", "png-grid": ".png", None: ".mp4"}[args.format]
    rank, world = shard()
    items = batch_items(entries, args.num_samples, base)[rank::world]
    return [
        (build(item.prompts, out_dir / f"{item.name}{suffix}", item.seed), out_dir / f"{item.name}.json")
        for item in items
    ]
