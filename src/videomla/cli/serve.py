"""``videomla serve``: many live streams of one model, watched and steered in the browser (docs/serve.md)."""

from __future__ import annotations

import argparse


def parse_bytes(text: str) -> int:
    units = {"": 1, "k": 2**10, "kib": 2**10, "m": 2**20, "mib": 2**20, "g": 2**30, "gib": 2**30}
    s = text.strip().lower()
    num = s.rstrip("abcdefghijklmnopqrstuvwxyz")
    unit = s[len(num) :]
    if unit not in units or not num:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 512MiB, 2GiB)")
    return int(float(num) * units[unit])


def register(sub) -> None:
    p = sub.add_parser("serve", help="serve live streams to browsers (HTTP/JSON API + WebSocket frames)")
    p.add_argument("--checkpoint", default=None, help="checkpoint (default: the embedded default model)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--max-streams", type=int, default=16, help="most streams open at once")
    p.add_argument("--kv-budget", type=parse_bytes, default=None,
                   help="memory for stream caches (e.g. 2GiB); admission stops where it is full")  # fmt: skip
    p.add_argument("--max-batch", type=int, default=None, help="largest cohort in one batched step")
    p.add_argument("--no-pacing", action="store_true", help="generate as fast as possible, not ~real time")
    p.add_argument("--device", default=None)
    p.add_argument("--vae", default=None, help="Wan2.1 VAE folder, or a TAEHV taew2_1 file (wan-vae checkpoints)")
    p.add_argument("--text-encoder", default=None, help="UMT5 folder, or hash")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: see engine/threads.py)")
    p.set_defaults(func=run)


def run(args) -> int:
    if args.max_streams < 1:
        raise ValueError(f"--max-streams must be >= 1, got {args.max_streams}")
    try:
        import uvicorn
    except ImportError as err:
        raise ImportError(f"videomla serve needs its extra: pip install 'videomla[serve]' ({err})") from err
    from ..pipeline import Pipeline
    from ..serve import Scheduler
    from ..serve.app import create_app

    pipe = Pipeline.from_checkpoint(
        args.checkpoint, device=args.device, threads=args.threads, vae=args.vae, text_encoder=args.text_encoder
    )
    scheduler = Scheduler(pipe, max_streams=args.max_streams, budget_bytes=args.kv_budget,
                          max_batch=args.max_batch, pacing=not args.no_pacing)  # fmt: skip
    scheduler.start()
    app = create_app(scheduler)
    try:
        uvicorn.run(app, host=args.host, port=args.port, log_level="warning", ws_max_size=2**16)
    finally:
        scheduler.shutdown()
    return 0
