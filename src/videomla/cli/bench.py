"""``videomla bench``: real-scale streaming speed, memory, FLOPs and concurrency, variants side by side."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from ..benchmark import DEFAULT_VARIANTS, VARIANTS, BenchSetup, markdown, parse_variants, run_bench, targets, validate
from ..benchmark.report import SCHEMA, provenance, to_json, write_atomic
from ..config import PRESETS
from .common import DTYPES, parse_dtype


def _numbers(kind: type, text: str) -> tuple:
    try:
        return tuple(kind(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def _names(text: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown variants {unknown}; choose from {', '.join(VARIANTS)}")
    return names


_OTHERS = ", ".join(sorted(set(VARIANTS) - set(DEFAULT_VARIANTS)))


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="benchmark streaming variants: speed, memory, FLOPs", description=__doc__)
    p.add_argument("--preset", choices=sorted(PRESETS), default="wan2.1-t2v-1.3b", help="model size (random weights)")
    p.add_argument(
        "--device",
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="cuda (the benchmark; default when available) or cpu (bookkeeping checks only)",
    )
    p.add_argument("--dtype", choices=sorted(DTYPES), default="bf16", help="weights, activations and cache")
    p.add_argument(
        "--variants",
        default=",".join(DEFAULT_VARIANTS),
        help=f"comma-separated, or 'all' (default: %(default)s; also: {_OTHERS})",
    )
    p.add_argument("--height", type=int, default=480, help="video height in pixels (default 480)")
    p.add_argument("--width", type=int, default=832, help="video width in pixels (default 832)")
    p.add_argument("--steady-chunks", type=int, default=5, help="chunks timed after the 5 s clip (default 5)")
    p.add_argument(
        "--horizons",
        type=lambda t: _numbers(float, t),
        default=(5.0, 60.0, 300.0),
        help="seconds of video at which peak memory is read (default 5,60,300)",
    )
    p.add_argument("--batch-sizes", type=lambda t: _numbers(int, t), default=(4,), help="batched streams (default 4)")
    p.add_argument(
        "--batched-variants",
        type=_names,
        default=("sf21", "dense-s1w6", "mla-auto"),
        help="variants also run with --batch-sizes streams",
    )
    p.add_argument(
        "--concurrency",
        type=_names,
        default=("dense-s1w6", "mla-auto"),
        help="variants whose most concurrent streams are computed and verified (CUDA only)",
    )
    p.add_argument("--concurrency-probe", type=int, default=8, help="second batch size of the memory line (default 8)")
    p.add_argument(
        "--full-stream",
        metavar="VARIANT",
        type=lambda t: _names(t)[0],
        help="stream this variant chunk by chunk up to --full-stream-seconds instead of fast-forwarding its cache",
    )
    p.add_argument("--full-stream-seconds", type=float, default=60.0, help="(default 60)")
    p.add_argument("--no-vae", action="store_true", help="skip the Wan-VAE decode timing (no diffusers needed)")
    p.add_argument(
        "--decoder",
        choices=("wan-vae", "taehv"),
        default="wan-vae",
        help="what the decode timing runs: the Wan2.1 VAE (default) or the tiny TAEHV decoder (random weights)",
    )
    p.add_argument("--no-slicing", action="store_true", help="run batched self-attention/FFN over all streams at once")
    p.add_argument(
        "--compile-backend",
        default="inductor",
        help="torch.compile backend of the fused helpers (default inductor; 'eager' only traces, for quick checks)",
    )
    p.add_argument(
        "--sequence-parallel",
        action="store_true",
        help="under torchrun: every stream's tokens split over the processes (rank 0 writes the report)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", metavar="PATH", help="write the full results here")
    p.add_argument("--markdown", metavar="PATH", help="write the results table here")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def setup_from_args(args: argparse.Namespace) -> BenchSetup:
    for name in ("steady_chunks", "concurrency_probe"):
        if getattr(args, name) < (2 if name == "concurrency_probe" else 1):
            raise ValueError(f"--{name.replace('_', '-')} is too small: {getattr(args, name)}")
    if any(b < 1 for b in args.batch_sizes):
        raise ValueError(f"--batch-sizes must be positive, got {args.batch_sizes}")
    if args.no_vae and args.decoder != "wan-vae":
        raise ValueError(f"--decoder {args.decoder} times a decode, but --no-vae skips the decode timing")
    vae_config = {}
    if args.preset != "wan2.1-t2v-1.3b":  # a small model gets a small VAE with matching latent channels
        from ..config import preset

        z = preset(args.preset).in_channels
        if args.decoder == "taehv":
            vae_config = {"latent_channels": z, "widths": (16, 16, 8, 8)}
        else:
            vae_config = {"base_dim": 8, "z_dim": z, "dim_mult": [1, 2, 2, 2], "latents_mean": [0.0] * z}
            vae_config["latents_std"] = [1.0] * z
    setup = BenchSetup(
        preset=args.preset,
        device=args.device,
        dtype=parse_dtype(args.dtype),
        height=args.height,
        width=args.width,
        steady_chunks=args.steady_chunks,
        horizons=tuple(sorted(args.horizons)),
        batch_sizes=args.batch_sizes,
        batched_variants=args.batched_variants,
        concurrency_variants=args.concurrency,
        concurrency_probe=args.concurrency_probe,
        full_stream=args.full_stream,
        full_stream_seconds=args.full_stream_seconds,
        vae=not args.no_vae,
        decoder=args.decoder,
        stream_slicing=not args.no_slicing,
        compile_backend=args.compile_backend,
        seed=args.seed,
        vae_config=vae_config,
    )
    setup.latent_size  # noqa: B018 (raises on a size the VAE cannot take, before anything is built)
    setup.torch_device  # noqa: B018 (raises on a device name that is wrong or absent, likewise)
    return setup


def run(args: argparse.Namespace) -> int:
    setup = setup_from_args(args)
    variants = parse_variants(args.variants)
    meta = provenance(setup.torch_device, sys.argv[2:] if sys.argv[1:2] == ["bench"] else [])
    done: list[dict] = []

    def save_partial(result: dict) -> None:  # a long run that dies later keeps what it measured
        done.append(result)
        if args.json:
            write_atomic(f"{args.json}.partial", to_json({"schema": SCHEMA, "meta": meta, "variants": done}))

    shard = None
    if args.sequence_parallel:
        from ..parallel import init_from_torchrun

        shard = init_from_torchrun(setup.torch_device.type == "cuda")
        meta["processes"] = shard.world
    leader = shard is None or shard.rank == 0
    if not leader:
        args.json = args.markdown = None
    log = lambda m: print(m, file=sys.stderr, flush=True) if leader else None  # noqa: E731
    results = run_bench(
        setup, variants, progress=not args.quiet and leader, log=log, on_result=save_partial, shard=shard
    )
    report = {
        "schema": SCHEMA,
        "meta": meta,
        "setup": setup.record(),
        **results,
        "targets": targets(results["variants"]),
    }
    validate(report)
    table = markdown(report)
    if args.json:
        write_atomic(args.json, to_json(report))
    if args.markdown:
        write_atomic(args.markdown, table)
    if args.json:
        Path(f"{args.json}.partial").unlink(missing_ok=True)
    if leader:
        print(table)
    return 0
