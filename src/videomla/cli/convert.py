"""``videomla convert``: turn a dense Wan checkpoint's self-attention into VideoMLA (SVD or random init).

Reads any checkpoint ``videomla.checkpoint`` reads, converts the chosen layers (docs/convert.md
describes the SVD recipe and what it reproduces exactly), prints a per-layer table (spectral
energy kept, relative errors on sample tokens) and writes a videomla checkpoint folder.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from ..checkpoint import load_model, save_model
from ..config import mla_config
from ..convert import DEFAULT_CALIBRATION_TOKENS, INITS, ConversionReport, convert_to_mla, parse_layers
from ..io_utils import atomic_write_json
from ..tables import Column, records_table
from .common import add_model_args, check_output_file, check_output_folder, seed_arg

COLUMNS: list[Column] = [
    ("layer", "layer", "d"),
    ("energy_kv", "E_kv(d_c)", ".3f"),
    ("energy_q", "E_q(d_q)", ".3f"),
    ("q", "err q", ".3g"),
    ("k_nope", "err k_nope", ".3g"),
    ("k_rope", "err k_rope", ".3g"),
    ("v", "err v", ".3g"),
    ("out", "err out", ".3g"),
]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("convert", help="dense self-attention -> VideoMLA (SVD or random init)", description=__doc__)
    p.add_argument("src", metavar="SRC", help="dense (or partly converted) checkpoint, any format videomla reads")
    p.add_argument("dst", metavar="DST", type=Path, help="output videomla checkpoint folder")
    p.add_argument("--attention", choices=("mla",), default="mla", help="target attention (default mla)")
    p.add_argument("--init", choices=INITS, default="svd", help="svd (from the dense weights) or random (default svd)")
    p.add_argument(
        "--kv-latent-dim",
        "--dc",
        dest="dc",
        type=int,
        help="KV latent width d_c (MLAConfig.kv_latent_dim; default: paper's 192 at Wan width, scaled otherwise)",
    )
    p.add_argument(
        "--q-latent-dim",
        "--dq",
        dest="dq",
        type=int,
        help="query latent width d_q (MLAConfig.q_latent_dim; default 768 at Wan width, scaled otherwise)",
    )
    p.add_argument(
        "--rope-head-dim", "--rope-dim", dest="rope_dim", type=int,
        help="RoPE channels per head (MLAConfig.rope_head_dim; default 32 = (6,5,5) pairs at head 128)",
    )  # fmt: skip
    p.add_argument("--no-latent-norm", action="store_true", help="no RMSNorm on c_KV / c_Q (paper: with)")
    p.add_argument("--layers", default="all", help="layers to convert: all, 0-14, 0,3,5 or 0-3,7 (default all)")
    p.add_argument(
        "--calibration-tokens",
        type=int,
        default=DEFAULT_CALIBRATION_TOKENS,
        help="proxy tokens per layer for calibration and the error report (default %(default)s)",
    )
    p.add_argument("--seed", type=seed_arg, default=0, help="seed of the proxy tokens and the random init (default 0)")
    p.add_argument("--report", type=Path, help="also write the per-layer report as JSON here")
    add_model_args(p, "architecture, if the checkpoint carries no config")
    p.add_argument("--device", default="cpu", help="device of the conversion (default cpu)")
    p.set_defaults(func=run)


def rows(report: ConversionReport) -> list[dict]:
    return [{"layer": r.layer, "energy_kv": r.energy_kv, "energy_q": r.energy_q, **r.errors} for r in report.layers]


def write_report(report: ConversionReport, path: Path, source: str, target: Path) -> None:
    """Atomic JSON write (:func:`videomla.io_utils.atomic_write_json`: nothing left behind on failure)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, {"source": source, "target": str(target), **report.to_dict()})


def run(args: argparse.Namespace) -> int:
    from ..pipeline import resolve_device

    device = resolve_device(args.device)
    check_output_folder(args.dst, "DST")
    if args.report is not None:
        check_output_file(args.report, "--report")
    if Path(args.src).resolve() == args.dst.resolve():
        raise ValueError(f"DST {args.dst} is SRC: write the converted model to a new folder")
    model = load_model(args.src, preset=args.preset, which=args.which, device=device)
    cfg = model.config
    mla = mla_config(cfg, args.dc, args.dq, args.rope_dim, latent_norm=not args.no_latent_norm)
    layers = parse_layers(args.layers, cfg.num_layers)
    generator = torch.Generator().manual_seed(args.seed)
    converted, report = convert_to_mla(
        model, mla, layers, args.init, None, generator, calibration_tokens=args.calibration_tokens, progress=True
    )
    meta = {"init": args.init, "layers": list(layers), "seed": args.seed, "calibration": report.calibration}
    save_model(converted, args.dst, metadata={"converted_from": str(args.src), "conversion": meta})
    print(
        f"MLA d_c {mla.kv_latent_dim}, d_q {mla.q_latent_dim}, NoPE {mla.nope_head_dim} + RoPE {mla.rope_head_dim} "
        f"{mla.rope_pairs}, latent norm {'on' if mla.latent_norm else 'off'}; init {args.init}"
    )
    print("E = spectral energy kept by the latent; err = ||mla - dense|| / ||dense|| on sample tokens")
    print(records_table(rows(report), COLUMNS))
    if args.report:
        write_report(report, args.report, str(args.src), args.dst)
        print(f"wrote report {args.report}")
    print(f"wrote {args.dst}")
    return 0
