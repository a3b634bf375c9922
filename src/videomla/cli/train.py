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
    p.add_argument(
        "config",
        help="YAML training config: a path, or the name of a bundled one (e.g. world-1-teacher-forcing; "
        "`videomla train --list-configs`); see docs/train.md",
        nargs="?",
    )
    p.add_argument("--list-configs", action="store_true", help="list the configs installed with videomla and exit")
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


BUNDLED = Path(__file__).resolve().parent.parent / "configs"  # configs/ of the repo, shipped in the wheel


def bundled_config(name: str) -> str:
    """A path as given, else a bundled config of that name (``world-1-teacher-forcing[.yaml]``)."""
    if Path(name).exists() or "/" in name:
        return name
    candidate = BUNDLED / (name if name.endswith(".yaml") else f"{name}.yaml")
    return str(candidate) if candidate.is_file() else name


def run(args: argparse.Namespace) -> int:
    from ..training.config import load_config
    from ..training.trainer import train

    overrides = list(args.overrides)
    if args.device:
        overrides.append(f"device={args.device}")
    if args.list_configs:
        for path in sorted(BUNDLED.glob("*.yaml")):
            print(f"{path.stem:32s} {path}")
        return 0
    if args.config is None:
        raise ValueError("give a training config (a YAML path or a bundled name: --list-configs)")
    cfg = load_config(bundled_config(args.config), overrides)
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
