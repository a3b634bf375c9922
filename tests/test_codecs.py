"""Codecs and text encoders at real-scale wiring, on tiny random instances of the same classes.

The Wan2.1 VAE (diffusers ``AutoencoderKLWan``) decoded chunk by chunk must equal one full
decode; UMT5 (``transformers.UMT5EncoderModel``) must give Wan's zero-padded features; both load
from local folders only and plug into the generation pipeline.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from videomla.checkpoint import save_model
from videomla.codecs import PixelCodec, WanVAECodec
from videomla.config import preset
from videomla.pipeline import Pipeline
from videomla.text import HashTextEncoder, UMT5TextEncoder

from conftest import record_decoded_latents, tiny_model

WORDS = ["a", "red", "ball", "blue", "cube", "rolls", "on", "the", "floor", "slowly", "under", "bright", "light"]


@pytest.fixture(scope="module")
def vae_dir(tmp_path_factory) -> Path:
    """A tiny random Wan-architecture VAE: 4x spatial (two down levels), 2x temporal, 4 latent channels."""
    from diffusers import AutoencoderKLWan

    torch.manual_seed(0)
    vae = AutoencoderKLWan(
        base_dim=8,
        z_dim=4,
        dim_mult=[1, 2, 2],
        num_res_blocks=1,
        temperal_downsample=[False, True],
        latents_mean=[0.3, -0.2, 0.1, 0.0],
        latents_std=[1.5, 2.0, 0.7, 1.1],
    )
    root = tmp_path_factory.mktemp("wan") / "Wan-tiny-Diffusers"
    vae.save_pretrained(root / "vae")
    return root


@pytest.fixture(scope="module")
def umt5_dir(tmp_path_factory) -> Path:
    """A tiny random UMT5 encoder and a word-level tokenizer, saved like a Wan diffusers root."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast, UMT5Config, UMT5EncoderModel

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{w: i + 3 for i, w in enumerate(WORDS)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")
    torch.manual_seed(0)
    config = UMT5Config(
        vocab_size=len(vocab),
        d_model=32,
        d_kv=8,
        d_ff=48,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=16,
    )
    root = tmp_path_factory.mktemp("umt5") / "Wan-tiny-Diffusers"
    UMT5EncoderModel(config).eval().save_pretrained(root / "text_encoder")
    tokenizer.save_pretrained(root / "tokenizer")
    return root


# -- Wan VAE --------------------------------------------------------------------------------------
def test_vae_chunked_decode_equals_full_decode(vae_dir, seed):
    codec = WanVAECodec.from_folder(vae_dir)  # a diffusers root: finds vae/
    assert (codec.latent_channels, codec.spatial_stride, codec.temporal_stride) == (4, 4, 2)
    latents = torch.randn(1, 4, 8, 6, 5)
    with torch.no_grad():
        full = codec.vae.decode(codec.denormalize(latents)).sample  # diffusers' own one-shot decode
    assert full.shape == (1, 3, codec.frames_for(8), 24, 20)
    for sizes in ((3, 3, 2), (1, 1, 1, 1, 1, 1, 1, 1), (8,)):
        decoder = codec.stream_decoder()
        parts, start, produced = [], 0, 0
        for n in sizes:
            part = decoder.decode(latents[:, :, start : start + n])
            start += n
            assert part.shape[2] == codec.frames_for(start) - produced  # 1 + 2(n-1) layout, chunk by chunk
            produced += part.shape[2]
            parts.append(part)
        torch.testing.assert_close(torch.cat(parts, dim=2), full, rtol=1e-5, atol=1e-5)


def test_vae_state_stays_bounded(vae_dir):
    """The causal cache holds the same tensors' worth after 2 chunks as after 20: constant memory."""
    decoder = WanVAECodec.from_folder(vae_dir / "vae").stream_decoder()

    def held() -> int:
        return sum(t.numel() for t in decoder.feat_cache if isinstance(t, torch.Tensor))

    sizes = []
    for _ in range(20):
        decoder.decode(torch.randn(1, 4, 3, 6, 5))
        sizes.append(held())
    assert sizes[1] == sizes[19] > 0


def test_vae_normalisation_round_trip(vae_dir, seed):
    codec = WanVAECodec.from_folder(vae_dir)
    video = torch.rand(1, 3, 5, 24, 20) * 2 - 1
    z = codec.encode(video)
    assert z.shape == (1, 4, 3, 6, 5)
    with torch.no_grad():
        mu = codec.vae.encode(video).latent_dist.mode()
    torch.testing.assert_close(codec.denormalize(z), mu, rtol=1e-5, atol=1e-5)


def test_vae_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no Wan VAE at .*config\.json \+ diffusion_pytorch_model"):
        WanVAECodec.from_folder(tmp_path)


def test_pixel_codec_round_trip(seed):
    codec = PixelCodec(spatial_stride=2, scale=0.5)
    video = torch.rand(1, 3, 4, 6, 8) * 2 - 1
    latents = codec.encode(video)
    assert latents.shape == (1, 12, 4, 3, 4)
    torch.testing.assert_close(codec.stream_decoder().decode(latents), video, rtol=0, atol=1e-6)


# -- UMT5 -----------------------------------------------------------------------------------------
def test_umt5_features_are_zero_past_the_prompt(umt5_dir):
    enc = UMT5TextEncoder.from_folder(umt5_dir, max_tokens=12)
    prompts = ["a red ball rolls", "blue cube under bright light slowly"]
    out = enc.encode(prompts)
    assert out.shape == (2, 12, 32) and enc.text_dim == 32
    for i, prompt in enumerate(prompts):
        ids = enc.tokenizer(prompt, return_tensors="pt")["input_ids"]  # unpadded: prompt + </s>
        n = ids.shape[1]
        assert n == len(prompt.split()) + 1
        with torch.no_grad():
            alone = enc.encoder(input_ids=ids).last_hidden_state[0]
        torch.testing.assert_close(out[i, :n], alone, rtol=1e-4, atol=1e-5)  # padding changes nothing before n
        assert out[i, :n].abs().sum(-1).min() > 0
        assert torch.count_nonzero(out[i, n:]) == 0


def test_umt5_one_folder_layout_and_truncation(umt5_dir, tmp_path):
    import shutil

    flat = tmp_path / "umt5"
    shutil.copytree(umt5_dir / "text_encoder", flat)
    for f in (umt5_dir / "tokenizer").iterdir():
        shutil.copy(f, flat / f.name)
    enc = UMT5TextEncoder.from_folder(flat, max_tokens=4)
    with pytest.warns(UserWarning, match="keeps the first 4"):
        out = enc.encode("a red ball rolls on the floor")
    assert out.shape == (1, 4, 32) and torch.count_nonzero(out.abs().sum(-1)) == 4
    with pytest.raises(FileNotFoundError, match="no UMT5 text encoder"):
        UMT5TextEncoder.from_folder(tmp_path / "nothing")


def test_hash_encoder_is_stable():
    enc = HashTextEncoder(text_dim=16, max_tokens=4)
    a, b = enc.encode("A red ball"), enc.encode(["a red ball!"])
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert torch.count_nonzero(a[0, 3]) == 0
    with pytest.raises(ValueError, match="at most 4"):
        enc.encode("one two three four five")


# -- the pipeline on Wan-scale parts -------------------------------------------------------------
def test_pipeline_with_wan_vae_and_umt5(vae_dir, umt5_dir, tmp_path, monkeypatch, seed):
    from videomla.video_io import to_uint8

    cfg = dataclasses.replace(preset("tiny"), text_dim=32)  # tiny preset: 4 latent channels, like the tiny VAE
    ckpt = save_model(
        tiny_model(cfg),
        tmp_path / "wan-tiny",
        metadata={"video": {"height": 32, "width": 24, "fps": 16}, "text_encoder": {"type": "umt5", "max_tokens": 8}},
    )  # no codec section: the Wan VAE default, whose folder is given here
    pipe = Pipeline.from_checkpoint(ckpt, device="cpu", vae=vae_dir, text_encoder=umt5_dir)
    assert isinstance(pipe.codec, WanVAECodec) and isinstance(pipe.text_encoder, UMT5TextEncoder)
    latents = record_decoded_latents(pipe.codec, monkeypatch)
    # 1.5 s at 16 fps = 24 frames; 3 latent frames per chunk decode to 5 frames, then 6 per chunk
    chunks = list(pipe.stream([("a red ball", 0), ("a blue cube", 0.5)], 1.5, seed=seed, recache=True))
    assert [len(c.frames) for c in chunks] == [5, 6, 6, 6, 1]
    # 0.5 s = frame 8, in chunk 1 (frames 5-10): the switch (and its re-cache) happens there
    assert [c.prompt for c in chunks] == ["a red ball"] + ["a blue cube"] * 4
    assert pipe.summary.recaches == 1 and pipe.summary.frames == 24
    with torch.no_grad():
        full = pipe.codec.vae.decode(pipe.codec.denormalize(torch.cat(latents, dim=2))).sample
    want = to_uint8(full)[:24].numpy()
    got = np.concatenate([c.frames for c in chunks])
    assert got.shape == (24, 32, 24, 3)
    assert np.abs(got.astype(int) - want).max() <= 1  # float rounding at the uint8 step only
