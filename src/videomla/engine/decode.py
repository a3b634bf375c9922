"""Decode chunk k while chunk k+1 is denoised: the codec's stream decoder on a second CUDA stream.

The transformer's chunk step is a few graph replays (one launch each), so the host is idle while
the GPU denoises; this queues the decode of the previous chunk on a side stream at the same
time, and copies the frames to pinned host memory there. Frames come back in order and the
queue holds at most one chunk in flight, so memory stays bounded. On CPU it decodes in place.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from ..codecs import ChunkDecoder
from ..video_io import to_uint8


@dataclass
class DecodedChunk:
    """uint8 frames [n, H, W, 3] (on the host when ``to_host``), ready once :meth:`wait` returns."""

    frames: torch.Tensor | None  # None when only latents were asked for
    finite: torch.Tensor  # 0-dim bool on the latents' device: were the latents finite
    done: torch.cuda.Event | None = None
    decode_ms: float | None = None
    _start: torch.cuda.Event | None = None
    latents: torch.Tensor | None = None  # the chunk's latents, when the caller keeps them

    def wait(self) -> DecodedChunk:
        if self.done is not None:
            self.done.synchronize()
            if self._start is not None:
                self.decode_ms = self._start.elapsed_time(self.done)
            self.done = None
        return self


class ChunkDecodeQueue:
    """Submit latent chunks in order; each :class:`DecodedChunk` is waited on by the caller."""

    def __init__(self, decoder: ChunkDecoder, device: torch.device, overlap: bool = True, to_host: bool = True):
        self.decoder = decoder
        self.to_host = to_host
        cuda = device.type == "cuda"
        self.side = torch.cuda.Stream(device) if (cuda and overlap) else None
        self.timed = cuda

    def submit(self, latents: torch.Tensor) -> DecodedChunk:
        finite = torch.isfinite(latents).all()  # one reduction per chunk, read when the frames are
        if self.side is None:
            if not self.timed:  # CPU: the decode ran when this returns
                t0 = time.perf_counter()
                frames = self._decode(latents)
                return DecodedChunk(frames, finite, decode_ms=1e3 * (time.perf_counter() - t0))
            start = _event(True)
            frames = self._decode(latents)
            return DecodedChunk(frames, finite, _event(True), _start=start)
        main = torch.cuda.current_stream(latents.device)
        self.side.wait_stream(main)
        latents.record_stream(self.side)
        finite.record_stream(self.side)
        with torch.cuda.stream(self.side):
            start = _event(True)
            frames = self._decode(latents)
            done = _event(True)
        return DecodedChunk(frames, finite, done, _start=start)

    def _decode(self, latents: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            frames = to_uint8(self.decoder.decode(latents))
        if self.to_host and frames.device.type == "cuda":
            host = torch.empty(frames.shape, dtype=frames.dtype, pin_memory=True)
            host.copy_(frames, non_blocking=True)
            return host
        return frames


def _event(enabled: bool) -> torch.cuda.Event | None:
    if not enabled:
        return None
    event = torch.cuda.Event(enable_timing=True)
    event.record()
    return event
