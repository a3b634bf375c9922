"""Few-step streaming sampling as a latent iterator: chunk after chunk, forever, in constant memory.

A thin loop over :class:`~videomla.engine.StreamEngine`, which owns the cache and the chunk step;
use the engine directly to rebuild, fork or batch streams.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator

import torch

from .config import StreamConfig
from .engine import EngineOptions, LatentGeometry, StreamEngine
from .model import CausalWanModel
from .schedule import SamplingSchedule

TextForChunk = Callable[[int], torch.Tensor]

__all__ = ["LatentGeometry", "TextForChunk", "stream_latents"]


def stream_latents(
    model: CausalWanModel,
    text: torch.Tensor | TextForChunk,
    geometry: LatentGeometry,
    stream: StreamConfig,
    num_chunks: int | None = None,
    schedule: SamplingSchedule | None = None,
    generator: torch.Generator | None = None,
    batch: int = 1,
    cache_dtype: torch.dtype | None = None,
    options: EngineOptions | None = None,
) -> Iterator[torch.Tensor]:
    """Yield clean latent chunks [B, C, frames_per_chunk, H, W]; ``num_chunks=None`` never stops.

    ``text`` is embedded text (:meth:`CausalWanModel.embed_text`) or a function of the chunk
    index returning it (prompt switching). Noise comes from ``generator`` (on the model's device).
    Runs the eager reference path unless ``options`` asks for the fast one.
    """
    engine = StreamEngine(
        model,
        stream,
        geometry,
        batch=batch,
        schedule=schedule,
        cache_dtype=cache_dtype,
        options=options or EngineOptions(compile=False, cuda_graphs=False),
    )
    text_for = text if callable(text) else (lambda _chunk: text)
    for index in itertools.count() if num_chunks is None else range(num_chunks):
        yield engine.step(text_for(index), generator)
