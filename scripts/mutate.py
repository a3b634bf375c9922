"""Scripted single-line mutations of the core modules: does the test suite notice a wrong line?

    python scripts/mutate.py [--only NAME_SUBSTRING] [--json OUT.json]

Each mutant changes one line (an off-by-one, a swapped argument, a dropped term, a wrong sign)
in a copy-free way: the file is edited in place, the tests that cover it run, and the file is
restored (also on Ctrl-C). A mutant is *killed* when those tests fail. The kill rate and every
survivor are printed; a survivor is a missing test.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "videomla"

# (name, file, exact text, replacement, tests)
MUTANTS = [
    (
        "mla naive k_R dropped",
        "attention/mla.py",
        "torch.cat([k_nope, kr[:, :, None, :].expand(-1, -1, self.num_heads, -1)], dim=-1)",
        "torch.cat([k_nope, 0 * kr[:, :, None, :].expand(-1, -1, self.num_heads, -1)], dim=-1)",
        "tests/test_mla.py",
    ),
    (
        "mla padded rope slots",
        "attention/mla.py",
        "k[..., self.cfg.nope_head_dim :] = kr[:, :, None, :]",
        "k[..., self.cfg.nope_head_dim - 1 :] = 0",
        "tests/test_mla.py",
    ),
    (
        "mla absorbed bias",
        "attention/mla.py",
        'return torch.einsum("bnhc,hdc->bnd", out_lat, b) + bias',
        'return torch.einsum("bnhc,hdc->bnd", out_lat, b)',
        "tests/test_mla.py",
    ),
    (
        "mla scale",
        "attention/mla.py",
        "self.scale = 1.0 / math.sqrt(dn + dr)",
        "self.scale = 1.0 / math.sqrt(dn)",
        "tests/test_mla.py tests/test_convert.py",
    ),
    (
        "dense prerotated keys",
        "attention/dense.py",
        'cache.stage(ctx.stage_slot, {"k": rope(k, q_cos, q_sin), "v": v})',
        'cache.stage(ctx.stage_slot, {"k": k, "v": v})',
        "tests/test_streaming.py",
    ),
    (
        "window eviction keeps one too many",
        "window.py",
        "keep = set(sinks + recent[max(0, len(recent) - self.stream.window_frames) :])",
        "keep = set(sinks + recent[max(0, len(recent) - self.stream.window_frames - 1) :])",
        "tests/test_streaming.py tests/test_engine.py",
    ),
    (
        "window-relative rank",
        "window.py",
        "keys = torch.argsort(torch.argsort(keys))",
        "keys = torch.argsort(keys)",
        "tests/test_streaming.py",
    ),
    (
        "cache commit skips moves",
        "cache.py",
        "                layer.move(move.src, move.dst)",
        "                pass",
        "tests/test_streaming.py tests/test_engine.py",
    ),
    (
        "engine renoise sigma",
        "engine/engine.py",
        "x = add_noise(x0, self._noise(generator), sigma_of(steps[i + 1]))",
        "x = add_noise(x0, self._noise(generator), sigma_of(steps[i]))",
        "tests/test_engine.py tests/test_sampler.py",
    ),
    (
        "engine clean pass timestep",
        "engine/engine.py",
        "forward(x0, self._timestep(0.0), text, self.cache, write=True)",
        "forward(x0, self._timestep(1.0), text, self.cache, write=True)",
        "tests/test_engine.py tests/test_sampler.py tests/test_streaming.py",
    ),
    (
        "engine per-stream noise",
        "engine/engine.py",
        "torch.randn(one, generator=g, device=self.device, dtype=self.dtype) for g in generator",
        "torch.randn(one, generator=generator[0], device=self.device, dtype=self.dtype) for g in generator",
        "tests/test_engine.py",
    ),
    (
        "engine history frame index",
        "engine/engine.py",
        "self.history.update(x0, self.next_frame - x0.shape[2], self.cache.window.slot_frame)",
        "self.history.update(x0, self.next_frame, self.cache.window.slot_frame)",
        "tests/test_engine.py tests/test_generate.py",
    ),
    (
        "recache keeps sink replays it",
        "engine/recache.py",
        "    replay = frames[len(sink) :]",
        "    replay = frames",
        "tests/test_engine.py",
    ),
    (
        "recache restores next frame",
        "engine/recache.py",
        "    cache.skip_to(next_frame)",
        "    cache.skip_to(next_frame + 1)",
        "tests/test_generate.py tests/test_engine.py",
    ),
    (
        "request chunk count",
        "pipeline/request.py",
        "if spec.codec.frames_for(mid * c) >= frames:",
        "if spec.codec.frames_for(mid * c) > frames:",
        "tests/test_engine.py tests/test_generate.py",
    ),
    (
        "request switch chunk",
        "pipeline/request.py",
        "chunk_of_frame(spec, base, frames_in + math.floor(start * fps + 1e-9)) - k0",
        "chunk_of_frame(spec, base, frames_in + math.floor(start * fps + 1e-9)) - k0 + 1",
        "tests/test_generate.py tests/test_pipeline_api.py",
    ),
    (
        "spec peer window",
        "pipeline/spec.py",
        'PEER_STREAM = {"torch": "self-forcing", "wan2.1": "self-forcing", "diffusers": "self-forcing"}',
        'PEER_STREAM = {"wan2.1": "self-forcing", "diffusers": "self-forcing"}',
        "tests/test_engine.py tests/test_generate.py",
    ),
    (
        "summary steady fps",
        "pipeline/summary.py",
        "return statistics.median(r[0] for r in rows) / statistics.median(r[column] for r in rows)",
        "return statistics.median(r[0] for r in rows) / statistics.mean(r[1] for r in rows)",
        "tests/test_engine.py",
    ),
    (
        "bench wall fps",
        "benchmark/runner.py",
        'out["fps_wall"] = frames[-1] / out["steady_chunk_wall_ms"] * 1e3 if steady_gaps else None',
        'out["fps_wall"] = frames[-2] / out["steady_chunk_wall_ms"] * 1e3 if steady_gaps else None',
        "tests/test_engine.py tests/test_bench.py",
    ),
    (
        "bench flop floor",
        "benchmark/runner.py",
        'out["flop_floor_ms"] = None if peak_tflops is None else flops_per_chunk / (peak_tflops * 1e12) * 1e3',
        'out["flop_floor_ms"] = None if peak_tflops is None else flops_per_chunk / (peak_tflops * 1e12)',
        "tests/test_engine.py",
    ),
    (
        "export schedule",
        "training/trainer.py",
        "schedule = self.cfg.schedule.sampler(self.cfg.stage)",
        "schedule = SamplingSchedule()",
        "tests/test_training.py",
    ),
    (
        "euler step sign",
        "engine/engine.py",
        "state = state + float(sigma_of(steps[i + 1]) - sigma_of(t)) * velocity",
        "state = state - float(sigma_of(steps[i + 1]) - sigma_of(t)) * velocity",
        "tests/test_sampler.py",
    ),
    (
        "parallel key order",
        "parallel.py",
        "        ranks = list(range(self.world))",
        "        ranks = list(reversed(range(self.world)))",
        "tests/test_parallel.py",
    ),
    (
        "quant weight scale",
        "quant.py",
        'self.register_buffer("weight_scale", scale.t().contiguous())  # [1, out]',
        'self.register_buffer("weight_scale", scale.t().contiguous().flip(1))  # [1, out]',
        "tests/test_quant.py",
    ),
    (
        "checkpoint resolver step order",
        "checkpoint.py",
        "        p = steps[-1][1]",
        "        p = steps[0][1]",
        "tests/test_engine.py tests/test_training.py",
    ),
    (
        "schedule shift",
        "schedule.py",
        "    return shift * s / (1 + (shift - 1) * s)",
        "    return shift * s / (1 + shift * s)",
        "tests/test_sampler.py tests/test_engine.py",
    ),
    (
        "batch seeds",
        "pipeline/batch.py",
        'seed = entry.get("seed", base_seed + i * num_samples) + s',
        'seed = entry.get("seed", base_seed + i) + s',
        "tests/test_pipeline_api.py",
    ),
]


def run(name: str, rel: str, old: str, new: str, tests: str) -> dict:
    path = SRC / rel
    text = path.read_text()
    if text.count(old) != 1:
        return {"name": name, "file": rel, "status": "stale", "why": f"the line occurs {text.count(old)} times"}
    path.write_text(text.replace(old, new))
    try:
        t0 = time.time()
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "-p", "no:logging", *tests.split()]
        result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
        status = "killed" if result.returncode != 0 else "survived"
        return {"name": name, "file": rel, "status": status, "tests": tests, "seconds": round(time.time() - t0, 1)}
    finally:
        path.write_text(text)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", help="run the mutants whose name contains this")
    p.add_argument("--json", type=Path, help="write the results here")
    args = p.parse_args()
    results = []
    for mutant in MUTANTS:
        if args.only and args.only not in mutant[0]:
            continue
        results.append(run(*mutant))
        r = results[-1]
        print(f"{r['status']:8s} {r['name']} ({r['file']})", flush=True)
    scored = [r for r in results if r["status"] in ("killed", "survived")]
    killed = sum(r["status"] == "killed" for r in scored)
    rate = killed / len(scored) if scored else 0.0
    print(f"\n{killed} of {len(scored)} mutants killed ({100 * rate:.0f}%)")
    if args.json:
        args.json.write_text(json.dumps({"kill_rate": rate, "mutants": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
