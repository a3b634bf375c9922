"""The serve benchmark's arithmetic on injected arrival times (benchmarks/serve_bench.py)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

pytest.importorskip("uvicorn", reason="the serve extra (uvicorn) is not installed")
spec = importlib.util.spec_from_file_location("serve_bench", Path(__file__).parents[1] / "benchmarks/serve_bench.py")
serve_bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(serve_bench)


def test_steady_fps_leaves_the_first_chunk_latency_out() -> None:
    # chunk 0 (9 frames) arrives at 5.0 s after a slow start; chunks 1-3 (12 frames each) every 0.5 s
    chunks = {0: [5.0, 9], 1: [5.5, 12], 2: [6.0, 12], 3: [6.5, 12]}
    assert serve_bench.steady_fps(chunks) == pytest.approx(36 / 1.5)
    assert serve_bench.steady_fps({2: [6.0, 12], 0: [5.0, 9], 1: [5.5, 12]}) == pytest.approx(24 / 1.0)  # any order
    assert serve_bench.steady_fps({0: [5.0, 9]}) is None  # one chunk: no steady rate
    assert serve_bench.steady_fps({0: [5.0, 9], 1: [5.0, 12]}) is None  # no time between them
