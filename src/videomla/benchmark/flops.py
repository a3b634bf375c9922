"""Model FLOPs of one chunk forward, by hand: matmuls plus the two attention products.

Counted as 2 FLOPs per multiply-add of every matrix product the code runs (what
``torch.utils.flop_counter`` counts too, and what the tests compare against); norms, RoPE,
softmax and other elementwise work are left out, as usual for model-FLOP utilisation.

Per block, with ``n`` query tokens (batch x frames x tokens per frame), ``L`` keys per stream,
width ``d``, ``H`` heads of ``dh``, FFN width ``f`` and ``Lt`` text tokens:

* dense self-attention: q, k, v, o projections ``2 n d (4d)``; attention ``2 n L H (dh + dh)``
  (scores, then the weighted sum of values);
* VideoMLA, materialised: ``2 n (d dq + dq H dn + dq H dr + d dc + d dr + d d)`` for q_down,
  q_up, q_rope, kv_down, k_rope and o; expanding the window's latents to per-head K/V
  ``2 B L dc H ((dn + dr) + dh)`` (the key product also writes each head's RoPE slots, as
  zeros, which k_R then fills: counted, since it runs); attention ``2 n L H ((dn + dr) + dh)``;
* VideoMLA, absorbed: the same projections without q_up and o, ``2 n H dq dc`` to fold A_h
  into the query, attention ``2 n L H ((dc + dr) + dc)`` over one shared latent key/value,
  ``2 n H dc d`` through B_h;
* cross-attention: ``2 n d d`` twice (q, o), ``2 B Lt d (2d)`` (k, v of the text, recomputed
  each forward), attention ``2 n Lt H (dh + dh)``;
* FFN ``2 n d f`` twice.

Once per forward: patch embedding ``2 n (c p) d``, time embedding
``2 B F (freq d + d d + d 6d)`` and the head ``2 n d (c_out p)`` (``p`` = voxels per patch).
"""

from __future__ import annotations

from dataclasses import dataclass
from math import prod

from ..config import ModelConfig


@dataclass(frozen=True)
class ForwardShape:
    """The sizes one chunk forward runs at."""

    batch: int
    frames: int  # latent frames in the chunk
    tokens_per_frame: int
    key_tokens: int  # keys per stream: active cache window + the chunk itself
    text_tokens: int = 512

    @property
    def query_tokens(self) -> int:
        return self.batch * self.frames * self.tokens_per_frame


def self_attention_flops(cfg: ModelConfig, layer: int, shape: ForwardShape, mla_path: str) -> dict[str, int]:
    """FLOPs of one block's self-attention: projections, K/V expansion and attention proper."""
    n, big_l, b = shape.query_tokens, shape.key_tokens, shape.batch
    d, h, dh = cfg.dim, cfg.num_heads, cfg.head_dim
    if not cfg.is_mla(layer):
        return {"projections": 2 * n * d * 4 * d, "expansion": 0, "attention": 2 * n * big_l * h * (dh + dh)}
    m = cfg.mla
    assert m is not None
    dq, dc, dn, dr = m.q_latent_dim, m.kv_latent_dim, m.nope_head_dim, m.rope_head_dim
    shared = d * dq + dq * h * dr + d * dc + d * dr  # q_down, q_rope, kv_down, k_rope
    if mla_path == "absorbed":
        return {
            "projections": 2 * n * (shared + h * dq * dc + h * dc * d),  # + A_h fold, + B_h out
            "expansion": 0,
            "attention": 2 * n * big_l * h * ((dc + dr) + dc),
        }
    if mla_path != "materialised":
        raise ValueError(f"mla_path must be 'materialised' or 'absorbed', got {mla_path!r}")
    return {
        "projections": 2 * n * (shared + dq * h * dn + d * d),  # + q_up, + o
        "expansion": 2 * b * big_l * dc * h * ((dn + dr) + dh),
        "attention": 2 * n * big_l * h * ((dn + dr) + dh),
    }


def forward_flops(cfg: ModelConfig, shape: ForwardShape, mla_path: str = "materialised") -> dict[str, int]:
    """FLOPs of one ``forward_chunk`` by component (``total`` included); ``mla_path`` resolved, not 'auto'."""
    n, b, lt = shape.query_tokens, shape.batch, shape.text_tokens
    d, h, dh, f = cfg.dim, cfg.num_heads, cfg.head_dim, cfg.ffn_dim
    patch = prod(cfg.patch_size)
    out = {
        "embed": 2 * n * cfg.in_channels * patch * d + 2 * b * shape.frames * (cfg.freq_dim * d + d * d + d * 6 * d),
        "head": 2 * n * d * cfg.out_channels * patch,
        "self_projections": 0,
        "self_expansion": 0,
        "self_attention": 0,
        "cross_attention": 0,
        "ffn": 0,
    }
    for layer in range(cfg.num_layers):
        for key, value in self_attention_flops(cfg, layer, shape, mla_path).items():
            out[f"self_{key}"] += value
    cross = 2 * n * d * d * 2 + 2 * b * lt * d * 2 * d + 2 * n * lt * h * (dh + dh)
    out["cross_attention"] = cfg.num_layers * cross
    out["ffn"] = cfg.num_layers * 2 * n * d * f * 2
    out["total"] = sum(out.values())
    return out
