"""Run the benchmark: every variant streams through the real sampler, timed chunk by chunk.

Per variant (batch 1): a warm-up stream (compiles kernels, autotunes convolutions), then a
timed stream of a 5 s clip plus steady-state chunks with the Wan-VAE decoding each chunk, then
the same cache carried to 60 s and 5 min of video where a few more chunks are timed and their
peak memory read. Batched streams and the concurrency limit follow for the variants asked.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Callable
from contextlib import nullcontext

import torch
from tqdm import tqdm

from ..attention.common import fast_kernels
from ..cache import KVFootprint, StreamingCache
from ..config import ModelConfig, preset
from ..model import CausalWanModel
from ..sampler import LatentGeometry, stream_latents
from .flops import ForwardShape, forward_flops
from .graphs import GraphedStream
from .measure import Clock, Memory, advance_cache, matmul_peak, median, percentile
from .vae import StreamingVAEDecoder, random_wan_vae, set_layout
from .variants import Variant

VIDEO_FPS = 16
TEMPORAL_COMPRESSION = 4  # Wan-VAE: latent frame 0 -> 1 video frame, every later one -> 4
FORWARDS_PER_CHUNK = 5  # 4 denoising steps + the clean pass that writes the cache
GIB = 1 << 30


def latent_frames(seconds: float) -> int:
    """Latent frames of a video of ``seconds`` at 16 fps: 5 s = 81 frames = 21 latent frames."""
    return 1 + round(seconds * VIDEO_FPS) // TEMPORAL_COMPRESSION


def video_frames(first_latent: int, count: int) -> int:
    """Video frames decoded from latent frames ``first_latent .. first_latent + count - 1``."""
    return sum(1 if f == 0 else TEMPORAL_COMPRESSION for f in range(first_latent, first_latent + count))


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
    stream_slicing: bool = True
    compile_backend: str = "inductor"  # torch.compile backend of the fused helpers
    seed: int = 0
    vae_config: dict = dataclasses.field(default_factory=dict)

    @property
    def torch_device(self) -> torch.device:
        return torch.device(self.device)

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
            "vae_config": self.vae_config or "diffusers AutoencoderKLWan defaults (Wan2.1 VAE)",
        }

    def model_config(self, attention: str) -> ModelConfig:
        cfg = preset(self.preset)
        return cfg.with_mla() if attention == "mla" else cfg


class Bench:
    """One benchmark run: holds the device, the measured matmul ceiling, the VAE and the clock."""

    def __init__(self, setup: BenchSetup, progress: bool = True):
        self.setup = setup
        self.device = setup.torch_device
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError("--device cuda but no CUDA device is visible")
        self.clock = Clock(self.device)
        self.memory = Memory(self.device)
        self.progress = progress
        torch.backends.cudnn.benchmark = True  # the VAE's 3D convolutions: autotuned once in warm-up
        self.peak = matmul_peak(self.device)
        self.vae = random_wan_vae(self.device, setup.dtype, **setup.vae_config) if setup.vae else None
        self.generator = torch.Generator(self.device).manual_seed(setup.seed)
        self.vae_layouts = self.pick_vae_layout()

    def pick_vae_layout(self) -> dict | None:
        """Time a steady chunk's decode with NCDHW and NDHWC weights; keep the faster for the run."""
        if self.vae is None or self.device.type != "cuda":
            self.vae_channels_last = False
            return None
        h, w = self.setup.latent_size
        z = torch.randn(1, self.vae.config.z_dim, 3, h, w, device=self.device, dtype=self.setup.dtype)
        times = {}
        for channels_last in (False, True):
            set_layout(self.vae, channels_last)
            decoder = StreamingVAEDecoder(self.vae, channels_last)
            for _ in range(3):  # first chunk, then steady chunks (autotuning happens here)
                decoder.decode(z)
            marks = [self.clock.mark()]
            for _ in range(3):
                decoder.decode(z)
                marks.append(self.clock.mark())
            self.clock.sync()
            name = "ndhwc" if channels_last else "ncdhw"
            times[name] = median([self.clock.ms(a, b) for a, b in itertools.pairwise(marks)])
        self.vae_channels_last = times["ndhwc"] < times["ncdhw"]
        set_layout(self.vae, self.vae_channels_last)
        self.vae.clear_cache()
        return {"chunk_decode_ms": times, "chosen": "ndhwc" if self.vae_channels_last else "ncdhw"}

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
        return model.new_cache(variant.stream, batch, h, w, self.setup.dtype, self.device)

    def stream(self, model, variant, cache, text, chunks: int):
        """The real sampler; ``model`` may be a :class:`GraphedStream` standing in for the model."""
        return stream_latents(
            model,
            text,
            self.geometry(model),
            variant.stream,
            num_chunks=chunks,
            batch=text.shape[0],
            generator=self.generator,
            cache=cache,
        )

    def configure(self, model: CausalWanModel, variant: Variant) -> None:
        if variant.attention == "mla":
            model.set_mla_path(variant.mla_path)
            model.set_kv_dtype(variant.kv_dtype)
        model.set_stream_slicing(self.setup.stream_slicing)

    def kernels(self, variant: Variant):
        return fast_kernels(self.setup.compile_backend) if variant.fast else nullcontext()

    @staticmethod
    def fill_frame(variant: Variant) -> int:
        """First frame of the first chunk that sees a full cache (steady state)."""
        n = variant.stream.frames_per_chunk
        return n * math.ceil(variant.stream.cached_frames / n)

    # -- the timed stream -----------------------------------------------------------------------
    def timed_chunks(self, model, variant, cache, text, chunks: int, decoder: StreamingVAEDecoder | None) -> dict:
        """Run ``chunks`` chunks; per-chunk transformer and VAE times (ms) from device events."""
        first = cache.window.next_frame
        gen = self.stream(model, variant, cache, text, chunks)
        starts, ends, vae_ends, decoded = [], [], [], []
        for _ in range(chunks):
            starts.append(vae_ends[-1] if vae_ends else ends[-1] if ends else self.clock.mark())
            x0 = next(gen)
            ends.append(self.clock.mark())
            if decoder is not None:
                decoded.append(decoder.decode(x0).shape[2])
                vae_ends.append(self.clock.mark())
        self.clock.sync()
        transformer = [self.clock.ms(a, b) for a, b in zip(starts, ends)]
        vae = [self.clock.ms(a, b) for a, b in zip(ends, vae_ends)]
        n = variant.stream.frames_per_chunk
        expected = [video_frames(first + i * n, n) for i in range(chunks)]
        if decoder is not None and decoded != expected:
            raise RuntimeError(f"VAE decoded {decoded} frames per chunk, expected {expected}")
        finite = bool(torch.isfinite(x0).all())
        return {"transformer_ms": transformer, "vae_ms": vae or None, "video_frames": expected, "finite": finite}

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
        footprint = KVFootprint.of(model.cache_specs(s.dtype), model.config.dim, s.dtype, variant.stream, tpf)
        clip_chunks = math.ceil(latent_frames(s.clip_seconds) / n)
        fill_chunks = self.fill_frame(variant) // n
        chunks = max(clip_chunks, fill_chunks) + s.steady_chunks
        decoder = StreamingVAEDecoder(self.vae, self.vae_channels_last) if self.vae is not None else None
        text = self.text(model, 1)
        graphed = variant.fast and self.device.type == "cuda"
        runner = GraphedStream(model) if graphed else model
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
            "fast_kernels": variant.fast,
            "cuda_graphs": graphed,
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
        out["fast_vs_reference_rel_err"] = self.fast_error(model, variant, text) if variant.fast else None
        self.memory.free()
        with self.kernels(variant):
            # warm-up: every cache fill level once (kernels compile per shape, the steady step is
            # captured as a CUDA graph), VAE autotuning
            cache = self.new_cache(model, variant, 1)
            self.timed_chunks(runner, variant, cache, text, fill_chunks + 1, decoder)
            # the timed stream: a new video (cache emptied, buffers and graph kept), warm process
            cache.reset()
            if decoder is not None:
                decoder.reset()
            self.memory.reset_peak()
            out["cache_allocated_bytes"] = sum(layer.nbytes for layer in cache.layers)
            run = self.timed_chunks(runner, variant, cache, text, chunks, decoder)
            out["stream"] = self.summarise(run, variant, out["flops"]["per_chunk"], clip_chunks, fill_chunks)
            memory = {f"{s.clip_seconds:g}s": self.memory_point(cache, "streamed", 0, chunks * n, self.memory.peak())}
            for seconds in s.horizons:
                if seconds <= s.clip_seconds:
                    continue
                memory[f"{seconds:g}s"] = self.horizon(runner, variant, cache, text, decoder, seconds)
            out["memory"] = memory
            out["memory_flat"] = self.is_flat(memory)
            out["graph_captures"] = runner.captures if graphed else 0
            out["graph_error"] = runner.error if graphed else None
            if graphed:
                runner.release()
            del cache
            self.memory.free()
            out["batched"] = [
                self.batched(model, variant, b) for b in s.batch_sizes if variant.name in s.batched_variants
            ]
        return out

    def summarise(self, run: dict, variant: Variant, flops_per_chunk: int, clip_chunks: int, fill: int) -> dict:
        t, v = run["transformer_ms"], run["vae_ms"]
        frames = run["video_frames"]
        steady = list(range(fill, len(t)))
        steady_ms = median([t[i] for i in steady])
        out = {
            "chunks": len(t),
            "steady_chunk_indices": [steady[0], steady[-1]],
            "transformer_ms": t,
            "vae_ms": v,
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
        peak = self.peak["tflops"]
        out["fraction_of_matmul_peak"] = None if peak is None else out["achieved_tflops"] / peak
        out["flop_floor_ms"] = None if peak is None else flops_per_chunk / (peak * 1e12) * 1e3
        if v is not None:
            total = [a + b for a, b in zip(t, v)]
            out["vae_chunk_ms"] = median([v[i] for i in steady])
            out["fps_with_vae"] = frames[-1] / median([total[i] for i in steady]) * 1e3
            out["clip_fps_with_vae"] = sum(frames[:clip_chunks]) / sum(total[:clip_chunks]) * 1e3
            out["ttfc_with_vae_ms"] = total[0]
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
            "cache_allocated_bytes": sum(layer.nbytes for layer in cache.layers),
        }

    def horizon(self, model, variant, cache, text, decoder, seconds: float) -> dict:
        """Carry the stream to ``seconds`` of video, then time ``horizon_chunks`` chunks there."""
        s = self.setup
        n = variant.stream.frames_per_chunk
        last = n * ((latent_frames(seconds) - 1) // n)  # first frame of the chunk holding the last frame
        first = max(cache.window.next_frame, last - n * (s.horizon_chunks - 1))
        self.memory.reset_peak()
        if variant.name == s.full_stream and seconds <= s.full_stream_seconds:
            method = "streamed"
            gap = (first - cache.window.next_frame) // n
            for _ in tqdm(self.stream(model, variant, cache, text, gap), total=gap, disable=not self.progress):
                pass
        else:
            method = "fast-forwarded"
            advance_cache(cache, first)
        run = self.timed_chunks(model, variant, cache, text, s.horizon_chunks, decoder)
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
        """Aggregate throughput of ``batch`` streams in one batch, at steady state."""
        text = self.text(model, batch)
        cache = self.steady_cache(model, variant, batch)
        runner = GraphedStream(model) if variant.fast and self.device.type == "cuda" else model
        self.timed_chunks(runner, variant, cache, text, 1, None)  # compiles / captures for this batch size
        self.memory.reset_peak()
        run = self.timed_chunks(runner, variant, cache, text, self.setup.batched_chunks, None)
        ms = median(run["transformer_ms"])
        frames = TEMPORAL_COMPRESSION * variant.stream.frames_per_chunk  # steady chunks are never the first
        result = {
            "batch": batch,
            "steady_chunk_ms": ms,
            "fps_aggregate": batch * frames / ms * 1e3,
            "fps_per_stream": frames / ms * 1e3,
            "peak_allocated": self.memory.peak(),
        }
        if isinstance(runner, GraphedStream):
            runner.release()
        del cache, text, runner
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
        if not self.memory.cuda:
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


def build_model(setup: BenchSetup, attention: str) -> CausalWanModel:
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
) -> dict:
    """Every variant, grouped by model (dense, then MLA) so only one transformer is resident.

    ``on_result`` sees each variant's result as soon as it exists (partial saves of long runs).
    """
    bench = Bench(setup, progress)
    results: dict[str, dict] = {}
    concurrency: dict[str, dict | None] = {}
    for attention in ("dense", "mla"):
        group = [v for v in variants if v.attention == attention]
        if not group:
            continue
        model = build_model(setup, attention)
        for variant in tqdm(group, desc=f"{attention} variants", disable=not progress):
            log(f"bench: {variant.name} ({variant.description})")
            results[variant.name] = bench.run_variant(model, variant)
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
    return {"peak_matmul": bench.peak, "vae_layout": bench.vae_layouts, "variants": [results[v.name] for v in variants]}
