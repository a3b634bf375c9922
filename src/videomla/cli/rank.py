"""``videomla rank``: effective rank of self-attention operators (paper §5) for checkpoints or a random init.

Per layer: r_tau (tau = 0.90, 0.95, 0.99) and the energy kept at rank K of the stacked dense
[W_K; W_V] and W_Q, or of the composed MLA operators (RMSNorm gains folded in); with
``--activations`` the same for the tensors the KV cache holds on random inputs. Writes
ranks.csv, ranks.json, spectra.safetensors and PNG plots to --out; several checkpoints add a
rank-over-training plot.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..analysis import plots
from ..analysis.study import ActivationInputs, rank_study, targets
from .common import add_model_args, add_stream_args, check_output_folder, seed_arg, stream_from_args


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "rank", help="effective rank of attention weights / cached activations (paper §5)", description=__doc__
    )
    p.add_argument(
        "checkpoints", nargs="*", metavar="CHECKPOINT", help="checkpoint files or folders, any format videomla reads"
    )
    p.add_argument("--out", type=Path, required=True, help="output folder (created if missing)")
    add_model_args(
        p,
        "without checkpoints: analyse a random init of this preset; with: their config if they carry none",
        "random-init preset: attention kind (default dense)",
    )
    p.add_argument("--seed", type=seed_arg, default=0, help="seed of random inits and random inputs (default 0)")
    p.add_argument("--rank", type=int, help="K for 'energy at rank K' (default: the model's d_c, else 192)")
    p.add_argument("--labels", nargs="+", help="display labels, one per checkpoint (or one for the preset)")
    p.add_argument(
        "--fold-dense-gains",
        action="store_true",
        help="use diag(g_k) W_K and diag(g_q) W_Q for dense layers (default: raw weights, as the paper)",
    )
    p.add_argument("--per-layer", action="store_true", help="print every layer, not just the summary")
    p.add_argument("--no-plots", action="store_true", help="write CSV/JSON only")
    g = p.add_argument_group("activations (--activations)")
    g.add_argument("--activations", action="store_true", help="also analyse what the KV cache holds on random inputs")
    g.add_argument("--chunks", type=int, default=3, help="chunks in the clip (default 3)")
    g.add_argument("--batch", type=int, default=2, help="random videos per forward (default 2)")
    g.add_argument(
        "--latent-size",
        type=int,
        nargs=2,
        default=(16, 16),
        metavar=("H", "W"),
        help="latent height and width (default 16 16)",
    )
    g.add_argument("--text-tokens", type=int, default=16, help="random text tokens (default 16)")
    g.add_argument("--timestep", type=float, default=0.0, help="timestep of every frame (default 0, the cache pass)")
    g.add_argument("--device", default="cpu", help="device of the forward (default cpu)")
    add_stream_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    activations = None
    if args.activations:  # checked when made: fail before minutes of SVDs, not after
        activations = ActivationInputs(
            stream_from_args(args),
            chunks=args.chunks,
            batch=args.batch,
            latent_size=tuple(args.latent_size),
            text_tokens=args.text_tokens,
            timestep=args.timestep,
        )
    check_output_folder(args.out, "--out")
    models = targets(args.checkpoints, preset=args.preset, attention=args.attention, labels=args.labels)
    study = rank_study(
        models,
        rank=args.rank,
        fold_dense_gains=args.fold_dense_gains,
        activations=activations,
        device=args.device,
        which=args.which,
        seed=args.seed,
        progress=True,
    )
    for note in study.notes:
        print(note, file=sys.stderr)
    study.write(args.out)  # only now: a refused run leaves no empty folder
    print(study.summary_table(args.per_layer))
    if args.no_plots:
        return 0
    try:
        written = study.write_plots(args.out)
    except plots.PlotsUnavailable as err:
        print(f"videomla rank: no plots: {err}; ranks.csv / ranks.json are written", file=sys.stderr)
        return 0
    print(f"wrote ranks.csv, ranks.json, spectra.safetensors and {len(written)} plots to {args.out}")
    return 0
