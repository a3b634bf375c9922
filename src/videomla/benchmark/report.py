"""The benchmark's JSON (schema, provenance, targets) and its markdown table.

The JSON is the record; the markdown is rendered from it alone, so a table can always be
regenerated from a result file.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from ..tables import render_table

SCHEMA = "videomla-bench/1"
GIB = 1 << 30

Num = (int, float)
MaybeNum = (int, float, type(None))

# field -> accepted types; nested dicts are checked recursively
TOP_FIELDS = {"schema": str, "meta": dict, "setup": dict, "peak_matmul": dict, "variants": list, "targets": list}
META_FIELDS = {"date": str, "command": str, "git_commit": str, "device": str, "torch": str, "python": str}
VARIANT_FIELDS = {
    "name": str,
    "attention": str,
    "window": dict,
    "mla_path": str,
    "kv_fp8": bool,
    "fast_kernels": bool,
    "kv_bytes_per_token": int,
    "kv_bytes_per_token_per_layer": int,
    "cache_allocated_bytes": int,
    "flops": dict,
    "stream": dict,
    "memory": dict,
    "memory_flat": (bool, type(None)),
    "batched": list,
    "concurrency": (dict, type(None)),
    "fast_vs_reference_rel_err": MaybeNum,
}
STREAM_FIELDS = {
    "steady_chunk_ms": Num,
    "fps_transformer": Num,
    "clip_fps_transformer": Num,
    "ttfc_ms": Num,
    "fps_with_vae": MaybeNum,
    "ttfc_with_vae_ms": MaybeNum,
    "vae_chunk_ms": MaybeNum,
    "achieved_tflops": Num,
    "fraction_of_matmul_peak": MaybeNum,
    "transformer_ms": list,
    "output_finite": bool,
}
FLOPS_FIELDS = {"per_chunk": int, "first_chunk": int, "per_forward": dict}
MEMORY_POINT_FIELDS = {"method": str, "latent_frames": list, "peak_allocated": (int, type(None))}


def _check(obj: dict, fields: dict, where: str, problems: list[str]) -> None:
    for name, types in fields.items():
        if name not in obj:
            problems.append(f"{where}: missing {name!r}")
        elif not isinstance(obj[name], types) or (types in (int, Num) and isinstance(obj[name], bool)):
            problems.append(f"{where}.{name}: {type(obj[name]).__name__} is not {types}")


def validate(report: dict) -> None:
    """Raise ValueError naming every missing or mistyped field."""
    problems: list[str] = []
    _check(report, TOP_FIELDS, "report", problems)
    _check(report.get("meta", {}), META_FIELDS, "meta", problems)
    for i, variant in enumerate(report.get("variants", [])):
        where = f"variants[{i}]"
        _check(variant, VARIANT_FIELDS, where, problems)
        _check(variant.get("stream", {}), STREAM_FIELDS, f"{where}.stream", problems)
        _check(variant.get("flops", {}), FLOPS_FIELDS, f"{where}.flops", problems)
        for key, point in variant.get("memory", {}).items():
            _check(point, MEMORY_POINT_FIELDS, f"{where}.memory[{key}]", problems)
    if problems:
        raise ValueError("benchmark report does not follow its schema: " + "; ".join(problems))


# -- provenance ---------------------------------------------------------------------------------
def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], capture_output=True, text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def provenance(device: torch.device, argv: list[str]) -> dict:
    """Who ran what where: date, command, commit (``VIDEOMLA_GIT_COMMIT`` where no .git travels), versions."""
    pinned = os.environ.get("VIDEOMLA_GIT_COMMIT")  # wins: a copied tree may carry a stale .git
    commit = pinned or _git("rev-parse", "HEAD") or "unknown"
    status = None if pinned else _git("status", "--porcelain", "--untracked-files=no")
    meta = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(["videomla", "bench", *argv]),
        "git_commit": commit,
        "git_dirty": None if status is None else bool(status),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if device.type == "cuda" else None,
        "python": sys.version.split()[0],
    }
    try:
        import diffusers

        meta["diffusers"] = diffusers.__version__
    except ImportError:
        meta["diffusers"] = None
    if device.type == "cuda":
        meta["gpu_memory_bytes"] = torch.cuda.get_device_properties(device).total_memory
    return meta


# -- targets ------------------------------------------------------------------------------------
def _target(name: str, value: float | None, goal: float, unit: str = "") -> dict:
    met = None if value is None else value >= goal
    return {"name": name, "value": value, "target": f">= {goal:g}{unit}", "met": met}


def targets(variants: list[dict], best: str = "mla-auto") -> list[dict]:
    """The issue's targets, evaluated from the measured numbers (None where a variant was not run)."""
    by = {v["name"]: v for v in variants}

    def stream(name: str, key: str) -> float | None:
        return by[name]["stream"].get(key) if name in by else None

    def ratio(a: float | None, b: float | None) -> float | None:
        return None if a is None or b is None else a / b

    def streams(name: str) -> int | None:
        c = by.get(name, {}).get("concurrency")
        return None if c is None else c["max_streams"]

    flat = [v["memory_flat"] for v in variants]
    return [
        _target(
            f"{best} / sf21 transformer FPS",
            ratio(stream(best, "fps_transformer"), stream("sf21", "fps_transformer")),
            2.2,
            "x",
        ),
        _target(
            f"{best} / sf21-eager transformer FPS (reference kernels)",
            ratio(stream(best, "fps_transformer"), stream("sf21-eager", "fps_transformer")),
            2.2,
            "x",
        ),
        _target(
            f"{best} / dense-s1w6 transformer FPS (same window)",
            ratio(stream(best, "fps_transformer"), stream("dense-s1w6", "fps_transformer")),
            1.05,
            "x",
        ),
        _target(f"{best} transformer FPS", stream(best, "fps_transformer"), 50),
        _target(f"{best} fraction of the matmul peak", stream(best, "fraction_of_matmul_peak"), 0.70),
        _target(f"{best} FPS including Wan-VAE decode", stream(best, "fps_with_vae"), 30),
        _target(f"{best} / dense-s1w6 concurrent streams", ratio(streams(best), streams("dense-s1w6")), 8, "x"),
        {
            "name": "peak memory flat from 5 s to 5 min (every variant)",
            "value": None if any(f is None for f in flat) else all(flat),
            "target": "flat",
            "met": None if any(f is None for f in flat) else all(flat),
        },
    ]


# -- output ---------------------------------------------------------------------------------------
def write_atomic(path: str | Path, text: str) -> None:
    """Write through a temporary file in the same folder, then rename: never a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def to_json(report: dict) -> str:
    return json.dumps(report, indent=1, sort_keys=False) + "\n"


def _f(x: float | None, fmt: str = ".1f") -> str:
    return "n/a" if x is None else format(x, fmt)


def _gib(x: int | float | None) -> str:
    return "n/a" if x is None else f"{x / GIB:.2f}"


def _floor(stream: dict) -> str:
    floor = stream.get("flop_floor_fps")
    return "n/a" if floor is None else f"{floor:.0f} / {2 * floor:.0f}"


def markdown(report: dict) -> str:
    """Tables of every measured number that matters, with the run's provenance."""
    meta, setup = report["meta"], report["setup"]
    peak = report["peak_matmul"]
    lines = [
        f"# videomla bench: {setup['preset']} at {setup['width']}x{setup['height']}",
        "",
        f"- device: {meta['device']} (torch {meta['torch']}, CUDA {meta.get('cuda')}, cuDNN {meta.get('cudnn')})",
        f"- date: {meta['date']}",
        f"- command: `{meta['command']}`",
        f"- git commit: {meta['git_commit']}" + (" (uncommitted changes)" if meta.get("git_dirty") else ""),
        f"- measured bf16 matmul peak ({'x'.join(map(str, peak['shape']))}): {_f(peak['tflops'])} TFLOP/s",
        f"- Wan-VAE chunk decode (ms) by weight layout: {report.get('vae_layout')}",
        f"- chunk = {setup['frames_per_chunk_latent']} latent frames x {setup['tokens_per_frame']} tokens, "
        f"{setup['forwards_per_chunk']} forwards (4 denoising steps + cache write), batch 1 unless stated, "
        f"{setup['dtype']}, random weights",
        "- every variant runs `Pipeline.run`, the path `videomla generate` runs. Fast variants: fused "
        "norm/RoPE/modulation kernels (torch.compile), fp32 RoPE tables, cuDNN-first SDPA, every chunk forward "
        "replayed from a CUDA graph (one per cache fill level), Wan-VAE decode overlapped with the next chunk; "
        "'(eager)' = the reference code path. FPS w/ VAE = frames / wall time between ready chunks.",
        "- FLOP floor = the FPS the chunk's FLOPs allow at the measured matmul peak (bf16); fp8 halves it.",
        "- FPS counts video frames: 12 per chunk (3 latent frames x 4); the first chunk of a video gives 9 "
        "(Wan-VAE decodes latent frame 0 to one frame). Steady FPS = 12 / median steady-chunk time; "
        "5 s FPS = 81 frames / time of the first 7 chunks from a cold cache.",
        "",
    ]
    header = ["variant", "attended frames", "path", "KV B/token (all layers)", "chunk ms", "FPS", "5 s FPS"]
    header += ["TTFC ms", "VAE ms", "FPS w/ VAE", "TFLOP/chunk", "% of matmul peak", "FLOP-floor FPS bf16 / fp8"]
    header += ["fast vs ref err"]
    rows = []
    for v in report["variants"]:
        s = v["stream"]
        frac = s["fraction_of_matmul_peak"]
        path = f"{v['mla_path']}{' fp8' if v['kv_fp8'] else ''}{'' if v['fast_kernels'] else ' (eager)'}"
        peak = _f(None if frac is None else 100 * frac)
        rows.append([
            v["name"], v["window"]["label"], path, f"{v['kv_bytes_per_token']:,}", _f(s["steady_chunk_ms"]),
            _f(s["fps_transformer"]), _f(s["clip_fps_transformer"]), _f(s["ttfc_ms"]), _f(s["vae_chunk_ms"]),
            _f(s["fps_with_vae"]), f"{v['flops']['per_chunk'] / 1e12:.3g}", peak, _floor(s),
            _f(v["fast_vs_reference_rel_err"], ".1e"),
        ])  # fmt: skip
    lines.append(render_table(header, rows, markdown=True))
    for v in report["variants"]:
        if v.get("graph_error"):
            lines.append(f"\n{v['name']}: CUDA graph capture failed, ran eagerly: {v['graph_error']}")
    horizons = list(report["variants"][0]["memory"]) if report["variants"] else []
    lines += [
        "",
        "Peak GPU memory (GiB, allocated, model + VAE + cache + activations) after streaming to each point; "
        "'ff' = cache carried there by the stream's own commits without model forwards, then chunks run.",
        "",
    ]
    rows = []
    for v in report["variants"]:
        cells = []
        for h in horizons:
            p = v["memory"][h]
            cells.append(_gib(p["peak_allocated"]) + (" (ff)" if p["method"] == "fast-forwarded" else ""))
        points = list(v["memory"].values())
        reserved = f"{_gib(points[0].get('reserved'))} -> {_gib(points[-1].get('reserved'))}" if points else "n/a"
        rows.append([v["name"], _gib(v["cache_allocated_bytes"]), *cells, v["memory_flat"], reserved])
    header = ["variant", "cache (GiB)", *horizons, "flat", "reserved GiB, first -> last"]
    lines.append(render_table(header, rows, markdown=True))
    batched = [(v["name"], b) for v in report["variants"] for b in v["batched"]]
    if batched:
        header = ["variant", "batch", "chunk ms", "aggregate FPS", "FPS per stream", "peak GiB"]
        rows = [
            [
                name,
                b["batch"],
                _f(b["steady_chunk_ms"]),
                _f(b["fps_aggregate"]),
                _f(b["fps_per_stream"]),
                _gib(b["peak_allocated"]),
            ]
            for name, b in batched
        ]
        lines += ["", render_table(header, rows, markdown=True)]
    conc = [v["concurrency"] for v in report["variants"] if v["concurrency"]]
    if conc:
        lines += [
            "",
            "Concurrent streams: peak of one steady-state forward at 1 and N streams gives a line "
            "(static + per-stream bytes); the most streams under the card's capacity (minus a margin) is then "
            "run once to verify.",
            "",
        ]
        rows = []
        for c in conc:
            ver = ", ".join(f"{x['batch']}: {'ok' if x['ok'] else 'OOM'}" for x in c["verified"])
            rows.append(
                [
                    c["variant"],
                    _gib(c["static_bytes"]),
                    f"{c['per_stream_bytes'] / GIB:.3f}",
                    _gib(c["capacity_bytes"]),
                    c["max_streams"],
                    ver,
                ]
            )
        header = ["variant", "static GiB", "per stream GiB", "capacity GiB", "max streams", "verified"]
        lines.append(render_table(header, rows, markdown=True))
    rows = []
    for t in report["targets"]:
        value = t["value"]
        shown = value if isinstance(value, bool) or value is None else f"{value:.3g}"
        rows.append([t["name"], shown, t["target"], t["met"]])
    lines += ["", render_table(["target", "measured", "goal", "met"], rows, markdown=True)]
    return "\n".join(lines) + "\n"
