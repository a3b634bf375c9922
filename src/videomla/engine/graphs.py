"""Replay chunk forwards from CUDA graphs.

Every forward of a stream at a given cache fill level has the same shapes, cache slots and key
count, so its ~1000 kernel launches can be captured once and replayed: the Python and launch
cost of a 30-block forward (30-60 ms on an H100, as long as the GPU work itself at batch 1)
disappears. One graph per fill level (the first chunks, while the cache grows, and the steady
state), all in one memory pool. What changes between forwards lives in static buffers the
graphs read: the chunk, the timestep, the text, and the RoPE tables (refreshed in place when
positions move, i.e. with absolute RoPE). A forward whose capture fails runs eagerly, and the
reason is kept in :attr:`ChunkGraphs.error`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..attention import AttentionContext
from ..cache import StreamingCache
from ..model import CausalWanModel


@dataclass
class _Graph:
    graph: torch.cuda.CUDAGraph
    ctx: AttentionContext
    x: torch.Tensor
    t: torch.Tensor
    text: torch.Tensor
    out: torch.Tensor
    positions: tuple


class ChunkGraphs:
    """``forward_chunk`` with the same signature as the model's, replayed from graphs on CUDA.

    A forward is captured the second time its key (shapes + fill level) is seen, so one-off
    shapes never pay a capture; graphs are tied to one cache's buffers (:meth:`release` frees them).
    """

    def __init__(self, model: CausalWanModel):
        self.model = model
        self.error: str | None = None
        self.captures = 0
        self.replays = 0
        self._graphs: dict[tuple, _Graph] = {}
        self._seen: set[tuple] = set()
        self._cache: StreamingCache | None = None
        self._pool = None

    def release(self) -> None:
        self._graphs.clear()
        self._seen.clear()
        self._cache = None
        self._pool = None

    def forward_chunk(self, x, timestep, text, cache: StreamingCache, write: bool = False) -> torch.Tensor:
        if x.device.type != "cuda" or self.error is not None:
            return self.model.forward_chunk(x, timestep, text, cache, write)
        if cache is not self._cache:
            self.release()
            self._cache = cache
        window = cache.window
        n = x.shape[2]
        key = (tuple(x.shape), tuple(timestep.shape), tuple(text.shape), window.stage_slot(), cache.active_tokens(n))
        entry = self._graphs.get(key)
        if entry is None:
            if key not in self._seen:
                self._seen.add(key)
                return self.model.forward_chunk(x, timestep, text, cache, write)
            try:
                entry = self._capture(x, timestep, text, cache, key)
            except RuntimeError as err:  # recorded; the stream goes on eagerly
                self.error = f"{type(err).__name__}: {err}"[:500]
                self.release()
                torch.cuda.synchronize()
                return self.model.forward_chunk(x, timestep, text, cache, write)
        positions = _positions(window, n)
        if positions != entry.positions:  # absolute RoPE: same shapes, moved positions
            fresh = self.model.chunk_context(x, cache)
            for name, tables in fresh._tables.items():
                for dst, src in zip(entry.ctx._tables[name], tables):
                    dst.copy_(src)
            entry.positions = positions
        entry.x.copy_(x)
        entry.t.copy_(timestep)
        entry.text.copy_(text)
        entry.graph.replay()
        self.replays += 1
        out = entry.out.clone()  # the output buffer is overwritten by the next replay
        if write:
            cache.commit(n)
        return out

    def _capture(self, x, timestep, text, cache, key) -> _Graph:
        model = self.model
        static = (x.clone(), timestep.clone(), text.clone())
        ctx = model.chunk_context(x, cache)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side), torch.no_grad():  # warm-up off the capture stream, as PyTorch asks
            model._run(*static, ctx, cache)
        torch.cuda.current_stream().wait_stream(side)
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool), torch.no_grad():
            out = model._run(*static, ctx, cache)
        entry = _Graph(graph, ctx, *static, out, _positions(cache.window, x.shape[2]))
        self._graphs[key] = entry
        self.captures += 1
        return entry


def _positions(window, n: int) -> tuple:
    return tuple(tuple(p.tolist()) for p in window.positions(n))
