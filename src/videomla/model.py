"""The causal Wan2.1 text-to-video DiT, readable top to bottom.

Parameter names are those of the original Wan2.1 checkpoints (``patch_embedding``,
``text_embedding.0``, ``blocks.N.self_attn.q``, ``blocks.N.norm3`` ...), so Wan2.1 and
Self-Forcing weights load without renaming. Each block's self-attention is either dense or
VideoMLA (``ModelConfig.mla_layers``).

Two forwards share every module:

* :meth:`CausalWanModel.forward` runs a whole clip, bidirectional (``stream=None``, Wan2.1 as
  released) or chunk-causal with the sink + sliding-window block mask (training);
* :meth:`CausalWanModel.forward_chunk` runs one chunk against a :class:`StreamingCache`
  (inference); ``write=True`` commits the chunk to the cache.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .attention import AttentionContext, DenseSelfAttention, MLASelfAttention
from .attention.common import RMSNorm, attend, fusable
from .attention.context import MLAPath, check_mla_path
from .cache import CacheSpec, StreamingCache
from .config import ModelConfig, StreamConfig
from .parallel import TokenShard


def sinusoidal_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """[cos, sin] timestep features computed in float64, as Wan / Self-Forcing do."""
    half = dim // 2
    freqs = torch.pow(10000.0, -torch.arange(half, dtype=torch.float64, device=t.device) / half)
    angles = torch.outer(t.to(torch.float64).flatten(), freqs)
    return torch.cat([angles.cos(), angles.sin()], dim=-1)


class CrossAttention(nn.Module):
    """Attention from video tokens to the text tokens (no RoPE, q/k RMSNorm over the width)."""

    def __init__(self, dim: int, num_heads: int, eps: float):
        super().__init__()
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.o = nn.Linear(dim, dim)
        self.norm_q = RMSNorm(dim, eps)
        self.norm_k = RMSNorm(dim, eps)

    def forward(self, x: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        heads = (self.num_heads, -1)
        q = self.norm_q(self.q(x)).unflatten(-1, heads)
        k = self.norm_k(self.k(text)).unflatten(-1, heads)
        v = self.v(text).unflatten(-1, heads)
        out = attend(q, k, v, 1.0 / math.sqrt(q.shape[-1]))
        return self.o(out.flatten(2))


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN on tokens grouped per frame: x [B, F, T, C], shift/scale [B, F, C]."""
    return x * (1 + scale[:, :, None]) + shift[:, :, None]


@fusable
def norm_modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, eps: float) -> torch.Tensor:
    """Parameter-free LayerNorm then adaLN (one kernel under fast_kernels())."""
    return modulate(F.layer_norm(x, x.shape[-1:], eps=eps), shift, scale)


@fusable
def gated_residual(x: torch.Tensor, y: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    """x + y * gate with y [B, F*T, C] or [B, F, T, C] and one gate per frame [B, F, C]."""
    return x + y.view_as(x) * gate[:, :, None]


class WanBlock(nn.Module):
    """Self-attention, cross-attention and FFN with 6-way timestep modulation."""

    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        dim = cfg.dim
        self.norm1 = nn.LayerNorm(dim, cfg.eps, elementwise_affine=False)
        if cfg.is_mla(layer):
            assert cfg.mla is not None
            self.self_attn: nn.Module = MLASelfAttention(dim, cfg.num_heads, cfg.mla, cfg.eps, cfg.rope_theta)
        else:
            self.self_attn = DenseSelfAttention(dim, cfg.num_heads, cfg.eps, cfg.rope_theta)
        self.norm3 = nn.LayerNorm(dim, cfg.eps, elementwise_affine=True)
        self.cross_attn = CrossAttention(dim, cfg.num_heads, cfg.eps)
        self.norm2 = nn.LayerNorm(dim, cfg.eps, elementwise_affine=False)
        self.ffn = nn.Sequential(nn.Linear(dim, cfg.ffn_dim), nn.GELU(approximate="tanh"), nn.Linear(cfg.ffn_dim, dim))
        self.modulation = nn.Parameter(torch.randn(1, 6, dim) / dim**0.5)
        self.slice_streams = False  # see CausalWanModel.set_stream_slicing

    def forward(self, x, e, text, ctx, cache=None):
        """x [B, F, T, C]; e [B, F, 6, C]; text [B, L, C]."""
        shift1, scale1, gate1, shift2, scale2, gate2 = (self.modulation[:, None] + e).unbind(2)
        h = norm_modulate(x, shift1, scale1, self.norm1.eps).flatten(1, 2)
        if self.slice_streams and len(h) > 1:
            views = [None] * len(h) if cache is None else [cache.select(i) for i in range(len(h))]
            y = torch.cat([self.self_attn(h[i : i + 1], ctx, views[i]) for i in range(len(h))])
        else:
            y = self.self_attn(h, ctx, cache)
        x = gated_residual(x, y, gate1)
        x = x + self.cross_attn(self.norm3(x).flatten(1, 2), text).view_as(x)
        h = norm_modulate(x, shift2, scale2, self.norm2.eps)
        y = torch.cat([self.ffn(part) for part in h.split(1)]) if self.slice_streams and len(h) > 1 else self.ffn(h)
        return gated_residual(x, y, gate2)


class Head(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.norm = nn.LayerNorm(cfg.dim, cfg.eps, elementwise_affine=False)
        self.head = nn.Linear(cfg.dim, cfg.out_channels * math.prod(cfg.patch_size))
        self.modulation = nn.Parameter(torch.randn(1, 2, cfg.dim) / cfg.dim**0.5)

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        shift, scale = (self.modulation[:, None] + temb[:, :, None]).unbind(2)
        return self.head(norm_modulate(x, shift, scale, self.norm.eps))


class CausalWanModel(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        dim = cfg.dim
        self.patch_embedding = nn.Conv3d(cfg.in_channels, dim, kernel_size=cfg.patch_size, stride=cfg.patch_size)
        self.text_embedding = nn.Sequential(
            nn.Linear(cfg.text_dim, dim), nn.GELU(approximate="tanh"), nn.Linear(dim, dim)
        )
        self.time_embedding = nn.Sequential(nn.Linear(cfg.freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.time_projection = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))
        self.blocks = nn.ModuleList(WanBlock(cfg, i) for i in range(cfg.num_layers))
        self.head = Head(cfg)

    # -- pieces shared by both forwards ---------------------------------------------------------
    def embed_text(self, context: torch.Tensor) -> torch.Tensor:
        """Text-encoder features [B, L, text_dim] -> model width; compute once per prompt."""
        return self.text_embedding(context)

    def _embed_time(self, timestep: torch.Tensor, batch: int, frames: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Timesteps [B] or [B, F] -> (temb [B, F, C], block modulation input [B, F, 6, C])."""
        t = timestep.reshape(batch, -1).expand(batch, frames) if timestep.numel() in (1, batch) else timestep
        if t.shape != (batch, frames):
            raise ValueError(f"timestep must be [B] or [B, F] = [{batch}, {frames}], got {tuple(timestep.shape)}")
        dtype = self.time_embedding[0].weight.dtype
        temb = self.time_embedding(sinusoidal_embedding(t, self.config.freq_dim).to(dtype))
        temb = temb.view(batch, frames, -1)
        return temb, self.time_projection(temb).unflatten(-1, (6, -1))

    def _run(self, x, timestep, text, ctx, cache: StreamingCache | None) -> torch.Tensor:
        b = x.shape[0]
        tokens = self.patch_embedding(x)  # [B, C, F', H', W']
        fp, hp, wp = tokens.shape[2:]
        tokens = tokens.flatten(3).transpose(1, 2).transpose(2, 3)  # [B, F', T, C]
        if ctx.shard is not None:  # sequence parallel: this process's tokens of every frame
            tokens = tokens[:, :, ctx.shard.local_slice(hp * wp)]
        temb, e = self._embed_time(timestep, b, fp)
        for i, block in enumerate(self.blocks):
            tokens = block(tokens, e, text, ctx, None if cache is None else cache.layers[i])
        out = self.head(tokens, temb)  # [B, F', T, c * prod(patch)]
        if ctx.shard is not None:
            out = ctx.shard.gather(out, dim=2)
        return self.unpatchify(out, (fp, hp, wp))

    def unpatchify(self, out: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
        pt, ph, pw = self.config.patch_size
        b = out.shape[0]
        out = out.reshape(b, *grid, pt, ph, pw, -1)
        out = out.permute(0, 7, 1, 4, 2, 5, 3, 6)  # B, C, F', pt, H', ph, W', pw
        return out.reshape(b, out.shape[1], grid[0] * pt, grid[1] * ph, grid[2] * pw)

    def token_grid(self, frames: int, height: int, width: int) -> tuple[int, int, int]:
        pt, ph, pw = self.config.patch_size
        if frames % pt or height % ph or width % pw:
            raise ValueError(
                f"latent size {frames}x{height}x{width} is not divisible by patch {self.config.patch_size}"
            )
        return frames // pt, height // ph, width // pw

    # -- public forwards ---------------------------------------------------------------------------
    def forward(
        self,
        x: torch.Tensor,
        timestep: torch.Tensor,
        context: torch.Tensor,
        stream: StreamConfig | None = None,
        teacher_forcing: bool = False,
        mla_path: MLAPath = "auto",
        dense_mask: bool | None = None,
    ) -> torch.Tensor:
        """Velocity for a whole clip x [B, C, F, H, W].

        ``stream=None``: full bidirectional attention (Wan2.1 as released). Otherwise the
        chunk-causal sink + sliding-window block mask of ``stream``, exactly what streaming
        with a cache computes chunk by chunk. ``teacher_forcing``: x is ``[clean ; noisy]``
        along frames and each noisy chunk attends to the clean past (training). ``mla_path``: how
        MLA layers attend ("auto" = materialised for a clip; "naive" is the reference).
        ``dense_mask``: True: one boolean [Nq, Nk] mask through SDPA (the reference); False: a
        :class:`~videomla.attention.common.BlockMask` (each chunk against its own keys); None: as
        :func:`~videomla.attention.context.clip_mask` says (by size unless set).
        """
        f, h, w = self.token_grid(*x.shape[2:])
        ctx = AttentionContext.for_clip(
            f, h, w, stream, x.device, teacher_forcing=teacher_forcing, mla_path=mla_path, dense_mask=dense_mask
        )
        return self._run(x, timestep, self.embed_text(context), ctx, None)

    def forward_chunk(
        self,
        x: torch.Tensor,
        timestep: torch.Tensor,
        text: torch.Tensor,
        cache: StreamingCache,
        write: bool = False,
    ) -> torch.Tensor:
        """Velocity for the next chunk x [B, C, n, H, W] given the cache; ``text`` from :meth:`embed_text`.

        The chunk attends to itself and the cache's window. ``write=True`` (the clean pass at
        t = 0 after denoising) commits the chunk's keys to the cache and advances it.
        """
        ctx = self.chunk_context(x, cache)
        out = self._run(x, timestep, text, ctx, cache)
        if write:
            cache.commit(ctx.query_frame_positions.numel())
        return out

    def chunk_context(self, x: torch.Tensor, cache: StreamingCache) -> AttentionContext:
        """Positions, cache slots and RoPE tables of the chunk ``x`` would be: all the host work and
        uploads of a chunk forward, done before it, so the rest can be captured and replayed."""
        f, h, w = self.token_grid(*x.shape[2:])
        ctx = AttentionContext.for_stream(cache, f, h, w, x.device)
        for block in self.blocks:
            ctx.tables(block.self_attn.rotary)
        return ctx

    def new_cache(
        self,
        stream: StreamConfig,
        batch: int,
        latent_height: int,
        latent_width: int,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
        shard: TokenShard | None = None,
        *,
        latent_dtype: torch.dtype | None = None,
        mla_path: MLAPath = "auto",
    ) -> StreamingCache:
        """A preallocated cache for ``batch`` streams of latents of the given spatial size.

        ``shard``: only this process's token slice (:mod:`videomla.parallel`). What the stream
        stores and how it is read are fixed here, once: ``latent_dtype`` for MLA latents
        (``torch.float8_e4m3fn``: fp8 with per-token scales), ``mla_path`` for MLA attention.
        """
        param = next(self.parameters())
        specs = self.cache_specs(dtype or param.dtype, latent_dtype)
        tokens = self.tokens_per_frame(latent_height, latent_width)
        if shard is not None:
            tokens = shard.local_tokens(tokens)
        cache = StreamingCache(stream, specs, batch, tokens, device or param.device, check_mla_path(mla_path))
        cache.shard = shard
        return cache

    def cache_specs(self, dtype: torch.dtype, latent_dtype: torch.dtype | None = None) -> list[CacheSpec]:
        """What each layer caches per token (its attention kind decides; ``latent_dtype``: MLA latents only)."""
        if latent_dtype is not None and not self.mla_layers():
            raise ValueError(f"a {latent_dtype} latent cache applies to MLA layers, and this model has none")
        return [
            b.self_attn.cache_spec(dtype, latent_dtype) if b.self_attn.kind == "mla" else b.self_attn.cache_spec(dtype)
            for b in self.blocks
        ]

    def tokens_per_frame(self, latent_height: int, latent_width: int) -> int:
        _, h, w = self.token_grid(self.config.patch_size[0], latent_height, latent_width)
        return h * w

    def set_stream_slicing(self, enabled: bool) -> None:
        """Run self-attention and the FFN one stream of the batch at a time.

        Their transients (per-head K/V expanded from MLA latents, the 8960-wide FFN hidden
        state) then stop growing with the number of streams, so a batch of streams costs its
        cache plus a few chunk-sized tensors each. Same numbers; at 4680 tokens per stream each
        slice still fills the GPU.
        """
        for block in self.blocks:
            block.slice_streams = enabled

    def mla_layers(self) -> list[MLASelfAttention]:
        return [b.self_attn for b in self.blocks if isinstance(b.self_attn, MLASelfAttention)]
