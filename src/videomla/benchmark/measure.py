"""Timing and memory primitives: device events, peak memory, the matmul ceiling, cache fast-forward.

On CUDA every interval is measured with events recorded on the stream and read once at the
end, so the chunk loop itself never waits for the GPU. On CPU (tests) host clocks stand in and
memory readings are None.
"""

from __future__ import annotations

import gc
import itertools
import statistics
import time
from dataclasses import dataclass

import torch

from ..cache import StreamingCache


class Clock:
    """Marks on the device's timeline; :meth:`ms` reads intervals after :meth:`sync`."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def mark(self):
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def ms(self, start, end) -> float:
        return start.elapsed_time(end) if self.cuda else (end - start) * 1e3


def median(values: list[float]) -> float:
    return statistics.median(values)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


@dataclass
class Memory:
    """Allocator readings in bytes (None off CUDA)."""

    device: torch.device

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def reset_peak(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()

    def peak(self) -> int | None:
        if not self.cuda:
            return None
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated()

    def allocated(self) -> int | None:
        return torch.cuda.memory_allocated() if self.cuda else None

    def reserved(self) -> int | None:
        return torch.cuda.memory_reserved() if self.cuda else None

    def segments(self) -> int | None:
        """cudaMalloc'd segments held by the allocator: unchanged means nothing was reallocated."""
        return torch.cuda.memory_stats().get("segment.all.current", 0) if self.cuda else None

    def free(self) -> None:
        gc.collect()
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.empty_cache()

    def capacity(self, margin: int) -> int | None:
        """Bytes PyTorch could hold: the card minus what lives outside its allocator, minus ``margin``."""
        if not self.cuda:
            return None
        self.free()
        free, total = torch.cuda.mem_get_info()
        outside = total - free - torch.cuda.memory_reserved()
        return total - outside - margin


def matmul_peak(device: torch.device, n: int = 8192, repeats: int = 20) -> dict:
    """Measured bf16 matmul ceiling (TFLOP/s) of an n^3 product on random data; None off CUDA."""
    if device.type != "cuda":
        return {"shape": [n, n, n], "tflops": None, "ms": None}
    a, b = (torch.randn(n, n, device=device, dtype=torch.bfloat16) for _ in range(2))
    for _ in range(3):
        a @ b
    clock = Clock(device)
    marks = [clock.mark()]
    for _ in range(repeats):
        a @ b
        marks.append(clock.mark())
    clock.sync()
    ms = median([clock.ms(s, e) for s, e in itertools.pairwise(marks)])
    del a, b
    return {"shape": [n, n, n], "tflops": 2 * n**3 / (ms * 1e-3) / 1e12, "ms": ms}


def advance_cache(cache: StreamingCache, frame: int) -> int:
    """Commit chunks without running the model until the next chunk starts at ``frame`` or later.

    The same commit (FIFO eviction, slot copies) a stream does after each chunk's clean pass,
    so the cache's state and buffers are those of a stream that generated every frame before;
    only the cached values differ, and neither speed nor memory depends on them.
    Returns the number of chunks skipped.
    """
    n = cache.stream.frames_per_chunk
    skipped = 0
    while cache.window.next_frame < frame:
        cache.commit(n)
        skipped += 1
    return skipped
