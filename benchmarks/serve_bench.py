"""Benchmark `videomla serve`: aggregate FPS and per-stream latency to first frame at N concurrent streams.

Starts the real server (uvicorn on a loopback port, pacing off so streams run flat out), opens N
streams at once over HTTP, watches each over its WebSocket, and records frames / wall time and
the time from each open request to its first frame. Writes JSON (and prints a Markdown table).

    python benchmarks/serve_bench.py --streams 1 4 16 --seconds 1.5 --out benchmarks/serve-cpu.json
    python benchmarks/serve_bench.py --checkpoint RANDOM_WAN_DIR --device cuda ...  (see scripts/gpu_serve.sh)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import threading
import time
import urllib.request

import torch
import uvicorn
from websockets.sync.client import connect

from videomla.pipeline import Pipeline
from videomla.serve import Scheduler
from videomla.serve.app import create_app
from videomla.serve.scheduler import HEADER
from videomla.tables import render_table


def post(base: str, path: str, body: dict) -> dict:
    req = urllib.request.Request(base + path, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.loads(r.read())


def steady_fps(chunks: dict[int, list]) -> float | None:
    """Frames of chunks 1.. over the time from chunk 0's first frame to the last chunk's: the rate a
    watcher sees once the stream runs (the first chunk's latency left out); None below two chunks."""
    order = sorted(chunks)
    if len(order) < 2:
        return None
    span = chunks[order[-1]][0] - chunks[order[0]][0]
    return sum(chunks[c][1] for c in order[1:]) / span if span > 0 else None


def watch(port: int, opened: dict, t_open: float, result: dict) -> None:
    frames, chunks = 0, {}  # chunk index -> [arrival of its first frame, frames]
    with connect(f"ws://127.0.0.1:{port}{opened['ws']}", open_timeout=60, max_size=2**24) as ws:
        while True:
            msg = ws.recv(timeout=600)
            if isinstance(msg, bytes):
                frames += 1
                now = time.perf_counter()
                if frames == 1:
                    result["first_frame_s"] = now - t_open
                chunks.setdefault(HEADER.unpack_from(msg)[1], [now, 0])[1] += 1
            elif json.loads(msg)["type"] == "end":
                break
    result["frames"], result["done_s"], result["steady_fps"] = frames, time.perf_counter(), steady_fps(chunks)


def run_level(port: int, n: int, seconds: float, stream: str | None = None) -> dict:
    base = f"http://127.0.0.1:{port}"
    results = [{} for _ in range(n)]
    threads = []
    t0 = time.perf_counter()
    for i in range(n):
        t_open = time.perf_counter()
        opened = post(base, "/api/streams", {"prompt": f"a large yellow triangle bouncing {i}", "seconds": seconds,
                                             "seed": i, "stream": stream})  # fmt: skip
        th = threading.Thread(target=watch, args=(port, opened, t_open, results[i]))
        th.start()
        threads.append(th)
    for th in threads:
        th.join()
    wall = max(r["done_s"] for r in results) - t0
    frames = sum(r["frames"] for r in results)
    lat = sorted(r["first_frame_s"] for r in results)
    steady = sorted(r["steady_fps"] for r in results if r["steady_fps"] is not None)
    return {
        "streams": n, "frames": frames, "wall_s": round(wall, 3), "aggregate_fps": round(frames / wall, 2),
        "per_stream_fps": round(frames / wall / n, 2),
        "steady_fps_per_stream": {"min": round(steady[0], 2), "median": round(steady[len(steady) // 2], 2)}
        if steady else None,
        "first_frame_s": {"min": round(lat[0], 3), "median": round(lat[len(lat) // 2], 3), "max": round(lat[-1], 3)},
    }  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--vae", default=None)
    ap.add_argument("--text-encoder", default=None, help="a UMT5 folder, or hash")
    ap.add_argument("--streams", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--seconds", type=float, default=1.5)
    ap.add_argument("--max-batch", type=int, default=None)
    ap.add_argument("--stream", default=None, help="stream preset for every stream (default: the checkpoint's)")
    ap.add_argument(
        "--warmup-each", action="store_true", help="run every level once unmeasured first (compile, graphs per size)"
    )
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    load_before = os.getloadavg()
    pipe = Pipeline.from_checkpoint(
        args.checkpoint, device=args.device, threads=args.threads, vae=args.vae, text_encoder=args.text_encoder
    )
    scheduler = Scheduler(pipe, max_streams=max(args.streams), pacing=False, max_batch=args.max_batch)
    scheduler.start()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(scheduler), host="127.0.0.1", port=port, log_level="warning"))
    th = threading.Thread(target=server.run, daemon=True)
    th.start()
    while not server.started:
        time.sleep(0.05)
    run_level(port, 1, args.seconds, args.stream)  # warm-up
    levels = []
    for n in args.streams:
        if args.warmup_each:
            run_level(port, n, args.seconds, args.stream)
        levels.append(run_level(port, n, args.seconds, args.stream))
        print(json.dumps(levels[-1]), flush=True)
    server.should_exit = True
    th.join(30)
    scheduler.shutdown()
    # the device's copy has a stale .git: VIDEOMLA_COMMIT (the code carried) wins where it is set
    commit = (
        os.environ.get("VIDEOMLA_COMMIT")
        or subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    )
    report = {
        "command": "python " + " ".join(os.sys.argv),
        "commit": commit,
        "warmup_each": args.warmup_each,
        "stream": args.stream,
        "machine": {"cpu_cores": os.cpu_count(), "affinity": len(os.sched_getaffinity(0)),
                    "load_avg_before": load_before, "platform": platform.platform(),
                    "torch": torch.__version__, "threads": torch.get_num_threads(), "device": args.device},
        "video": {"height": pipe.spec.video.height, "width": pipe.spec.video.width, "fps": pipe.spec.video.fps},
        "seconds_per_stream": args.seconds,
        "levels": levels,
    }  # fmt: skip
    report["machine"]["load_avg_after"] = os.getloadavg()
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    header = ["streams", "aggregate FPS", "per-stream FPS", "steady per-stream FPS (min / median)",
              "first frame (min / median / max s)"]  # fmt: skip
    rows = []
    for lv in levels:
        ff, st = lv["first_frame_s"], lv["steady_fps_per_stream"]
        steady = f"{st['min']} / {st['median']}" if st else "-"
        rows.append([lv["streams"], lv["aggregate_fps"], lv["per_stream_fps"], steady,
                     f"{ff['min']} / {ff['median']} / {ff['max']}"])  # fmt: skip
    print(render_table(header, rows, markdown=True))


if __name__ == "__main__":
    main()
