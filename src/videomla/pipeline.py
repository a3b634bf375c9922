"""Text-to-video as a product: a checkpoint and prompts in, decoded frames streamed out.

:class:`Pipeline` ties the pieces together: the DiT (:func:`videomla.checkpoint.load_model`),
the codec and text encoder the checkpoint's metadata names (:class:`GenerationSpec`, the one
place that schema is defined), the chunk loop (:func:`videomla.sampler.stream_latents`), a
chunk-by-chunk decoder and a streaming writer (:mod:`videomla.video_io`). Everything it holds
while streaming is fixed-size: the KV cache, the decoder's causal state, one chunk of frames
and, with KV-recache, the clean latents of the cached frames. So an hour costs the memory of a
second.

Prompt switching (as LongLive does): the cross-attention text changes at the chunk containing
the switch time. With ``recache=True`` the cache is also rebuilt then: the cached frames' clean
latents are re-run through the model under the new prompt (:func:`recache`), so the window's
keys no longer carry the old text.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import random
import re
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from tqdm.auto import tqdm

from .cache import KVFootprint, StreamingCache
from .codecs import PixelCodec, VideoCodec, WanVAECodec
from .config import StreamConfig
from .model import CausalWanModel
from .sampler import LatentGeometry, stream_latents
from .text import HashTextEncoder, TextEncoder, UMT5TextEncoder
from .video_io import check_writable, format_for, open_writer, to_uint8

DEFAULT_CHECKPOINT = Path(__file__).resolve().parent / "weights" / "default"
Prompts = str | Sequence[str | tuple[str, float]]


# -- the generation schema stored in checkpoint metadata ----------------------------------------
@dataclass(frozen=True)
class CodecSpec:
    """How latents become pixels: ``pixel`` (space-to-depth) or ``wan-vae`` (a diffusers folder)."""

    type: Literal["pixel", "wan-vae"] = "wan-vae"
    path: str | None = None  # wan-vae: AutoencoderKLWan folder (or given by --vae)
    spatial_stride: int = 4  # pixel only
    scale: float = 1.0  # pixel only
    offset: float = 0.0  # pixel only: latents = (pixels - offset) * scale


@dataclass(frozen=True)
class TextSpec:
    """Which text encoder feeds the DiT: ``hash`` (built in, no weights) or ``umt5`` (a folder)."""

    type: Literal["hash", "umt5"] = "umt5"
    path: str | None = None  # umt5: text encoder + tokenizer folder (or given by --text-encoder)
    text_dim: int | None = None  # hash: feature width (None: the model's text_dim)
    max_tokens: int | None = None  # None: 16 for hash, 512 for umt5 (Wan's text length)


@dataclass(frozen=True)
class VideoSpec:
    height: int = 480
    width: int = 832
    fps: float = 16.0


# Keys each section type may carry in metadata (besides "type").
_CODEC_KEYS = {"pixel": ("spatial_stride", "scale", "offset"), "wan-vae": ("path",)}
_TEXT_KEYS = {"hash": ("text_dim", "max_tokens"), "umt5": ("path", "max_tokens")}


@dataclass(frozen=True)
class GenerationSpec:
    """How a checkpoint generates: codec, text encoder, video size/rate and streaming window.

    Stored as the ``codec``, ``text_encoder``, ``video`` and ``stream`` sections of a checkpoint's
    metadata (:func:`videomla.checkpoint.save_model`). A missing section takes the Wan2.1 default
    (Wan VAE, UMT5, 480x832 at 16 fps, 1 sink + 6 window frames), so Wan / Self-Forcing
    checkpoints need no metadata, only ``--vae`` and ``--text-encoder`` folders.
    """

    codec: CodecSpec = field(default_factory=CodecSpec)
    text_encoder: TextSpec = field(default_factory=TextSpec)
    video: VideoSpec = field(default_factory=VideoSpec)
    stream: StreamConfig = field(default_factory=StreamConfig)

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
        }

    @classmethod
    def from_dict(cls, metadata: dict[str, Any]) -> GenerationSpec:
        """Read the four sections from checkpoint metadata (other metadata keys are ignored)."""
        return cls(
            codec=_typed_section(CodecSpec, metadata.get("codec"), "codec", _CODEC_KEYS),
            text_encoder=_typed_section(TextSpec, metadata.get("text_encoder"), "text_encoder", _TEXT_KEYS),
            video=_section(VideoSpec, metadata.get("video"), "video"),
            stream=_section(StreamConfig, metadata.get("stream"), "stream"),
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
    return kind(**data)


def _typed_section(kind: type, data: Any, name: str, keys: dict[str, tuple[str, ...]]) -> Any:
    if data is None:
        return kind()
    if not isinstance(data, dict) or data.get("type") not in keys:
        raise ValueError(f"checkpoint metadata {name!r} needs a 'type' among {sorted(keys)}, got {data!r}")
    extra = sorted(set(data) - {"type", *keys[data["type"]]})
    if extra:
        raise ValueError(f"checkpoint metadata {name!r} of type {data['type']!r} has unknown keys {extra}")
    return kind(**data)


# -- prompts -------------------------------------------------------------------------------------
_TIME = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*s?\s*")


def parse_prompt(arg: str) -> tuple[str, float | None]:
    """``"text"`` -> (text, None); ``"text@20s"`` / ``"text@20"`` -> (text, 20.0): start time in seconds."""
    text, at, when = arg.rpartition("@")
    if not at:
        text, start = arg, None
    else:
        m = _TIME.fullmatch(when)
        if m is None:
            raise ValueError(
                f"malformed prompt {arg!r}: what follows the last '@' must be a start time in seconds "
                f"like 'text@20s' or 'text@7.5', got {when!r}"
            )
        start = float(m[1])
    if not text.strip():
        raise ValueError(f"malformed prompt {arg!r}: the prompt text is empty")
    return text.strip(), start


def prompt_schedule(prompts: Prompts) -> list[tuple[str, float]]:
    """Normalise ``prompts`` to [(text, start_seconds)], the first at 0, starts strictly increasing."""
    items = [prompts] if isinstance(prompts, str) else list(prompts)
    if not items:
        raise ValueError("no prompt given")
    schedule: list[tuple[str, float]] = []
    for i, item in enumerate(items):
        text, start = (item, None) if isinstance(item, str) else item
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"prompt {i} is empty or not text: {item!r}")
        if start is None:
            if i > 0:
                raise ValueError(f"prompt {i} ({text!r}) needs a start time: every prompt after the first does")
            start = 0.0
        if not math.isfinite(start) or start < 0:
            raise ValueError(f"prompt {text!r} starts at {start} s; start times must be >= 0")
        if i == 0 and start != 0:
            raise ValueError(f"the first prompt must start at 0 s, {text!r} starts at {start} s")
        if schedule and start <= schedule[-1][1]:
            raise ValueError(f"prompt start times must increase: {text!r} at {start} s follows {schedule[-1][1]} s")
        schedule.append((text, float(start)))
    return schedule


# -- what a run yields and reports ---------------------------------------------------------------
@dataclass
class FrameChunk:
    """One decoded chunk: uint8 frames [n, H, W, 3] (numpy or torch), where it sits, its prompt."""

    index: int
    start_frame: int
    prompt: str
    frames: np.ndarray | torch.Tensor


@dataclass
class GenerationStats:
    """Live counters of the current run (fixed size: nothing here grows with the video)."""

    seed: int = 0
    chunks: int = 0
    frames: int = 0
    fps_video: float = 0.0
    wall_seconds: float = 0.0
    recaches: int = 0
    peak_cache_bytes: int = 0  # allocated cache buffers (persistent slots + one staging chunk)
    cache_window_bytes: int = 0  # persistent sink + window slots
    dense_window_bytes: int = 0  # a dense K/V cache of the same window and dtype

    @property
    def video_seconds(self) -> float:
        return self.frames / self.fps_video if self.fps_video else 0.0

    @property
    def fps(self) -> float:
        """Frames generated, decoded and written per wall-clock second."""
        return self.frames / self.wall_seconds if self.wall_seconds else 0.0

    def summary(self) -> str:
        saved = 1 - self.cache_window_bytes / self.dense_window_bytes if self.dense_window_bytes else 0.0
        return (
            f"{self.frames} frames ({self.video_seconds:.1f} s at {self.fps_video:g} fps) in {self.chunks} chunks, "
            f"{self.wall_seconds:.1f} s wall: {self.fps:.1f} FPS; seed {self.seed}"
            + (f"; {self.recaches} re-caches" if self.recaches else "")
            + f"\nKV cache: peak {_mib(self.peak_cache_bytes)} allocated; window {_mib(self.cache_window_bytes)} "
            f"vs {_mib(self.dense_window_bytes)} for a dense cache of the same window ({100 * saved:.1f}% less)"
        )


def _mib(n: int) -> str:
    return f"{n / 2**20:.2f} MiB"


# -- KV-recache ----------------------------------------------------------------------------------
class LatentHistory:
    """Clean latents of exactly the frames the cache holds, in a fixed buffer of ``capacity`` rows."""

    def __init__(self, capacity: int, chunk: torch.Tensor):
        b, c, _, h, w = chunk.shape
        self.buffer = torch.zeros(b, c, capacity, h, w, dtype=chunk.dtype, device=chunk.device)
        self.row_of: dict[int, int] = {}

    def update(self, chunk: torch.Tensor, first_frame: int, cached_frames: Sequence[int]) -> None:
        """Store the new chunk's frames the cache kept; forget frames it evicted."""
        keep = set(cached_frames)
        self.row_of = {f: r for f, r in self.row_of.items() if f in keep}
        free = sorted(set(range(self.buffer.shape[2])) - set(self.row_of.values()))
        for i in range(chunk.shape[2]):
            if first_frame + i in keep:
                row = free.pop(0)
                self.buffer[:, :, row].copy_(chunk[:, :, i])
                self.row_of[first_frame + i] = row
        missing = sorted(keep - set(self.row_of))
        if missing:
            raise RuntimeError(f"the cache holds frames {missing} whose latents were never recorded")

    def latents(self, frames: Sequence[int]) -> torch.Tensor:
        return self.buffer[:, :, [self.row_of[f] for f in frames]]


def replay_runs(frames: Sequence[int], frames_per_chunk: int) -> list[list[int]]:
    """Split sorted frame indices into runs replayed together: consecutive and from one original chunk."""
    runs: list[list[int]] = []
    for f in frames:
        if runs and f == runs[-1][-1] + 1 and f // frames_per_chunk == runs[-1][0] // frames_per_chunk:
            runs[-1].append(f)
        else:
            runs.append([f])
    return runs


def recache(model: CausalWanModel, cache: StreamingCache, history: LatentHistory, text: torch.Tensor) -> None:
    """Rebuild ``cache`` in place under ``text`` (embedded): LongLive's KV-recache on a prompt switch.

    The cached frames are re-run, oldest first, at their own frame indices, as clean (t = 0)
    writes: each run attends to the frames re-cached before it and to itself, the causal order
    they were generated in. Buffers are reused, so this allocates no cache memory.
    """
    frames = sorted(cache.window.slot_frame)
    next_frame = cache.window.next_frame
    latents = history.latents(frames)
    batch = latents.shape[0]
    t0 = torch.zeros(batch, dtype=torch.float64, device=latents.device)
    cache.reset()
    pos = 0
    with torch.no_grad():
        for run in replay_runs(frames, cache.stream.frames_per_chunk):
            cache.skip_to(run[0])
            model.forward_chunk(latents[:, :, pos : pos + len(run)], t0, text, cache, write=True)
            pos += len(run)
    cache.skip_to(next_frame)


# -- the pipeline --------------------------------------------------------------------------------
def resolve_checkpoint(checkpoint: str | Path | None) -> Path:
    """``None`` -> the embedded default model, which must exist; a training run folder -> its newest export."""
    if checkpoint is not None:
        from .training.models import resolve_checkpoint_path

        return resolve_checkpoint_path(checkpoint)
    if not (DEFAULT_CHECKPOINT / "model.safetensors").is_file():
        raise FileNotFoundError(
            f"no default model is installed yet (expected {DEFAULT_CHECKPOINT}/model.safetensors + config.json); "
            f"pass a checkpoint (--checkpoint PATH)"
        )
    return DEFAULT_CHECKPOINT


def check_attention(model: CausalWanModel, attention: str | None, mla_path: str = "auto") -> None:
    """``attention`` converts nothing: it asserts what the checkpoint holds and selects the MLA path."""
    if attention not in (None, "dense", "mla"):
        raise ValueError(f"attention must be 'dense' or 'mla', got {attention!r}")
    if mla_path not in ("auto", "materialised", "absorbed"):
        raise ValueError(f"mla_path must be 'auto', 'materialised' or 'absorbed', got {mla_path!r}")
    n_mla, n = len(model.mla_layers()), len(model.blocks)
    has = f"MLA attention in {n_mla} of {n} layers" if n_mla else "dense attention in all layers"
    if attention == "dense" and n_mla:
        raise ValueError(f"dense attention was asked for, but the checkpoint has {has}")
    if attention == "mla" and not n_mla:
        raise ValueError(f"MLA attention was asked for, but the checkpoint has {has}; convert or distill it first")
    if mla_path != "auto" and not n_mla:
        raise ValueError(f"an MLA path ({mla_path}) was asked for, but the checkpoint has {has}")
    model.set_mla_path(mla_path)


def build_codec(spec: CodecSpec, device: torch.device, dtype: torch.dtype) -> VideoCodec:
    if spec.type == "pixel":
        return PixelCodec(spec.spatial_stride, spec.scale, spec.offset)
    if spec.path is None:
        raise FileNotFoundError(
            "this checkpoint decodes with the Wan2.1 VAE: give its folder (--vae PATH, a diffusers "
            "AutoencoderKLWan folder such as Wan2.1-T2V-1.3B-Diffusers/vae)"
        )
    return WanVAECodec.from_folder(spec.path, device, dtype)


def build_text_encoder(spec: TextSpec, text_dim: int | None, device: torch.device, dtype: torch.dtype) -> TextEncoder:
    """``text_dim``: the model's, used by a hash encoder whose metadata leaves it out."""
    if spec.type == "hash":
        dim = spec.text_dim or text_dim
        if dim is None:
            raise ValueError("a hash text encoder needs text_dim (from its metadata or the model)")
        return HashTextEncoder(dim, spec.max_tokens or 16)
    if spec.path is None:
        raise FileNotFoundError(
            "this checkpoint reads UMT5-XXL text features: give the encoder's folder (--text-encoder PATH, "
            "e.g. Wan2.1-T2V-1.3B-Diffusers, holding text_encoder/ and tokenizer/)"
        )
    return UMT5TextEncoder.from_folder(spec.path, device, dtype, spec.max_tokens or 512)


class Pipeline:
    """A loaded model with its codec and text encoder; :meth:`stream` runs one video (reusable)."""

    def __init__(self, model: CausalWanModel, spec: GenerationSpec, codec: VideoCodec, text_encoder: TextEncoder):
        cfg = model.config
        if codec.latent_channels != cfg.in_channels or cfg.out_channels != cfg.in_channels:
            raise ValueError(
                f"the codec makes {codec.latent_channels}-channel latents; the model takes {cfg.in_channels} "
                f"and predicts {cfg.out_channels}"
            )
        if text_encoder.text_dim != cfg.text_dim:
            raise ValueError(
                f"the text encoder gives {text_encoder.text_dim}-dim features; the model takes {cfg.text_dim}"
            )
        v, s = spec.video, codec.spatial_stride
        if v.height % s or v.width % s:
            raise ValueError(f"video size {v.height}x{v.width} is not divisible by the codec stride {s}")
        model.token_grid(cfg.patch_size[0], v.height // s, v.width // s)  # raises if patches do not tile
        self.model, self.spec, self.codec, self.text_encoder = model, spec, codec, text_encoder
        self.cache: StreamingCache | None = None  # the running stream's cache (for inspection)
        self.stats = GenerationStats()

    @classmethod
    def from_checkpoint(
        cls,
        checkpoint: str | Path | None = None,
        *,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        vae: str | Path | None = None,
        text_encoder: str | Path | None = None,
        attention: str | None = None,
        mla_path: str = "auto",
    ) -> Pipeline:
        """Load a checkpoint (None: the embedded default) with the codec and text encoder its metadata names.

        ``vae`` / ``text_encoder`` give (or override) the folders of a Wan VAE / UMT5 checkpoint.
        ``dtype`` defaults to bf16 on CUDA and fp32 on CPU.
        """
        from .checkpoint import load_metadata, load_model

        path = resolve_checkpoint(checkpoint)
        spec = GenerationSpec.from_dict(load_metadata(path))
        if vae is not None:
            if spec.codec.type != "wan-vae":
                raise ValueError(f"a VAE folder was given, but this checkpoint uses the {spec.codec.type} codec")
            spec = dataclasses.replace(spec, codec=dataclasses.replace(spec.codec, path=str(vae)))
        if text_encoder is not None:
            if spec.text_encoder.type != "umt5":
                raise ValueError(
                    f"a text encoder folder was given, but this checkpoint uses the {spec.text_encoder.type} encoder"
                )
            spec = dataclasses.replace(
                spec, text_encoder=dataclasses.replace(spec.text_encoder, path=str(text_encoder))
            )
        device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        dtype = dtype or (torch.bfloat16 if device.type == "cuda" else torch.float32)
        # Codec and UMT5 first: a missing folder fails before the DiT is read.
        codec = build_codec(spec.codec, device, dtype)
        umt5 = spec.text_encoder.type == "umt5"
        encoder = build_text_encoder(spec.text_encoder, None, device, dtype) if umt5 else None
        model = load_model(path, device=device, dtype=dtype)
        check_attention(model, attention, mla_path)
        encoder = encoder or build_text_encoder(spec.text_encoder, model.config.text_dim, device, dtype)
        return cls(model, spec, codec, encoder)

    # -- geometry and timing --------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def chunk_of_frame(self, frame: int, stream: StreamConfig) -> int:
        """The chunk whose decoded frames include video frame ``frame``."""
        c = stream.frames_per_chunk
        k = 0
        while self.codec.frames_for((k + 1) * c) <= frame:
            k += 1
        return k

    def chunk_of_time(self, seconds: float, stream: StreamConfig) -> int:
        return self.chunk_of_frame(math.floor(seconds * self.spec.video.fps + 1e-9), stream)

    def total_frames(self, seconds: float) -> int:
        return math.ceil(seconds * self.spec.video.fps - 1e-9)

    # -- generation -----------------------------------------------------------------------------
    def stream(
        self,
        prompts: Prompts,
        seconds: float | None = None,
        *,
        stream: StreamConfig | None = None,
        seed: int | None = None,
        recache: bool = False,
        out: str | Path | None = None,
        format: str | None = None,
        grid_frames: int = 16,
        progress: bool = False,
        output: Literal["numpy", "torch"] = "numpy",
    ) -> Iterator[FrameChunk]:
        """Generate ``seconds`` of video (None: forever) and yield it chunk by chunk as :class:`FrameChunk`.

        ``prompts``: one prompt or [(prompt, start_seconds), ...]; ``stream`` overrides the
        checkpoint's window; ``out`` also writes the frames (mp4 / gif streamed as they come,
        png-grid at the end; ``format`` defaults from the suffix). Closing the iterator early
        (or an exception) finishes the file with the frames produced so far. Arguments are
        checked here, before anything runs.
        """
        stream = stream or self.spec.stream
        if stream.cached_frames == 0:
            raise ValueError(
                "sink 0 + window 0 leaves the cache no frame: every chunk would be generated with no memory "
                "of the video; use a window or sink of at least 1 frame"
            )
        if seconds is not None and not (math.isfinite(seconds) and seconds > 0):
            raise ValueError(f"seconds must be positive, got {seconds}")
        if output not in ("numpy", "torch"):
            raise ValueError(f"output must be 'numpy' or 'torch', got {output!r}")
        schedule = prompt_schedule(prompts)
        total = None if seconds is None else self.total_frames(seconds)
        switches = [self.chunk_of_time(start, stream) for _, start in schedule]
        for i in range(1, len(schedule)):
            if total is not None and schedule[i][1] * self.spec.video.fps >= total:
                raise ValueError(f"prompt {schedule[i][0]!r} starts at {schedule[i][1]} s, after the video ends")
            if switches[i] == switches[i - 1]:
                raise ValueError(
                    f"prompts {schedule[i - 1][0]!r} and {schedule[i][0]!r} start in the same chunk "
                    f"(chunk {switches[i]}); a prompt switch takes effect at chunk boundaries"
                )
        writer_format = None
        if out is not None:
            check_writable(out)
            writer_format = format_for(out, format)
            if writer_format == "png-grid" and total is None:
                raise ValueError("png-grid samples frames over the whole video: give a length in seconds")
            v = self.spec.video
            if writer_format == "mp4" and (v.height % 2 or v.width % 2):
                raise ValueError(f"mp4 needs an even frame size, this model makes {v.height}x{v.width}")
        seed = random.randrange(2**31) if seed is None else int(seed)
        return self._run(
            schedule, switches, total, stream, seed, recache, out, writer_format, grid_frames, progress, output
        )

    def _embed_prompts(self, schedule: list[tuple[str, float]]) -> list[torch.Tensor]:
        features = self.text_encoder.encode([text for text, _ in schedule])
        with torch.no_grad():
            embedded = self.model.embed_text(features.to(device=self.device, dtype=self.dtype))
        return [embedded[i : i + 1] for i in range(len(schedule))]

    def _run(
        self,
        schedule: list[tuple[str, float]],
        switches: list[int],
        total: int | None,
        stream: StreamConfig,
        seed: int,
        use_recache: bool,
        out: str | Path | None,
        writer_format: str | None,
        grid_frames: int,
        progress: bool,
        output: str,
    ) -> Iterator[FrameChunk]:
        model, v, s = self.model, self.spec.video, self.codec.spatial_stride
        geometry = LatentGeometry(self.codec.latent_channels, v.height // s, v.width // s)
        num_chunks = None
        if total is not None:
            num_chunks = next(
                k for k in itertools.count(1) if self.codec.frames_for(k * stream.frames_per_chunk) >= total
            )
        embedded = self._embed_prompts(schedule)

        def prompt_of(chunk: int) -> int:
            return max(i for i, start in enumerate(switches) if start <= chunk)

        cache = model.new_cache(stream, 1, geometry.height, geometry.width, self.dtype, self.device)
        self.cache = cache
        footprint = KVFootprint.of(
            model.cache_specs(self.dtype), model.config.dim, self.dtype, stream, cache.tokens_per_frame
        )
        self.stats = stats = GenerationStats(
            seed=seed,
            fps_video=v.fps,
            cache_window_bytes=footprint.total_bytes,
            dense_window_bytes=footprint.dense_total_bytes,
        )
        generator = torch.Generator(self.device).manual_seed(seed)
        latents = stream_latents(
            model, lambda k: embedded[prompt_of(k)], geometry, stream, num_chunks, generator=generator, cache=cache
        )
        decoder = self.codec.stream_decoder()
        history: LatentHistory | None = None
        writer = None
        bar = tqdm(total=total, unit="frame", desc="generate", disable=not progress, dynamic_ncols=True)
        started = time.perf_counter()
        try:
            if out is not None:
                writer = open_writer(out, writer_format, v.fps, v.height, v.width, total, grid_frames)
            for k in itertools.count():
                if use_recache and k > 0 and k in switches and history is not None:
                    recache(model, cache, history, embedded[prompt_of(k)])
                    stats.recaches += 1
                try:
                    x0 = next(latents)
                except StopIteration:
                    break
                if use_recache:
                    history = history or LatentHistory(stream.cached_frames, x0)
                    history.update(x0, k * stream.frames_per_chunk, cache.window.slot_frame)
                with torch.no_grad():
                    frames = to_uint8(decoder.decode(x0))
                if total is not None:
                    frames = frames[: total - stats.frames]
                array = frames.cpu().numpy() if (writer is not None or output == "numpy") else None
                if writer is not None:
                    writer.write(array)
                start = stats.frames
                stats.chunks, stats.frames = k + 1, start + len(frames)
                stats.peak_cache_bytes = max(stats.peak_cache_bytes, cache.nbytes)
                stats.wall_seconds = time.perf_counter() - started
                bar.update(len(frames))
                bar.set_postfix(cache=_mib(cache.nbytes), prompt=prompt_of(k), refresh=False)
                yield FrameChunk(k, start, schedule[prompt_of(k)][0], array if output == "numpy" else frames)
        finally:
            latents.close()
            stats.wall_seconds = time.perf_counter() - started
            bar.close()
            if writer is not None:
                writer.close()


def generate(
    prompt: Prompts,
    seconds: float | None = None,
    checkpoint: str | Path | None = None,
    *,
    out: str | Path | None = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    vae: str | Path | None = None,
    text_encoder: str | Path | None = None,
    attention: str | None = None,
    mla_path: str = "auto",
    **stream_kwargs: Any,
) -> Iterator[FrameChunk]:
    """One call from prompt to frames: load ``checkpoint`` and return :meth:`Pipeline.stream`'s iterator.

    ``stream_kwargs`` go to :meth:`Pipeline.stream` (``stream``, ``seed``, ``recache``, ``format``,
    ``grid_frames``, ``progress``, ``output``). Build a :class:`Pipeline` once to generate several videos.
    """
    pipe = Pipeline.from_checkpoint(
        checkpoint,
        device=device,
        dtype=dtype,
        vae=vae,
        text_encoder=text_encoder,
        attention=attention,
        mla_path=mla_path,
    )
    return pipe.stream(prompt, seconds, out=out, **stream_kwargs)
