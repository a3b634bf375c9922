"""Training throughput of the world teacher (stage 1, dense ``world`` preset): clips per second.

    python scripts/train_throughput.py --out DIR [--baseline-src OLD/src] [--cases NAME ...]

Each case builds a :class:`videomla.training.trainer.Trainer` for teacher forcing on procedural-world
clips, runs ``--warmup`` steps, then times ``--steps`` steps between two device synchronisations
(so the time includes the host work of every step: parameter sampling, rendering, uploads).
``--baseline-src`` times the same loop with an older checkout's ``src`` (in a subprocess), which is
how "before" is measured on the same machine in the same call. Also reported: the data path alone
(one batch made per step, no model) and the largest difference between the CPU renderer and the
device renderer on random clips. Writes ``throughput.json`` and ``throughput.md`` under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from videomla.tables import render_table

HORIZON = 21
STREAM = {"frames_per_chunk": 3, "sink_frames": 1, "window_frames": 6, "rope_mode": "window-relative"}
FINE_START = "docs/reproduction/world-teacher-5-model"
WORLD = {"num_clips": 1_000_000, "spatial_stride": 4, "offset": -0.76, "scale": 2.9, "seed": 0}

# name: (batch, config overrides); "before" runs only with --baseline-src (the old trainer's keys)
CASES: dict[str, tuple[int, dict]] = {
    "before-b16": (16, {"data": {"workers": 8}}),
    "cpu-render-b16": (16, {"data": {"workers": 8, "render": "cpu"}}),
    "b16": (16, {}),
    "b16-batched-render": (16, {"data": {"render": "device"}}),  # on a CPU run: the batched renderer on the CPU
    "b64": (64, {}),
    "b64-eager": (64, {"kernels": {"backend": "eager"}}),
    "b64-inductor": (64, {"kernels": {"backend": "inductor"}}),
    "b64-inductor-cudnn": (64, {"kernels": {"backend": "inductor", "cudnn_first": True}}),
    "b128-inductor": (128, {"kernels": {"backend": "inductor"}}),
    # with --baseline-src: the same case on the older code (before the clip-mask choice of 2026-12-02)
    "before-b64-inductor": (64, {"kernels": {"backend": "inductor"}}),
    # teacher 5 on the finer token grid (256 tokens per frame instead of 64), as world-teacher-6 trains it
    "b64-fine-inductor": (
        64,
        {"kernels": {"backend": "inductor"}, "model": {"checkpoint": FINE_START, "patch_size": [1, 1, 1]}},
    ),
    # the chunk-causal mask as per-chunk runs (videomla.attention.context.clip_mask) instead of auto
    "b64-inductor-blocks": (64, {"kernels": {"backend": "inductor", "clip_mask": "blocks"}}),
    "b64-fine-inductor-blocks": (
        64,
        {
            "kernels": {"backend": "inductor", "clip_mask": "blocks"},
            "model": {"checkpoint": FINE_START, "patch_size": [1, 1, 1]},
        },
    ),
}


def config(batch: int, extra: dict, out: str, new: bool) -> dict:
    cfg = {
        "stage": "teacher_forcing",
        "steps": 10**6,
        "seed": 0,
        "precision": "bf16",
        "model": {"preset": "world"},
        "stream": dict(STREAM),
        "data": {"kind": "world", "batch_size": batch, "num_frames": HORIZON, "text_dropout": 0.1, "world": WORLD},
        "optim": {"lr": 3e-4},
        "checkpoint": {"every": 10**9, "keep_last": 1},
        "log": {"every": 10**6, "tensorboard": False},
        "out_dir": out,
    }
    if new:
        cfg["heldout"] = {"every": 0}
    for key, value in extra.items():
        cfg[key] = {**cfg.get(key, {}), **value}
    return cfg


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def measure(batch: int, extra: dict, steps: int, warmup: int, new: bool) -> dict:
    from videomla.training.config import config_from_dict
    from videomla.training.trainer import Trainer

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        trainer = Trainer(config_from_dict(config(batch, extra, tmp, new)), tmp)
        build = time.perf_counter() - t0
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        for _ in range(warmup):
            trainer.train_step()
        sync()
        warm = time.perf_counter() - t0
        t0 = time.perf_counter()
        for _ in range(steps):
            trainer.train_step()
        sync()
        seconds = time.perf_counter() - t0
        losses = [float(h["loss"]) for h in trainer.flush()] if new else []
        trainer.close()
    peak = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None
    return {
        "batch": batch,
        "steps_timed": steps,
        "warmup_steps": warmup,
        "s_per_step": seconds / steps,
        "clips_per_s": batch * steps / seconds,
        "warmup_s": warm,
        "build_s": build,
        "peak_gib": peak,
        "last_loss": losses[-1] if losses else None,
    }


def host_syncs(batch: int, extra: dict, steps: int = 2) -> dict:
    """Host-device synchronisations per training step (``torch.cuda.set_sync_debug_mode('warn')``),
    counted after a warm-up step, with where each comes from (the innermost frame in videomla)."""
    import traceback
    import warnings

    from videomla.training.config import config_from_dict
    from videomla.training.trainer import Trainer

    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(config_from_dict(config(batch, extra, tmp, True)), tmp)
        trainer.train_step()
        sync()
        sites: dict[str, int] = {}

        def record(message, category, filename, lineno, file=None, line=None):
            frames = [f for f in traceback.extract_stack() if "videomla" in f.filename]
            where = f"{Path(frames[-1].filename).name}:{frames[-1].lineno} {frames[-1].line}" if frames else filename
            sites[where] = sites.get(where, 0) + 1

        torch.cuda.set_sync_debug_mode("warn")
        old = warnings.showwarning
        warnings.showwarning = record
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("always")
                warnings.showwarning = record
                for _ in range(steps):
                    trainer.train_step()
        finally:
            torch.cuda.set_sync_debug_mode("default")
            warnings.showwarning = old
        trainer.flush()
        trainer.close()
    return {"steps": steps, "per_step": sum(sites.values()) / steps, "sites": sites}


def data_only(batch: int, device: torch.device, steps: int) -> dict:
    """The data path alone: clip parameters -> rendered, encoded batch on the device."""
    from videomla.config import preset
    from videomla.training.data import WorldSource

    source = WorldSource(WORLD, preset("world"), HORIZON, 0)
    source.device_batch(list(range(batch)), device, HORIZON, 16)
    sync()
    t0 = time.perf_counter()
    for k in range(steps):
        source.device_batch(list(range(k * batch, (k + 1) * batch)), device, HORIZON, 16)
    sync()
    s = (time.perf_counter() - t0) / steps
    t0 = time.perf_counter()
    for i in range(batch):
        source[i]
    cpu = (time.perf_counter() - t0) / batch
    return {"batch": batch, "device_s_per_batch": s, "device_clips_per_s": batch / s, "cpu_s_per_clip_1_thread": cpu}


def renderer_agreement(device: torch.device, clips: int = 64, seed: int = 20261201) -> dict:
    from videomla.data.world import clip_params_at, render_batch, render_batch_on

    ps = [clip_params_at(seed, i) for i in range(clips)]
    cpu = render_batch(ps, HORIZON)
    dev = render_batch_on(ps, HORIZON, device).cpu()
    diff = (cpu - dev).abs()
    return {
        "clips": clips,
        "max_abs_diff": diff.max().item(),
        "mean_abs_diff": diff.mean().item(),
        "fraction_differing": (diff > 0).float().mean().item(),
        "fraction_over_1e-4": (diff > 1e-4).float().mean().item(),
    }


def markdown(result: dict) -> str:
    rows = result["cases"]
    before = [r for name, r in rows.items() if name.startswith("before") and "clips_per_s" in r]
    base = before[0]["clips_per_s"] if before else None
    lines = [
        "# Training throughput: world teacher, stage 1 (teacher forcing)",
        "",
        f"Device: {result['device']}; torch {result['torch']}; commit {result['commit']}.",
        f"Command: `{result['command']}`",
        "",
    ]
    cells = []
    for name, r in rows.items():
        if "error" in r:
            cells.append([name, "", f"error: {r['error'][:80]}", "", "", "", ""])
            continue
        ratio = f"{r['clips_per_s'] / base:.1f}x" if base else "-"
        peak = f"{r['peak_gib']:.1f}" if r.get("peak_gib") is not None else "-"
        cells.append(
            [name, r["batch"], f"{r['s_per_step']:.4f}", f"{r['clips_per_s']:.3g}", ratio, peak, f"{r['warmup_s']:.1f}"]
        )
    header = ["case", "batch", "s / step", "clips / s", "vs before", "peak GiB", "warm-up s"]
    lines.append(render_table(header, cells, markdown=True))
    if "data" in result:
        d = result["data"]
        lines += [
            "",
            f"Data path alone (batch {d['batch']}): {d['device_s_per_batch'] * 1e3:.1f} ms per batch on the device "
            f"({d['device_clips_per_s']:.0f} clips/s); the CPU path: {d['cpu_s_per_clip_1_thread'] * 1e3:.1f} ms "
            f"per clip on one thread.",
        ]
    if "renderer" in result:
        r = result["renderer"]
        lines.append(
            f"Device renderer vs CPU renderer on {r['clips']} random clips: max |diff| {r['max_abs_diff']:.2e}, "
            f"{r['fraction_differing'] * 100:.3f}% of values differ at all, {r['fraction_over_1e-4'] * 100:.4f}% "
            f"by more than 1e-4 (values in [-1, 1])."
        )
    if "host_syncs_b64" in result and "sites" in result["host_syncs_b64"]:
        h = result["host_syncs_b64"]
        lines.append(
            f"Host syncs per b64 step: {h['per_step']:.1f}, at: "
            + "; ".join(f"`{k}` x{v}" for k, v in sorted(h["sites"].items(), key=lambda kv: -kv[1]))
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--cases", nargs="*", default=[c for c in CASES if not c.startswith("before")])
    ap.add_argument("--baseline-src", help="an older checkout's src/ to time as 'before' (subprocess)")
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--warmup", type=int, default=4)
    ap.add_argument("--one", help=argparse.SUPPRESS)  # internal: measure one case, print JSON
    ap.add_argument("--old", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        batch, extra = CASES[args.one]
        print("RESULT " + json.dumps(measure(batch, extra, args.steps, args.warmup, new=not args.old)), flush=True)
        return
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    # VIDEOMLA_COMMIT first: a device copy's own git state need not be the code that runs (.carry/src)
    commit = (
        os.environ.get("VIDEOMLA_COMMIT")
        or subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    )
    result: dict = {
        "device": torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__,
        "commit": commit or "unknown",
        "command": "python scripts/train_throughput.py " + " ".join(sys.argv[1:]),
        "cpu_count": os.cpu_count(),
        "cases": {},
    }

    def save() -> None:
        (out / "throughput.json").write_text(json.dumps(result, indent=2) + "\n")
        (out / "throughput.md").write_text(markdown(result))

    own_before = any(c.startswith("before") for c in args.cases)
    names = (["before-b16"] if args.baseline_src and not own_before else []) + list(args.cases)
    for name in names:
        old = name.startswith("before")
        if old or name.startswith("cpu-render"):  # own process: its 8 data threads, the old package
            env = {**os.environ, "PYTHONPATH": args.baseline_src if old else os.environ.get("PYTHONPATH", "")}
            cmd = [sys.executable, __file__, "--out", str(out), "--one", name, "--steps", str(args.steps)]
            cmd += ["--warmup", str(args.warmup)] + (["--old"] if name == "before-b16" else [])
            done = subprocess.run(cmd, env=env, capture_output=True, text=True)
            found = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
            r = json.loads(found[-1][7:]) if found else {"error": (done.stderr or done.stdout)[-400:]}
        else:
            try:
                r = measure(*CASES[name], args.steps, args.warmup, new=True)
            except Exception as err:  # a kernel variant this machine lacks: record it, keep going
                r = {"error": f"{type(err).__name__}: {err}"}
        result["cases"][name] = r
        print(name, json.dumps(r), flush=True)
        save()
    result["data"] = data_only(64, device, 10)
    if device.type == "cuda":
        result["renderer"] = renderer_agreement(device)
        try:
            result["host_syncs_b64"] = host_syncs(64, {})
        except Exception as err:
            result["host_syncs_b64"] = {"error": f"{type(err).__name__}: {err}"}
    save()
    print(markdown(result))


if __name__ == "__main__":
    main()
