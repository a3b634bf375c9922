"""Where one steady-state chunk forward spends its GPU time (development aid for `videomla bench`).

    python benchmarks/profile_forward.py --variants dense-s1w6,mla-auto [--out profile.txt]

Per variant: the cache is carried to steady state, two forwards warm up (kernels compile),
then one forward runs under torch.profiler. Prints the top kernels by GPU time, and the host
time to enqueue one forward against its GPU time (host-bound if they are close).
"""

from __future__ import annotations

import argparse
import time
from contextlib import nullcontext

import torch

from videomla.attention.common import fast_kernels
from videomla.benchmark.runner import BenchSetup, build_model
from videomla.benchmark.variants import parse_variants


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--variants", default="dense-s1w6,mla-auto")
    p.add_argument("--out", default=None)
    p.add_argument("--rows", type=int, default=30)
    args = p.parse_args()
    setup = BenchSetup()
    h, w = setup.latent_size
    report = []
    models = {}
    for variant in parse_variants(args.variants):
        if variant.attention not in models:
            models[variant.attention] = build_model(setup, variant.attention)
        model = models[variant.attention]
        mla = variant.attention == "mla"
        cache = model.new_cache(
            variant.stream, 1, h, w, setup.dtype, "cuda",
            latent_dtype=variant.kv_dtype if mla else None, mla_path=variant.mla_path if mla else "auto",
        )  # fmt: skip
        while cache.window.n_valid < variant.stream.cached_frames:
            cache.commit(variant.stream.frames_per_chunk)
        x = torch.randn(1, 16, 3, h, w, device="cuda", dtype=setup.dtype)
        t = torch.full((1,), 500.0, device="cuda", dtype=torch.float64)
        with torch.no_grad():
            text = model.embed_text(torch.randn(1, 512, 4096, device="cuda", dtype=setup.dtype))
        ctx = fast_kernels() if variant.fast else nullcontext()
        with ctx, torch.no_grad():
            start = time.perf_counter()
            for _ in range(2):
                model.forward_chunk(x, t, text, cache)
            torch.cuda.synchronize()
            warm = time.perf_counter() - start
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            host = time.perf_counter()
            model.forward_chunk(x, t, text, cache)
            host = (time.perf_counter() - host) * 1e3
            b.record()
            torch.cuda.synchronize()
            gpu = a.elapsed_time(b)
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
                model.forward_chunk(x, t, text, cache)
                torch.cuda.synchronize()
        table = prof.key_averages().table(sort_by="cuda_time_total", row_limit=args.rows, max_name_column_width=90)
        report.append(
            f"== {variant.name}: warm-up {warm:.1f} s, forward GPU {gpu:.2f} ms, host enqueue {host:.2f} ms\n{table}"
        )
        print(report[-1], flush=True)
    if args.out:
        with open(args.out, "w") as f:
            f.write("\n".join(report))


if __name__ == "__main__":
    main()
