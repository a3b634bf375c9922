"""Replay the steady-state chunk forward from a CUDA graph.

Once the cache is full, every forward of a stream has the same shapes, cache slots and key
count, so its ~1000 kernel launches can be captured once and replayed: the Python and launch
cost of a 30-block forward (measured at 30-60 ms per forward on an H100, as long as the GPU
work itself at batch 1) disappears. Everything that changes between forwards lives in static
buffers the graph reads: the chunk, the timestep, and the RoPE tables (refreshed in place when
positions move, i.e. with absolute RoPE). Filling chunks (the cache still growing) run eagerly.
"""

from __future__ import annotations

import torch

from ..cache import StreamingCache
from ..model import CausalWanModel


class GraphedStream:
    """Stands in for the model in :func:`~videomla.sampler.stream_latents` (it calls ``forward_chunk``).

    One graph at a time, tied to one cache's buffers; :meth:`release` frees it (and its memory pool).
    """

    def __init__(self, model: CausalWanModel):
        self.model = model
        self.cache: StreamingCache | None = None
        self.captures = 0
        self.replays = 0
        self.error: str | None = None  # why capture failed, if it did: then every forward runs eagerly
        self._key: tuple | None = None
        self.release()

    def __getattr__(self, name: str):  # parameters(), config, new_cache ... come from the model
        return getattr(self.model, name)

    def release(self) -> None:
        self._graph = self._ctx = self._static = self._out = self._positions = None
        self.cache = None

    def forward_chunk(self, x, timestep, text, cache: StreamingCache, write: bool = False) -> torch.Tensor:
        window = cache.window
        if x.device.type != "cuda" or window.n_valid < window.capacity or self.error is not None:
            return self.model.forward_chunk(x, timestep, text, cache, write)
        n = x.shape[2]
        positions = tuple(tuple(p.tolist()) for p in window.positions(n))
        key = (x.shape, timestep.shape, text.shape, text.data_ptr())
        if self._graph is None or cache is not self.cache or key != self._key:
            try:
                self._capture(x, timestep, text, cache, key, positions)
            except RuntimeError as err:  # recorded in the results; the stream goes on eagerly
                self.release()
                self.error = f"{type(err).__name__}: {err}"[:500]
                torch.cuda.synchronize()
                return self.model.forward_chunk(x, timestep, text, cache, write)
        elif positions != self._positions:  # absolute RoPE: same shapes, moved positions
            fresh = self.model.chunk_context(x, cache)
            for name, tables in fresh._tables.items():
                for dst, src in zip(self._ctx._tables[name], tables):
                    dst.copy_(src)
            self._positions = positions
        sx, st = self._static
        sx.copy_(x)
        st.copy_(timestep)
        self._graph.replay()
        self.replays += 1
        out = self._out.clone()  # the graph's output buffer is overwritten by the next replay
        if write:
            cache.commit(n)
        return out

    def _capture(self, x, timestep, text, cache, key, positions) -> None:
        self.release()
        model = self.model
        static = (x.clone(), timestep.clone())
        ctx = model.chunk_context(x, cache)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side), torch.no_grad():  # warm-up off the capture stream, as PyTorch asks
            for _ in range(2):
                model._run(*static, text, ctx, cache)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph), torch.no_grad():
            out = model._run(*static, text, ctx, cache)
        self._graph, self._ctx, self._static, self._out = graph, ctx, static, out
        self.cache, self._key, self._positions = cache, key, positions
        self.captures += 1
