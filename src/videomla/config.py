"""Model, attention and streaming configuration, and the named presets.

Everything that decides a tensor shape lives here, so a checkpoint's JSON config
(``dataclasses.asdict`` of :class:`ModelConfig`) is enough to rebuild the model.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

RopeMode = Literal["absolute", "window-relative"]


@dataclass(frozen=True)
class MLAConfig:
    """Dimensions of a VideoMLA self-attention layer (paper §1.2; defaults = Wan2.1-1.3B)."""

    kv_latent_dim: int = 192  # d_c: the cached content latent
    q_latent_dim: int = 768  # d_q: the query latent (never cached)
    nope_head_dim: int = 96  # content channels per head (keys come from c_KV)
    rope_head_dim: int = 32  # RoPE channels per head (one head-shared key k_R)
    rope_pairs: tuple[int, int, int] = (6, 5, 5)  # (t, h, w) complex pairs of the RoPE key
    latent_norm: bool = True  # RMSNorm on c_KV and c_Q (the paper's choice)

    def __post_init__(self) -> None:
        if 2 * sum(self.rope_pairs) != self.rope_head_dim:
            raise ValueError(
                f"rope_pairs {self.rope_pairs} give {2 * sum(self.rope_pairs)} channels, "
                f"but rope_head_dim is {self.rope_head_dim}"
            )
        for name in ("kv_latent_dim", "q_latent_dim", "nope_head_dim", "rope_head_dim"):
            if getattr(self, name) <= 0:
                raise ValueError(f"MLA {name} must be positive, got {getattr(self, name)}")


@dataclass(frozen=True)
class ModelConfig:
    """A Wan2.1 text-to-video DiT. ``mla_layers`` lists the blocks whose self-attention is MLA."""

    dim: int = 1536
    num_heads: int = 12
    num_layers: int = 30
    ffn_dim: int = 8960
    in_channels: int = 16
    out_channels: int = 16
    text_dim: int = 4096
    freq_dim: int = 256
    patch_size: tuple[int, int, int] = (1, 2, 2)
    eps: float = 1e-6
    rope_theta: float = 10000.0
    mla: MLAConfig | None = None
    mla_layers: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.dim % self.num_heads:
            raise ValueError(f"dim {self.dim} is not divisible by num_heads {self.num_heads}")
        if self.head_dim % 2:
            raise ValueError(f"head dim {self.head_dim} must be even for RoPE")
        bad = [i for i in self.mla_layers if not 0 <= i < self.num_layers]
        if bad:
            raise ValueError(f"mla_layers {bad} outside 0..{self.num_layers - 1}")
        if self.mla_layers and self.mla is None:
            raise ValueError("mla_layers given without an MLAConfig")
        if self.mla is not None:
            need = self.mla.nope_head_dim + self.mla.rope_head_dim
            if need != self.head_dim:
                raise ValueError(
                    f"MLA nope {self.mla.nope_head_dim} + rope {self.mla.rope_head_dim} = {need} "
                    f"must equal the head dim {self.head_dim}"
                )
            t, h, w = rope_axis_dims(self.head_dim)
            for axis, pairs, avail in zip("thw", self.mla.rope_pairs, (t // 2, h // 2, w // 2)):
                if pairs > avail:
                    raise ValueError(f"MLA asks {pairs} RoPE pairs on axis {axis}; Wan has {avail}")

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    def is_mla(self, layer: int) -> bool:
        return layer in self.mla_layers

    def with_mla(self, mla: MLAConfig | None = None, layers: tuple[int, ...] | None = None) -> ModelConfig:
        """The same model with MLA self-attention in ``layers`` (default: every layer)."""
        mla = mla or mla_config(self)
        layers = tuple(range(self.num_layers)) if layers is None else tuple(sorted(set(layers)))
        return dataclasses.replace(self, mla=mla, mla_layers=layers)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown model config fields: {unknown}")
        data = dict(data)
        if data.get("mla") is not None:
            mla = dict(data["mla"])
            mla["rope_pairs"] = tuple(mla.get("rope_pairs", (6, 5, 5)))
            data["mla"] = MLAConfig(**mla)
        for key in ("patch_size", "mla_layers"):
            if key in data:
                data[key] = tuple(data[key])
        return cls(**data)


def rope_axis_dims(head_dim: int) -> tuple[int, int, int]:
    """Wan's split of a head's channels over (t, h, w): 128 -> (44, 42, 42)."""
    hw = 2 * (head_dim // 6)
    return head_dim - 2 * hw, hw, hw


def mla_config(
    cfg: ModelConfig,
    kv_latent_dim: int | None = None,
    q_latent_dim: int | None = None,
    rope_head_dim: int | None = None,
    latent_norm: bool = True,
) -> MLAConfig:
    """The one way to size VideoMLA for ``cfg``: its own MLA config, else the paper's ratios
    (:func:`_paper_ratios`), overridden where given. ``rope_head_dim`` channels become (t, h, w)
    pairs the way (6, 5, 5) shares 16; the NoPE width is the head size minus it."""
    base = cfg.mla or _paper_ratios(cfg)
    rope = base.rope_head_dim if rope_head_dim is None else rope_head_dim
    if rope <= 0 or rope % 2:
        raise ValueError(f"the RoPE dim (rope_head_dim, --rope-dim) must be a positive even number, got {rope}")
    nope = cfg.head_dim - rope
    if nope <= 0:
        raise ValueError(f"NoPE head dim = head dim {cfg.head_dim} - RoPE dim {rope} = {nope}; it must be positive")
    axes = rope_axis_dims(cfg.head_dim)
    pairs = base.rope_pairs if rope == base.rope_head_dim else _split_pairs(rope // 2, tuple(a // 2 for a in axes))
    d_c = base.kv_latent_dim if kv_latent_dim is None else kv_latent_dim
    d_q = base.q_latent_dim if q_latent_dim is None else q_latent_dim
    _check_widths(d_c, d_q, cfg.dim)
    return MLAConfig(d_c, d_q, nope, rope, pairs, latent_norm)


def check_latent_widths(mla: MLAConfig, dim: int) -> None:
    """Latents wider than the model hold nothing new ([W_K; W_V] and W_Q have rank <= width)."""
    _check_widths(mla.kv_latent_dim, mla.q_latent_dim, dim)


def _check_widths(d_c: int, d_q: int, dim: int) -> None:
    for name, value in (("d_c (--dc, kv_latent_dim)", d_c), ("d_q (--dq, q_latent_dim)", d_q)):
        if not 0 < value <= dim:
            raise ValueError(f"{name} must be in 1..{dim} (the model width), got {value}")


def _paper_ratios(cfg: ModelConfig) -> MLAConfig:
    """Paper defaults at Wan width; scaled by width/1536 (and head_dim/128) for smaller models."""
    if cfg.dim == 1536 and cfg.head_dim == 128:
        return MLAConfig()
    rope = max(2 * 3, (cfg.head_dim // 4) // 2 * 2)
    t, h, w = rope_axis_dims(cfg.head_dim)
    pairs = _split_pairs(rope // 2, (t // 2, h // 2, w // 2))
    return MLAConfig(
        kv_latent_dim=max(8, cfg.dim // 8),
        q_latent_dim=max(8, cfg.dim // 2),
        nope_head_dim=cfg.head_dim - rope,
        rope_head_dim=rope,
        rope_pairs=pairs,
    )


def _split_pairs(total: int, available: tuple[int, int, int]) -> tuple[int, int, int]:
    """Share ``total`` RoPE pairs over (t, h, w) the way (6, 5, 5) shares 16: t first."""
    base, extra = divmod(total, 3)
    pairs = [base + (1 if i < extra else 0) for i in range(3)]
    if any(p > a for p, a in zip(pairs, available)):
        raise ValueError(f"cannot place {total} RoPE pairs in axes holding {available}")
    return tuple(pairs)  # type: ignore[return-value]


@dataclass(frozen=True)
class StreamConfig:
    """Chunking, attention window and RoPE positions of chunk-causal streaming.

    ``sink_frames``: the first latent frames of the video, kept forever.
    ``window_frames``: the most recent *cached* non-sink frames a chunk attends to. The current
    chunk is not counted (it always attends to itself). ``None`` keeps every frame (Self-Forcing's
    global attention; memory then grows, so the cache refuses it: use a finite window to stream).

    The paper's "1 sink + 6 recent" is ``StreamConfig(sink_frames=1, window_frames=6)``. Peers'
    ``local_attn_size`` counts sink, window and current chunk together: see
    :meth:`from_local_attn_size` (VideoMLA's released ``la6_sink1`` is 1 sink + 2 cached + 3 current).
    """

    frames_per_chunk: int = 3
    sink_frames: int = 1
    window_frames: int | None = 6
    rope_mode: RopeMode = "window-relative"

    def __post_init__(self) -> None:
        if self.frames_per_chunk < 1:
            raise ValueError(f"frames_per_chunk must be >= 1, got {self.frames_per_chunk}")
        if self.sink_frames < 0:
            raise ValueError(f"sink_frames must be >= 0, got {self.sink_frames}")
        if self.window_frames is not None and self.window_frames < 0:
            raise ValueError(f"window_frames must be >= 0 (or None for unbounded), got {self.window_frames}")
        if self.rope_mode not in ("absolute", "window-relative"):
            raise ValueError(f"rope_mode must be 'absolute' or 'window-relative', got {self.rope_mode!r}")

    @classmethod
    def from_local_attn_size(
        cls, local_attn_size: int, sink_frames: int = 0, frames_per_chunk: int = 3, **kw: Any
    ) -> StreamConfig:
        """Peers' convention: ``local_attn_size`` = sink + cached recent + current chunk frames."""
        window = local_attn_size - sink_frames - frames_per_chunk
        if window < 0:
            raise ValueError(
                f"local_attn_size {local_attn_size} cannot hold {sink_frames} sink frames "
                f"plus a {frames_per_chunk}-frame chunk"
            )
        return cls(frames_per_chunk=frames_per_chunk, sink_frames=sink_frames, window_frames=window, **kw)

    @property
    def cached_frames(self) -> int:
        """Frames the cache holds at most (sink + window)."""
        if self.window_frames is None:
            raise ValueError("an unbounded window has no fixed cache size")
        return self.sink_frames + self.window_frames

    @property
    def attended_frames(self) -> int:
        """Peers' ``local_attn_size``: frames one chunk attends to, itself included."""
        return self.cached_frames + self.frames_per_chunk


# The streaming semantics each family of causal Wan models was trained with (their public code; docs/generate.md):
# Self-Forcing / CausVid attend to at most 21 latent frames, no sink, keys roped at absolute
# positions; LongLive to 12 (3 sink), absolute; Reward Forcing to 9 (3 sink) with keys re-indexed
# in the window; VideoMLA (the paper) to 1 sink + 6 cached frames, window-relative.
STREAM_PRESETS: dict[str, StreamConfig] = {
    "self-forcing": StreamConfig(sink_frames=0, window_frames=18, rope_mode="absolute"),
    "longlive": StreamConfig.from_local_attn_size(12, 3, rope_mode="absolute"),
    "reward-forcing": StreamConfig.from_local_attn_size(9, 3, rope_mode="window-relative"),
    "videomla": StreamConfig(sink_frames=1, window_frames=6, rope_mode="window-relative"),
}


def stream_preset(name: str) -> StreamConfig:
    try:
        return STREAM_PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown stream preset {name!r}; choose from {sorted(STREAM_PRESETS)}") from None


def stream_name(stream: StreamConfig) -> str | None:
    """The preset ``stream`` equals, if any (for summaries)."""
    return next((name for name, s in STREAM_PRESETS.items() if s == stream), None)


def describe_stream(stream: StreamConfig) -> str:
    name = stream_name(stream)
    text = (
        f"{stream.sink_frames} sink + {stream.window_frames} cached + {stream.frames_per_chunk}-frame chunks "
        f"({stream.attended_frames} attended), {stream.rope_mode} RoPE"
    )
    return f"{name} ({text})" if name else text


PRESETS: dict[str, ModelConfig] = {
    "wan2.1-t2v-1.3b": ModelConfig(),
    "tiny": ModelConfig(
        dim=64,
        num_heads=2,
        num_layers=2,
        ffn_dim=128,
        in_channels=4,
        out_channels=4,
        text_dim=32,
        freq_dim=32,
    ),
    # The procedural-world models of docs/reproduction.md: 64x64 RGB through the 4x4 pixel codec
    # (48 channels at 16x16), 64 tokens per latent frame, ~6 M parameters.
    "world": ModelConfig(
        dim=256,
        num_heads=4,
        num_layers=6,
        ffn_dim=1024,
        in_channels=48,
        out_channels=48,
        text_dim=64,
        freq_dim=64,
    ),
}


def preset(name: str) -> ModelConfig:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; choose from {sorted(PRESETS)}") from None


__all__ = [
    "PRESETS",
    "STREAM_PRESETS",
    "MLAConfig",
    "ModelConfig",
    "StreamConfig",
    "mla_config",
    "preset",
    "rope_axis_dims",
    "stream_preset",
]
