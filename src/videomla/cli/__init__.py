"""The ``videomla`` command: one module per subcommand, each with ``register(subparsers)``."""

from __future__ import annotations

import argparse
import importlib
import sys

# Subcommand modules under videomla.cli, in the order ``videomla --help`` lists them.
COMMANDS = ("info", "rank", "generate", "train", "evaluate", "bench", "convert")


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = argparse.ArgumentParser(
        prog="videomla", description="Streaming video diffusion with a low-rank latent KV cache (VideoMLA)."
    )
    parser.add_argument("--version", action="version", version=f"videomla {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"{__name__}.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, PermissionError, KeyError) as err:
        # Bad input: say what is wrong in one line, not a traceback from deep inside torch.
        print(f"videomla {args.command}: error: {err}", file=sys.stderr)
        return 2
