"""Text-to-video as a product: a checkpoint and prompts in, decoded frames streamed out.

:class:`Pipeline` ties the pieces together: the DiT (:func:`videomla.checkpoint.load_model`),
the codec and text encoder the checkpoint's metadata names (:class:`GenerationSpec`), the
streaming engine (:class:`~videomla.engine.StreamEngine`, which owns the cache and the chunk
step), a chunk-by-chunk decoder (overlapped with the next chunk on CUDA) and a streaming
writer (:mod:`videomla.video_io`). Everything it holds while streaming is fixed-size, so an
hour costs the memory of a second.

Prompt switching (as LongLive does): the cross-attention text changes at the chunk containing
the switch time. With ``recache=True`` the cache is also rebuilt then under the new prompt
(``keep_sink=True`` keeps the sink as it was, LongLive's ``global_sink``).
"""

from __future__ import annotations

import dataclasses
import inspect
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ..checkpoint import load_metadata, load_model, resolve_checkpoint
from ..codecs import PixelCodec, VideoCodec, WanVAECodec
from ..engine import ChunkDecodeQueue, DecodedChunk, EngineOptions, LatentGeometry, NonFiniteError, StreamEngine
from ..engine.engine import cpu_fast_matmul_active
from ..engine.threads import ThreadTuner, available_cores, is_tunable, set_cpu_threads
from ..lora import merge_lora
from ..model import CausalWanModel
from ..parallel import TokenShard
from ..quant import FP8Linear, set_compute
from ..schedule import even_steps
from ..text import HashTextEncoder, TextEncoder, UMT5TextEncoder
from ..tiny_vae import TinyWanCodec
from ..video_io import open_writer
from .prompts import Prompts
from .request import GenerationRequest
from .spec import CodecSpec, GenerationSpec, TextSpec
from .summary import RunSummary


@dataclass
class FrameChunk:
    """One chunk: uint8 frames [n, H, W, 3] (numpy or torch; latents [1, C, f, h, w] for
    ``output="latent"``; None for ``"none"``), where it sits, its prompt."""

    index: int
    start_frame: int
    prompt: str
    frames: np.ndarray | torch.Tensor | None


@dataclass(frozen=True)
class ChunkTiming:
    """Per-chunk times a caller can collect (``on_chunk``): what ``videomla bench`` records."""

    index: int
    frames: int
    step_ms: float  # denoising + cache write (CUDA events on CUDA)
    decode_ms: float | None
    ready_s: float  # seconds since the run started when the frames were ready


@dataclass
class VideoOutput:
    """What calling a :class:`Pipeline` returns (diffusers' ``output.frames`` convention)."""

    frames: np.ndarray | torch.Tensor  # uint8 [T, H, W, 3] ("np" / "pt") or latents [1, C, F, h, w]
    summary: RunSummary


def check_attention(model: CausalWanModel, attention: str | None, options: EngineOptions) -> None:
    """``attention`` converts nothing: it asserts what the checkpoint holds, and that the engine's
    MLA choices (path, fp8 latents) have MLA layers to apply to."""
    if attention not in (None, "dense", "mla"):
        raise ValueError(f"attention must be 'dense' or 'mla', got {attention!r}")
    mla_path = options.mla_path
    n_mla, n = len(model.mla_layers()), len(model.blocks)
    has = f"MLA attention in {n_mla} of {n} layers" if n_mla else "dense attention in all layers"
    if attention == "dense" and n_mla:
        raise ValueError(f"dense attention was asked for, but the checkpoint has {has}")
    if attention == "mla" and not n_mla:
        raise ValueError(f"MLA attention was asked for, but the checkpoint has {has}; convert or distill it first")
    if mla_path != "auto" and not n_mla:
        raise ValueError(f"an MLA path ({mla_path}) was asked for, but the checkpoint has {has}")
    if options.kv_fp8 and not n_mla:
        raise ValueError(f"--kv-fp8 stores MLA latents in fp8, but the checkpoint has {has}")


def build_codec(spec: CodecSpec, device: torch.device, dtype: torch.dtype) -> VideoCodec:
    if spec.type == "pixel":
        return PixelCodec(spec.spatial_stride, spec.scale, spec.offset)
    if spec.path is None:
        raise FileNotFoundError(
            "this checkpoint decodes with the Wan2.1 VAE: give its folder (--vae PATH, a diffusers "
            "AutoencoderKLWan folder such as Wan2.1-T2V-1.3B-Diffusers/vae, or a TAEHV taew2_1 file)"
        )
    if Path(spec.path).is_file():  # a TAEHV weight file: the tiny preview decoder
        return TinyWanCodec.from_file(spec.path, device, dtype)
    return WanVAECodec.from_folder(spec.path, device, dtype)


def build_text_encoder(spec: TextSpec, text_dim: int | None, device: torch.device, dtype: torch.dtype) -> TextEncoder:
    """``text_dim``: the model's, used by a hash encoder whose metadata leaves it out."""
    if spec.type == "hash":
        dim = spec.text_dim or text_dim
        if dim is None:
            raise ValueError("a hash text encoder needs text_dim (from its metadata or the model)")
        return HashTextEncoder(dim, spec.max_tokens or 16, spec.context or 0)
    if spec.path is None:
        raise FileNotFoundError(
            "this checkpoint reads UMT5-XXL text features: give the encoder's folder (--text-encoder PATH, "
            "e.g. Wan2.1-T2V-1.3B-Diffusers, holding text_encoder/ and tokenizer/), or --text-encoder hash "
            "for built-in hash features (benchmarks and smoke tests: the model will not follow the prompt)"
        )
    return UMT5TextEncoder.from_folder(spec.path, device, dtype, spec.max_tokens or 512)


def resolve_spec(
    checkpoint: str | Path | None, vae: str | Path | None = None, text_encoder: str | Path | None = None
) -> tuple[Path, GenerationSpec]:
    """A checkpoint's path and generation spec, with ``vae`` / ``text_encoder`` folders applied.

    Reads config.json only, so a request can be validated before any weights load.
    ``text_encoder="hash"`` swaps UMT5 for the built-in hash features at Wan's 512 tokens.
    """
    path = resolve_checkpoint(checkpoint)
    spec = GenerationSpec.from_dict(load_metadata(path))
    if vae is not None:
        if spec.codec.type != "wan-vae":
            raise ValueError(f"a VAE folder was given, but this checkpoint uses the {spec.codec.type} codec")
        spec = dataclasses.replace(spec, codec=spec.codec.with_vae_folder(vae))
    if text_encoder == "hash" and spec.text_encoder.type != "hash":
        tokens = spec.text_encoder.max_tokens or (512 if spec.text_encoder.type == "umt5" else 16)
        spec = dataclasses.replace(spec, text_encoder=TextSpec(type="hash", max_tokens=tokens))
    elif text_encoder is not None:
        if spec.text_encoder.type != "umt5":
            raise ValueError(
                f"a text encoder folder was given, but this checkpoint uses the {spec.text_encoder.type} encoder"
            )
        spec = dataclasses.replace(spec, text_encoder=dataclasses.replace(spec.text_encoder, path=str(text_encoder)))
    return path, spec


def resolve_device(device: str | torch.device | None) -> torch.device:
    """A usable device, or one line saying why not; ``None``: CUDA when available, else the CPU.

    The one check of every command's ``--device`` and of the Python API: an unknown name, CUDA
    asked for where there is none, an index past the visible GPUs, a backend that is absent.
    """
    name = device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError):
        raise ValueError(f"--device {name!r} is not a device name; use cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {dev}, but no CUDA device is available; use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"--device {dev}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif dev.type == "mps":
        if not torch.backends.mps.is_available():
            raise ValueError(f"--device {dev}: no mps device is available; use cpu or cuda")
    elif dev.type != "cpu":
        raise ValueError(f"--device {dev}: unsupported; use cpu, cuda or cuda:N")
    return dev


class Pipeline:
    """A loaded model with its codec and text encoder; :meth:`stream` runs one video (reusable).

    The engine of the last stream configuration is kept, so a second video with the same window
    reuses its cache buffers and CUDA graphs (a warm start).
    """

    def __init__(
        self,
        model: CausalWanModel,
        spec: GenerationSpec,
        codec: VideoCodec,
        text_encoder: TextEncoder,
        *,
        options: EngineOptions | None = None,
        decode_overlap: bool = True,
        cache_dtype: torch.dtype | None = None,
        offload_text_encoder: bool = False,
        shard: TokenShard | None = None,
        tune_threads: tuple[int, ...] | None = None,
    ):
        """``tune_threads``: CPU thread counts a stream chooses among chunk by chunk
        (:class:`~videomla.engine.threads.ThreadTuner`); None keeps the process's count."""
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
        for n in (1, 2, 5):
            if codec.frames_for(n) != spec.codec.frames_for(n):
                raise ValueError(f"the codec's frame layout differs from its spec ({spec.codec.type})")
        model.token_grid(cfg.patch_size[0], v.height // s, v.width // s)  # raises if patches do not tile
        self.model, self.spec, self.codec, self.text_encoder = model, spec, codec, text_encoder
        self.options = (options or EngineOptions()).resolve(self.device)
        self.decode_overlap = decode_overlap
        self.cache_dtype = cache_dtype
        self.offload_text_encoder = offload_text_encoder
        self.shard = shard  # sequence parallel: this process's token slice; rank 0 decodes and writes
        self.tune_threads = tune_threads
        self.geometry = LatentGeometry(codec.latent_channels, v.height // s, v.width // s)
        self.engine: StreamEngine | None = None  # the running (or last) stream's engine
        self.summary = RunSummary()

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
        which: str = "auto",
        kv_fp8: bool = False,
        options: EngineOptions | None = None,
        decode_overlap: bool = True,
        threads: int | None = None,
        offload_text_encoder: bool = False,
        shard: TokenShard | None = None,
        compute: str = "bf16",
        lora: str | Path | None = None,
        lora_alpha: float | None = None,
    ) -> Pipeline:
        """Load a checkpoint (None: the embedded default) with the codec and text encoder its metadata names.

        ``vae`` / ``text_encoder`` give (or override) the folders of a Wan VAE / UMT5 checkpoint;
        ``which`` picks Self-Forcing's EMA or raw generator weights; ``kv_fp8`` stores MLA
        latents in fp8. ``dtype`` defaults to bf16 on CUDA and fp32 on CPU. ``threads``: CPU
        threads (None: :func:`~videomla.engine.threads.choose_threads`'s rule). ``offload_text_encoder``
        keeps UMT5 on the CPU except while it encodes prompts (about 11 GB less accelerator memory).
        ``compute="fp8"`` runs the blocks' linear layers in e4m3 (:mod:`videomla.quant`). ``lora``: a
        LoRA file (LongLive's ``lora.pt``, peft naming) merged into the weights, scaled by
        ``lora_alpha / rank`` (default alpha = rank, LongLive's).
        """
        options = options or EngineOptions()
        if mla_path != "auto" or kv_fp8:  # the keyword spellings of the engine's own choices
            path = mla_path if mla_path != "auto" else options.mla_path
            options = dataclasses.replace(options, mla_path=path, kv_fp8=kv_fp8 or options.kv_fp8)
        path, spec = resolve_spec(checkpoint, vae, text_encoder)
        device = resolve_device(device)
        dtype = dtype or (torch.bfloat16 if device.type == "cuda" else torch.float32)
        # Codec and UMT5 first: a missing folder fails before the DiT is read.
        codec = build_codec(spec.codec, device, dtype)
        umt5 = spec.text_encoder.type == "umt5"
        encoder = build_text_encoder(spec.text_encoder, None, device, dtype) if umt5 else None
        model = load_model(path, which=which, device=device, dtype=dtype)
        if lora is not None:
            merge_lora(model, lora, lora_alpha)
        tune = None
        if device.type == "cpu":
            set_cpu_threads(threads, model)
            if is_tunable(threads, sum(p.numel() for p in model.parameters())):
                tune = (1, available_cores())
        check_attention(model, attention, options)
        set_compute(model, compute)  # "fp8": e4m3 linears in the blocks (videomla.quant)
        encoder = encoder or build_text_encoder(spec.text_encoder, model.config.text_dim, device, dtype)
        if offload_text_encoder and getattr(encoder, "encoder", None) is not None:
            encoder.encoder.to("cpu")
        return cls(
            model, spec, codec, encoder, options=options, decode_overlap=decode_overlap,
            offload_text_encoder=offload_text_encoder, shard=shard, tune_threads=tune,
        )  # fmt: skip

    from_pretrained = from_checkpoint  # the diffusers name; local folders only

    def save_pretrained(self, out_dir: str | Path) -> Path:
        """Save the model with this pipeline's generation spec (codec, text, video, stream, schedule)."""
        from ..checkpoint import save_model

        return save_model(self.model, out_dir, self.spec.to_dict())

    def __call__(
        self,
        prompt: Prompts,
        num_frames: int | None = None,
        *,
        seconds: float | None = None,
        num_inference_steps: int | None = None,
        generator: torch.Generator | None = None,
        output_type: str = "np",
        image: Any = None,
        **request: Any,
    ) -> VideoOutput:
        """Eager generation, as diffusers pipelines are called: the whole video in memory.

        ``num_frames`` or ``seconds`` sets the length; ``num_inference_steps`` n samples the
        evenly spaced list [1000, 1000 - 1000/n, ...] (4 -> Self-Forcing's 1000, 750, 500, 250);
        ``generator`` draws the noise (else ``seed=``); ``output_type`` "np", "pt" or "latent".
        ``image``: uint8 [H, W, 3], the first frame to animate (image-to-video; the frames that
        follow it are returned). Streaming (:meth:`stream`) is the constant-memory way for long videos.
        """
        if image is not None:
            if request.get("context") is not None:
                raise ValueError("give an image or a context video, not both")
            request["context"] = image
        if (num_frames is None) == (seconds is None):
            raise ValueError("give the length as num_frames or seconds (one of them)")
        if num_frames is not None:
            if not isinstance(num_frames, int) or num_frames < 1:
                raise ValueError(f"num_frames must be a positive integer, got {num_frames!r}")
            seconds = num_frames / self.spec.video.fps
        if num_inference_steps is not None:
            request["steps"] = even_steps(num_inference_steps, "num_inference_steps")
        outputs = {"np": "numpy", "pt": "torch", "latent": "latent"}
        if output_type not in outputs:
            raise ValueError(f"output_type must be 'np', 'pt' or 'latent', got {output_type!r}")
        req = self.request(prompt, seconds, output=outputs[output_type], **request)
        chunks = [c.frames for c in self._run(req, None, False, generator)]
        if output_type == "np":
            frames: np.ndarray | torch.Tensor = np.concatenate(chunks)
        else:
            frames = torch.cat(chunks, dim=2 if output_type == "latent" else 0)
        return VideoOutput(frames, self.summary)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    # -- generation -----------------------------------------------------------------------------
    def request(self, prompts: Prompts, seconds: float | None = None, **kwargs: Any) -> GenerationRequest:
        """A validated :class:`GenerationRequest` for this pipeline (see :meth:`GenerationRequest.build`)."""
        return GenerationRequest.build(self.spec, prompts, seconds, **kwargs)

    def stream(
        self, prompts: Prompts, seconds: float | None = None, *, progress: bool = False, **kwargs: Any
    ) -> Iterator[FrameChunk]:
        """Generate ``seconds`` of video (None: forever) and yield it chunk by chunk as :class:`FrameChunk`.

        Keyword arguments are those of :meth:`GenerationRequest.build` (``stream``, ``sink``,
        ``window``, ``rope``, ``steps``, ``shift``, ``solver``, ``seed``, ``recache``, ``keep_sink``, ``out``,
        ``format``, ``grid_frames``, ``output``); they are checked here, before anything runs.
        Closing the iterator early (or an exception) finishes the file with the frames so far.
        """
        return self.run(self.request(prompts, seconds, **kwargs), progress=progress)

    def engine_for(self, request: GenerationRequest) -> StreamEngine:
        """The engine for ``request``'s window and sampler, reused (reset) when they match the last one."""
        e = self.engine
        if e is None or e.stream != request.stream or e.schedule != request.schedule:
            self.engine = e = None  # free the old cache before allocating the new one
            e = StreamEngine(
                self.model,
                request.stream,
                self.geometry,
                schedule=request.schedule,
                cache_dtype=self.cache_dtype,
                options=self.options,
                shard=self.shard,
            )
        e.reset()
        e.keep_history = request.recache  # the clean latents of the cached frames, for rebuilding
        self.engine = e
        return e

    def run(
        self,
        request: GenerationRequest,
        on_chunk: Callable[[ChunkTiming], None] | None = None,
        progress: bool = False,
    ) -> Iterator[FrameChunk]:
        """Stream ``request`` (from :meth:`request`); ``on_chunk`` sees each chunk's timings."""
        if request.spec.video != self.spec.video or request.spec.codec.type != self.spec.codec.type:
            raise ValueError("the request was built for another checkpoint's spec; build it with Pipeline.request")
        return self._run(request, on_chunk, progress, None)

    def _embed_prompts(self, request: GenerationRequest) -> list[torch.Tensor]:
        encoder = getattr(self.text_encoder, "encoder", None)  # UMT5: the one large module besides the DiT
        if self.offload_text_encoder and encoder is not None:
            encoder.to(self.device)
        try:
            features = self.text_encoder.encode([text for text, _ in request.prompts])
        finally:
            if self.offload_text_encoder and encoder is not None:
                encoder.to("cpu")  # off the accelerator while the video streams
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
        with torch.no_grad():
            embedded = self.model.embed_text(features.to(device=self.device, dtype=self.dtype))
        return [embedded[i : i + 1] for i in range(len(request.prompts))]

    def _prefill(self, engine: StreamEngine, queue, frames: torch.Tensor, text: torch.Tensor) -> torch.Tensor | None:
        """Encode the context frames, commit their whole chunks to the cache and warm the decoder's
        causal state; returns the latents of a last, partial chunk (the first new chunk's given frames)."""
        video = frames.to(self.device).permute(3, 0, 1, 2)[None].to(self.dtype) / 127.5 - 1  # [1, 3, T, H, W]
        with torch.no_grad():
            latents = self.codec.encode(video).to(self.dtype)
        whole = latents.shape[2] - latents.shape[2] % engine.stream.frames_per_chunk
        if whole:
            engine.prefill(latents[:, :, :whole], text)
        if queue is not None:
            queue.decoder.decode(latents)  # the decoder continues from the context's last frames
        return latents[:, :, whole:] if whole < latents.shape[2] else None

    def _run(
        self,
        request: GenerationRequest,
        on_chunk: Callable[[ChunkTiming], None] | None,
        progress: bool,
        generator: torch.Generator | None,
    ) -> Iterator[FrameChunk]:
        v = self.spec.video
        started = time.perf_counter()
        embedded = self._embed_prompts(request)
        engine = self.engine_for(request)
        footprint = engine.footprint()
        cuda = self.device.type == "cuda"
        self.summary = summary = RunSummary(
            seed=request.seed,
            fps_video=v.fps,
            cache_window_bytes=footprint.total_bytes,
            dense_window_bytes=footprint.dense_total_bytes,
            run={
                **request.describe(),
                "device": str(self.device),
                "dtype": str(self.dtype).removeprefix("torch."),
                "compile": self.options.compile,
                "compute": "fp8" if any(isinstance(m, FP8Linear) for m in self.model.modules()) else "bf16",
                "cuda_graphs": self.options.cuda_graphs,
                "mla_path": self.options.mla_path,
                "kv_fp8": self.options.kv_fp8,
                "cpu_fast_matmul": cpu_fast_matmul_active(self.options, self.device, self.dtype),
                "decoder": getattr(self.codec, "name", type(self.codec).__name__),
                "decode_overlap": self.decode_overlap and cuda,
                "threads": torch.get_num_threads() if not cuda else None,
            },
        )
        generator = generator or torch.Generator(self.device).manual_seed(request.seed)
        tuner = None if self.tune_threads is None or cuda else ThreadTuner(self.tune_threads)
        threads_before = torch.get_num_threads()  # the caller's, between chunks and after the stream
        follower = self.shard is not None and self.shard.rank != 0  # rank 0 decodes and writes
        if follower:
            request = dataclasses.replace(request, out=None, output="latent")
        decode = request.output != "latent" or request.out is not None
        queue = ChunkDecodeQueue(self.codec.stream_decoder(), self.device, self.decode_overlap) if decode else None
        pipelined = queue is not None and queue.side is not None  # decode k while k+1 denoises
        writer = None
        bar = tqdm(total=request.total_frames, unit="frame", desc="generate", disable=not progress)
        pending: list[tuple[int, Any, Any]] = []

        def finish(k: int, job, step_time) -> FrameChunk:
            job.wait()
            engine.check_finite(job.finite, k)
            room = None if request.total_frames is None else request.total_frames - summary.frames
            if job.frames is None:  # latents only: count the frames a decoder would make
                frames = None
                made = request.frames_in_chunk(k)
                count = made if room is None else min(made, room)
            else:
                frames = job.frames if room is None else job.frames[:room]
                count = len(frames)
            array = frames.numpy() if frames is not None and (writer is not None or request.output == "numpy") else None
            if writer is not None:
                writer.write(array)
            step_s = step_time()
            start = summary.frames
            summary.chunks, summary.frames = k + 1, start + count
            summary.step_seconds += step_s
            summary.decode_seconds += (job.decode_ms or 0.0) / 1e3
            summary.peak_cache_bytes = max(summary.peak_cache_bytes, engine.cache.nbytes)
            now = time.perf_counter() - started
            summary.add_chunk(count, now - summary.wall_seconds, step_s)
            summary.wall_seconds = now
            if summary.first_chunk_seconds is None:
                summary.first_chunk_seconds = summary.wall_seconds
            if on_chunk is not None:
                on_chunk(ChunkTiming(k, count, 1e3 * step_s, job.decode_ms, summary.wall_seconds))
            bar.update(count)
            prompt = request.prompt_at(k)
            bar.set_postfix(cache=f"{engine.cache.nbytes / 2**20:.2f}MiB", prompt=prompt, refresh=False)
            out = {"numpy": array, "torch": frames, "latent": job.latents, "none": None}[request.output]
            return FrameChunk(k, start, request.prompts[prompt][0], out)

        try:
            if request.out is not None:
                writer = open_writer(
                    request.out, request.format, v.fps, v.height, v.width, request.total_frames,
                    request.grid_frames, crf=request.crf, pix_fmt=request.pix_fmt,
                )  # fmt: skip
            given = None if request.context is None else self._prefill(engine, queue, request.context, embedded[0])
            k = 0
            while request.num_chunks is None or k < request.num_chunks:
                prompt = request.prompt_at(k)
                if request.recache and k > 0 and k in request.switch_chunks:
                    engine.recache(embedded[prompt], request.keep_sink)
                    summary.recaches += 1
                if tuner is not None:
                    torch.set_num_threads(tuner.next())
                timer = _StepTimer(cuda)
                x0 = engine.step(embedded[prompt], generator, given)
                timer.stop()
                if tuner is not None:
                    tuner.record(timer.seconds())
                    torch.set_num_threads(threads_before)
                if given is not None:  # the given frames were decoded with the context: not again
                    x0, given = x0[:, :, given.shape[2] :], None
                job = queue.submit(x0) if queue is not None else DecodedChunk(None, torch.isfinite(x0).all())
                job.latents = x0 if request.output == "latent" else None
                if pipelined and k > 0:  # the first chunk is never held back: time to first frame
                    pending.append((k, job, timer.seconds))
                    if len(pending) > 1:
                        yield finish(*pending.pop(0))
                else:
                    yield finish(k, job, timer.seconds)
                k += 1
            while pending:
                yield finish(*pending.pop(0))
        except GeneratorExit:  # closed early: the chunk still in flight goes to the file too
            while pending and writer is not None:
                finish(*pending.pop(0))
            raise
        except NonFiniteError:  # the frames before the bad chunk are good video: keep them
            if writer is not None:
                writer.close(commit=True)
            raise
        finally:
            summary.wall_seconds = time.perf_counter() - started
            if tuner is not None:  # the count most chunks ran with, and how many ran with each
                summary.run["threads"] = max(tuner.used, key=tuner.used.get, default=torch.get_num_threads())
                summary.run["thread_chunks"] = {str(t): n for t, n in sorted(tuner.used.items())}
                torch.set_num_threads(threads_before)
            bar.close()
            if writer is not None:
                writer.close()


class _StepTimer:
    """Wall time on CPU; device time from CUDA events on CUDA (read once the chunk is done)."""

    def __init__(self, cuda: bool):
        if cuda:
            self._start = torch.cuda.Event(enable_timing=True)
            self._end = torch.cuda.Event(enable_timing=True)
            self._start.record()
        else:
            self._t0 = time.perf_counter()
        self.cuda = cuda

    def stop(self) -> None:
        if self.cuda:
            self._end.record()
        else:
            self._elapsed = time.perf_counter() - self._t0

    def seconds(self) -> float:
        if self.cuda:
            self._end.synchronize()
            return self._start.elapsed_time(self._end) / 1e3
        return self._elapsed


def generate(
    prompt: Prompts, seconds: float | None = None, checkpoint: str | Path | None = None, **keywords: Any
) -> Iterator[FrameChunk]:
    """One call from prompt to frames: load ``checkpoint`` and return :meth:`Pipeline.stream`'s iterator.

    ``keywords`` are told apart by name: :meth:`Pipeline.from_checkpoint`'s keyword arguments
    (``device``, ``dtype``, ``vae``, ``text_encoder``, ``attention``, ``mla_path``, ``which``,
    ``kv_fp8``, ``options``, ``compute``, ``lora`` ...) load the model; the rest are
    :meth:`GenerationRequest.build`'s (``out``, ``seed``, ``stream``, ``steps`` ...) and are validated,
    with the output path and format, before the model loads. Build a :class:`Pipeline` once to
    generate several videos. Nothing runs until the iterator is iterated; one dropped unused
    (``videomla.generate(..., out="a.mp4")`` alone) warns that nothing was written.
    """
    load = {p.name: keywords.pop(p.name) for p in _LOAD_KEYWORDS if p.name in keywords}
    _, spec = resolve_spec(checkpoint, load.get("vae"), load.get("text_encoder"))
    checked = GenerationRequest.build(spec, prompt, seconds, **keywords)
    pipe = Pipeline.from_checkpoint(checkpoint, **load)
    return LazyStream(pipe.run(dataclasses.replace(checked, spec=pipe.spec)), checked.out)


def _keywords(function: Callable[..., Any], skip: int) -> list[inspect.Parameter]:
    return list(inspect.signature(function).parameters.values())[skip:]


_LOAD_KEYWORDS = _keywords(Pipeline.from_checkpoint, 1)  # what generate() forwards: all but `checkpoint`
# help(generate) and editors show every keyword it takes: its own three, then both callees' (not copied by hand).
_SIGNATURE = [*_keywords(generate, 0)[:-1], *_LOAD_KEYWORDS, *_keywords(GenerationRequest.build, 3)]
generate.__signature__ = inspect.signature(generate).replace(parameters=_SIGNATURE)  # type: ignore[attr-defined]


class LazyStream(Iterator[FrameChunk]):
    """The iterator :func:`generate` returns: warns if it is dropped without ever being iterated."""

    def __init__(self, chunks: Iterator[FrameChunk], out: Path | None):
        self._chunks, self._out, self._started = chunks, out, False

    def __next__(self) -> FrameChunk:
        self._started = True
        return next(self._chunks)

    def close(self) -> None:
        self._started = True
        self._chunks.close()  # type: ignore[attr-defined]

    def __del__(self) -> None:
        if not self._started:
            where = f"; {self._out} was not written" if self._out is not None else ""
            warnings.warn(
                f"videomla.generate() returned an iterator that was never iterated: nothing was generated{where}. "
                "Iterate it (for chunk in videomla.generate(...)), or call a Pipeline for the whole video at once.",
                RuntimeWarning,
                stacklevel=2,
            )
