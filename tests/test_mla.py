"""VideoMLA attention: the three paths agree, the cache is 224 numbers, fp8 error is bounded."""

from __future__ import annotations

import json
import math

import pytest
import torch

from test_streaming import stream_chunks
from videomla.attention import AttentionContext, MLASelfAttention, absorb_threshold, choose_path
from videomla.cache import KVFootprint
from videomla.cli import main
from videomla.config import MLAConfig, ModelConfig, StreamConfig, preset
from videomla.model import CausalWanModel
from videomla.rope import Rotary3D, apply_rope

from conftest import rel_err, tiny_model


def mla_layer(cfg: ModelConfig) -> MLASelfAttention:
    layer = MLASelfAttention(cfg.dim, cfg.num_heads, cfg.mla)
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return layer


@pytest.mark.parametrize("stream", [None, StreamConfig(sink_frames=1, window_frames=3)])
def test_clip_paths_agree(seed, stream):
    """Training-time materialised path == absorbed path over a whole clip, with the block mask."""
    cfg = preset("tiny").with_mla()
    layer = mla_layer(cfg)
    x = torch.randn(2, 9 * 12, cfg.dim)
    with torch.no_grad():
        materialised = layer(x, AttentionContext.for_clip(9, 3, 4, stream, x.device, mla_path="materialised"))
        absorbed = layer(x, AttentionContext.for_clip(9, 3, 4, stream, x.device, mla_path="absorbed"))
    assert rel_err(absorbed, materialised) < 1e-5


def test_materialised_matches_per_head_reference(seed):
    """The materialised path equals a literal per-head loop over the paper's equations (5)-(7)."""
    cfg = preset("tiny").with_mla()
    layer = mla_layer(cfg)
    x = torch.randn(1, 2 * 12, cfg.dim)
    ctx = AttentionContext.for_clip(2, 3, 4, None, x.device)
    q_cos, q_sin, k_cos, k_sin = ctx.tables(layer.rotary)
    with torch.no_grad():
        out = layer(x, ctx)
        cq = layer.q_norm(layer.q_down(x))
        ckv = layer.kv_norm(layer.kv_down(x))
        kr = apply_rope(layer.k_rope(x), k_cos, k_sin)
        h, dn, dr, d = cfg.num_heads, cfg.mla.nope_head_dim, cfg.mla.rope_head_dim, cfg.head_dim
        heads = []
        for i in range(h):
            q_nope = cq @ layer.q_up.weight[i * dn : (i + 1) * dn].T
            q_rope = apply_rope(cq @ layer.q_rope.weight[i * dr : (i + 1) * dr].T, q_cos, q_sin)
            k_nope = ckv @ layer.k_up.weight[i * dn : (i + 1) * dn].T
            v = ckv @ layer.v_up.weight[i * d : (i + 1) * d].T + layer.v_up.bias[i * d : (i + 1) * d]
            scores = (q_nope @ k_nope.transpose(1, 2) + q_rope @ kr.transpose(1, 2)) / math.sqrt(dn + dr)
            heads.append(scores.softmax(-1) @ v)
        reference = layer.o(torch.cat(heads, dim=-1))
    assert rel_err(out, reference) < 1e-5


@pytest.mark.parametrize("streaming", [False, True])
def test_padded_gemm_path_equals_the_naive_path(seed, streaming):
    """The materialised fast variant (zero-padded W_UK, k_R written in place) is the naive concat-and-attend."""
    model = tiny_model(preset("tiny").with_mla())
    stream = StreamConfig(sink_frames=1, window_frames=3)
    x, t, context = torch.randn(1, 4, 6, 4, 6), torch.full((1,), 400.0), torch.randn(1, 5, 32)
    outs = {}
    for path in ("naive", "materialised"):
        with torch.no_grad():
            if streaming:  # two chunks through the cache
                cache, text = model.new_cache(stream, 1, 4, 6, mla_path=path), model.embed_text(context)
                chunks = [model.forward_chunk(x[:, :, i : i + 3], t, text, cache, write=True) for i in (0, 3)]
                outs[path] = torch.cat(chunks, dim=2)
            else:  # the whole clip under the block mask (training)
                outs[path] = model(x, t, context, stream, mla_path=path)
    assert rel_err(outs["materialised"], outs["naive"]) < 1e-5


@pytest.mark.parametrize("rope_mode", ["absolute", "window-relative"])
def test_three_paths_agree_when_streaming(seed, rope_mode):
    """Masked clip forward == cached materialised == cached absorbed, with eviction."""
    model = tiny_model(preset("tiny").with_mla())
    stream = StreamConfig(sink_frames=1, window_frames=4, rope_mode=rope_mode)
    x, t, context = torch.randn(2, 4, 15, 4, 6), torch.rand(2, 15) * 1000, torch.randn(2, 5, 32)
    with torch.no_grad():
        full = model(x, t, context, stream=stream, mla_path="naive")
        materialised, _ = stream_chunks(model, x, t, context, stream, mla_path="materialised")
        absorbed, _ = stream_chunks(model, x, t, context, stream, mla_path="absorbed")
    assert rel_err(materialised, full) < 1e-5
    assert rel_err(absorbed, full) < 1e-5


def test_absorbed_weights_follow_parameter_updates(seed):
    layer = mla_layer(preset("tiny").with_mla())
    with torch.no_grad():
        a0 = layer.absorbed_weights()[0].clone()
        layer.q_up.weight.mul_(2)
        assert torch.allclose(layer.absorbed_weights()[0], 2 * a0)


def test_auto_path_follows_the_cost_model():
    cfg = MLAConfig()  # paper dims: d_c 192, nope 96, v 128
    threshold = absorb_threshold(cfg, 128)
    assert threshold == pytest.approx(192 * 224 / (384 - 224))  # ~269 queries
    assert choose_path("auto", 4680, cfg, 128) == "materialised"  # one chunk of Wan2.1 tokens
    assert choose_path("auto", 100, cfg, 128) == "absorbed"  # decode-like
    assert choose_path("absorbed", 4680, cfg, 128) == "absorbed"


def test_rope_key_uses_highest_frequency_pairs():
    full, sub = Rotary3D(128), Rotary3D(128, pairs=(6, 5, 5))
    assert sub.channels == 32
    for axis in range(3):
        n = sub.pairs[axis]
        assert torch.equal(sub.freqs[axis], full.freqs[axis][:n])
        assert sub.freqs[axis][0] == 1.0 and torch.all(sub.freqs[axis][1:] < sub.freqs[axis][:-1])
    assert [len(f) for f in full.freqs] == [22, 21, 21]


def test_fp8_latent_cache_error_is_bounded(seed):
    """e4m3 keeps 3 mantissa bits: per-token scaled latents stay within a few percent."""
    model = tiny_model(preset("tiny").with_mla())
    stream = StreamConfig(sink_frames=1, window_frames=4)
    x, t, context = torch.randn(1, 4, 12, 4, 6), torch.rand(1, 12) * 1000, torch.randn(1, 5, 32)
    with torch.no_grad():
        exact, _ = stream_chunks(model, x, t, context, stream, decoy=False)
        fp8, cache = stream_chunks(model, x, t, context, stream, decoy=False, latent_dtype=torch.float8_e4m3fn)
    assert cache.layers[0].buffers["c"].dtype == torch.float8_e4m3fn
    err = rel_err(fp8, exact)
    assert 0 < err < 0.03  # documented bound (docs/mla.md); 0 would mean fp8 was not used


def footprint(cfg: ModelConfig, kv_dtype: torch.dtype | None = None) -> KVFootprint:
    with torch.device("meta"):
        from videomla.model import CausalWanModel

        model = CausalWanModel(cfg)
    specs = model.cache_specs(torch.bfloat16, kv_dtype)
    return KVFootprint.of(specs, cfg.dim, torch.bfloat16, StreamConfig(), 1560)


def test_memory_accounting_matches_the_paper():
    dense = footprint(preset("wan2.1-t2v-1.3b"))
    mla = footprint(preset("wan2.1-t2v-1.3b").with_mla())
    fp8 = footprint(preset("wan2.1-t2v-1.3b").with_mla(), torch.float8_e4m3fn)
    assert dense.numbers_per_token_per_layer == [3072] * 30
    assert mla.numbers_per_token_per_layer == [224] * 30
    assert mla.bytes_per_token_per_layer == [448] * 30
    assert round(100 * mla.reduction, 1) == 92.7
    assert round(100 * fp8.payload_reduction, 1) == 96.4
    assert fp8.bytes_per_token_per_layer == [224 + 8] * 30  # two fp32 scales per token
    assert mla.cached_tokens == 7 * 1560
    assert mla.total_bytes == 448 * 30 * 7 * 1560


def test_info_cli_reports_224_numbers(capsys):
    assert main(["info", "--preset", "wan2.1-t2v-1.3b", "--attention", "mla"]) == 0
    text = capsys.readouterr().out
    assert "224 numbers" in text and "92.7% less" in text
    assert main(["info", "--preset", "wan2.1-t2v-1.3b", "--attention", "mla", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    kv = info["kv_cache"]
    assert kv["numbers_per_token_per_layer"] == 224 and kv["dense_numbers_per_token_per_layer"] == 3072
    assert round(100 * kv["reduction"], 1) == 92.7
    assert info["parameters"] == 1_303_118_080
    assert main(["info", "--preset", "wan2.1-t2v-1.3b", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["parameters"] == 1_418_996_800  # Wan2.1-T2V-1.3B


def test_bad_mla_configs():
    with pytest.raises(ValueError, match="must equal the head dim"):
        preset("tiny").with_mla(
            MLAConfig(kv_latent_dim=8, q_latent_dim=8, nope_head_dim=20, rope_head_dim=8, rope_pairs=(2, 1, 1))
        )
    with pytest.raises(ValueError, match="rope_pairs"):
        MLAConfig(rope_head_dim=32, rope_pairs=(6, 5, 4))
    with pytest.raises(ValueError, match="kv_latent_dim must be positive"):
        MLAConfig(kv_latent_dim=0)
    with pytest.raises(ValueError, match="RoPE pairs on axis"):
        preset("tiny").with_mla(
            MLAConfig(kv_latent_dim=8, q_latent_dim=8, nope_head_dim=12, rope_head_dim=20, rope_pairs=(2, 7, 1))
        )


def test_info_describes_every_kind_of_layer_of_a_mixed_checkpoint(tmp_path, capsys):
    from videomla.checkpoint import save_model

    cfg = preset("tiny").with_mla(layers=(0,))
    save_model(CausalWanModel(cfg), tmp_path / "mixed")
    assert main(["info", "--checkpoint", str(tmp_path / "mixed"), "--height", "64", "--width", "64"]) == 0
    text = capsys.readouterr().out
    mla = KVFootprint.of(CausalWanModel(cfg).cache_specs(torch.bfloat16), cfg.dim, torch.bfloat16, StreamConfig(), 1)
    mla = mla.numbers_per_token_per_layer[0]
    assert f"{mla} numbers in 1 layers" in text and f"{2 * cfg.dim} numbers in {cfg.num_layers - 1} layers" in text
    assert "KiB" in text  # a small cache is not printed as 0.000 GiB


def test_small_cpu_attention_equals_sdpa(seed, monkeypatch):
    """The CPU path for small folded multi-query attention (two matmuls) is SDPA's numbers."""
    import videomla.attention.common as common

    q, k, v = torch.randn(2, 48, 4, 24), torch.randn(2, 40, 1, 24), torch.randn(2, 40, 1, 16)
    small = common.attend(q, k, v, 0.2)
    monkeypatch.setattr(common, "SMALL_SCORES", 0)  # every problem is "large": the SDPA kernel
    reference = common.attend(q, k, v, 0.2)
    assert small.shape == (2, 48, 4, 16)
    assert rel_err(small, reference) < 1e-6


def test_small_cpu_attention_is_for_float32_only():
    """bf16 / fp16 take the SDPA kernel: the two-matmul path would keep low-precision scores (fp16 overflows)."""
    q, k, v = (torch.randn(1, 8, 4, 16, dtype=torch.float16) * 60, torch.randn(1, 20, 1, 16, dtype=torch.float16) * 60,
               torch.randn(1, 20, 1, 16, dtype=torch.float16))  # fmt: skip
    import videomla.attention.common as common

    assert torch.isfinite(common.attend(q, k, v, 0.25)).all()
