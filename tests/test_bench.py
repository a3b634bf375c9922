"""`videomla bench` bookkeeping on CPU: FLOP counts, bytes per token, the JSON schema; and the fast paths.

Timings are never asserted (they are CPU noise here); the GPU numbers live in benchmarks/.
"""

from __future__ import annotations

import json

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from videomla.attention.common import fast_kernels
from videomla.benchmark import VARIANTS, ForwardShape, forward_flops, parse_variants, validate
from videomla.benchmark.measure import advance_cache
from videomla.benchmark.report import markdown, targets
from videomla.benchmark.runner import Bench, latent_frames
from videomla.cli import main
from videomla.codecs import WanVAECodec
from videomla.config import ModelConfig, StreamConfig, preset
from videomla.pipeline import CodecSpec

from conftest import rel_err, tiny_model

TINY_MLA = preset("tiny").with_mla()


def test_flops_by_hand_for_the_tiny_model():
    """Every product of one tiny dense forward, written out: dim 64, 2 heads of 32, FFN 128, 2 layers."""
    cfg = preset("tiny")
    b, frames, tpf, keys, text = 2, 3, 12, 84, 5
    n = b * frames * tpf  # 72 query tokens
    per_layer = (
        2 * n * 64 * 64 * 4  # q, k, v, o
        + 2 * n * keys * 2 * (32 + 32)  # scores + values over 84 keys, 2 heads
        + 2 * n * 64 * 64 * 2  # cross q, o
        + 2 * b * text * 64 * 128  # cross k, v of 5 text tokens
        + 2 * n * text * 2 * (32 + 32)  # cross attention
        + 2 * n * 64 * 128 * 2  # FFN
    )
    embed = 2 * n * (4 * 4) * 64 + 2 * b * frames * (32 * 64 + 64 * 64 + 64 * 384)  # patch 4ch x 1x2x2, time MLPs
    head = 2 * n * 64 * 16
    assert forward_flops(cfg, ForwardShape(b, frames, tpf, keys, text))["total"] == 2 * per_layer + embed + head


@pytest.mark.parametrize(
    ("cfg", "path"),
    [
        (preset("tiny"), "materialised"),
        (TINY_MLA, "materialised"),
        (TINY_MLA, "absorbed"),
        (preset("tiny").with_mla(layers=(1,)), "absorbed"),
    ],
)
def test_flops_match_torch_flop_counter(seed, cfg: ModelConfig, path: str):
    """The formula equals what torch counts while the model streams, at every cache fill level."""
    model = tiny_model(cfg).requires_grad_(False)
    b = 2
    text = model.embed_text(torch.randn(b, 5, cfg.text_dim))
    cache = model.new_cache(StreamConfig(sink_frames=1, window_frames=3), b, 6, 8, mla_path=path)
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH):  # the math backend's matmuls are visible to the counter
        model.forward_chunk(torch.randn(b, 4, 3, 6, 8), torch.zeros(b), text, cache)  # absorbed weights fold once
        for _ in range(3):
            keys = cache.active_tokens(3)
            with FlopCounterMode(display=False) as counter:
                model.forward_chunk(torch.randn(b, 4, 3, 6, 8), torch.full((b,), 500.0), text, cache, write=True)
            expected = forward_flops(cfg, ForwardShape(b, 3, 12, keys, 5), path)["total"]
            assert counter.get_total_flops() == expected


def test_video_frame_bookkeeping():
    assert latent_frames(5) == 21 and latent_frames(60) == 241 and latent_frames(300) == 1201
    frames_for = CodecSpec("wan-vae").frames_for
    assert frames_for(3) == 9 and frames_for(6) - frames_for(3) == 12
    assert frames_for(21) == 81  # a 5 s clip: 81 frames in 7 chunks


def test_advance_cache_reaches_the_streamed_state():
    """Fast-forwarding commits exactly the chunks a stream would, so slots and positions agree."""
    model = tiny_model()
    stream = StreamConfig(sink_frames=1, window_frames=6)
    fast, slow = (model.new_cache(stream, 1, 4, 4) for _ in range(2))
    assert advance_cache(fast, 30) == 10
    for _ in range(10):
        slow.commit(3)
    assert fast.window.slot_frame == slow.window.slot_frame and fast.window.next_frame == 30
    assert all(torch.equal(a, b) for a, b in zip(fast.window.positions(3), slow.window.positions(3)))


def test_variants_name_their_windows():
    assert VARIANTS["sf21"].stream.attended_frames == 21 and VARIANTS["sf21"].stream.sink_frames == 0
    assert VARIANTS["longlive12"].stream.attended_frames == 12 and VARIANTS["reward9"].stream.attended_frames == 9
    assert VARIANTS["dense-la6s1"].stream.attended_frames == 6 and VARIANTS["mla-auto"].stream.attended_frames == 10
    assert VARIANTS["mla-auto"].resolved_path(preset("wan2.1-t2v-1.3b").with_mla(), 4680) == "materialised"
    assert [v.name for v in parse_variants("mla-auto, sf21")] == ["mla-auto", "sf21"]
    with pytest.raises(ValueError, match="unknown variants"):
        parse_variants("sf21,nope")


def test_streaming_vae_decode_equals_whole_clip_decode(seed):
    """Chunk-by-chunk decoding with the carried causal cache equals diffusers' whole-clip decode.

    Float32 rounding only: a chunk's frames go through each conv in one call, diffusers' loop one by one.
    """
    config = dict(base_dim=8, z_dim=4, dim_mult=[1, 2, 2, 2], num_res_blocks=1)
    config.update(latents_mean=torch.randn(4).tolist(), latents_std=(torch.rand(4) + 0.5).tolist())
    z = torch.randn(1, 4, 7, 4, 6)
    for channels_last in (False, True):  # NDHWC weights: the layout generate uses on CUDA
        torch.manual_seed(seed)
        codec = WanVAECodec.random("cpu", torch.float32, channels_last=channels_last, **config)
        whole = codec.vae.decode(codec.denormalize(z)).sample.clamp(-1, 1)
        decoder = codec.stream_decoder()
        parts = [decoder.decode(z[:, :, s : s + 3]) for s in range(0, 7, 3)]
        assert [p.shape[2] for p in parts] == [9, 12, 4]
        assert rel_err(torch.cat(parts, 2), whole) < 1e-5


def test_fast_kernels_match_the_reference(seed):
    """Fused (inductor-compiled) helpers, fp32 RoPE tables, MQA folding: the same stream within 1e-5."""
    cfg = preset("tiny").with_mla(layers=(1,))  # one dense and one MLA block: every helper runs
    model = tiny_model(cfg)
    text = model.embed_text(torch.randn(2, 5, cfg.text_dim))
    xs = [torch.randn(2, 4, 3, 6, 8) for _ in range(4)]
    outs = []
    for fast in (False, True):
        cache = model.new_cache(StreamConfig(sink_frames=1, window_frames=3), 2, 6, 8, latent_dtype=torch.float8_e4m3fn)
        res = []
        with torch.no_grad(), fast_kernels() if fast else torch.no_grad():
            for path, x in zip(("materialised", "absorbed") * 2, xs):
                cache.mla_path = path  # both paths read the same fp8 cache
                res.append(model.forward_chunk(x, torch.full((2,), 700.0), text, cache))
                res.append(model.forward_chunk(x, torch.zeros(2), text, cache, write=True))
        outs.append(torch.stack(res))
    assert rel_err(outs[1], outs[0]) < 1e-5


@pytest.mark.parametrize("mla", [False, True])
def test_stream_slicing_changes_nothing(seed, mla):
    cfg = TINY_MLA if mla else preset("tiny")
    model = tiny_model(cfg)
    text = model.embed_text(torch.randn(3, 5, cfg.text_dim))
    outs = []
    for sliced in (False, True):
        model.set_stream_slicing(sliced)
        cache = model.new_cache(StreamConfig(sink_frames=1, window_frames=3), 3, 6, 8)
        torch.manual_seed(1)
        with torch.no_grad():
            outs.append(
                torch.stack(
                    [
                        model.forward_chunk(torch.randn(3, 4, 3, 6, 8), torch.full((3,), t), text, cache, write=True)
                        for t in (900.0, 0.0, 500.0)
                    ]
                )
            )
    assert rel_err(outs[1], outs[0]) < 1e-5


def test_cli_json_schema_and_bytes_per_token(tmp_path, capsys):
    """A CPU run of the tiny preset writes a report that follows the schema and counts cache bytes right."""
    out = tmp_path / "bench.json"
    md = tmp_path / "bench.md"
    argv = ["bench", "--preset", "tiny", "--device", "cpu", "--dtype", "fp32", "--height", "32", "--width", "48"]
    argv += ["--variants", "dense-s1w6,mla-auto,mla-fp8,mla-fp8c", "--steady-chunks", "1", "--horizons", "5,20"]
    argv += ["--batch-sizes", "2", "--batched-variants", "mla-auto", "--compile-backend", "eager", "--quiet"]
    argv += ["--no-vae"]  # the VAE path has its own test; here it would only add CPU time
    argv += ["--json", str(out), "--markdown", str(md)]
    assert main(argv) == 0
    report = json.loads(out.read_text())
    validate(report)
    assert not (tmp_path / "bench.json.partial").exists()
    by = {v["name"]: v for v in report["variants"]}
    cfg, mla = preset("tiny"), TINY_MLA.mla
    layers, dim = cfg.num_layers, cfg.dim
    assert by["dense-s1w6"]["kv_bytes_per_token"] == layers * 2 * dim * 4  # fp32 k and v
    assert by["mla-auto"]["kv_bytes_per_token"] == layers * (mla.kv_latent_dim + mla.rope_head_dim) * 4
    assert by["mla-fp8"]["kv_bytes_per_token"] == layers * (mla.kv_latent_dim + mla.rope_head_dim + 2 * 4)
    tpf = (32 // 16) * (48 // 16)
    slots = 1 + 6 + 3  # sink + window + staging chunk
    assert by["dense-s1w6"]["cache_allocated_bytes"] == slots * tpf * by["dense-s1w6"]["kv_bytes_per_token"]
    shape = ForwardShape(1, 3, tpf, 10 * tpf)
    assert (
        by["mla-auto"]["flops"]["per_chunk"] == 5 * forward_flops(TINY_MLA, shape, by["mla-auto"]["mla_path"])["total"]
    )
    assert set(by["mla-auto"]["memory"]) == {"5s", "20s"}
    assert by["mla-auto"]["memory"]["20s"]["method"] == "fast-forwarded"
    assert by["mla-auto"]["stream"]["video_frames"][:2] == [9, 12]
    assert [b["batch"] for b in by["mla-auto"]["batched"]] == [2] and by["dense-s1w6"]["batched"] == []
    err = by["mla-fp8c"]["compute_vs_bf16_rel_err"]  # fp8 linears against the same weights in fp32
    assert by["mla-fp8c"]["compute"] == "fp8" and 0 < err["last"] < 0.05 and len(err["per_chunk"]) == 5
    assert by["mla-auto"]["compute_vs_bf16_rel_err"] is None
    assert md.read_text() == markdown(report)
    assert "| mla-auto |" in capsys.readouterr().out


def test_schema_names_missing_and_mistyped_fields(tmp_path):
    report = {"schema": "videomla-bench/1", "meta": {}, "setup": {}, "peak_matmul": {}, "variants": [{}]}
    with pytest.raises(ValueError, match=r"missing 'targets'.*meta: missing 'date'.*variants\[0\]: missing 'name'"):
        validate(report)


def test_targets_compare_the_right_variants():
    def variant(name, fps, streams=None):
        stream = {"fps_transformer": fps, "fraction_of_matmul_peak": 0.5, "fps_with_vae": 20.0}
        return {
            "name": name,
            "stream": stream,
            "memory_flat": True,
            "concurrency": streams and {"max_streams": streams},
        }

    rows = {
        t["name"]: t
        for t in targets([variant("sf21", 20.0), variant("dense-s1w6", 40.0, 10), variant("mla-auto", 50.0, 90)])
    }
    assert rows["mla-auto / sf21 transformer FPS"]["value"] == 2.5 and rows["mla-auto / sf21 transformer FPS"]["met"]
    assert rows["mla-auto / dense-s1w6 concurrent streams"]["value"] == 9 and rows["mla-auto transformer FPS"]["met"]
    assert rows["mla-auto fraction of the matmul peak"]["met"] is False
    assert rows["mla-auto / sf21-eager transformer FPS (reference kernels)"]["met"] is None


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--variants", "sf21,bogus"], "unknown variants"),
        (["--steady-chunks", "0"], "--steady-chunks is too small"),
        (["--height", "100"], "not divisible by the VAE stride"),
    ],
)
def test_cli_bad_input(args, message, capsys):
    base = ["bench", "--preset", "tiny", "--device", "cpu", "--no-vae", "--quiet"]
    assert main(base + args) == 2
    assert message in capsys.readouterr().err


def test_memory_is_flat_when_peak_allocated_stays_within_one_percent():
    def point(peak, reserved):
        return {"peak_allocated": peak, "reserved": reserved, "segments": 1}

    assert Bench.is_flat({"5s": point(100, 200), "300s": point(100.5, 260)})  # reserved is not judged
    assert not Bench.is_flat({"5s": point(100, 200), "300s": point(103, 200)})
    assert Bench.is_flat({"5s": point(None, None), "300s": point(100, 200)}) is None
