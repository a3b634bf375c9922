"""What users of the peers reach for: prompt-file batches, LongLive JSONL, the diffusers-style call, continuation."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from videomla.checkpoint import save_model
from videomla.cli import main
from videomla.config import StreamConfig, preset
from videomla.engine import LatentGeometry, StreamEngine
from videomla.pipeline import GenerationRequest, GenerationSpec, Pipeline, resolve_device
from videomla.pipeline.batch import batch_items, read_prompt_file

from conftest import tiny_model

META = {
    "codec": {"type": "pixel", "spatial_stride": 2, "scale": 1.0, "offset": 0.0},
    "text_encoder": {"type": "hash", "text_dim": 32, "max_tokens": 16},
    "video": {"height": 24, "width": 32, "fps": 8},
}


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    model = tiny_model(dataclasses.replace(preset("tiny"), in_channels=12, out_channels=12))
    return save_model(model, tmp_path_factory.mktemp("api") / "tiny", META)


@pytest.fixture(scope="module")
def pipe(ckpt):
    return Pipeline.from_checkpoint(ckpt, device="cpu")


def test_prompt_files_txt_and_longlive_jsonl(tmp_path):
    spec = GenerationSpec.from_dict(META)
    txt = tmp_path / "p.txt"
    txt.write_text("a red ball\n# a comment\n\na blue cube\n")
    entries = read_prompt_file(txt, spec, 3)
    assert [e["prompts"] for e in entries] == [[("a red ball", 0.0)], [("a blue cube", 0.0)]]
    jsonl = tmp_path / "p.jsonl"
    lines = [
        {"prompts": ["a red ball", "a blue cube"], "switch_frame_indices": [6]},  # LongLive: latent frames
        {"prompts": [["a", 0], ["b", 2.5]], "name": "Timed One!", "seed": 7},
    ]
    jsonl.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    entries = read_prompt_file(jsonl, spec, 3)
    assert entries[0]["prompts"] == [("a red ball", 0.0), ("a blue cube", 6 / 8)]  # pixel codec: frame 6 at 8 fps
    assert entries[1] == {"prompts": [("a", 0.0), ("b", 2.5)], "name": "timed-one", "seed": 7}
    items = batch_items(entries, 2, base_seed=100)
    assert [(i.name, i.seed) for i in items] == [
        ("0000-a-red-ball-s0", 100),
        ("0000-a-red-ball-s1", 101),
        ("timed-one-s0", 7),
        ("timed-one-s1", 8),
    ]
    two = batch_items([{"prompts": [("a", 0.0)], "name": "a"}, {"prompts": [("b", 0.0)], "name": "b"}], 2, 100)
    assert [i.seed for i in two] == [100, 101, 102, 103]  # every video its own seed
    for bad, message in [
        ('{"prompts": ["a", "b"]}', "need 1 switch_frame_indices"),
        ('{"prompts": ["a", "b"], "switch_frame_indices": [4]}', "chunk start"),
        ('{"prompts": "a"}', "non-empty"),
        ('{"prompts": ["a"], "colour": 1}', "unknown keys"),
        ("not json", "not JSON"),
    ]:
        jsonl.write_text(bad + "\n")
        with pytest.raises(ValueError, match=message):
            read_prompt_file(jsonl, spec, 3)


def test_batch_cli_shards_over_processes(ckpt, tmp_path, monkeypatch):
    prompts = tmp_path / "p.txt"
    prompts.write_text("a red ball\na blue cube\na green cone\n")
    args = ["generate", "--checkpoint", str(ckpt), "--prompt-file", str(prompts), "--seconds", "1", "--seed", "5"]
    args += ["--format", "gif", "--quiet"]
    whole, split = tmp_path / "whole", tmp_path / "split"
    whole.mkdir(), split.mkdir()
    assert main([*args, "--out-dir", str(whole)]) == 0
    for rank in (0, 1):  # two torchrun processes share the list: every other item each
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        assert main([*args, "--out-dir", str(split)]) == 0
    names = sorted(p.name for p in whole.iterdir())
    assert names == sorted(p.name for p in split.iterdir()) and len(names) == 6
    for name in names:  # seeds depend on the item, not on the process: the same videos
        assert (whole / name).read_bytes() == (split / name).read_bytes() or name.endswith(".json")
    sidecar = json.loads((whole / "0002-a-green-cone.json").read_text())
    assert sidecar["seed"] == 7 and sidecar["run"]["prompts"] == [["a green cone", 0.0]]


def test_batch_cli_bad_input(ckpt, tmp_path, capsys):
    base = ["generate", "--checkpoint", str(ckpt), "--seconds", "1"]
    prompts = tmp_path / "p.txt"
    prompts.write_text("a\n")
    for args, message in [
        (["--prompt-file", str(prompts)], "needs --out-dir"),
        (["--prompt-file", str(prompts), "--out-dir", str(tmp_path / "none")], "not a folder"),
        (["--prompt-file", str(prompts), "--out-dir", str(tmp_path), "--prompt", "a"], "takes no --prompt"),
        (["--prompt", "a"], "give --prompt and --out"),
    ]:
        assert main(base + args) == 2
        assert message in capsys.readouterr().err


def test_diffusers_style_call(pipe, tmp_path, seed):
    out = pipe("a red ball", num_frames=10, num_inference_steps=4, seed=seed)
    assert out.frames.shape == (10, 24, 32, 3) and out.frames.dtype == np.uint8
    streamed = np.concatenate([c.frames for c in pipe.stream("a red ball", 10 / 8, seed=seed)])
    np.testing.assert_array_equal(out.frames, streamed)  # 4 even steps = the default list
    gen = torch.Generator().manual_seed(seed)
    by_generator = pipe("a red ball", num_frames=10, generator=gen, output_type="pt")
    np.testing.assert_array_equal(by_generator.frames.numpy(), out.frames)  # a generator seeded alike
    latent = pipe("a red ball", seconds=1.5, seed=seed, output_type="latent")
    assert latent.frames.shape == (1, 12, 12, 12, 16)  # 4 chunks of 3 latent frames
    two = pipe("a red ball", num_frames=3, num_inference_steps=2, seed=seed)
    assert two.summary.run["schedule"]["steps"] == [1000, 500]
    for kwargs, message in [
        ({}, "num_frames or seconds"),
        ({"num_frames": 0}, "positive integer"),
        ({"num_frames": 3, "output_type": "pil"}, "output_type"),
        ({"num_frames": 3, "num_inference_steps": 0}, "num_inference_steps"),
    ]:
        with pytest.raises(ValueError, match=message):
            pipe("a", **kwargs)
    saved = pipe.save_pretrained(tmp_path / "again")
    again = Pipeline.from_pretrained(saved, device="cpu")
    assert again.spec == pipe.spec
    np.testing.assert_array_equal(again("a red ball", num_frames=10, seed=seed).frames, out.frames)


def test_prefill_continues_the_stream_exactly(seed):
    """Committing a stream's own clean latents reproduces its cache; the next chunk is the same."""
    model = tiny_model()
    stream, geometry = StreamConfig(sink_frames=1, window_frames=3), LatentGeometry(4, 4, 6)
    with torch.no_grad():
        text = model.embed_text(torch.randn(1, 5, 32))
    original = StreamEngine(model, stream, geometry)
    gen = torch.Generator().manual_seed(seed)
    context = torch.cat([original.step(text, gen) for _ in range(4)], dim=2)
    continued = StreamEngine(model, stream, geometry)
    continued.prefill(context, text)
    assert continued.cache.window.slot_frame == original.cache.window.slot_frame
    for a, b in zip(continued.cache.layers, original.cache.layers):
        for name in a.buffers:
            torch.testing.assert_close(a.buffers[name], b.buffers[name], rtol=0, atol=0)
    state = gen.get_state()
    nxt = original.step(text, gen)
    gen.set_state(state)
    torch.testing.assert_close(continued.step(text, gen), nxt, rtol=0, atol=0)
    with pytest.raises(ValueError, match="whole number"):
        StreamEngine(model, stream, geometry).prefill(context[:, :, :4], text)


def test_continue_a_video_from_frames(pipe, seed):
    first = pipe("a red ball", num_frames=12, seed=seed)
    cont = pipe("a red ball", num_frames=6, seed=seed, context=first.frames[:9])
    assert cont.frames.shape == (6, 24, 32, 3) and cont.summary.run["context_frames"] == 9
    assert cont.summary.chunks == 2  # chunks after the 3 of context
    with pytest.raises(ValueError, match="uint8 frames"):
        pipe("a", num_frames=3, context=first.frames[:9].astype(np.float32))
    with pytest.raises(ValueError, match="an image or a context"):
        pipe("a", num_frames=3, context=first.frames[:9], image=first.frames[0])


def test_a_context_ending_mid_chunk_conditions_the_next_chunk(pipe, seed):
    """8 frames = 2 whole chunks + 2 frames: those 2 are given to the third chunk, not repeated in the output,
    and the stream equals an engine run that prefills 6 latent frames and steps with the 2 given."""
    first = pipe("a red ball", num_frames=12, seed=seed, output_type="np")
    cont = pipe("a red ball", num_frames=7, seed=seed, context=first.frames[:8], output_type="latent")
    assert cont.summary.run["context_frames"] == 8
    assert cont.frames.shape[2] == 7 and cont.summary.chunks == 3  # 1 new frame in chunk 3, then 2 chunks
    image = pipe("a red ball", num_frames=5, seed=seed, image=first.frames[0], output_type="np")
    assert image.frames.shape[0] == 5 and image.summary.run["context_frames"] == 1


def test_given_frames_enter_the_chunk_clean_and_come_back_unchanged(seed):
    model = tiny_model(preset("tiny"))
    stream, geometry = StreamConfig(sink_frames=1, window_frames=3), LatentGeometry(4, 4, 6)
    text = model.embed_text(torch.randn(1, 5, model.config.text_dim))
    given = torch.randn(1, 4, 1, 4, 6)
    seen: list[torch.Tensor] = []
    hook = model.patch_embedding.register_forward_hook(lambda _m, inputs, _o: seen.append(inputs[0][:, :, :1].clone()))
    x0 = StreamEngine(model, stream, geometry).step(text, torch.Generator().manual_seed(seed), given)
    hook.remove()
    assert torch.equal(x0[:, :, :1], given) and x0.shape[2] == 3
    assert all(torch.equal(s, given) for s in seen)  # every denoising pass and the cache write saw it clean
    plain = StreamEngine(model, stream, geometry).step(text, torch.Generator().manual_seed(seed))
    assert not torch.allclose(plain[:, :, 1:], x0[:, :, 1:])  # the rest of the chunk depends on it
    with pytest.raises(ValueError, match="first frames of one chunk"):
        StreamEngine(model, stream, geometry).step(text, None, torch.randn(1, 4, 3, 4, 6))


def test_context_lengths_follow_the_codec():
    """Wan-VAE: 1 + 4k video frames make whole latent frames (an image is 1); other counts are refused."""
    wan = GenerationSpec.from_dict(
        {**META, "codec": {"type": "wan-vae"}, "video": {"height": 8, "width": 8, "fps": 16}}
    )
    for n, latents in ((1, 1), (5, 2), (9, 3)):
        req = GenerationRequest.build(wan, "a", 1.0, context=np.zeros((n, 8, 8, 3), np.uint8))
        assert req.context_latents == latents
    with pytest.raises(ValueError, match="whole latent frames"):
        GenerationRequest.build(wan, "a", 1.0, context=np.zeros((6, 8, 8, 3), np.uint8))


def test_text_encoder_offload_moves_it_only_around_encoding(pipe, monkeypatch, seed):
    moves = []

    class Encoder(torch.nn.Module):
        def to(self, *args, **kwargs):
            moves.append(str(args[0]))
            return self

    monkeypatch.setattr(pipe.text_encoder, "encoder", Encoder(), raising=False)
    monkeypatch.setattr(pipe, "offload_text_encoder", True)
    list(pipe.stream("a red ball", 0.5, seed=seed))
    assert moves == ["cpu", "cpu"]  # to the model's device (cpu here) to encode, then back to cpu


def test_generate_warns_when_its_iterator_is_dropped_unused(ckpt, tmp_path):
    import gc

    import videomla

    stream = videomla.generate("a red ball", 1, ckpt, out=tmp_path / "v.gif", device="cpu")
    with pytest.warns(RuntimeWarning, match=r"never iterated: nothing was generated; .*v.gif was not written"):
        del stream
        gc.collect()
    used = videomla.generate("a red ball", 0.5, ckpt, device="cpu")
    assert len(list(used)) == 2  # iterated: no warning, frames as before


def test_generate_forwards_the_loading_options_and_checks_the_request_first(ckpt, monkeypatch):
    import inspect

    import videomla

    loading = list(inspect.signature(Pipeline.from_checkpoint).parameters)[1:]  # after `checkpoint`
    assert {*loading, "seed", "out", "stream"} <= set(inspect.signature(videomla.generate).parameters)
    calls = []
    load = Pipeline.from_checkpoint.__func__

    def spy(cls, checkpoint=None, **kwargs):
        calls.append(kwargs)
        return load(cls, checkpoint, **kwargs)

    monkeypatch.setattr(Pipeline, "from_checkpoint", classmethod(spy))
    with pytest.raises(ValueError, match="unknown output format 'avi'"):
        videomla.generate("a red ball", 1, ckpt, device="cpu", out="v.gif", format="avi")
    assert calls == []  # refused before the model loads
    with pytest.raises(ValueError, match="--kv-fp8 stores MLA latents in fp8, but"):
        videomla.generate("a red ball", 1, ckpt, device="cpu", kv_fp8=True, seed=3)
    assert calls == [{"device": "cpu", "kv_fp8": True}]  # seed went to the request, the rest to the loader
    with pytest.raises(TypeError, match="colour"):
        videomla.generate("a red ball", 1, ckpt, colour="red")


def test_resolve_device_is_the_one_device_check(monkeypatch):
    assert resolve_device("cpu") == resolve_device(torch.device("cpu")) == torch.device("cpu")
    assert resolve_device(None).type == ("cuda" if torch.cuda.is_available() else "cpu")
    for name, message in [
        ("nonsense", "--device 'nonsense' is not a device name; use cpu, cuda or cuda:N"),
        ("meta", "--device meta: unsupported"),
        ("cuda:99", "--device cuda:99"),
    ]:
        with pytest.raises(ValueError, match=message):
            resolve_device(name)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device(None) == torch.device("cpu")
    with pytest.raises(ValueError, match="--device cuda, but no CUDA device is available; use --device cpu"):
        resolve_device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("cuda:1") == torch.device("cuda:1")
    with pytest.raises(ValueError, match=r"--device cuda:2: this machine has 2 CUDA device\(s\)"):
        resolve_device("cuda:2")


def test_cli_continues_a_video_file(ckpt, tmp_path):
    first, second, summary = tmp_path / "a.gif", tmp_path / "b.gif", tmp_path / "b.json"
    base = ["generate", "--checkpoint", str(ckpt), "--prompt", "a red ball", "--quiet"]
    assert main([*base, "--seconds", "2", "--seed", "1", "--out", str(first)]) == 0
    assert (
        main([*base, "--seconds", "1", "--continue-from", str(first), "--out", str(second), "--summary", str(summary)])
        == 0
    )
    data = json.loads(summary.read_text())
    assert data["frames"] == 8 and data["run"]["context_frames"] == 15  # the last 5 whole chunks of 16 frames
    assert main([*base, "--seconds", "1", "--continue-from", str(tmp_path / "none.mp4"), "--out", str(second)]) == 2


def test_cli_animates_an_image(ckpt, tmp_path):
    """--image: any size is centre-cropped to the model's aspect and resized; the stream starts from it."""
    from PIL import Image

    from videomla.video_io import read_image

    wide = np.zeros((30, 80, 3), np.uint8)
    wide[:, 20:60] = 255  # the centre 40x30 box of the target aspect 4:3 is white; the sides are cropped
    Image.fromarray(wide).save(tmp_path / "wide.png")
    image = read_image(tmp_path / "wide.png", 24, 32)
    assert image.shape == (24, 32, 3) and image.min() >= 250
    out, summary = tmp_path / "v.gif", tmp_path / "v.json"
    base = ["generate", "--checkpoint", str(ckpt), "--prompt", "a red ball", "--quiet", "--seconds", "1"]
    assert main([*base, "--image", str(tmp_path / "wide.png"), "--out", str(out), "--summary", str(summary)]) == 0
    data = json.loads(summary.read_text())
    assert data["frames"] == 8 and data["run"]["context_frames"] == 1
    (tmp_path / "bad.png").write_bytes(b"not an image")
    assert main([*base, "--image", str(tmp_path / "bad.png"), "--out", str(out)]) == 2


def test_evaluate_reads_the_generate_sidecar(tmp_path, capsys):
    """`videomla evaluate VIDEO` finds the prompt in the NAME.json `generate` wrote beside it (the
    embedded default model: the evaluator scores 64x64 world frames)."""
    video, sidecar = tmp_path / "v.gif", tmp_path / "v.json"
    base = ["generate", "--quiet", "--seconds", "1", "--out", str(video)]
    assert main([*base, "--prompt", "a small red circle bouncing", "--summary", str(sidecar)]) == 0
    capsys.readouterr()
    assert main(["evaluate", str(video)]) == 0
    assert "prompt 'a small red circle bouncing'" in capsys.readouterr().out
    assert main([*base, "--prompt", "a red circle", "--prompt", "a blue square@0.5s", "--summary", str(sidecar)]) == 0
    assert main(["evaluate", str(video)]) == 2  # two prompts: the evaluator needs --prompt
    sidecar.write_text("{}")
    assert main(["evaluate", str(video)]) == 2
    assert main(["evaluate", str(video), "--prompt", "a red circle"]) == 0


def test_read_image_follows_exif_orientation_and_never_crops_to_nothing(tmp_path):
    from PIL import Image

    from videomla.video_io import read_image

    stored = np.zeros((40, 40, 3), np.uint8)
    stored[:, :20] = (255, 0, 0)  # red on the left as stored; Orientation 6 (rotate 90 CW) shows it on top
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(stored).save(tmp_path / "phone.jpg", exif=exif, quality=95)
    shown = read_image(tmp_path / "phone.jpg", 40, 40)
    assert shown[:20, :, 0].mean() > 200 and shown[20:, :, 0].mean() < 50
    Image.fromarray(np.full((1, 500, 3), 128, np.uint8)).save(tmp_path / "strip.png")
    assert abs(read_image(tmp_path / "strip.png", 200, 832).mean() - 128) < 2
