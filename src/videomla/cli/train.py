"""``videomla train CONFIG.yaml``: run one stage of the Causal Forcing recipe (see docs/train.md)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from .common import check_output_folder


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train a stage: teacher forcing, consistency distillation or DMD (one process or torchrun)",
        description="Train one stage of teacher forcing -> consistency distillation -> DMD from a YAML config. "
        "Runs as one process on CPU or one GPU, or under torchrun with FSDP2 over all processes.",
    )
    p.add_argument("config", help="YAML training config (see configs/ and docs/train.md)")
    p.add_argument("--out", help="run folder: checkpoints/, metrics.csv, config.yaml (default: the config's out_dir)")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in the run folder")
    p.add_argument("--device", help="cpu | cuda | cuda:N | auto (overrides the config's device)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, e.g. --set optim.lr=1e-5 --set data.batch_size=4 (repeatable)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..training.config import load_config
    from ..training.trainer import train

    overrides = list(args.overrides)
    if args.device:
        overrides.append(f"device={args.device}")
    cfg = load_config(args.config, overrides)
    out = args.out or cfg.out_dir
    if not out:
        raise ValueError("no run folder: pass --out DIR or set out_dir in the config")
    check_output_folder(Path(out), "run folder")  # a file, a link loop, an unwritable parent: before any work
    history = train(cfg, out, resume=args.resume)
    if os.environ.get("RANK", "0") != "0":  # torchrun: one summary, from the main process
        return 0
    if history:
        last = history[-1]
        shown = ", ".join(f"{k} {v:.4g}" for k, v in last.items() if k != "step")
        print(f"step {int(last['step'])}: {shown}; run folder {out}")
    else:
        print(f"nothing to do: the run in {out} already reached {cfg.steps} steps")
    return 0
