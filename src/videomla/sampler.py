"""Few-step streaming sampling: chunk after chunk, forever, in constant memory.

Per chunk (Self-Forcing's exact loop): start from noise, for each warped timestep predict the
velocity, convert to x0, re-noise x0 to the next step's sigma with fresh noise; after the last
step run the clean chunk once at t = 0 with ``write=True``: the only pass that stays in the cache.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from .cache import StreamingCache
from .config import StreamConfig
from .model import CausalWanModel
from .schedule import DEFAULT_SHIFT, FOUR_STEPS, add_noise, sigma_of, to_x0, warp_steps

TextForChunk = Callable[[int], torch.Tensor]


@dataclass(frozen=True)
class LatentGeometry:
    """Latent video size: channels and spatial size per latent frame."""

    channels: int
    height: int
    width: int


def stream_latents(
    model: CausalWanModel,
    text: torch.Tensor | TextForChunk,
    geometry: LatentGeometry,
    stream: StreamConfig,
    num_chunks: int | None = None,
    steps: tuple[int, ...] = FOUR_STEPS,
    shift: float = DEFAULT_SHIFT,
    generator: torch.Generator | None = None,
    batch: int = 1,
    cache_dtype: torch.dtype | None = None,
    cache: StreamingCache | None = None,
) -> Iterator[torch.Tensor]:
    """Yield clean latent chunks [B, C, frames_per_chunk, H, W]; ``num_chunks=None`` never stops.

    ``text`` is embedded text (:meth:`CausalWanModel.embed_text`) or a function of the chunk
    index returning it (prompt switching). Noise comes from ``generator`` (on the model's device).
    ``cache``: a fresh cache to stream into instead of a new one, so the caller can watch or
    rebuild it between chunks (KV-recache on a prompt switch).
    """
    param = next(model.parameters())
    device, dtype = param.device, param.dtype
    if cache is None:
        cache = model.new_cache(stream, batch, geometry.height, geometry.width, cache_dtype or dtype, device)
    elif cache.stream != stream:
        raise ValueError(f"the given cache streams {cache.stream}, not {stream}")
    timesteps = warp_steps(steps, shift)
    shape = (batch, geometry.channels, stream.frames_per_chunk, geometry.height, geometry.width)
    text_for = text if callable(text) else (lambda _chunk: text)
    chunks = itertools.count() if num_chunks is None else range(num_chunks)
    with torch.no_grad():
        for index in chunks:
            cond = text_for(index)
            x = torch.randn(shape, generator=generator, device=device, dtype=dtype)
            for i, t in enumerate(timesteps):
                velocity = model.forward_chunk(x, _batched(t, batch, device), cond, cache)
                x0 = to_x0(x, velocity, sigma_of(t))
                if i + 1 < len(timesteps):
                    noise = torch.randn(shape, generator=generator, device=device, dtype=dtype)
                    x = add_noise(x0, noise, sigma_of(timesteps[i + 1]))
            model.forward_chunk(x0, _batched(0.0, batch, device), cond, cache, write=True)
            yield x0


def _batched(t: torch.Tensor | float, batch: int, device: torch.device) -> torch.Tensor:
    return torch.full((batch,), float(t), device=device, dtype=torch.float64)
