"""What one forward tells every self-attention layer: token positions, mask, cache slots.

Built once per model forward (:meth:`AttentionContext.for_clip` for a whole clip under the
block mask, :meth:`AttentionContext.for_stream` for one chunk against the cache) and shared by
all layers, so RoPE tables and masks are computed once, not 30 times.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Literal, get_args

import torch

from ..cache import StreamingCache
from ..config import StreamConfig
from ..parallel import TokenShard
from ..rope import Rotary3D
from ..window import clip_layout, teacher_forcing_layout
from .common import BlockMask, fast_enabled

_CLIP_CONTEXTS: dict[tuple, AttentionContext] = {}

# How MLA layers attend: "naive" concatenates per-head keys (the reference), "materialised" writes
# them with one padded GEMM, "absorbed" folds W_UK / W_UV into the query and output (few queries);
# "auto" picks by query count. Fixed per forward by the context (from the stream's cache).
MLAPath = Literal["auto", "naive", "materialised", "absorbed"]
MLA_PATHS: tuple[str, ...] = get_args(MLAPath)

# How a masked clip forward applies its chunk-causal mask: one boolean [Nq, Nk] tensor through SDPA
# ("dense"), or per-chunk runs of queries against their own keys (BlockMask, "blocks"). On an H200
# the dense mask was the faster of the two at the world teacher's shape (64 tokens a frame, b64:
# 0.122 vs 0.167 s per training step at 2688 tokens, docs/reproduction/throughput/h200-7dce538.json),
# and the slower at four times the tokens (the fine grid, 10752 tokens: 0.891 vs 0.534 s,
# docs/reproduction.md, teacher 7), so "auto" keeps it up to BLOCK_MASK_BYTES = 4096^2 (the
# crossover lies between the two measured points), then runs blocks.
ClipMask = Literal["auto", "dense", "blocks"]
CLIP_MASKS: tuple[str, ...] = get_args(ClipMask)
BLOCK_MASK_BYTES = 1 << 24
_CLIP_MASK: ContextVar[str] = ContextVar("videomla_clip_mask", default="auto")


@contextmanager
def clip_mask(kind: ClipMask) -> Iterator[None]:
    """Masked clip forwards in this block (thread / task) use ``kind`` (see :data:`ClipMask`)."""
    if kind not in CLIP_MASKS:
        raise ValueError(f"clip mask must be one of {', '.join(CLIP_MASKS)}; got {kind!r}")
    token = _CLIP_MASK.set(kind)
    try:
        yield
    finally:
        _CLIP_MASK.reset(token)


def use_dense_mask(tokens: int) -> bool:
    """Whether a masked clip forward over this many tokens takes the dense boolean mask."""
    kind = _CLIP_MASK.get()
    return kind == "dense" or (kind == "auto" and tokens * tokens <= BLOCK_MASK_BYTES)


def check_mla_path(path: str) -> MLAPath:
    if path not in MLA_PATHS:
        raise ValueError(f"mla_path must be one of {', '.join(MLA_PATHS)}; got {path!r}")
    return path  # type: ignore[return-value]


@dataclass
class AttentionContext:
    query_frame_positions: torch.Tensor  # [Fq] temporal position of each query frame
    key_frame_positions: torch.Tensor  # [Fk] temporal position of each key frame
    height: int  # token grid of a frame
    width: int
    mask: BlockMask | torch.Tensor | None = None  # clip mode only; a tensor is [Nq, Nk] bool
    key_sources: torch.Tensor | None = None  # clip mode: frame each key frame copies (None = identity)
    stage_slot: int | None = None  # stream mode: first cache slot of the current chunk
    active_tokens: int | None = None  # stream mode: keys = cache prefix of this many tokens
    keys_prerotated: bool = False  # stream mode: cached keys may be stored already rotated
    shard: TokenShard | None = None  # stream mode: this process's slice of every frame's tokens
    mla_path: MLAPath = "auto"  # how MLA layers attend in this forward
    _tables: dict = field(default_factory=dict, repr=False)

    @property
    def tokens_per_frame(self) -> int:
        return self.height * self.width

    @property
    def streaming(self) -> bool:
        return self.stage_slot is not None

    @classmethod
    def for_clip(
        cls,
        num_frames: int,
        height: int,
        width: int,
        stream: StreamConfig | None,
        device: torch.device,
        teacher_forcing: bool = False,
        mla_path: MLAPath = "auto",
        dense_mask: bool | None = None,
    ) -> AttentionContext:
        """Masked forward over ``num_frames``; ``stream=None`` is full bidirectional attention.

        ``teacher_forcing``: the frames are ``[clean clip ; noisy clip]`` (see
        :func:`~videomla.window.teacher_forcing_layout`). The mask is a :class:`BlockMask` (each
        chunk attends to its own keys, unmasked) or one boolean [Nq, Nk] mask through SDPA
        (``dense_mask=True``, the reference); None: as :func:`clip_mask` says. Memoised per shape
        and device: every training step reuses the layout, mask and RoPE tables (no host work or
        upload per forward).
        """
        if dense_mask is None:
            dense_mask = use_dense_mask(num_frames * height * width)
        key = (num_frames, height, width, stream, str(device), teacher_forcing, check_mla_path(mla_path), dense_mask)
        ctx = _CLIP_CONTEXTS.get(key)
        if ctx is None:
            if len(_CLIP_CONTEXTS) >= 64:
                _CLIP_CONTEXTS.clear()
            ctx = _CLIP_CONTEXTS[key] = cls._build_clip(*key[:3], stream, device, teacher_forcing, mla_path, dense_mask)
        return ctx

    @classmethod
    def _build_clip(
        cls, num_frames, height, width, stream, device, teacher_forcing, mla_path, dense_mask
    ) -> AttentionContext:
        if teacher_forcing:
            if stream is None or num_frames % 2:
                raise ValueError(
                    f"teacher forcing needs a StreamConfig and an even number of frames "
                    f"(clean + noisy copies), got stream={stream} and {num_frames} frames"
                )
            layout = teacher_forcing_layout(num_frames // 2, stream, device)
        else:
            layout = clip_layout(num_frames, stream, device)
        identity = layout.num_extra == 0
        if stream is None:
            mask = None
        elif dense_mask:
            mask = layout.token_mask(height * width)
        else:
            mask = BlockMask.from_frames(layout.mask, height * width)
        return cls(
            query_frame_positions=layout.query_positions,
            key_frame_positions=layout.key_positions,
            height=height,
            width=width,
            mask=mask,
            key_sources=None if identity else layout.key_sources,
            mla_path=mla_path,
        )

    @classmethod
    def for_stream(
        cls, cache: StreamingCache, n_frames: int, height: int, width: int, device: torch.device, **kw
    ) -> AttentionContext:
        """One chunk of ``n_frames`` attending to itself and the cache's active window.

        A cache with a :class:`~videomla.parallel.TokenShard` holds this process's token slice only.
        """
        shard = cache.shard
        local = height * width if shard is None else shard.local_tokens(height * width)
        if local != cache.tokens_per_frame:
            raise ValueError(
                f"chunk has {height}x{width} = {height * width} tokens per frame ({local} on this process); "
                f"the cache was built for {cache.tokens_per_frame}"
            )
        q_pos, k_pos = cache.window.positions(n_frames)
        return cls(
            query_frame_positions=q_pos.to(device),
            key_frame_positions=k_pos.to(device),
            height=height,
            width=width,
            stage_slot=cache.window.stage_slot(),
            active_tokens=cache.active_tokens(n_frames),
            keys_prerotated=cache.stream.rope_mode == "absolute",
            shard=shard,
            mla_path=cache.mla_path,
            **kw,
        )

    def tables(self, rotary: Rotary3D) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(q_cos, q_sin, k_cos, k_sin) for ``rotary``'s pairs, memoised per forward.

        Keyed by the frequencies themselves, so the 30 layers of a model share one set of tables.
        """
        dtype = torch.float32 if fast_enabled() else torch.float64  # bf16 activations cannot tell them apart
        key = (tuple(tuple(f.tolist()) for f in rotary.freqs), dtype)
        if key not in self._tables:
            q = rotary.cos_sin(self.query_frame_positions, self.height, self.width, dtype)
            k = rotary.cos_sin(self.key_frame_positions, self.height, self.width, dtype)
            if self.shard is not None:  # own queries; keys in the order gather_cached lays them out
                t, dev = self.tokens_per_frame, self.query_frame_positions.device
                qi = self.shard.query_rows(self.query_frame_positions.numel(), t, dev)
                ki = self.shard.key_rows(self.key_frame_positions.numel(), t, dev)
                q, k = tuple(x[qi] for x in q), tuple(x[ki] for x in k)
            self._tables[key] = (*q, *k)
        return self._tables[key]

    def gather_cached(self, t: torch.Tensor) -> torch.Tensor:
        """Stream mode: the active keys of every process (identity without a shard)."""
        return t if self.shard is None else self.shard.gather(t)

    def gather_keys(self, t: torch.Tensor) -> torch.Tensor:
        """Clip mode: key-side tokens [B, Fk*T, ...] from per-frame tokens [B, F*T, ...]."""
        if self.key_sources is None:
            return t
        frames = t.unflatten(1, (-1, self.tokens_per_frame))
        return frames[:, self.key_sources].flatten(1, 2)
