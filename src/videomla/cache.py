"""Fixed-size streaming KV caches: one preallocated buffer per layer, FIFO eviction by slot copies.

The slot bookkeeping (which frame sits where, what to evict) lives once in
:class:`~videomla.window.FrameWindow`; each layer only stores tensors. What a layer stores is
its attention's business (:meth:`cache_spec`): a dense layer stores per-head ``k``/``v``
(2 x H x D = 3072 numbers per token at Wan size), a VideoMLA layer stores the latent ``c`` and
the unrotated RoPE key ``kr`` (192 + 32 = 224), optionally ``c`` in fp8 with a per-token scale.
Nothing is ever reallocated or concatenated while streaming: memory after chunk 10 equals memory
after chunk 100.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from math import prod

import torch

from .config import StreamConfig
from .window import FrameWindow


@dataclass(frozen=True)
class TensorSpec:
    """Per-token shape and storage dtype of one cached tensor; ``overhead``: a quantisation scale."""

    shape: tuple[int, ...]
    dtype: torch.dtype
    overhead: bool = False

    @property
    def bytes_per_token(self) -> int:
        return prod(self.shape) * self.dtype.itemsize

    @property
    def numbers_per_token(self) -> int:
        return prod(self.shape)


CacheSpec = dict[str, TensorSpec]


def spec_bytes(spec: CacheSpec) -> int:
    return sum(s.bytes_per_token for s in spec.values())


class LayerCache:
    """One layer's buffers, ``[B, slots * tokens_per_frame, *shape]`` for each named tensor."""

    def __init__(self, spec: CacheSpec, batch: int, slots: int, tokens_per_frame: int, device: torch.device):
        self.spec = spec
        self.tokens_per_frame = tokens_per_frame
        n = slots * tokens_per_frame
        self.buffers = {k: torch.zeros(batch, n, *s.shape, dtype=s.dtype, device=device) for k, s in spec.items()}

    def stage(self, slot: int, values: dict[str, torch.Tensor]) -> None:
        """Write the current chunk's tensors starting at ``slot``."""
        start = slot * self.tokens_per_frame
        for name, value in values.items():
            self.buffers[name][:, start : start + value.shape[1]].copy_(value)

    def _with_buffers(self, buffers: dict[str, torch.Tensor]) -> LayerCache:
        other = copy.copy(self)
        other.buffers = buffers
        return other

    def select(self, index: int) -> LayerCache:
        """Stream ``index`` of the batch as a one-stream cache sharing these buffers (writes land here)."""
        return self._with_buffers({k: b[index : index + 1] for k, b in self.buffers.items()})

    def rows(self, n: int) -> LayerCache:
        """The first ``n`` streams of the batch as an ``n``-stream cache sharing these buffers."""
        return self._with_buffers({k: b[:n] for k, b in self.buffers.items()})

    def clone(self) -> LayerCache:
        """An independent copy (new buffers with the same contents)."""
        return self._with_buffers({k: b.clone() for k, b in self.buffers.items()})

    def view(self, num_tokens: int) -> dict[str, torch.Tensor]:
        return {k: b[:, :num_tokens] for k, b in self.buffers.items()}

    def move(self, src: int, dst: int) -> None:
        t = self.tokens_per_frame
        for b in self.buffers.values():
            b[:, dst * t : (dst + 1) * t].copy_(b[:, src * t : (src + 1) * t])

    @property
    def nbytes(self) -> int:
        return sum(b.numel() * b.element_size() for b in self.buffers.values())


class StreamingCache:
    """The model's cache: a :class:`FrameWindow` plus one :class:`LayerCache` per block."""

    def __init__(
        self,
        stream: StreamConfig,
        specs: list[CacheSpec],
        batch: int,
        tokens_per_frame: int,
        device: torch.device | str = "cpu",
        mla_path: str = "auto",
    ):
        self.window = FrameWindow(stream)
        self.mla_path = mla_path  # how MLA layers read this cache (videomla.attention.context.MLAPath)
        self.tokens_per_frame = tokens_per_frame  # on this process (a TokenShard's slice)
        self.batch = batch
        self.shard = None  # a videomla.parallel.TokenShard when the tokens are split over processes
        device = torch.device(device)
        self.layers = [LayerCache(s, batch, self.window.slots, tokens_per_frame, device) for s in specs]

    @property
    def stream(self) -> StreamConfig:
        return self.window.stream

    def active_tokens(self, n_current: int) -> int:
        return (self.window.n_valid + n_current) * self.tokens_per_frame

    def reset(self) -> None:
        """Forget every cached frame but keep the buffers: rebuilding (KV-recache) allocates nothing."""
        self.window = FrameWindow(self.stream)

    def skip_to(self, frame: int) -> None:
        """Make ``frame`` the next frame to stage; frames skipped are treated as never cached.

        Re-caching replays the cached frames at their own indices (absolute RoPE needs them).
        """
        if frame < self.window.next_frame:
            raise ValueError(f"cannot go back to frame {frame}: frame {self.window.next_frame} is next")
        self.window.next_frame = frame

    def clone(self) -> StreamingCache:
        """An independent copy of the stream so far: a fork continues from here without touching this one."""
        other = copy.copy(self)
        other.window = copy.deepcopy(self.window)
        other.layers = [layer.clone() for layer in self.layers]
        return other

    def rows(self, n: int) -> StreamingCache:
        """The first ``n`` streams as an ``n``-stream cache sharing these buffers, with its own window.

        A server keeps one batch-sized cache as scratch and runs cohorts of any size up to it
        in views of it (no allocation per chunk; see :mod:`videomla.engine.cohort`).
        """
        if not 1 <= n <= self.batch:
            raise ValueError(f"rows({n}) of a cache of {self.batch} streams")
        other = copy.copy(self)
        other.window = copy.deepcopy(self.window)
        other.batch = n
        other.layers = [layer.rows(n) for layer in self.layers]
        return other

    def commit(self, n_current: int) -> None:
        for move in self.window.commit(n_current):
            for layer in self.layers:
                layer.move(move.src, move.dst)

    @property
    def nbytes(self) -> int:
        """Bytes held by all buffers (persistent slots and the staging chunk)."""
        return sum(layer.nbytes for layer in self.layers)

    @property
    def bytes_per_token(self) -> int:
        """Bytes one cached token costs summed over layers."""
        return sum(spec_bytes(layer.spec) for layer in self.layers)


@dataclass(frozen=True)
class KVFootprint:
    """Memory accounting of a streaming cache, without allocating it (used by info and bench)."""

    numbers_per_token_per_layer: list[int]
    bytes_per_token_per_layer: list[int]  # scales included
    payload_bytes_per_token_per_layer: list[int]  # cached values only
    dense_bytes_per_token_per_layer: int  # 2 x dim numbers at the compute dtype
    tokens_per_frame: int
    cached_frames: int
    batch: int = 1

    @classmethod
    def of(
        cls,
        specs: list[CacheSpec],
        dim: int,
        dtype: torch.dtype,
        stream: StreamConfig,
        tokens_per_frame: int,
        batch: int = 1,
    ) -> KVFootprint:
        return cls(
            numbers_per_token_per_layer=[
                sum(s.numbers_per_token for s in spec.values() if not s.overhead) for spec in specs
            ],
            payload_bytes_per_token_per_layer=[
                sum(s.bytes_per_token for s in spec.values() if not s.overhead) for spec in specs
            ],
            bytes_per_token_per_layer=[spec_bytes(spec) for spec in specs],
            dense_bytes_per_token_per_layer=2 * dim * dtype.itemsize,
            tokens_per_frame=tokens_per_frame,
            cached_frames=stream.cached_frames,
            batch=batch,
        )

    @property
    def bytes_per_token(self) -> int:
        return sum(self.bytes_per_token_per_layer)

    @property
    def cached_tokens(self) -> int:
        return self.cached_frames * self.tokens_per_frame

    @property
    def total_bytes(self) -> int:
        """Persistent cache (sink + window) for all layers and the batch."""
        return self.bytes_per_token * self.cached_tokens * self.batch

    @property
    def dense_total_bytes(self) -> int:
        layers = len(self.bytes_per_token_per_layer)
        return self.dense_bytes_per_token_per_layer * layers * self.cached_tokens * self.batch

    @property
    def reduction(self) -> float:
        """Fraction saved against a dense cache of the same window (0.927 for VideoMLA at bf16)."""
        return 1 - self.total_bytes / self.dense_total_bytes

    @property
    def payload_reduction(self) -> float:
        """As :attr:`reduction`, counting cached values only (fp8 scales left out): 0.964 at fp8."""
        dense = self.dense_bytes_per_token_per_layer * len(self.payload_bytes_per_token_per_layer)
        return 1 - sum(self.payload_bytes_per_token_per_layer) / dense
