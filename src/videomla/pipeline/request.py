"""One validated generation request, built once before any weights load.

Everything a run needs to know that can be wrong in a user's input (prompt times, length,
window, sampler, output path and format) is checked here from the checkpoint's metadata alone,
so ``videomla generate`` fails in milliseconds, not after loading a model.
"""

from __future__ import annotations

import dataclasses
import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from ..config import StreamConfig, describe_stream, stream_preset
from ..schedule import SamplingSchedule
from ..video_io import check_writable, format_for
from .prompts import Prompts, prompt_schedule
from .spec import GenerationSpec

Output = Literal["numpy", "torch", "latent", "none"]


def latent_frames_for(spec: GenerationSpec, frames: int) -> int:
    """Fewest latent frames whose decoded video covers ``frames`` frames (closed form, any length)."""
    lo, hi = 1, 1
    while spec.codec.frames_for(hi) < frames:  # doubling then bisection: O(log n) for any codec
        lo, hi = hi, 2 * hi
    while lo < hi:
        mid = (lo + hi) // 2
        if spec.codec.frames_for(mid) >= frames:
            hi = mid
        else:
            lo = mid + 1
    return lo


def chunks_for_frames(spec: GenerationSpec, stream: StreamConfig, frames: int) -> int:
    """Fewest chunks whose decoded frames cover ``frames`` video frames (frames_for is monotonic)."""
    return -(-latent_frames_for(spec, frames) // stream.frames_per_chunk)


def chunk_of_frame(spec: GenerationSpec, stream: StreamConfig, frame: int) -> int:
    """The chunk whose decoded frames include video frame ``frame``."""
    return chunks_for_frames(spec, stream, frame + 1) - 1


@dataclass(frozen=True)
class GenerationRequest:
    """A run's inputs, validated against a checkpoint's :class:`GenerationSpec`."""

    spec: GenerationSpec
    prompts: tuple[tuple[str, float], ...]
    switch_chunks: tuple[int, ...]  # chunk at which each prompt takes over
    seconds: float | None
    total_frames: int | None
    num_chunks: int | None
    stream: StreamConfig
    stream_source: str
    schedule: SamplingSchedule
    seed: int
    recache: bool = False
    keep_sink: bool = False
    out: Path | None = None
    format: str | None = None
    grid_frames: int = 16
    output: Output = "numpy"
    crf: int | None = None  # mp4 quality (None: the writer's default)
    pix_fmt: str | None = None  # mp4 pixel format (yuv444p keeps colours exact enough for evaluation)
    context: torch.Tensor | None = field(default=None, compare=False, repr=False)  # uint8 [T, H, W, 3]
    context_latents: int = 0  # latent frames the context fills; generation continues after them

    @classmethod
    def build(
        cls,
        spec: GenerationSpec,
        prompts: Prompts,
        seconds: float | None = None,
        *,
        stream: StreamConfig | str | None = None,
        sink: int | None = None,
        window: int | None = None,
        frames_per_chunk: int | None = None,
        rope: str | None = None,
        steps: tuple[int, ...] | None = None,
        shift: float | None = None,
        solver: str | None = None,
        seed: int | None = None,
        recache: bool = False,
        keep_sink: bool = False,
        out: str | Path | None = None,
        format: str | None = None,
        grid_frames: int = 16,
        output: Output = "numpy",
        crf: int | None = None,
        pix_fmt: str | None = None,
        context: Any = None,
    ) -> GenerationRequest:
        """``stream``: a :class:`StreamConfig` or a preset name (``self-forcing``, ``longlive``,
        ``reward-forcing``, ``videomla``); None: the checkpoint's. ``sink`` / ``window`` /
        ``frames_per_chunk`` / ``rope`` then override single fields, ``steps`` / ``shift`` / ``solver``
        (``renoise`` or ``euler``, :mod:`videomla.schedule`) the sampler.
        ``context``: frames [T, H, W, 3] (uint8) of a video to continue, or one image [H, W, 3] to
        animate (image-to-video); the cache is filled with them first and the new video (``seconds``
        long, prompt times relative to its start, the given frames not repeated) follows. A context
        that ends inside a chunk conditions that chunk's first frames (:meth:`StreamEngine.step`'s ``given``)."""
        if isinstance(stream, str):
            base, source = stream_preset(stream), f"the {stream} preset (--stream)"
        elif stream is not None:
            base, source = stream, "the caller"
        else:
            base, source = spec.stream, spec.stream_source
        fields = {"sink_frames": sink, "window_frames": window, "frames_per_chunk": frames_per_chunk, "rope_mode": rope}
        given = {k: v for k, v in fields.items() if v is not None}
        if given:
            base = dataclasses.replace(base, **given)
            source += " with " + ", ".join(f"{k}={v}" for k, v in given.items())
        if base.window_frames is None:
            raise ValueError("streaming needs a finite window (window_frames=None is unbounded global attention)")
        if base.cached_frames == 0:
            raise ValueError(
                "sink 0 + window 0 leaves the cache no frame: every chunk would be generated with no memory "
                "of the video; use a window or sink of at least 1 frame"
            )
        schedule = spec.schedule
        if steps is not None or shift is not None or solver is not None:
            schedule = SamplingSchedule(
                tuple(steps) if steps is not None else schedule.steps,
                schedule.shift if shift is None else shift,
                schedule.solver if solver is None else solver,
            )
        if seconds is not None and not (isinstance(seconds, (int, float)) and math.isfinite(seconds) and seconds > 0):
            raise ValueError(f"seconds must be positive, got {seconds}")
        if output not in ("numpy", "torch", "latent", "none"):
            raise ValueError(f"output must be 'numpy', 'torch', 'latent' or 'none', got {output!r}")
        if not isinstance(grid_frames, int) or grid_frames < 1:
            raise ValueError(f"grid_frames must be a positive integer, got {grid_frames!r}")
        fps = spec.video.fps
        schedule_of = prompt_schedule(prompts)
        total = None if seconds is None else math.ceil(seconds * fps - 1e-9)
        frames_in, context_latents, context = _check_context(context, spec)
        k0 = context_latents // base.frames_per_chunk  # whole chunks of context before the first new one
        switches = [
            chunk_of_frame(spec, base, frames_in + math.floor(start * fps + 1e-9)) - k0 for _, start in schedule_of
        ]
        for i in range(1, len(schedule_of)):
            if total is not None and schedule_of[i][1] * fps >= total:
                raise ValueError(f"prompt {schedule_of[i][0]!r} starts at {schedule_of[i][1]} s, after the video ends")
            if switches[i] == switches[i - 1]:
                raise ValueError(
                    f"prompts {schedule_of[i - 1][0]!r} and {schedule_of[i][0]!r} start in the same chunk "
                    f"(chunk {switches[i]}); a prompt switch takes effect at chunk boundaries"
                )
        if keep_sink and not recache:
            raise ValueError("keep_sink only changes what a recache rebuilds: use it with recache")
        writer_format = None
        if out is not None:
            check_writable(out)
            writer_format = format_for(out, format)
            if writer_format == "png-grid" and total is None:
                raise ValueError("png-grid samples frames over the whole video: give a length in seconds")
            v = spec.video
            if writer_format == "mp4" and (v.height % 2 or v.width % 2):
                raise ValueError(f"mp4 needs an even frame size, this model makes {v.height}x{v.width}")
        if (crf is not None or pix_fmt is not None) and writer_format != "mp4":
            raise ValueError("crf and pix_fmt set mp4 encoding; the output is not an mp4")
        if seed is None:
            seed = random.randrange(2**31)
        elif not isinstance(seed, int) or not 0 <= seed < 2**64:
            raise ValueError(f"seed must be an integer in [0, 2**64), got {seed!r}")
        return cls(
            spec=spec,
            prompts=tuple(schedule_of),
            switch_chunks=tuple(switches),
            seconds=seconds,
            total_frames=total,
            num_chunks=None if total is None else chunks_for_frames(spec, base, frames_in + total) - k0,
            stream=base,
            stream_source=source,
            schedule=schedule,
            seed=seed,
            recache=recache,
            keep_sink=keep_sink,
            out=None if out is None else Path(out),
            format=writer_format,
            grid_frames=grid_frames,
            output=output,
            crf=crf,
            pix_fmt=pix_fmt,
            context=context,
            context_latents=context_latents,
        )

    @property
    def given_latents(self) -> int:
        """Context latent frames inside the first new chunk (a context that ends mid-chunk)."""
        return self.context_latents % self.stream.frames_per_chunk

    def frames_in_chunk(self, chunk: int) -> int:
        """New video frames chunk ``chunk`` decodes to (after any context, given frames not repeated)."""
        c = self.stream.frames_per_chunk
        end = (self.context_latents // c + 1 + chunk) * c
        start = max(self.context_latents, end - c)
        return self.spec.codec.frames_for(end) - self.spec.codec.frames_for(start)

    def prompt_at(self, chunk: int) -> int:
        """Index of the prompt that conditions ``chunk``."""
        return max(i for i, start in enumerate(self.switch_chunks) if start <= chunk)

    def describe(self) -> dict:
        """What ran, as the summary records it."""
        return {
            "prompts": [list(p) for p in self.prompts],
            "seconds": self.seconds,
            "stream": dataclasses.asdict(self.stream),
            "stream_text": describe_stream(self.stream),
            "stream_source": self.stream_source,
            "schedule": self.schedule.to_dict(),
            "schedule_text": self.schedule.describe(),
            "recache": self.recache,
            "keep_sink": self.keep_sink,
            "out": None if self.out is None else str(self.out),
            "format": self.format,
            "context_frames": 0 if self.context is None else len(self.context),
        }


def _check_context(context: Any, spec: GenerationSpec) -> tuple[int, int, torch.Tensor | None]:
    """(video frames, latent frames, uint8 tensor [T, H, W, 3]) of a video to continue or an image to animate."""
    if context is None:
        return 0, 0, None
    # a copy, so a read-only array (a decoded image) is taken as is, and the caller's memory is never aliased
    frames = torch.tensor(np.asarray(context)) if not isinstance(context, torch.Tensor) else context
    v = spec.video
    if frames.ndim == 3:  # one image [H, W, 3]
        frames = frames[None]
    if (
        frames.dtype != torch.uint8
        or frames.ndim != 4
        or tuple(frames.shape[1:]) != (v.height, v.width, 3)
        or not len(frames)
    ):
        raise ValueError(
            f"context must be uint8 frames [T, {v.height}, {v.width}, 3] or an image [{v.height}, {v.width}, 3] "
            f"(this model's size), got {frames.dtype} {tuple(frames.shape)}"
        )
    latents = latent_frames_for(spec, len(frames))
    if spec.codec.frames_for(latents) != len(frames):
        fits = [spec.codec.frames_for(j) for j in (latents - 1, latents)]
        raise ValueError(
            f"a context of {len(frames)} frames does not encode to whole latent frames ({spec.codec.type} codec); "
            f"e.g. {fits} frames do"
        )
    return len(frames), latents, frames.cpu()
