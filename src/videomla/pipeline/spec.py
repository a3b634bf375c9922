"""The generation schema stored in checkpoint metadata: the one place it is defined.

Every writer (the trainer's export, the data code, ``save_model`` callers, the study script)
builds a :class:`GenerationSpec` and stores :meth:`GenerationSpec.to_dict`; every reader
(``videomla generate``, ``info``, :class:`~videomla.pipeline.Pipeline`) reads it back with
:meth:`GenerationSpec.from_dict`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ..codecs import causal_frames
from ..config import STREAM_PRESETS, StreamConfig
from ..schedule import SamplingSchedule
from ..text import check_context

# Wan2.1's VAE: latent frame 0 decodes to 1 video frame, every later one to 4.
WAN_TEMPORAL_STRIDE = 4


@dataclass(frozen=True)
class CodecSpec:
    """How latents become pixels: ``pixel`` (space-to-depth) or ``wan-vae`` (a diffusers folder)."""

    type: Literal["pixel", "wan-vae"] = "wan-vae"
    path: str | None = None  # wan-vae: AutoencoderKLWan folder (or given by --vae)
    spatial_stride: int = 4  # pixel only
    scale: float = 1.0  # pixel only
    offset: float = 0.0  # pixel only: latents = (pixels - offset) * scale
    # wan-vae only, read from the VAE folder's config.json (never stored): Wan2.1's 4x temporal
    vae_temporal_stride: int = WAN_TEMPORAL_STRIDE

    def frames_for(self, latent_frames: int) -> int:
        """Video frames decoded from the first ``latent_frames`` latent frames."""
        if self.type == "pixel":
            return latent_frames
        return causal_frames(latent_frames, self.vae_temporal_stride)

    def with_vae_folder(self, path: str | Path) -> CodecSpec:
        """This wan-vae spec with the folder and the temporal stride its config.json declares."""
        folder = Path(path)
        config = (
            folder / "vae" / "config.json" if (folder / "vae" / "config.json").is_file() else folder / "config.json"
        )
        stride = self.vae_temporal_stride
        if config.is_file():
            with contextlib.suppress(OSError, ValueError, TypeError, AttributeError):  # the loader reports it
                stride = 2 ** sum(bool(t) for t in json.loads(config.read_text()).get("temperal_downsample", []))
        return dataclasses.replace(self, path=str(path), vae_temporal_stride=stride)


@dataclass(frozen=True)
class TextSpec:
    """Which text encoder feeds the DiT: ``hash`` (built in, no weights) or ``umt5`` (a folder)."""

    type: Literal["hash", "umt5"] = "umt5"
    path: str | None = None  # umt5: text encoder + tokenizer folder (or given by --text-encoder)
    text_dim: int | None = None  # hash: feature width (None: the model's text_dim)
    max_tokens: int | None = None  # None: 16 for hash, 512 for umt5 (Wan's text length)
    context: int | None = None  # hash: words of context on each side (None: 0, plain word vectors)

    def __post_init__(self) -> None:
        if self.context is not None:
            check_context(self.context)


@dataclass(frozen=True)
class VideoSpec:
    height: int = 480
    width: int = 832
    fps: float = 16.0


# Keys each section type may carry in metadata (besides "type").
_CODEC_KEYS = {"pixel": ("spatial_stride", "scale", "offset"), "wan-vae": ("path",)}
_TEXT_KEYS = {"hash": ("text_dim", "max_tokens", "context"), "umt5": ("path", "max_tokens")}
# The streaming semantics a checkpoint without videomla metadata was trained with, by format.
PEER_STREAM = {"torch": "self-forcing", "wan2.1": "self-forcing", "diffusers": "self-forcing"}


@dataclass(frozen=True)
class GenerationSpec:
    """How a checkpoint generates: codec, text encoder, video size/rate, streaming window, sampler.

    Stored as the ``codec``, ``text_encoder``, ``video``, ``stream`` and ``schedule`` sections of
    a checkpoint's metadata (:func:`videomla.checkpoint.save_model`). A missing section takes the
    Wan2.1 default (Wan VAE, UMT5, 480x832 at 16 fps, 4 steps at shift 5); a missing ``stream``
    takes the semantics of the checkpoint's family (:attr:`stream_source` says which): a
    Self-Forcing / Wan / diffusers checkpoint streams as Self-Forcing does (no sink, 18 cached
    frames, absolute RoPE), a videomla checkpoint with the paper's 1 sink + 6.
    """

    codec: CodecSpec = field(default_factory=CodecSpec)
    text_encoder: TextSpec = field(default_factory=TextSpec)
    video: VideoSpec = field(default_factory=VideoSpec)
    stream: StreamConfig = field(default_factory=StreamConfig)
    schedule: SamplingSchedule = field(default_factory=SamplingSchedule)
    stream_source: str = field(default="given", compare=False)  # where ``stream`` came from (summaries)

    def __post_init__(self) -> None:
        if self.codec.type not in _CODEC_KEYS:
            raise ValueError(f"unknown codec type {self.codec.type!r}; choose from {sorted(_CODEC_KEYS)}")
        if self.text_encoder.type not in _TEXT_KEYS:
            raise ValueError(f"unknown text encoder type {self.text_encoder.type!r}; choose from {sorted(_TEXT_KEYS)}")
        v = self.video
        if v.height <= 0 or v.width <= 0 or v.fps <= 0:
            raise ValueError(f"video size and fps must be positive, got {v.height}x{v.width} at {v.fps} fps")

    def to_dict(self) -> dict[str, Any]:
        def typed(spec: Any, keys: dict[str, tuple[str, ...]]) -> dict[str, Any]:
            out = {"type": spec.type}
            out.update({k: getattr(spec, k) for k in keys[spec.type] if getattr(spec, k) is not None})
            return out

        return {
            "codec": typed(self.codec, _CODEC_KEYS),
            "text_encoder": typed(self.text_encoder, _TEXT_KEYS),
            "video": dataclasses.asdict(self.video),
            "stream": dataclasses.asdict(self.stream),
            "schedule": self.schedule.to_dict(),
        }

    @classmethod
    def from_dict(cls, metadata: dict[str, Any]) -> GenerationSpec:
        """Read the sections from checkpoint metadata (other metadata keys are ignored)."""
        stream_data = metadata.get("stream")
        if stream_data is None:
            peer = PEER_STREAM.get(metadata.get("format", "videomla"))
            stream = STREAM_PRESETS[peer or "videomla"]
            source = f"the {peer} preset (a {metadata['format']} checkpoint)" if peer else "the videomla default"
        else:
            stream, source = _section(StreamConfig, stream_data, "stream"), "the checkpoint's metadata"
        schedule = _section(SamplingSchedule, metadata.get("schedule"), "schedule")
        return cls(
            codec=_typed_section(CodecSpec, metadata.get("codec"), "codec", _CODEC_KEYS),
            text_encoder=_typed_section(TextSpec, metadata.get("text_encoder"), "text_encoder", _TEXT_KEYS),
            video=_section(VideoSpec, metadata.get("video"), "video"),
            stream=stream,
            schedule=schedule,
            stream_source=source,
        )


def _section(kind: type, data: Any, name: str) -> Any:
    if data is None:
        return kind()
    if not isinstance(data, dict):
        raise ValueError(f"checkpoint metadata {name!r} must be an object, got {type(data).__name__}")
    known = {f.name for f in dataclasses.fields(kind)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"checkpoint metadata {name!r} has unknown keys {unknown}; known: {sorted(known)}")
    try:
        return kind(**data)
    except (TypeError, ValueError) as err:
        raise ValueError(f"checkpoint metadata {name!r}: {err}") from err


def _typed_section(kind: type, data: Any, name: str, keys: dict[str, tuple[str, ...]]) -> Any:
    if data is None:
        return kind()
    if not isinstance(data, dict) or data.get("type") not in keys:
        raise ValueError(f"checkpoint metadata {name!r} needs a 'type' among {sorted(keys)}, got {data!r}")
    extra = sorted(set(data) - {"type", *keys[data["type"]]})
    if extra:
        raise ValueError(f"checkpoint metadata {name!r} of type {data['type']!r} has unknown keys {extra}")
    try:
        return kind(**data)
    except (TypeError, ValueError) as err:
        raise ValueError(f"checkpoint metadata {name!r}: {err}") from err
