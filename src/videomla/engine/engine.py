"""The streaming engine: one object owns a stream's cache and advances it one chunk at a time.

Per chunk (Self-Forcing's exact loop): start from noise, for each warped timestep predict the
velocity, convert to x0, re-noise x0 to the next step's sigma with fresh noise; after the last
step run the clean chunk once at t = 0 with ``write=True``: the only pass that stays in the
cache. Everything a stream holds is fixed-size: the cache, and with KV-recache the clean latents
of the cached frames, so chunk 100 costs the memory of chunk 10.

The cache has one owner: the engine creates it (:meth:`StreamEngine.reset` starts a new video in
the same buffers), advances it (:meth:`step`), rebuilds it under a new prompt (:meth:`recache`)
and copies it (:meth:`fork`). ``batch`` streams advance together, each with its own cache slot,
text row and noise generator, which is what a server batching many streams needs. With a
``shard`` (:mod:`videomla.parallel`) the stream's tokens are split over processes.

Fast paths (:class:`EngineOptions`): fused kernels (``torch.compile``'d norms, RoPE and adaLN,
fp32 RoPE tables, cuDNN-first SDPA) and CUDA-graph replay of every chunk forward. Both are off
on CPU by default and tested against the eager reference path.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

import torch

from ..attention.common import fast_kernels
from ..attention.context import MLAPath, check_mla_path
from ..cache import KVFootprint, StreamingCache, spec_bytes
from ..config import StreamConfig
from ..model import CausalWanModel
from ..parallel import TokenShard
from ..schedule import SamplingSchedule, add_noise, sigma_of, to_x0
from .graphs import ChunkGraphs
from .recache import LatentHistory, recache

Generators = torch.Generator | Sequence[torch.Generator] | None


@dataclass(frozen=True)
class LatentGeometry:
    """Latent video size: channels and spatial size per latent frame."""

    channels: int
    height: int
    width: int


@dataclass(frozen=True)
class EngineOptions:
    """How the chunk step runs and what its cache holds: the one place both are chosen.

    ``compile``: the fused-kernel fast path (``compile_backend`` is the ``torch.compile``
    backend; ``"eager"`` / ``"aot_eager"`` run it without a C++ toolchain). ``cuda_graphs``:
    replay chunk forwards from CUDA graphs (CUDA only). ``None`` means: on for CUDA, off
    elsewhere. ``mla_path``: how MLA layers attend (``"naive"`` is the reference);
    ``kv_fp8``: MLA latents cached as e4m3 with per-token scales.
    """

    compile: bool | None = None
    cuda_graphs: bool | None = None
    compile_backend: str = "inductor"
    mla_path: MLAPath = "auto"
    kv_fp8: bool = False
    # CPU float32 matmuls through oneDNN's bf16 path (torch.backends.mkldnn.matmul.fp32_precision =
    # "bf16"), where it keeps float32 accuracy: on CPUs with AVX512-BF16 it splits each operand into
    # bf16 terms (relative 4e-7 vs 2.5e-7 for IEEE on a 192x1024x256 linear) at twice the speed (the
    # README command: 39.9 -> 34.9 s on one thread); on CPUs with AMX it rounds to plain bf16 (2e-3),
    # so :func:`bf16_matmul_keeps_fp32_accuracy` measures it once and IEEE stays where it does not.
    cpu_fast_matmul: bool = True

    def __post_init__(self) -> None:
        check_mla_path(self.mla_path)

    @property
    def latent_dtype(self) -> torch.dtype | None:
        return torch.float8_e4m3fn if self.kv_fp8 else None

    def resolve(self, device: torch.device) -> EngineOptions:
        cuda = device.type == "cuda"
        if self.cuda_graphs and not cuda:
            raise ValueError(f"CUDA graphs need a CUDA device, the model is on {device}")
        return dataclasses.replace(
            self,
            compile=cuda if self.compile is None else self.compile,
            cuda_graphs=cuda if self.cuda_graphs is None else self.cuda_graphs,
        )


@contextmanager
def cpu_matmul_precision(precision: str) -> Iterator[None]:
    """oneDNN's float32 matmul precision inside the block (process-wide: restored on exit)."""
    backend = torch.backends.mkldnn
    if not (backend.is_available() and hasattr(backend, "matmul")):
        yield
        return
    before = backend.matmul.fp32_precision
    backend.matmul.fp32_precision = precision
    try:
        yield
    finally:
        backend.matmul.fp32_precision = before


@functools.cache
def bf16_matmul_keeps_fp32_accuracy() -> bool:
    """Whether oneDNN's "bf16" float32 matmul precision stays at float32 accuracy on this CPU (measured once).

    Relative error of products of 1, 7 and 192 rows by 1024x256 (oneDNN picks kernels by shape)
    against float64, each below 1e-5 (a bf16-split kernel: ~4e-7; plain bf16 rounding, as AMX
    kernels do: ~2e-3). The reference is float64, so no precision setting in force can fool it.
    """
    backend = torch.backends.mkldnn
    if not (backend.is_available() and hasattr(backend, "matmul")):
        return False
    gen = torch.Generator().manual_seed(0)
    b = torch.randn(256, 1024, generator=gen)
    for rows in (1, 7, 192):
        a = torch.randn(rows, 1024, generator=gen)
        exact = torch.nn.functional.linear(a.double(), b.double())
        with cpu_matmul_precision("bf16"):
            fast = torch.nn.functional.linear(a, b).double()
        if not (fast - exact).norm() / exact.norm() < 1e-5:
            return False
    return True


def cpu_fast_matmul_active(options: EngineOptions, device: torch.device, dtype: torch.dtype) -> bool:
    """Whether a stream's float32 CPU matmuls take oneDNN's bf16-split path (asked for, and exact enough here)."""
    return (
        options.cpu_fast_matmul
        and device.type == "cpu"
        and dtype == torch.float32
        and bf16_matmul_keeps_fp32_accuracy()
    )


def available_bytes(device: torch.device) -> int | None:
    """Memory a new allocation can take now: free CUDA memory, or MemAvailable on Linux."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def check_cache_fits(
    model: CausalWanModel,
    stream: StreamConfig,
    geometry: LatentGeometry,
    batch: int,
    dtype: torch.dtype,
    device: torch.device,
    shard: TokenShard | None = None,
    latent_dtype: torch.dtype | None = None,
) -> int:
    """The bytes the cache will take; a ValueError naming them when the device cannot hold them."""
    tokens = model.tokens_per_frame(geometry.height, geometry.width)
    if shard is not None:
        tokens = shard.local_tokens(tokens)
    slots = stream.cached_frames + stream.frames_per_chunk
    need = sum(spec_bytes(spec) for spec in model.cache_specs(dtype, latent_dtype)) * slots * tokens * batch
    have = available_bytes(device)
    if have is not None and need > have:
        raise ValueError(
            f"the KV cache for {stream.sink_frames} sink + {stream.window_frames} window frames "
            f"({batch} stream(s), {tokens} tokens per frame) needs {need / 2**30:,.2f} GiB, but {device} has "
            f"{have / 2**30:,.2f} GiB available; use a smaller --window/--sink"
        )
    return need


class NonFiniteError(RuntimeError):
    """The stream produced NaN or Inf: names the chunk and the first layer whose cache shows it."""


class StreamEngine:
    """``batch`` streams of one model, their cache, and the chunk step (either solver of the schedule)."""

    def __init__(
        self,
        model: CausalWanModel,
        stream: StreamConfig,
        geometry: LatentGeometry,
        *,
        batch: int = 1,
        schedule: SamplingSchedule | None = None,
        cache_dtype: torch.dtype | None = None,
        options: EngineOptions | None = None,
        keep_history: bool = False,
        shard: TokenShard | None = None,
    ):
        if stream.cached_frames == 0:
            raise ValueError(
                "sink 0 + window 0 leaves the cache no frame: every chunk would be generated with no memory "
                "of the video; use a window or sink of at least 1 frame"
            )
        param = next(model.parameters())
        self.model, self.stream, self.geometry, self.batch = model, stream, geometry, batch
        self.device, self.dtype = param.device, param.dtype
        self.schedule = schedule or SamplingSchedule()
        self.timesteps = self.schedule.timesteps()
        self.options = (options or EngineOptions()).resolve(self.device)
        if shard is not None and self.options.cuda_graphs:  # collectives inside graphs: not yet measured
            self.options = dataclasses.replace(self.options, cuda_graphs=False)
        self.shard = shard
        self.cache_dtype = cache_dtype or self.dtype
        o = self.options
        check_cache_fits(model, stream, geometry, batch, self.cache_dtype, self.device, shard, o.latent_dtype)
        self.cache: StreamingCache = self._new_cache(batch, shard)
        self.graphs = ChunkGraphs(model) if self.options.cuda_graphs else None
        self.keep_history = keep_history
        self.history: LatentHistory | None = None
        self.chunks = 0

    # -- what the stream holds ------------------------------------------------------------------
    @property
    def chunk_shape(self) -> tuple[int, int, int, int, int]:
        g = self.geometry
        return (self.batch, g.channels, self.stream.frames_per_chunk, g.height, g.width)

    @property
    def next_frame(self) -> int:
        return self.cache.window.next_frame

    def footprint(self) -> KVFootprint:
        """Bytes of the persistent cache and of a dense cache of the same window."""
        model = self.model
        specs = [layer.spec for layer in self.cache.layers]
        return KVFootprint.of(specs, model.config.dim, self.dtype, self.stream, self.cache.tokens_per_frame, self.batch)

    def held_bytes(self) -> int:
        """Everything this engine keeps between chunks (cache buffers + recache history)."""
        history = 0 if self.history is None else self.history.buffer.numel() * self.history.buffer.element_size()
        return self.cache.nbytes + history

    # -- the chunk step -------------------------------------------------------------------------
    def step(self, text: torch.Tensor, generator: Generators = None, given: torch.Tensor | None = None) -> torch.Tensor:
        """Denoise the next chunk and commit it to the cache; returns its clean latents [B, C, n, H, W].

        ``text``: embedded text [B or 1, L, dim] (:meth:`CausalWanModel.embed_text`).
        ``generator``: one for the batch, or one per stream (each stream's noise then equals
        what it would draw alone). ``given``: clean latents [B, C, k, H, W] of the chunk's first
        ``k < n`` frames (the image of image-to-video, or the end of a context that stops
        mid-chunk): they enter every denoising pass clean, at t = 0 (as cached frames do), the
        rest of the chunk is generated around them, and they come back unchanged.
        """
        k = self._check_given(given)
        given = None if given is None else given.to(self.device, self.dtype)
        # the chunk with given frames runs once, with per-frame timesteps: eager, not a graph replay
        graphed = self.graphs is not None and k == 0
        forward = self.graphs.forward_chunk if graphed else self.model.forward_chunk
        text = text.expand(self.batch, -1, -1) if text.shape[0] == 1 and self.batch > 1 else text
        steps, euler = self.timesteps, self.schedule.solver == "euler"
        with self._kernels(), torch.no_grad():
            x = self._noise(generator)
            state = x.float() if euler else x  # x in working precision: Euler carries it in float32, not bf16
            for i, t in enumerate(steps):
                if k:
                    x[:, :, :k] = given
                    state[:, :, :k] = given
                velocity = forward(x, self._timestep(t, k), text, self.cache)
                velocity = velocity.to(state.dtype)
                x0 = to_x0(state, velocity, sigma_of(t)).to(x.dtype)
                if k:
                    x0[:, :, :k] = given
                if i + 1 < len(steps) and euler:
                    state = state + float(sigma_of(steps[i + 1]) - sigma_of(t)) * velocity
                    x = state.to(x.dtype)
                elif i + 1 < len(steps):
                    x = state = add_noise(x0, self._noise(generator), sigma_of(steps[i + 1]))
            forward(x0, self._timestep(0.0), text, self.cache, write=True)
        if self.keep_history:
            self.history = self.history or LatentHistory(self.stream.cached_frames, x0)
            self.history.update(x0, self.next_frame - x0.shape[2], self.cache.window.slot_frame)
        self.chunks += 1
        return x0

    def _check_given(self, given: torch.Tensor | None) -> int:
        if given is None:
            return 0
        b, c, n, h, w = self.chunk_shape
        if given.ndim != 5 or given.shape[:2] != (b, c) or given.shape[3:] != (h, w) or not 0 < given.shape[2] < n:
            raise ValueError(
                f"given latents {tuple(given.shape)} must be [{b}, {c}, k, {h}, {w}] with 0 < k < {n} "
                f"(the first frames of one chunk)"
            )
        return given.shape[2]

    def prefill(self, latents: torch.Tensor, text: torch.Tensor) -> None:
        """Continue a given video: commit its clean latents [B, C, F, H, W] to the cache, chunk by chunk.

        Each chunk is written as a clean (t = 0) pass, exactly what the stream writes after
        generating a chunk, so the next :meth:`step` continues the given frames. ``F`` must be a
        multiple of ``frames_per_chunk``.
        """
        n = self.stream.frames_per_chunk
        if (
            latents.shape[0] != self.batch
            or latents.shape[1:2] + latents.shape[3:] != self.chunk_shape[1:2] + self.chunk_shape[3:]
        ):
            raise ValueError(f"context latents {tuple(latents.shape)} do not fit chunks {self.chunk_shape}")
        if latents.shape[2] % n:
            raise ValueError(f"context of {latents.shape[2]} latent frames is not a whole number of {n}-frame chunks")
        forward = self.graphs.forward_chunk if self.graphs is not None else self.model.forward_chunk
        with self._kernels(), torch.no_grad():
            for start in range(0, latents.shape[2], n):
                chunk = latents[:, :, start : start + n].to(self.device, self.dtype)
                forward(chunk, self._timestep(0.0), text, self.cache, write=True)
                if self.keep_history:
                    self.history = self.history or LatentHistory(self.stream.cached_frames, chunk)
                    self.history.update(chunk, self.next_frame - n, self.cache.window.slot_frame)
                self.chunks += 1

    def recache(self, text: torch.Tensor, keep_sink: bool = False) -> None:
        """Rebuild the cache under ``text`` (a prompt switch); needs ``keep_history=True``."""
        if not self.keep_history:
            raise ValueError("recache needs an engine built with keep_history=True")
        if self.history is None:
            return  # nothing cached yet
        with self._kernels():
            recache(self.model, self.cache, self.history, text, keep_sink)

    def reset(self) -> None:
        """Start a new video in the same buffers (graphs captured for them stay valid)."""
        self.cache.reset()
        self.history = None
        self.chunks = 0

    def fork(self) -> StreamEngine:
        """An independent engine continuing from this exact state (cache and history copied)."""
        other = object.__new__(StreamEngine)
        other.__dict__.update(self.__dict__)
        other.cache = self.cache.clone()
        other.history = None if self.history is None else self.history.clone()
        other.graphs = ChunkGraphs(self.model) if self.graphs is not None else None
        return other

    def check_finite(self, finite: torch.Tensor | bool, chunk: int) -> None:
        """Raise :class:`NonFiniteError` for a non-finite chunk, naming the first layer that makes it."""
        if bool(finite):
            return
        first = self.first_nonfinite_layer()
        where = (
            f"; block {first} is the first whose output is NaN/Inf" if first is not None
            else "; a probe from fresh noise stays finite, so it built up over the stream (overflow?)"
        )  # fmt: skip
        raise NonFiniteError(
            f"chunk {chunk} came out NaN/Inf{where}. Check the checkpoint's weights and dtype "
            f"(fp16 overflows where bf16 does not); frames before this chunk were kept"
        )

    def first_nonfinite_layer(self) -> int | None:
        """Probe (only after a failure): one forward of fresh noise against an empty cache, watching
        each block's output; the first non-finite one is where the NaN/Inf starts."""
        probe = self._new_cache(1, None)
        bad: list[int] = []
        hooks = [
            block.register_forward_hook(
                lambda _m, _i, out, i=i: bad.append(i) if not bad and not torch.isfinite(out).all() else None
            )
            for i, block in enumerate(self.model.blocks)
        ]
        try:
            with torch.no_grad():
                x = torch.randn((1, *self.chunk_shape[1:]), device=self.device, dtype=self.dtype)
                text = torch.zeros(1, 1, self.model.config.dim, device=self.device, dtype=self.dtype)
                self.model.forward_chunk(
                    x, torch.full((1,), 500.0, device=self.device, dtype=torch.float64), text, probe
                )
        finally:
            for hook in hooks:
                hook.remove()
        return bad[0] if bad else None

    # -- helpers --------------------------------------------------------------------------------
    def _new_cache(self, batch: int, shard: TokenShard | None) -> StreamingCache:
        g, o = self.geometry, self.options
        return self.model.new_cache(
            self.stream, batch, g.height, g.width, self.cache_dtype, self.device, shard,
            latent_dtype=o.latent_dtype, mla_path=o.mla_path,
        )  # fmt: skip

    def _kernels(self):
        stack = ExitStack()
        if self.options.compile:
            stack.enter_context(fast_kernels(self.options.compile_backend))
        if cpu_fast_matmul_active(self.options, self.device, self.dtype):
            stack.enter_context(cpu_matmul_precision("bf16"))
        return stack

    def _timestep(self, t: torch.Tensor | float, clean_frames: int = 0) -> torch.Tensor:
        """[B] for a chunk at one timestep; [B, n] with the first ``clean_frames`` at t = 0."""
        if not clean_frames:
            return torch.full((self.batch,), float(t), device=self.device, dtype=torch.float64)
        n = self.stream.frames_per_chunk
        per_frame = torch.full((self.batch, n), float(t), device=self.device, dtype=torch.float64)
        per_frame[:, :clean_frames] = 0.0
        return per_frame

    def _noise(self, generator: Generators) -> torch.Tensor:
        shape = self.chunk_shape
        if generator is None or isinstance(generator, torch.Generator):
            return torch.randn(shape, generator=generator, device=self.device, dtype=self.dtype)
        if len(generator) != self.batch:
            raise ValueError(f"{len(generator)} generators for a batch of {self.batch} streams")
        one = (1, *shape[1:])
        return torch.cat([torch.randn(one, generator=g, device=self.device, dtype=self.dtype) for g in generator])
