"""``videomla info``: config, parameter count and KV-cache memory of a preset or checkpoint."""

from __future__ import annotations

import argparse
import json
from collections import Counter

import torch

from ..cache import KVFootprint
from ..config import ModelConfig, preset
from ..model import CausalWanModel
from .common import DTYPES, add_model_args, add_stream_args, check_video_size, parse_dtype, stream_from_args


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="model config, parameter count and KV-cache bytes", description=__doc__)
    p.add_argument(
        "--checkpoint",
        metavar="PATH",
        help="describe this checkpoint (any format videomla reads) instead of a preset; validates its tensors",
    )
    add_model_args(
        p,
        "architecture (default wan2.1-t2v-1.3b); with --checkpoint, used only if the checkpoint carries no config",
        "self-attention of the preset (default dense)",
    )
    p.add_argument("--dtype", choices=sorted(DTYPES), default="bf16", help="cache dtype (default bf16)")
    p.add_argument("--kv-fp8", action="store_true", help="store MLA latents in fp8 e4m3 with per-token scales")
    p.add_argument("--height", type=int, default=480, help="video height in pixels (default 480)")
    p.add_argument("--width", type=int, default=832, help="video width in pixels (default 832)")
    p.add_argument("--vae-stride", type=int, default=8, help="pixels per latent row/column (Wan VAE: 8)")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")
    add_stream_args(p)
    p.set_defaults(func=run)


def describe(cfg: ModelConfig, args: argparse.Namespace) -> dict:
    check_video_size(args.height, args.width, args.vae_stride, cfg.patch_size)
    with torch.device("meta"):  # shapes only: no memory even for the 1.3B preset
        model = CausalWanModel(cfg)
    if args.kv_fp8 and not cfg.mla_layers:
        raise ValueError("--kv-fp8 applies to MLA latents; add --attention mla")
    latent_dtype = torch.float8_e4m3fn if args.kv_fp8 else None
    dtype = parse_dtype(args.dtype)
    stream = stream_from_args(args)
    latent_h, latent_w = check_video_size(args.height, args.width, args.vae_stride, cfg.patch_size)
    tpf = model.tokens_per_frame(latent_h, latent_w)
    fp = KVFootprint.of(model.cache_specs(dtype, latent_dtype), cfg.dim, dtype, stream, tpf)
    return {
        "config": cfg.to_dict(),
        "parameters": sum(p.numel() for p in model.parameters()),
        "stream": {
            "sink_frames": stream.sink_frames,
            "window_frames": stream.window_frames,
            "frames_per_chunk": stream.frames_per_chunk,
            "attended_frames": stream.attended_frames,
            "rope_mode": stream.rope_mode,
        },
        "kv_cache": {
            "dtype": args.dtype,
            "latent_fp8": args.kv_fp8,
            "numbers_per_token_per_layer": fp.numbers_per_token_per_layer[0],
            "numbers_per_token_by_layer": list(fp.numbers_per_token_per_layer),
            "dense_numbers_per_token_per_layer": 2 * cfg.dim,
            "bytes_per_token_per_layer": fp.bytes_per_token_per_layer[0],
            "payload_bytes_per_token_per_layer": fp.payload_bytes_per_token_per_layer[0],
            "dense_bytes_per_token_per_layer": fp.dense_bytes_per_token_per_layer,
            "bytes_per_token": fp.bytes_per_token,
            "tokens_per_frame": tpf,
            "cached_tokens": fp.cached_tokens,
            "total_bytes": fp.total_bytes,
            "dense_total_bytes": fp.dense_total_bytes,
            "reduction": fp.reduction,
            "payload_reduction": fp.payload_reduction,
        },
    }


def from_checkpoint(args: argparse.Namespace) -> tuple[ModelConfig, dict]:
    """The checkpoint's config (validated against its tensors) and what to report about it."""
    from ..checkpoint import check_state_dict, read_checkpoint, resolve_config

    if args.attention is not None:
        raise ValueError("--attention describes a preset; a checkpoint's keys say which layers are MLA")
    state, stored, metadata = read_checkpoint(args.checkpoint, args.which)
    cfg, source = resolve_config(state, stored, preset=args.preset)
    check_state_dict(state, cfg, source, args.checkpoint)
    dtypes = sorted({str(v.dtype).removeprefix("torch.") for v in state.values()})
    return cfg, {"path": str(args.checkpoint), "config_source": source, "dtypes": dtypes, "metadata": metadata}


def run(args: argparse.Namespace) -> int:
    if args.checkpoint:
        cfg, checkpoint = from_checkpoint(args)
        meta = checkpoint["metadata"]
        kind = " ".join(str(meta[k]) for k in ("format", "state") if k in meta)
        title = f"checkpoint {args.checkpoint} ({kind}, {', '.join(checkpoint['dtypes'])})"
        layers = cfg.mla_layers
        attention = f"MLA in {len(layers)}/{cfg.num_layers} layers" if layers else "dense attention"
    else:
        name = args.preset or "wan2.1-t2v-1.3b"
        cfg, checkpoint, title = preset(name), None, f"preset {name}"
        attention = f"{args.attention or 'dense'} attention"
        if args.attention == "mla":
            cfg = cfg.with_mla()
    info = describe(cfg, args)
    if checkpoint is not None:
        info["checkpoint"] = checkpoint
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    c, kv, st = info["config"], info["kv_cache"], info["stream"]
    print(f"{title}: {attention}, {info['parameters']:,} parameters")
    if checkpoint is not None:
        extra = sorted(k for k in checkpoint["metadata"] if k not in ("format", "format_version", "state"))
        print(f"  config: {checkpoint['config_source']}" + (f"; metadata: {', '.join(extra)}" if extra else ""))
    print(
        f"  dim {c['dim']}, {c['num_heads']} heads x {c['dim'] // c['num_heads']}, "
        f"{c['num_layers']} layers, ffn {c['ffn_dim']}"
    )
    if c["mla"]:
        m = c["mla"]
        print(
            f"  MLA in {len(c['mla_layers'])} layers: d_c {m['kv_latent_dim']}, d_q {m['q_latent_dim']}, "
            f"nope/rope {m['nope_head_dim']}/{m['rope_head_dim']}, RoPE pairs (t,h,w) {tuple(m['rope_pairs'])}"
        )
    print(
        f"  window: {st['sink_frames']} sink + {st['window_frames']} recent cached frames "
        f"+ {st['frames_per_chunk']}-frame chunk = {st['attended_frames']} attended ({st['rope_mode']} RoPE)"
    )
    by_layer = Counter(kv["numbers_per_token_by_layer"])
    if len(by_layer) == 1:
        print(
            f"  KV cache per token per layer: {kv['numbers_per_token_per_layer']} numbers "
            f"(dense {kv['dense_numbers_per_token_per_layer']}), {kv['bytes_per_token_per_layer']} bytes at "
            f"{args.dtype}" + (" with fp8 latents" if kv["latent_fp8"] else "")
        )
    else:  # a mixed model: say what each kind of layer caches
        kinds = ", ".join(f"{n} numbers in {count} layers" for n, count in sorted(by_layer.items()))
        print(f"  KV cache per token: {kinds} (dense {kv['dense_numbers_per_token_per_layer']} per layer)")
    print(
        f"  cache for {kv['cached_tokens']:,} tokens x {c['num_layers']} layers: {human_bytes(kv['total_bytes'])} "
        f"(dense {human_bytes(kv['dense_total_bytes'])}): {100 * kv['reduction']:.1f}% less"
        + (f" ({100 * kv['payload_reduction']:.1f}% less counting values only)" if kv["latent_fp8"] else "")
    )
    return 0


def human_bytes(n: float) -> str:
    """Bytes in the largest binary unit that keeps the number >= 1 (a tiny model's cache is KiB, Wan's GiB)."""
    for unit in ("B", "KiB", "MiB"):
        if n < 1024:
            return f"{n:.3g} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.3f} GiB"
