"""The tiny Wan2.1 decoder (TAEHV's architecture): TAEHV's weight layout, streaming = one decode, bad files named."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from videomla.tiny_vae import Clamp, MemBlock, TGrow, TinyWanCodec, tiny_decoder

# TAEHV's decoder for Wan2.1 latents (taew2_1): every tensor's name and shape, as its released files hold them.
TAEW2_1_DECODER = {
    "decoder.1.weight": (256, 16, 3, 3), "decoder.1.bias": (256,),
    **{f"decoder.{i}.conv.{j}.{p}": shape for i, w in ((3, 256), (4, 256), (5, 256), (9, 128), (10, 128),
       (11, 128), (15, 64), (16, 64), (17, 64)) for j, n_in in ((0, 2 * w), (2, w), (4, w))
       for p, shape in (("weight", (w, n_in, 3, 3)), ("bias", (w,)))},
    "decoder.7.conv.weight": (256, 256, 1, 1), "decoder.8.weight": (128, 256, 3, 3),
    "decoder.13.conv.weight": (256, 128, 1, 1), "decoder.14.weight": (64, 128, 3, 3),
    "decoder.19.conv.weight": (128, 64, 1, 1), "decoder.20.weight": (64, 64, 3, 3),
    "decoder.22.weight": (3, 64, 3, 3), "decoder.22.bias": (3,),
}  # fmt: skip


def full_decode(decoder: torch.nn.Sequential, latents: torch.Tensor) -> torch.Tensor:
    """Reference: the whole video at once, each MemBlock's past the input shifted by one frame (zeros first)."""
    b, c, t, h, w = latents.shape
    x = latents.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w)
    with torch.no_grad():
        for layer in decoder:
            if isinstance(layer, MemBlock):
                frames = x.reshape(b, t, *x.shape[1:])
                past = torch.cat([torch.zeros_like(frames[:, :1]), frames[:, :-1]], dim=1)
                x = layer(x, past.reshape(x.shape))
            elif isinstance(layer, TGrow):
                y = layer.conv(x)  # frame k's channels [j*C, (j+1)*C) are output frame stride*k + j
                x = torch.stack(y.chunk(layer.stride, dim=1), dim=1).reshape(-1, *x.shape[1:])
                t *= layer.stride
            else:
                x = layer(x)
    video = x.reshape(b, t, *x.shape[1:]).permute(0, 2, 1, 3, 4)[:, :, 3:]
    return video.clamp(0, 1) * 2 - 1


def test_layout_is_taehv_wan21():
    state = tiny_decoder().state_dict()
    assert {f"decoder.{k}": tuple(v.shape) for k, v in state.items()} == TAEW2_1_DECODER


def test_streaming_equals_one_decode(seed):
    codec = TinyWanCodec.random("cpu", torch.float32, latent_channels=4, widths=(8, 8, 4, 4))
    for module in codec.decoder.modules():  # random biases, so the clamp and the ReLUs matter
        if isinstance(module, torch.nn.Conv2d) and module.bias is not None:
            torch.nn.init.normal_(module.bias, std=0.5)
    latents = torch.randn(2, 4, 8, 3, 5)
    full = full_decode(codec.decoder, latents)
    assert full.shape == (2, 3, codec.frames_for(8), 24, 40)
    for sizes in ((3, 3, 2), (1,) * 8, (8,), (1, 7)):
        decoder = codec.stream_decoder()
        parts, start = [], 0
        for n in sizes:
            part = decoder.decode(latents[:, :, start : start + n])
            start += n
            assert part.shape[2] == codec.frames_for(start) - sum(p.shape[2] for p in parts)
            parts.append(part)
        torch.testing.assert_close(torch.cat(parts, dim=2), full, rtol=1e-5, atol=1e-5)
    assert full.amin() >= -1 and full.amax() <= 1


def test_state_stays_one_frame_per_block():
    codec = TinyWanCodec.random("cpu", torch.float32, latent_channels=4, widths=(8, 8, 4, 4))
    decoder = codec.stream_decoder()
    sizes = []
    for _ in range(6):
        decoder.decode(torch.randn(1, 4, 3, 2, 2))
        sizes.append(sum(t.numel() for t in decoder.memory.values()))
    assert len(decoder.memory) == 9 and sizes[1] == sizes[5] > 0


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_loads_taehv_files(tmp_path, suffix, seed):
    state = {k: torch.randn(shape) for k, shape in TAEW2_1_DECODER.items()}
    state["encoder.0.weight"] = torch.randn(64, 3, 3, 3)  # a full TAEHV file: the encoder is ignored
    path = tmp_path / f"taew2_1{suffix}"
    save_file(state, path) if suffix == ".safetensors" else torch.save(state, path)
    codec = TinyWanCodec.from_file(path)
    loaded = codec.decoder.state_dict()
    assert all(torch.equal(loaded[k.removeprefix("decoder.")], state[k]) for k in TAEW2_1_DECODER)
    video = codec.stream_decoder().decode(torch.randn(1, 16, 2, 2, 3))
    assert video.shape == (1, 3, 5, 16, 24)
    with pytest.raises(NotImplementedError, match="only decodes"):
        codec.encode(video)
    (tmp_path / "other").mkdir()
    save_file({k: torch.randn(shape) for k, shape in TAEW2_1_DECODER.items()}, tmp_path / "other" / "taehv.safetensors")
    with pytest.warns(UserWarning, match="not named taew2_1.*Hunyuan"):
        TinyWanCodec.from_file(tmp_path / "other" / "taehv.safetensors")


def test_bad_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no tiny decoder at .*taew2_1\.pth or"):
        TinyWanCodec.from_file(tmp_path / "taew2_1-missing.pth")
    good = {k: torch.zeros(shape) for k, shape in TAEW2_1_DECODER.items()}
    cases = {
        "extra": ({**good, "decoder.23.weight": torch.zeros(1)}, r"unknown keys \['decoder.23.weight'\]"),
        "missing": ({k: v for k, v in good.items() if k != "decoder.8.weight"}, r"missing \['decoder.8.weight'\]"),
        "shape": ({**good, "decoder.1.weight": torch.zeros(256, 48, 3, 3)}, r"decoder.1.weight has shape \(256, 48"),
        "encoder-only": ({"encoder.0.weight": torch.zeros(1)}, "no 'decoder"),
    }
    for name, (state, message) in cases.items():
        save_file(state, tmp_path / f"taew2_1-{name}.safetensors")
        with pytest.raises(ValueError, match=message):
            TinyWanCodec.from_file(tmp_path / f"taew2_1-{name}.safetensors")
    torch.save([torch.zeros(1)], tmp_path / "taew2_1-list.pth")
    with pytest.raises(ValueError, match="not a state dict"):
        TinyWanCodec.from_file(tmp_path / "taew2_1-list.pth")


def test_clamp_is_taehv_soft_clamp():
    x = torch.tensor([-100.0, -0.01, 0.0, 0.01, 100.0])
    torch.testing.assert_close(Clamp()(x), torch.tensor([-3.0, -0.01, 0.0, 0.01, 3.0]), rtol=1e-4, atol=1e-5)


def test_pipeline_decodes_with_a_taehv_file(tmp_path, monkeypatch, seed):
    """``--vae FILE``: a Wan-latent checkpoint streams through the tiny decoder, and the summary says so."""
    from videomla.checkpoint import save_model
    from videomla.config import preset
    from videomla.pipeline import Pipeline
    from videomla.video_io import to_uint8

    from conftest import record_decoded_latents, tiny_model

    cfg = dataclasses.replace(preset("tiny"), in_channels=16, out_channels=16)  # Wan2.1's 16 latent channels
    ckpt = save_model(
        tiny_model(cfg), tmp_path / "wan-tiny", metadata={"video": {"height": 32, "width": 32, "fps": 16},
                                                          "text_encoder": {"type": "hash"}},
    )  # fmt: skip
    taehv = tmp_path / "taew2_1.safetensors"
    save_file({k: torch.randn(shape) * 0.05 for k, shape in TAEW2_1_DECODER.items()}, taehv)
    pipe = Pipeline.from_checkpoint(ckpt, device="cpu", vae=taehv)
    assert isinstance(pipe.codec, TinyWanCodec)
    latents = record_decoded_latents(pipe.codec, monkeypatch)
    chunks = list(pipe.stream([("a red ball", 0)], 1.0, seed=seed))
    assert [len(c.frames) for c in chunks] == [9, 7]  # 1 + 4k frames: 9, then 12 (16 frames asked for)
    assert pipe.summary.to_dict()["run"]["decoder"] == "taehv"
    want = to_uint8(full_decode(pipe.codec.decoder, torch.cat(latents, dim=2)))[:16].numpy()
    got = np.concatenate([c.frames for c in chunks])
    assert np.abs(got.astype(int) - want).max() <= 1


def test_bench_times_the_tiny_decoder(tmp_path):
    from videomla.cli import main

    out = tmp_path / "bench.json"
    argv = ["bench", "--preset", "tiny", "--device", "cpu", "--dtype", "fp32", "--height", "32", "--width", "48"]
    argv += ["--variants", "mla-auto", "--steady-chunks", "1", "--horizons", "5", "--batched-variants", ""]
    argv += ["--concurrency", "", "--decoder", "taehv", "--compile-backend", "eager", "--quiet", "--json", str(out)]
    assert main(argv) == 0
    report = json.loads(out.read_text())
    assert report["setup"]["decoder"] == "taehv"
    stream = report["variants"][0]["stream"]
    assert stream["vae_chunk_ms"] > 0 and stream["fps_with_vae"] > 0


def test_bench_refuses_a_decoder_without_decode(capsys):
    from videomla.cli import main

    argv = ["bench", "--preset", "tiny", "--device", "cpu", "--no-vae", "--decoder", "taehv", "--quiet"]
    assert main(argv) != 0
    assert "--decoder taehv times a decode, but --no-vae" in capsys.readouterr().err
