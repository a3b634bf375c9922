"""Cohort batching: independent one-stream engines advanced together in one batched chunk step.

A server's streams join and leave at chunk boundaries, so they sit at different frame indices and
cache fill levels, while the rows of one batched :class:`StreamEngine` share one
:class:`~videomla.window.FrameWindow`. A batched chunk step asks the shared window for exactly
four things: the query / key temporal positions, the stage slot, the active key count (the
fill level) and the slot moves of the commit. :func:`layout_key` is those four, computed for a
stream in *canonical slot order* (its cached frames sorted by frame index), plus the static
configuration (window, sampler, latent size, dtypes). Streams with equal keys form a cohort:
:meth:`CohortRunner.step` copies their cache rows into one scratch batch (sorted), runs one
batched step for all of them, and copies the rows back; each stream keeps its own cache, text,
noise generator and KV-recache history, so it can also run alone (a recache on a prompt switch)
or move to another cohort the next chunk.

Why sorted slots change nothing: positions are explicit per key, so the order of the cache's
slots is only the order of a sum inside attention (equal up to float rounding, tested to 1e-5 in
fp32). With window-relative RoPE every stream past the fill phase then has the same key (ranks
0..n-1, the same evictions): all of them run as one cohort. With absolute RoPE positions are
frame indices, so only streams at the same frame index share a step.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..window import FrameWindow
from .engine import StreamEngine
from .graphs import ChunkGraphs
from .recache import LatentHistory


@dataclass(frozen=True)
class StaticKey:
    """What must match before two streams can share a batch at all."""

    stream: object
    schedule: object
    geometry: object
    dtype: torch.dtype
    cache_dtype: torch.dtype
    tokens_per_frame: int
    device: str
    mla_path: str  # how MLA layers read the cache
    layout: tuple  # per layer: what it caches and in which dtype (fp8 latents carry scales)


def static_key(engine: StreamEngine) -> StaticKey:
    layout = tuple(tuple((name, t.dtype) for name, t in layer.spec.items()) for layer in engine.cache.layers)
    return StaticKey(
        engine.stream, engine.schedule, engine.geometry, engine.dtype, engine.cache_dtype,
        engine.cache.tokens_per_frame, str(engine.device), engine.cache.mla_path, layout,
    )  # fmt: skip


def canonical_window(window: FrameWindow) -> FrameWindow:
    """A copy of ``window`` with its cached frames in sorted slot order."""
    other = copy.copy(window)
    other.slot_frame = sorted(window.slot_frame)
    return other


def layout_key(engine: StreamEngine) -> tuple:
    """Everything a batched step reads from the shared window, for this stream's next chunk.

    Two one-stream engines with equal keys compute, in one batched step over their sorted cache
    rows, what each computes alone.
    """
    if engine.batch != 1:
        raise ValueError(f"layout_key is for one-stream engines, this one has {engine.batch}")
    window = canonical_window(engine.cache.window)
    n = engine.stream.frames_per_chunk
    q, k = window.positions(n)
    stage, active = window.stage_slot(), engine.cache.active_tokens(n)
    moves = tuple((m.src, m.dst) for m in window.commit(n))  # on the copy
    return (static_key(engine), tuple(q.tolist()), tuple(k.tolist()), stage, active, moves)


def group_cohorts(engines: Sequence[StreamEngine], max_batch: int | None = None) -> list[list[int]]:
    """Indices of ``engines`` grouped by :func:`layout_key` (first-seen order), at most ``max_batch`` each."""
    groups: dict[tuple, list[int]] = {}
    for i, e in enumerate(engines):
        groups.setdefault(layout_key(e), []).append(i)
    out: list[list[int]] = []
    for members in groups.values():
        size = max_batch or len(members)
        out += [members[j : j + size] for j in range(0, len(members), size)]
    return out


class CohortRunner:
    """Scratch batches (one per static configuration, grown to the largest cohort seen) and the step.

    Cohorts of any size ``k`` run in a view of the first ``k`` rows of the scratch cache, kept per
    ``k`` so a CUDA-graph capture made for it stays valid (graphs are tied to one cache object).
    """

    def __init__(self, model, options=None):
        self.model = model
        self.options = options
        self._scratch: dict[StaticKey, StreamEngine] = {}
        self._views: dict[tuple[StaticKey, int], StreamEngine] = {}

    @property
    def scratch_bytes(self) -> int:
        return sum(e.cache.nbytes for e in self._scratch.values())

    def release(self) -> None:
        """Free every scratch batch (the next step allocates again)."""
        self._scratch.clear()
        self._views.clear()

    def _work_engine(self, first: StreamEngine, k: int) -> StreamEngine:
        key = static_key(first)
        base = self._scratch.get(key)
        if base is None or base.batch < k:
            self._views = {vk: v for vk, v in self._views.items() if vk[0] != key}
            self._scratch.pop(key, None)  # free the smaller one before allocating
            base = StreamEngine(
                self.model, first.stream, first.geometry, batch=k, schedule=first.schedule,
                cache_dtype=first.cache_dtype, options=self.options or first.options,
            )  # fmt: skip
            self._scratch[key] = base
        view = self._views.get((key, k))
        if view is None:
            view = object.__new__(StreamEngine)
            view.__dict__.update(base.__dict__)
            view.batch, view.cache = k, base.cache.rows(k)
            view.keep_history, view.history, view.chunks = False, None, 0
            view.graphs = ChunkGraphs(self.model) if base.graphs is not None else None
            self._views[(key, k)] = view
        return view

    def step(
        self,
        engines: Sequence[StreamEngine],
        texts: Sequence[torch.Tensor],
        generators: Sequence[torch.Generator],
    ) -> list[torch.Tensor]:
        """Advance every engine (one cohort: equal :func:`layout_key`) one chunk in one batched step.

        ``texts``: each stream's embedded text [1, L, dim]; ``generators``: each stream's noise.
        Returns each stream's clean latents [1, C, n, H, W]. The engines end exactly as if each
        had run :meth:`StreamEngine.step` alone (slots in sorted order). If the step raises, no
        engine has changed.
        """
        k = len(engines)
        if not k or len(texts) != k or len(generators) != k:
            raise ValueError(f"{k} engines, {len(texts)} texts and {len(generators)} generators")
        key = layout_key(engines[0])
        for e in engines[1:]:
            if layout_key(e) != key:
                raise ValueError("engines of different cache layouts cannot share a step (see group_cohorts)")
        first = engines[0]
        work = self._work_engine(first, k)
        cache = work.cache
        cache.window = canonical_window(first.cache.window)
        t = cache.tokens_per_frame
        n_valid = cache.window.n_valid
        for i, e in enumerate(engines):
            slots = e.cache.window.slot_frame
            order = sorted(range(n_valid), key=slots.__getitem__)
            index = None
            if order != list(range(n_valid)):
                index = (torch.tensor(order)[:, None] * t + torch.arange(t)).flatten().to(e.device)
            for wl, ol in zip(cache.layers, e.cache.layers):
                for name, buf in wl.buffers.items():
                    src = ol.buffers[name][0, : n_valid * t]
                    buf[i, : n_valid * t].copy_(src if index is None else src.index_select(0, index))
        x0 = work.step(torch.cat(list(texts)), list(generators))
        n_new = cache.window.n_valid
        n = first.stream.frames_per_chunk
        out = []
        for i, e in enumerate(engines):
            for wl, ol in zip(cache.layers, e.cache.layers):
                for name, buf in wl.buffers.items():
                    ol.buffers[name][0, : n_new * t].copy_(buf[i, : n_new * t])
            window = canonical_window(e.cache.window)
            window.commit(n)
            e.cache.window = window
            row = x0[i : i + 1]
            if e.keep_history:
                e.history = e.history or LatentHistory(e.stream.cached_frames, row)
                e.history.update(row, e.next_frame - n, window.slot_frame)
            e.chunks += 1
            out.append(row)
        return out
