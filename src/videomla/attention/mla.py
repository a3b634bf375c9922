"""VideoMLA self-attention: a low-rank latent KV cache with a decoupled, head-shared 3D-RoPE key.

Per token (paper §1.2, Wan2.1-1.3B dims):

    c_Q  = RMSNorm(W_DQ x)                      d_q = 768, never cached
    q_h  = [W_UQ,h c_Q ; RoPE(W_QR,h c_Q)]       96 content + 32 RoPE channels per head
    c_KV = RMSNorm(W_DKV x)                     d_c = 192, cached
    k_R  = W_KR x                               32, cached unrotated, shared by all heads
    k_h  = [W_UK,h c_KV ; RoPE(k_R)]             v_h = W_UV,h c_KV (128 per head)
    out  = W_O concat_h softmax(q_h k_h^T / sqrt(96 + 32)) v_h

Three ways to compute the same thing, one method each, side by side below:

* :meth:`attend_naive`: the equations as written: expand the latents to per-head k_nope and v,
  concatenate the shared k_R, attend. The reference;
* :meth:`attend_materialised`: the same expansion as one GEMM against W_UK padded with zero rows
  at each head's RoPE slots, k_R written into them in place (no concatenation pass); used for
  whole clips under the block mask (training) and at chunk sizes (thousands of queries);
* :meth:`attend_absorbed`: fold A_h = W_UQ,h^T W_UK,h into the query and B_h = W_O,h W_UV,h into
  the output, and attend multi-query over the 224-dim latent. It does more FLOPs per query-key
  pair and only pays when queries are few (see :func:`choose_path`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..cache import CacheSpec, LayerCache, TensorSpec
from ..config import MLAConfig
from ..rope import Rotary3D
from .common import BlockMask, RMSNorm, attend, fusable, rope
from .context import AttentionContext, MLAPath

FP8 = torch.float8_e4m3fn
FP8_MAX = torch.finfo(FP8).max


def absorb_threshold(cfg: MLAConfig, head_dim: int) -> float:
    """Queries below which absorbing is cheaper (the FLOP count below; docs/mla.md).

    Materialising costs 2 L H d_c (d_nope + d_v) FLOPs per layer (grows with the context L),
    absorbing adds 2 n_q L H (2 d_c - d_nope - d_v) to attention, so absorbing pays only for
    n_q < d_c (d_nope + d_v) / (2 d_c - d_nope - d_v): about 269 queries at VideoMLA's dims,
    while one chunk has 4680. If 2 d_c <= d_nope + d_v absorbing never costs more.
    """
    d_c, extra = cfg.kv_latent_dim, cfg.nope_head_dim + head_dim
    denom = 2 * d_c - extra
    return math.inf if denom <= 0 else d_c * extra / denom


def choose_path(path: MLAPath, num_queries: int, cfg: MLAConfig, head_dim: int) -> MLAPath:
    if path != "auto":
        return path
    return "absorbed" if num_queries < absorb_threshold(cfg, head_dim) else "materialised"


@fusable
def quantize_fp8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token e4m3 quantisation: (values, fp32 scale [.., 1]) with amax mapped to 448."""
    scale = x.detach().abs().amax(-1, keepdim=True).float().clamp_min(1e-12) / FP8_MAX
    return (x.float() / scale).to(FP8), scale


@fusable
def dequantize_fp8(x: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return (x.float() * scale).to(dtype)


class MLASelfAttention(nn.Module):
    """Drop-in replacement for :class:`~videomla.attention.dense.DenseSelfAttention`."""

    kind = "mla"

    def __init__(self, dim: int, num_heads: int, cfg: MLAConfig, eps: float = 1e-6, theta: float = 10000.0):
        super().__init__()
        self.cfg = cfg
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        h, dn, dr = num_heads, cfg.nope_head_dim, cfg.rope_head_dim
        self.q_down = nn.Linear(dim, cfg.q_latent_dim)
        self.q_norm = RMSNorm(cfg.q_latent_dim, eps) if cfg.latent_norm else nn.Identity()
        self.q_up = nn.Linear(cfg.q_latent_dim, h * dn, bias=False)
        self.q_rope = nn.Linear(cfg.q_latent_dim, h * dr, bias=False)
        self.kv_down = nn.Linear(dim, cfg.kv_latent_dim)
        self.kv_norm = RMSNorm(cfg.kv_latent_dim, eps) if cfg.latent_norm else nn.Identity()
        self.k_up = nn.Linear(cfg.kv_latent_dim, h * dn, bias=False)
        self.v_up = nn.Linear(cfg.kv_latent_dim, h * self.head_dim)
        self.k_rope = nn.Linear(dim, dr)
        self.o = nn.Linear(dim, dim)
        self.rotary = Rotary3D(self.head_dim, theta, cfg.rope_pairs)
        self.scale = 1.0 / math.sqrt(dn + dr)
        self._absorbed: tuple[tuple[int, ...], torch.Tensor, torch.Tensor, torch.Tensor] | None = None
        self._padded: tuple[tuple[int, int], torch.Tensor] | None = None

    # -- cache ---------------------------------------------------------------------------------
    def cache_spec(self, dtype: torch.dtype, latent_dtype: torch.dtype | None = None) -> CacheSpec:
        """c_KV and k_R per token, in ``latent_dtype`` (``torch.float8_e4m3fn``: fp8 + scales) or ``dtype``."""
        store = latent_dtype or dtype
        if store.itemsize == 1 and store != FP8:
            raise ValueError(f"the fp8 latent cache stores {FP8}, got {store}")
        spec = {
            "c": TensorSpec((self.cfg.kv_latent_dim,), store),
            "kr": TensorSpec((self.cfg.rope_head_dim,), store),
        }
        if store == FP8:  # one fp32 scale per token for each of c and k_R
            spec["c_scale"] = TensorSpec((1,), torch.float32, overhead=True)
            spec["kr_scale"] = TensorSpec((1,), torch.float32, overhead=True)
        return spec

    def _stage_and_read(
        self, c: torch.Tensor, kr: torch.Tensor, ctx: AttentionContext, cache: LayerCache
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if "c_scale" in cache.spec:  # the cache was built fp8 (cache_spec): quantise on the way in
            (qc, sc), (qk, sk) = quantize_fp8(c), quantize_fp8(kr)
            cache.stage(ctx.stage_slot, {"c": qc, "c_scale": sc, "kr": qk, "kr_scale": sk})
            view = cache.view(ctx.active_tokens)
            return (
                dequantize_fp8(view["c"], view["c_scale"], c.dtype),
                dequantize_fp8(view["kr"], view["kr_scale"], kr.dtype),
            )
        cache.stage(ctx.stage_slot, {"c": c, "kr": kr})
        view = cache.view(ctx.active_tokens)
        return view["c"], view["kr"]

    # -- projections ---------------------------------------------------------------------------
    def project_query(
        self, x: torch.Tensor, content: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """(c_Q, q_nope [B,N,H,dn] or None when ``content`` is False, unrotated q_rope [B,N,H,dr])."""
        cq = self.q_norm(self.q_down(x))
        q_nope = self.q_up(cq).unflatten(-1, (self.num_heads, -1)) if content else None
        q_rope = self.q_rope(cq).unflatten(-1, (self.num_heads, -1))
        return cq, q_nope, q_rope

    def project_latent(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """What the cache stores: (c_KV [B,N,d_c], unrotated k_R [B,N,dr])."""
        return self.kv_norm(self.kv_down(x)), self.k_rope(x)

    def expand_latent(self, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-head content keys [B,L,H,dn] and values [B,L,H,D] from latents [B,L,d_c]."""
        return self.k_up(c).unflatten(-1, (self.num_heads, -1)), self.v_up(c).unflatten(-1, (self.num_heads, -1))

    def expand_keys(self, c: torch.Tensor, kr: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-head keys [B,L,H,dn+dr] = [W_UK,h c ; k_R] and values [B,L,H,D] from latents and rotated k_R.

        One GEMM whose weight has zero rows at each head's RoPE slots writes the keys in their
        final layout; the shared k_R then fills those slots in place. Same numbers as
        concatenating :meth:`expand_latent`'s keys with k_R, without a pass over all the keys.
        """
        k = F.linear(c, self.padded_key_weight()).unflatten(-1, (self.num_heads, -1))
        k[..., self.cfg.nope_head_dim :] = kr[:, :, None, :]
        return k, self.v_up(c).unflatten(-1, (self.num_heads, -1))

    def padded_key_weight(self) -> torch.Tensor:
        """W_UK with ``dr`` zero rows after each head's ``dn`` rows, [H*(dn+dr), d_c]; cached while weights stay."""
        w = self.k_up.weight
        version = (w._version, w.data_ptr())
        if torch.is_grad_enabled() or self._padded is None or self._padded[0] != version:
            h, dn, dr = self.num_heads, self.cfg.nope_head_dim, self.cfg.rope_head_dim
            padded = torch.cat([w.unflatten(0, (h, dn)), w.new_zeros(h, dr, w.shape[1])], dim=1).flatten(0, 1)
            if torch.is_grad_enabled():  # never keep a graph alive between calls
                return padded
            self._padded = (version, padded)
        return self._padded[1]

    # -- the three paths -----------------------------------------------------------------------
    def attend_naive(
        self,
        q_nope: torch.Tensor,
        q_rope: torch.Tensor,
        c: torch.Tensor,
        kr: torch.Tensor,
        mask: torch.Tensor | BlockMask | None = None,
    ) -> torch.Tensor:
        """k_h = [W_UK,h c ; k_R], v_h = W_UV,h c, q_h = [q_nope ; q_rope]: attend. q_rope/kr rotated."""
        k_nope, v = self.expand_latent(c)  # [B,L,H,dn], [B,L,H,D]
        k = torch.cat([k_nope, kr[:, :, None, :].expand(-1, -1, self.num_heads, -1)], dim=-1)
        q = torch.cat([q_nope, q_rope], dim=-1)
        out = attend(q, k, v, self.scale, mask)
        return self.o(out.flatten(2))

    def attend_materialised(
        self,
        q_nope: torch.Tensor,
        q_rope: torch.Tensor,
        c: torch.Tensor,
        kr: torch.Tensor,
        mask: torch.Tensor | BlockMask | None = None,
    ) -> torch.Tensor:
        """Expand latents to per-head K/V and run SDPA; q_rope/kr already rotated."""
        k, v = self.expand_keys(c, kr)
        q = torch.cat([q_nope, q_rope], dim=-1)
        out = attend(q, k, v, self.scale, mask)
        return self.o(out.flatten(2))

    def attend_absorbed(
        self,
        cq: torch.Tensor,
        q_rope: torch.Tensor,
        c: torch.Tensor,
        kr: torch.Tensor,
        mask: torch.Tensor | BlockMask | None = None,
    ) -> torch.Tensor:
        """Multi-query attention over the shared latent: never expands the cache per head."""
        a, b, bias = self.absorbed_weights()
        q_lat = torch.einsum("bnq,hqc->bnhc", cq, a)  # c_Q^T A_h
        q = torch.cat([q_lat, q_rope], dim=-1)  # [B,N,H,d_c+dr]
        k = torch.cat([c, kr], dim=-1)[:, :, None, :]  # one shared key head
        out_lat = attend(q, k, c[:, :, None, :], self.scale, mask)  # [B,N,H,d_c]
        return torch.einsum("bnhc,hdc->bnd", out_lat, b) + bias

    def absorbed_weights(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """A_h [H,d_q,d_c], B_h [H,dim,d_c] and the folded output bias, rebuilt when weights change."""
        params = (self.q_up.weight, self.k_up.weight, self.v_up.weight, self.v_up.bias, self.o.weight, self.o.bias)
        version = tuple(p._version for p in params) + tuple(p.data_ptr() for p in params)
        if torch.is_grad_enabled() or self._absorbed is None or self._absorbed[0] != version:
            h, dn, d = self.num_heads, self.cfg.nope_head_dim, self.head_dim
            w_uq = self.q_up.weight.unflatten(0, (h, dn))  # [H, dn, d_q]
            w_uk = self.k_up.weight.unflatten(0, (h, dn))  # [H, dn, d_c]
            a = torch.einsum("hnq,hnc->hqc", w_uq, w_uk)
            w_uv = self.v_up.weight.unflatten(0, (h, d))  # [H, D, d_c]
            w_o = self.o.weight.unflatten(1, (h, d))  # [dim, H, D]
            b = torch.einsum("ehd,hdc->hec", w_o, w_uv)
            bias = self.o(self.v_up.bias[None])[0]  # sum_j p_j = 1, so the V bias passes through W_O
            if torch.is_grad_enabled():  # never keep a graph alive between calls
                return a, b, bias
            self._absorbed = (version, a, b, bias)
        return self._absorbed[1:]

    # -- forward -------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, ctx: AttentionContext, cache: LayerCache | None = None) -> torch.Tensor:
        q_cos, q_sin, k_cos, k_sin = ctx.tables(self.rotary)
        if ctx.streaming:
            path = choose_path(ctx.mla_path, x.shape[1], self.cfg, self.head_dim)
        else:
            path = "materialised" if ctx.mla_path == "auto" else ctx.mla_path
        # the absorbed path folds W_UQ into A_h: skip the q_nope projection it would throw away
        cq, q_nope, q_rope = self.project_query(x, content=path != "absorbed")
        q_rope = rope(q_rope, q_cos, q_sin)
        c, kr = self.project_latent(x)
        if ctx.streaming:
            if cache is None:
                raise ValueError("a streaming forward needs the layer's cache")
            c, kr = self._stage_and_read(c, kr, ctx, cache)
            c, kr = ctx.gather_cached(c), ctx.gather_cached(kr)  # every process's tokens (224 numbers each)
        else:
            c, kr = ctx.gather_keys(c), ctx.gather_keys(kr)
        kr = rope(kr, k_cos, k_sin)  # k_R is always kept unrotated: rotate in the window frame
        if path == "absorbed":
            return self.attend_absorbed(cq, q_rope, c, kr, ctx.mask)
        if path == "naive":
            return self.attend_naive(q_nope, q_rope, c, kr, ctx.mask)
        return self.attend_materialised(q_nope, q_rope, c, kr, ctx.mask)
