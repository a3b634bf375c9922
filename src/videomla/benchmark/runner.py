"""Run the benchmark: every variant streams through the product path, timed chunk by chunk.

Per variant (batch 1) a :class:`~videomla.pipeline.Pipeline` is built around the random-weight
model, a random-weight Wan VAE and hash text features at Wan's 512 tokens, with the same
engine options ``videomla generate`` uses (fused kernels and CUDA graphs on CUDA, decode of
chunk k overlapped with chunk k+1): a warm-up video (compiles kernels, captures graphs,
autotunes convolutions), then a timed video of a 5 s clip plus steady-state chunks, through
:meth:`Pipeline.run` itself. The same engine's cache is then carried to 60 s and 5 min of
video where a few more chunks are timed and their peak memory read. Batched streams and the
concurrency limit follow for the variants asked.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import math
from collections.abc import Callable
from contextlib import nullcontext

import torch
from tqdm import tqdm

from ..attention.common import fast_kernels
from ..cache import KVFootprint, StreamingCache
from ..codecs import WanVAECodec
from ..config import ModelConfig, preset
from ..engine import EngineOptions, LatentGeometry, StreamEngine
from ..model import CausalWanModel
from ..parallel import TokenShard
from ..pipeline import ChunkTiming, CodecSpec, GenerationSpec, Pipeline, TextSpec, VideoSpec, resolve_device
from ..quant import set_compute
from ..text import HashTextEncoder
from ..tiny_vae import TinyWanCodec
from .flops import ForwardShape, forward_flops
from .measure import Clock, Memory, advance_cache, matmul_peak, median, percentile
from .variants import Variant

VIDEO_FPS = 16
TEMPORAL_COMPRESSION = 4  # Wan-VAE: latent frame 0 -> 1 video frame, every later one -> 4
FORWARDS_PER_CHUNK = 5  # 4 denoising steps + the clean pass that writes the cache
GIB = 1 << 30


def latent_frames(seconds: float) -> int:
    """Latent frames of a video of ``seconds`` at 16 fps: 5 s = 81 frames = 21 latent frames."""
    return 1 + round(seconds * VIDEO_FPS) // TEMPORAL_COMPRESSION


@dataclasses.dataclass(frozen=True)
class BenchSetup:
    """Everything a run holds fixed across variants."""

    preset: str = "wan2.1-t2v-1.3b"
    device: str = "cuda"
    dtype: torch.dtype = torch.bfloat16
    height: int = 480
    width: int = 832
    vae_stride: int = 8
    text_tokens: int = 512
    clip_seconds: float = 5.0
    steady_chunks: int = 5
    horizons: tuple[float, ...] = (5.0, 60.0, 300.0)
    horizon_chunks: int = 2
    batch_sizes: tuple[int, ...] = (4,)
    batched_chunks: int = 2
    batched_variants: tuple[str, ...] = ("sf21", "dense-s1w6", "mla-auto")
    concurrency_variants: tuple[str, ...] = ("dense-s1w6", "mla-auto")
    concurrency_probe: int = 8
    concurrency_margin: int = GIB
    full_stream: str | None = None  # this variant streams every chunk up to full_stream_seconds
    full_stream_seconds: float = 60.0
    vae: bool = True
    decoder: str = "wan-vae"  # what the VAE timing decodes with: the Wan2.1 VAE, or "taehv" (the tiny decoder)
    stream_slicing: bool = True
    compile_backend: str = "inductor"  # torch.compile backend of the fused helpers
    seed: int = 0
    vae_config: dict = dataclasses.field(default_factory=dict)

    @property
    def torch_device(self) -> torch.device:
        """``device``, checked by the library's one device check (clear errors for bad names / no CUDA)."""
        return resolve_device(self.device)

    @property
    def latent_size(self) -> tuple[int, int]:
        if self.height % self.vae_stride or self.width % self.vae_stride:
            raise ValueError(f"{self.height}x{self.width} is not divisible by the VAE stride {self.vae_stride}")
        return self.height // self.vae_stride, self.width // self.vae_stride

    def record(self) -> dict:
        """The fixed conditions, as the report states them."""
        h, w = self.latent_size
        cfg = preset(self.preset)
        tpf = (h // cfg.patch_size[1]) * (w // cfg.patch_size[2])
        fields = {k: v for k, v in dataclasses.asdict(self).items() if k not in ("dtype", "vae_config")}
        return {
            **fields,
            "dtype": str(self.dtype).removeprefix("torch."),
            "latent_height": h,
            "latent_width": w,
            "tokens_per_frame": tpf,
            "frames_per_chunk_latent": 3,
            "forwards_per_chunk": FORWARDS_PER_CHUNK,
            "video_fps": VIDEO_FPS,
            "clip_latent_frames": latent_frames(self.clip_seconds),
            "vae_config": self.vae_config
            or (
                "TAEHV's taew2_1 decoder"
                if self.decoder == "taehv"
                else "diffusers AutoencoderKLWan defaults (Wan2.1 VAE)"
            ),
        }

    def model_config(self, attention: str) -> ModelConfig:
        cfg = preset(self.preset)
        return cfg.with_mla() if attention == "mla" else cfg


class LatentsOnly:
    """The Wan-VAE's geometry without its weights: the codec of a ``--no-vae`` run (latents out)."""

    spatial_stride = 8

    def __init__(self, latent_channels: int):
        self.latent_channels = latent_channels

    def frames_for(self, latent_frames: int) -> int:
        return CodecSpec("wan-vae").frames_for(latent_frames)

    def stream_decoder(self):
        raise RuntimeError("this benchmark runs without a VAE (--no-vae): latents only")


class Bench:
    """One benchmark run: holds the device, the measured matmul ceiling, the VAE and the clock."""

    def __init__(self, setup: BenchSetup, progress: bool = True, shard: TokenShard | None = None):
        self.setup = setup
        self.shard = shard  # sequence parallel: every variant's stream split over the processes
        self.device = setup.torch_device
        self.clock = Clock(self.device)
        self.memory = Memory(self.device)
        self.progress = progress
        torch.backends.cudnn.benchmark = True  # the VAE's 3D convolutions: autotuned once in warm-up
        self.peak = matmul_peak(self.device)
        if setup.vae:
            if setup.decoder == "taehv":
                self.codec = TinyWanCodec.random(self.device, setup.dtype, **setup.vae_config)
            else:
                try:
                    self.codec = WanVAECodec.random(self.device, setup.dtype, **setup.vae_config)
                except ImportError as err:  # optional extra
                    raise ValueError(
                        "VAE timing needs diffusers (pip install 'videomla[wan]'), or pass --no-vae"
                    ) from err
        else:
            self.codec = None
        self.generator = torch.Generator(self.device).manual_seed(setup.seed)
        self.vae_layouts = None if self.codec is None else {"channels_last": self.codec.channels_last}

    # -- helpers ---------------------------------------------------------------------------------
    def text(self, model: CausalWanModel, batch: int) -> torch.Tensor:
        cfg = model.config
        raw = torch.randn(batch, self.setup.text_tokens, cfg.text_dim, device=self.device, dtype=self.setup.dtype)
        with torch.no_grad():
            return model.embed_text(raw)

    def geometry(self, model: CausalWanModel) -> LatentGeometry:
        h, w = self.setup.latent_size
        return LatentGeometry(model.config.in_channels, h, w)

    def new_cache(self, model: CausalWanModel, variant: Variant, batch: int) -> StreamingCache:
        h, w = self.setup.latent_size
        return model.new_cache(
            variant.stream, batch, h, w, self.setup.dtype, self.device,
            latent_dtype=variant.kv_dtype, mla_path=self.options(variant).mla_path,
        )  # fmt: skip

    def options(self, variant: Variant) -> EngineOptions:
        """What ``videomla generate`` runs on this device (``fast=False``: the reference kernels)."""
        cuda = self.device.type == "cuda"
        fast = variant.fast and cuda
        mla_path = variant.mla_path if variant.attention == "mla" else "auto"
        return EngineOptions(fast, fast, self.setup.compile_backend, mla_path=mla_path, kv_fp8=variant.kv_fp8)

    def pipeline(self, model: CausalWanModel, variant: Variant) -> Pipeline:
        s = self.setup
        spec = GenerationSpec(
            codec=CodecSpec("wan-vae"),
            text_encoder=TextSpec("hash", max_tokens=s.text_tokens),
            video=VideoSpec(s.height, s.width, VIDEO_FPS),
            stream=variant.stream,
        )
        codec = self.codec or LatentsOnly(model.config.in_channels)
        text = HashTextEncoder(model.config.text_dim, s.text_tokens)
        return Pipeline(model, spec, codec, text, options=self.options(variant), shard=self.shard)

    def configure(self, model: CausalWanModel, variant: Variant) -> None:
        model.set_stream_slicing(self.setup.stream_slicing)

    def kernels(self, variant: Variant):
        return fast_kernels(self.setup.compile_backend) if variant.fast else nullcontext()

    @staticmethod
    def fill_frame(variant: Variant) -> int:
        """First frame of the first chunk that sees a full cache (steady state)."""
        n = variant.stream.frames_per_chunk
        return n * math.ceil(variant.stream.cached_frames / n)

    # -- the timed stream -----------------------------------------------------------------------
    def timed_video(self, pipe: Pipeline, variant: Variant, chunks: int, decode: bool = True) -> dict:
        """One video of ``chunks`` chunks through :meth:`Pipeline.run`; its per-chunk timings.

        ``decode=False`` asks for latents only, so the chunk steps are timed alone (with decode
        overlapped on CUDA the two share the GPU, and the step times include that contention)."""
        n = variant.stream.frames_per_chunk
        seconds = pipe.spec.codec.frames_for(chunks * n) / VIDEO_FPS
        decode = decode and self.codec is not None
        output = "none" if decode else "latent"
        request = pipe.request("a benchmark prompt", seconds, seed=self.setup.seed, output=output)
        if request.num_chunks != chunks:
            raise RuntimeError(f"a {seconds:g} s request makes {request.num_chunks} chunks, not {chunks}")
        timings: list[ChunkTiming] = []
        for _ in pipe.run(request, on_chunk=timings.append):
            pass
        finite = all(
            torch.isfinite(b.float()).all() for layer in pipe.engine.cache.layers for b in layer.buffers.values()
        )  # fmt: skip
        return {
            "transformer_ms": [t.step_ms for t in timings],
            "vae_ms": [t.decode_ms for t in timings] if decode else None,
            "ready_s": [t.ready_s for t in timings],
            "video_frames": [t.frames for t in timings],
            "finite": finite,
        }

    def timed_steps(self, engine: StreamEngine, text: torch.Tensor, chunks: int, decoder=None) -> dict:
        """``chunks`` engine steps timed with device events (``decoder``: each chunk also decoded
        after its step, so peak memory counts the VAE's activations): horizons and batches."""
        spans = []
        for _ in range(chunks):
            start = self.clock.mark()
            x0 = engine.step(text, self.generator)
            spans.append((start, self.clock.mark()))
            if decoder is not None:
                with torch.no_grad():
                    decoder.decode(x0)
        self.clock.sync()
        return {
            "transformer_ms": [self.clock.ms(a, b) for a, b in spans],
            "finite": bool(torch.isfinite(x0).all()),
        }

    def variant_flops(self, model: CausalWanModel, variant: Variant, batch: int, key_frames: int) -> dict:
        h, w = self.setup.latent_size
        tpf = model.tokens_per_frame(h, w)
        n = variant.stream.frames_per_chunk
        shape = ForwardShape(batch, n, tpf, key_frames * tpf, self.setup.text_tokens)
        return forward_flops(model.config, shape, variant.resolved_path(model.config, n * tpf))

    # -- one variant ------------------------------------------------------------------------------
    def run_variant(self, model: CausalWanModel, variant: Variant) -> dict:
        s = self.setup
        self.configure(model, variant)
        h, w = s.latent_size
        tpf = model.tokens_per_frame(h, w)
        n = variant.stream.frames_per_chunk
        specs = model.cache_specs(s.dtype, variant.kv_dtype)
        footprint = KVFootprint.of(specs, model.config.dim, s.dtype, variant.stream, tpf)
        clip_chunks = math.ceil(latent_frames(s.clip_seconds) / n)
        fill_chunks = self.fill_frame(variant) // n
        chunks = max(clip_chunks, fill_chunks) + s.steady_chunks
        options = self.options(variant)
        out: dict = {
            "name": variant.name,
            "description": variant.description,
            "attention": variant.attention,
            "window": {
                "sink_frames": variant.stream.sink_frames,
                "window_frames": variant.stream.window_frames,
                "frames_per_chunk": n,
                "attended_frames": variant.stream.attended_frames,
                "rope_mode": variant.stream.rope_mode,
                "label": variant.window_label,
            },
            "mla_path": variant.resolved_path(model.config, n * tpf),
            "kv_fp8": variant.kv_fp8,
            "compute": variant.compute,
            "fast_kernels": bool(options.compile),
            "cuda_graphs": bool(options.cuda_graphs),
            "decode_overlap": self.codec is not None and self.device.type == "cuda",
            "kv_bytes_per_token": footprint.bytes_per_token,
            "kv_bytes_per_token_per_layer": footprint.bytes_per_token_per_layer[0],
            "kv_numbers_per_token_per_layer": footprint.numbers_per_token_per_layer[0],
            "cache_window_bytes": footprint.total_bytes,
        }
        steady_flops = self.variant_flops(model, variant, 1, variant.stream.attended_frames)
        first_flops = self.variant_flops(model, variant, 1, n)
        out["flops"] = {
            "per_chunk": FORWARDS_PER_CHUNK * steady_flops["total"],
            "first_chunk": FORWARDS_PER_CHUNK * first_flops["total"],
            "per_forward": steady_flops,
        }
        text = self.text(model, 1)
        out["fast_vs_reference_rel_err"] = self.fast_error(model, variant, text) if variant.fast else None
        self.memory.free()
        pipe = self.pipeline(model, variant)
        # warm-up: one video through every cache fill level (kernels compile per shape, each fill
        # level's forward is captured as a CUDA graph), VAE autotuning
        self.timed_video(pipe, variant, fill_chunks + 2)
        # the timed video: a new video in the same engine (cache emptied, buffers and graphs kept)
        alone = self.timed_video(pipe, variant, chunks, decode=False) if self.codec is not None else None
        self.memory.reset_peak()
        run = self.timed_video(pipe, variant, chunks)
        if alone is not None:  # transformer FPS from the steps alone; wall FPS from the decoded video
            run["transformer_ms_with_decode"] = run["transformer_ms"]
            run["transformer_ms"] = alone["transformer_ms"]
        engine = pipe.engine
        assert engine is not None
        out["cache_allocated_bytes"] = engine.cache.nbytes
        out["stream"] = self.summarise(run, out["flops"]["per_chunk"], clip_chunks, fill_chunks, self.peak["tflops"])
        cache = engine.cache
        memory = {f"{s.clip_seconds:g}s": self.memory_point(cache, "streamed", 0, chunks * n, self.memory.peak())}
        for seconds in s.horizons:
            if seconds <= s.clip_seconds:
                continue
            memory[f"{seconds:g}s"] = self.horizon(engine, variant, text, seconds, pipe)
        out["memory"] = memory
        out["memory_flat"] = self.is_flat(memory)
        graphs = engine.graphs
        out["graph_captures"] = graphs.captures if graphs is not None else 0
        out["graph_error"] = graphs.error if graphs is not None else None
        del pipe, engine, cache
        self.memory.free()
        out["batched"] = [self.batched(model, variant, b) for b in s.batch_sizes if variant.name in s.batched_variants]
        return out

    @staticmethod
    def summarise(run: dict, flops_per_chunk: int, clip_chunks: int, fill: int, peak_tflops: float | None) -> dict:
        """FPS, latency and utilisation from one timed video's per-chunk times.

        ``transformer_ms``: each chunk's step (device time); ``ready_s``: when each chunk's frames
        were ready, from the start of the run (wall time, decode included, as a viewer sees it).
        """
        t, v, ready = run["transformer_ms"], run["vae_ms"], run["ready_s"]
        frames = run["video_frames"]
        steady = list(range(fill, len(t)))
        steady_ms = median([t[i] for i in steady])
        out = {
            "chunks": len(t),
            "steady_chunk_indices": [steady[0], steady[-1]],
            "transformer_ms": t,
            "vae_ms": v,
            "ready_s": ready,
            "transformer_ms_with_decode": run.get("transformer_ms_with_decode"),  # steps while decode overlapped
            "video_frames": frames,
            "steady_chunk_ms": steady_ms,
            "steady_chunk_ms_p90": percentile([t[i] for i in steady], 0.9),
            "forward_ms": steady_ms / FORWARDS_PER_CHUNK,
            "fps_transformer": frames[-1] / steady_ms * 1e3,
            "clip_fps_transformer": sum(frames[:clip_chunks]) / sum(t[:clip_chunks]) * 1e3,
            "ttfc_ms": t[0],
            "output_finite": run["finite"],
            "achieved_tflops": flops_per_chunk / (steady_ms * 1e-3) / 1e12,
        }
        out["fraction_of_matmul_peak"] = None if peak_tflops is None else out["achieved_tflops"] / peak_tflops
        out["flop_floor_ms"] = None if peak_tflops is None else flops_per_chunk / (peak_tflops * 1e12) * 1e3
        out["flop_floor_fps"] = None if peak_tflops is None else frames[-1] / out["flop_floor_ms"] * 1e3
        gaps = [1e3 * (b - a) for a, b in itertools.pairwise(ready)]  # gaps[i]: chunk i+1's wall time
        steady_gaps = [gaps[i - 1] for i in steady if i >= 1]
        out["steady_chunk_wall_ms"] = median(steady_gaps) if steady_gaps else None
        out["fps_wall"] = frames[-1] / out["steady_chunk_wall_ms"] * 1e3 if steady_gaps else None
        out["clip_fps_wall"] = sum(frames[:clip_chunks]) / ready[clip_chunks - 1]
        out["ttfc_wall_ms"] = 1e3 * ready[0]
        if v is not None:
            out["vae_chunk_ms"] = median([v[i] for i in steady])
            out["fps_with_vae"] = out["fps_wall"]
            out["clip_fps_with_vae"] = out["clip_fps_wall"]
            out["ttfc_with_vae_ms"] = out["ttfc_wall_ms"]
        else:
            out.update(vae_chunk_ms=None, fps_with_vae=None, clip_fps_with_vae=None, ttfc_with_vae_ms=None)
        return out

    # -- memory over long horizons ------------------------------------------------------------------
    def memory_point(self, cache: StreamingCache, method: str, first: int, end: int, peak: int | None) -> dict:
        return {
            "method": method,
            "latent_frames": [first, end],
            "peak_allocated": peak,
            "reserved": self.memory.reserved(),
            "segments": self.memory.segments(),
            "cache_allocated_bytes": cache.nbytes,
        }

    def horizon(self, engine: StreamEngine, variant: Variant, text: torch.Tensor, seconds: float, pipe) -> dict:
        """Carry the engine's stream to ``seconds`` of video, then time ``horizon_chunks`` chunks there."""
        s = self.setup
        n = variant.stream.frames_per_chunk
        cache = engine.cache
        last = n * ((latent_frames(seconds) - 1) // n)  # first frame of the chunk holding the last frame
        first = max(cache.window.next_frame, last - n * (s.horizon_chunks - 1))
        self.memory.reset_peak()
        if variant.name == s.full_stream and seconds <= s.full_stream_seconds:
            method = "streamed"
            gap = (first - cache.window.next_frame) // n
            for _ in tqdm(range(gap), disable=not self.progress):
                engine.step(text, self.generator)
        else:
            method = "fast-forwarded"
            advance_cache(cache, first)
        decoder = pipe.codec.stream_decoder() if self.codec is not None else None
        run = self.timed_steps(engine, text, s.horizon_chunks, decoder)
        point = self.memory_point(cache, method, first, cache.window.next_frame, self.memory.peak())
        point["chunk_ms"] = run["transformer_ms"]
        point["output_finite"] = run["finite"]
        return point

    @staticmethod
    def is_flat(memory: dict) -> bool | None:
        """Peak allocated bytes within 1% at every horizon. Reserved bytes are reported beside it but
        not judged: the caching allocator may keep one more segment without the stream needing it."""
        peaks = [p["peak_allocated"] for p in memory.values()]
        if any(p is None for p in peaks):
            return None
        return max(peaks) <= 1.01 * min(peaks)

    # -- batched streams and concurrency ------------------------------------------------------------
    def steady_cache(self, model, variant, batch: int) -> StreamingCache:
        cache = self.new_cache(model, variant, batch)
        advance_cache(cache, self.fill_frame(variant))
        return cache

    def batched(self, model, variant, batch: int) -> dict:
        """Aggregate throughput of ``batch`` streams advanced together by one engine, at steady state."""
        text = self.text(model, batch)
        engine = StreamEngine(
            model, variant.stream, self.geometry(model), batch=batch, cache_dtype=self.setup.dtype,
            options=self.options(variant), shard=self.shard,
        )  # fmt: skip
        advance_cache(engine.cache, self.fill_frame(variant))
        self.timed_steps(engine, text, 1)  # compiles / captures for this batch size
        self.memory.reset_peak()
        run = self.timed_steps(engine, text, self.setup.batched_chunks)
        ms = median(run["transformer_ms"])
        frames = TEMPORAL_COMPRESSION * variant.stream.frames_per_chunk  # steady chunks are never the first
        result = {
            "batch": batch,
            "steady_chunk_ms": ms,
            "fps_aggregate": batch * frames / ms * 1e3,
            "fps_per_stream": frames / ms * 1e3,
            "peak_allocated": self.memory.peak(),
        }
        del engine, text
        self.memory.free()
        return result

    def forward_peak(self, model, variant, batch: int) -> int:
        """Peak allocated bytes while ``batch`` streams at steady state run one forward."""
        self.memory.free()
        self.memory.reset_peak()
        text = self.text(model, batch)
        cache = self.steady_cache(model, variant, batch)
        h, w = self.setup.latent_size
        shape = (batch, model.config.in_channels, variant.stream.frames_per_chunk, h, w)
        x = torch.randn(shape, device=self.device, dtype=self.setup.dtype, generator=self.generator)
        t = torch.full((batch,), 500.0, device=self.device, dtype=torch.float64)
        with self.kernels(variant), torch.no_grad():
            model.forward_chunk(x, t, text, cache)
        peak = self.memory.peak()
        del text, cache, x
        self.memory.free()
        return peak

    def concurrency(self, model: CausalWanModel, variant: Variant) -> dict | None:
        """Most streams that fit: a line through measured peaks at 1 and ``probe`` streams, then verified."""
        if not self.memory.cuda or self.shard is not None:  # per-process memory: not a stream count
            return None
        self.configure(model, variant)
        probe = self.setup.concurrency_probe
        p1 = self.forward_peak(model, variant, 1)
        pk = self.forward_peak(model, variant, probe)
        per_stream = (pk - p1) / (probe - 1)
        static = p1 - per_stream
        capacity = self.memory.capacity(self.setup.concurrency_margin)
        best = math.floor((capacity - static) / per_stream)
        result = {
            "variant": variant.name,
            "probe_batches": [1, probe],
            "probe_peaks": [p1, pk],
            "per_stream_bytes": per_stream,
            "static_bytes": static,
            "capacity_bytes": capacity,
            "margin_bytes": self.setup.concurrency_margin,
            "max_streams": best,
            "verified": [],
        }
        for batch in (best, math.floor(0.9 * best)):
            try:
                peak = self.forward_peak(model, variant, batch)
                result["verified"].append({"batch": batch, "ok": True, "peak_allocated": peak})
                break
            except torch.cuda.OutOfMemoryError:
                self.memory.free()
                result["verified"].append({"batch": batch, "ok": False, "peak_allocated": None})
        return result

    def compute_error(self, reference: CausalWanModel, model: CausalWanModel, variant: Variant) -> dict:
        """Relative error of ``model``'s stream against ``reference``'s (same weights, noise and
        text): per chunk over the first chunks, cache fill and steady state both."""
        self.configure(reference, variant)
        self.configure(model, variant)
        text = self.text(reference, 1)
        chunks = self.fill_frame(variant) // variant.stream.frames_per_chunk + 2
        streams = []
        for m in (reference, model):
            engine = StreamEngine(m, variant.stream, self.geometry(m), options=self.options(variant))
            gen = torch.Generator(self.device).manual_seed(self.setup.seed)
            streams.append([engine.step(text, gen).float() for _ in range(chunks)])
            del engine
        per_chunk = [float((b - a).norm() / a.norm()) for a, b in zip(*streams)]
        return {"per_chunk": per_chunk, "last": per_chunk[-1]}

    def fast_error(self, model, variant, text) -> float:
        """Relative error of one fast forward against the reference kernels: same inputs, same cache."""
        cache = self.steady_cache(model, variant, 1)
        h, w = self.setup.latent_size
        shape = (1, model.config.in_channels, variant.stream.frames_per_chunk, h, w)
        x = torch.randn(shape, device=self.device, dtype=self.setup.dtype, generator=self.generator)
        t = torch.full((1,), 700.0, device=self.device, dtype=torch.float64)
        with torch.no_grad():
            ref = model.forward_chunk(x, t, text, cache).float()
            with self.kernels(variant):
                fast = model.forward_chunk(x, t, text, cache).float()
        return float((fast - ref).norm() / ref.norm())


def random_model(setup: BenchSetup, attention: str) -> CausalWanModel:
    """Random weights at the benchmark dtype, built directly on the device."""
    with torch.device(setup.torch_device):
        model = CausalWanModel(setup.model_config(attention))
    return model.to(setup.dtype).eval().requires_grad_(False)


def run_bench(
    setup: BenchSetup,
    variants: list[Variant],
    progress: bool = True,
    log: Callable = print,
    on_result: Callable[[dict], None] | None = None,
    shard: TokenShard | None = None,
) -> dict:
    """Every variant, grouped by model (dense, then MLA) so only one transformer is resident.

    ``on_result`` sees each variant's result as soon as it exists (partial saves of long runs);
    ``shard``: run every stream split over the torchrun processes (:mod:`videomla.parallel`).
    """
    bench = Bench(setup, progress, shard)
    results: dict[str, dict] = {}
    concurrency: dict[str, dict | None] = {}
    for attention, compute in (("dense", "bf16"), ("mla", "bf16"), ("dense", "fp8"), ("mla", "fp8")):
        group = [v for v in variants if v.attention == attention and v.compute == compute]
        if not group:
            continue
        model = random_model(setup, attention)
        compute_error = None
        if compute != "bf16":  # the same weights before and after: the error fp8 compute costs
            reference = copy.deepcopy(model)
            set_compute(model, compute)
            compute_error = bench.compute_error(reference, model, group[0])
            del reference
            bench.memory.free()
        for variant in tqdm(group, desc=f"{attention} variants", disable=not progress):
            log(f"bench: {variant.name} ({variant.description})")
            results[variant.name] = bench.run_variant(model, variant)
            results[variant.name]["compute_vs_bf16_rel_err"] = compute_error
            if on_result is not None:
                on_result(results[variant.name])
        for variant in group:
            if variant.name in setup.concurrency_variants:
                log(f"bench: concurrency of {variant.name}")
                concurrency[variant.name] = bench.concurrency(model, variant)
        del model
        bench.memory.free()
    for name, value in concurrency.items():
        results[name]["concurrency"] = value
    for result in results.values():
        result.setdefault("concurrency", None)
    return {
        "sequence_parallel": 1 if shard is None else shard.world,
        "peak_matmul": bench.peak,
        "vae_layout": bench.vae_layouts,
        "variants": [results[v.name] for v in variants],
    }
