"""Streaming generation for users: a checkpoint and prompts in, decoded frames out.

``spec`` (the metadata schema), ``prompts`` (prompt schedules), ``request`` (one validated run),
``summary`` (what a run reports) and ``pipeline`` (loading and the :class:`Pipeline`). The chunk
loop itself is :class:`videomla.engine.StreamEngine`.
"""

from ..checkpoint import DEFAULT_CHECKPOINT, resolve_checkpoint
from .pipeline import (
    ChunkTiming,
    FrameChunk,
    Pipeline,
    VideoOutput,
    build_codec,
    build_text_encoder,
    check_attention,
    generate,
    resolve_device,
    resolve_spec,
)
from .prompts import Prompts, parse_prompt, prompt_schedule
from .request import GenerationRequest, chunk_of_frame, chunks_for_frames
from .spec import CodecSpec, GenerationSpec, TextSpec, VideoSpec
from .summary import RunSummary

__all__ = [
    "DEFAULT_CHECKPOINT",
    "ChunkTiming",
    "CodecSpec",
    "FrameChunk",
    "GenerationRequest",
    "GenerationSpec",
    "Pipeline",
    "Prompts",
    "RunSummary",
    "TextSpec",
    "VideoOutput",
    "VideoSpec",
    "build_codec",
    "build_text_encoder",
    "check_attention",
    "chunk_of_frame",
    "chunks_for_frames",
    "generate",
    "parse_prompt",
    "prompt_schedule",
    "resolve_checkpoint",
    "resolve_device",
    "resolve_spec",
]
