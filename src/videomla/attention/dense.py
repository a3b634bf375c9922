"""Wan2.1's dense multi-head self-attention, with a per-head K/V cache."""

from __future__ import annotations

import math

import torch
from torch import nn

from ..cache import CacheSpec, LayerCache, TensorSpec
from ..rope import Rotary3D
from .common import RMSNorm, attend, rope
from .context import AttentionContext


class DenseSelfAttention(nn.Module):
    """q/k/v/o projections with q/k RMSNorm over the full width and 3D RoPE on all channels.

    Parameter names follow the original Wan2.1 checkpoints (``q``, ``k``, ``v``, ``o``,
    ``norm_q``, ``norm_k``).
    """

    kind = "dense"

    def __init__(self, dim: int, num_heads: int, eps: float = 1e-6, theta: float = 10000.0):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.o = nn.Linear(dim, dim)
        self.norm_q = RMSNorm(dim, eps)
        self.norm_k = RMSNorm(dim, eps)
        self.rotary = Rotary3D(self.head_dim, theta)

    def cache_spec(self, dtype: torch.dtype) -> CacheSpec:
        shape = (self.num_heads, self.head_dim)
        return {"k": TensorSpec(shape, dtype), "v": TensorSpec(shape, dtype)}

    def project(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Unrotated per-head q, k, v, each [B, N, H, D]."""
        heads = (self.num_heads, self.head_dim)
        q = self.norm_q(self.q(x)).unflatten(-1, heads)
        k = self.norm_k(self.k(x)).unflatten(-1, heads)
        v = self.v(x).unflatten(-1, heads)
        return q, k, v

    def forward(self, x: torch.Tensor, ctx: AttentionContext, cache: LayerCache | None = None) -> torch.Tensor:
        q, k, v = self.project(x)
        q_cos, q_sin, k_cos, k_sin = ctx.tables(self.rotary)
        q = rope(q, q_cos, q_sin)
        if ctx.streaming:
            if cache is None:
                raise ValueError("a streaming forward needs the layer's cache")
            if ctx.keys_prerotated:  # absolute positions never change: store keys rotated
                cache.stage(ctx.stage_slot, {"k": rope(k, q_cos, q_sin), "v": v})
                kv = cache.view(ctx.active_tokens)
                k, v = ctx.gather_cached(kv["k"]), ctx.gather_cached(kv["v"])
            else:  # window-relative: positions move every chunk, rotate on read
                cache.stage(ctx.stage_slot, {"k": k, "v": v})
                kv = cache.view(ctx.active_tokens)
                k, v = rope(ctx.gather_cached(kv["k"]), k_cos, k_sin), ctx.gather_cached(kv["v"])
        else:
            k = rope(ctx.gather_keys(k), k_cos, k_sin)
            v = ctx.gather_keys(v)
        out = attend(q, k, v, 1.0 / math.sqrt(self.head_dim), ctx.mask)
        return self.o(out.flatten(2))
