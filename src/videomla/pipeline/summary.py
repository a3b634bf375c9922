"""What a run reports: live counters while it streams, a text summary and ``--summary`` JSON."""

from __future__ import annotations

import dataclasses
import statistics
from collections import deque
from dataclasses import dataclass, field
from typing import Any

SUMMARY_SCHEMA = "videomla.generate-summary/1"
RECENT_CHUNKS = 32  # the steady-state FPS is read over this many latest chunks


@dataclass
class RunSummary:
    """Counters of the current run (fixed size: nothing here grows with the video).

    ``fps`` counts what a viewer gets (frames generated, decoded and written per wall second);
    ``fps_without_decode`` counts the transformer's chunk steps alone (device time on CUDA), the
    number ``videomla bench`` reports as ``fps_transformer``.
    """

    seed: int = 0
    chunks: int = 0
    frames: int = 0
    fps_video: float = 0.0
    wall_seconds: float = 0.0
    step_seconds: float = 0.0  # sum of chunk-step times (denoising + cache write)
    decode_seconds: float = 0.0  # sum of decode times (device time on CUDA)
    first_chunk_seconds: float | None = None  # start of the run -> first chunk's frames ready
    recaches: int = 0
    peak_cache_bytes: int = 0  # allocated cache buffers (persistent slots + one staging chunk)
    cache_window_bytes: int = 0  # persistent sink + window slots
    dense_window_bytes: int = 0  # a dense K/V cache of the same window and dtype
    interrupted: bool = False
    run: dict[str, Any] = field(default_factory=dict)  # what ran: stream, schedule, device, paths ...
    # (frames, wall seconds, step seconds) of the latest chunks: a fixed-size window
    recent: deque = field(default_factory=lambda: deque(maxlen=RECENT_CHUNKS), repr=False)

    def add_chunk(self, frames: int, wall_seconds: float, step_seconds: float) -> None:
        self.recent.append((frames, wall_seconds, step_seconds))

    @property
    def video_seconds(self) -> float:
        return self.frames / self.fps_video if self.fps_video else 0.0

    @property
    def fps(self) -> float:
        return self.frames / self.wall_seconds if self.wall_seconds else 0.0

    @property
    def fps_without_decode(self) -> float:
        return self.frames / self.step_seconds if self.step_seconds else 0.0

    def _steady(self, column: int) -> float | None:
        """Frames per second of the latest chunks (the first chunk of a video is left out: it
        decodes fewer frames and, in a cold process, includes compilation)."""
        rows = list(self.recent)[1:] if self.chunks <= RECENT_CHUNKS else list(self.recent)
        if not rows:
            return None
        return statistics.median(r[0] for r in rows) / statistics.median(r[column] for r in rows)

    @property
    def fps_steady(self) -> float | None:
        return self._steady(1)

    @property
    def fps_steady_without_decode(self) -> float | None:
        return self._steady(2)

    def to_dict(self) -> dict[str, Any]:
        out = {"schema": SUMMARY_SCHEMA, **{f.name: getattr(self, f.name) for f in dataclasses.fields(self)}}
        del out["recent"]
        out.update(
            fps_steady=self.fps_steady,
            fps_steady_without_decode=self.fps_steady_without_decode,
            video_seconds=self.video_seconds,
            fps=self.fps,
            fps_without_decode=self.fps_without_decode,
            time_to_first_chunk_seconds=self.first_chunk_seconds,
            cache_reduction=1 - self.cache_window_bytes / self.dense_window_bytes if self.dense_window_bytes else None,
        )
        return out

    def text(self) -> str:
        saved = 1 - self.cache_window_bytes / self.dense_window_bytes if self.dense_window_bytes else 0.0
        first = f", first chunk after {self.first_chunk_seconds:.2f} s" if self.first_chunk_seconds else ""
        lines = [
            f"{self.frames} frames ({self.video_seconds:.1f} s at {self.fps_video:g} fps) in {self.chunks} chunks, "
            f"{self.wall_seconds:.1f} s wall: {self.fps:.1f} FPS ({self.fps_without_decode:.1f} without decode)"
            f"{first}; seed {self.seed}" + (f"; {self.recaches} re-caches" if self.recaches else ""),
        ]
        if self.fps_steady is not None:
            lines.append(
                f"steady state (last {len(self.recent)} chunks): {self.fps_steady:.1f} FPS "
                f"({self.fps_steady_without_decode:.1f} without decode)"
            )
        if self.run.get("stream_text"):
            lines.append(f"stream: {self.run['stream_text']} [from {self.run.get('stream_source', '?')}]")
        if self.run.get("schedule_text"):
            lines.append(f"sampler: {self.run['schedule_text']}")
        lines.append(
            f"KV cache: peak {_mib(self.peak_cache_bytes)} allocated; window {_mib(self.cache_window_bytes)} "
            f"vs {_mib(self.dense_window_bytes)} for a dense cache of the same window ({100 * saved:.1f}% less)"
        )
        return "\n".join(lines)

    summary = text  # the name earlier releases used


def _mib(n: int) -> str:
    return f"{n / 2**20:.2f} MiB"
