"""``videomla generate`` and the Python pipeline: streamed files, constant memory, prompt switches, recache."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import videomla
from videomla import checkpoint as checkpoint_module
from videomla.checkpoint import save_model
from videomla.cli import main
from videomla.config import StreamConfig, preset
from videomla.engine import LatentGeometry, StreamEngine, recache, replay_runs
from videomla.pipeline import GenerationSpec, Pipeline, parse_prompt, prompt_schedule

from conftest import tiny_model

DEFAULT_SCHEDULE = {"steps": [1000, 750, 500, 250], "shift": 5.0, "solver": "renoise"}
H, W, FPS = 24, 32, 8  # pixel codec stride 2: 12x16 latents, 6x8 = 48 tokens per frame
META = {
    "codec": {"type": "pixel", "spatial_stride": 2, "scale": 1.0, "offset": 0.0},
    "text_encoder": {"type": "hash", "text_dim": 32, "max_tokens": 16},
    "video": {"height": H, "width": W, "fps": FPS},
    "stream": {"frames_per_chunk": 3, "sink_frames": 1, "window_frames": 6, "rope_mode": "window-relative"},
}


def make_checkpoint(path: Path, mla: bool = False, metadata: dict | None = None) -> Path:
    cfg = dataclasses.replace(preset("tiny"), in_channels=12, out_channels=12)
    model = tiny_model(cfg.with_mla() if mla else cfg)
    return save_model(model, path, metadata=META if metadata is None else metadata)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny")


@pytest.fixture(scope="module")
def mla_ckpt(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny-mla", mla=True)


@pytest.fixture(scope="module")
def pipe(ckpt) -> Pipeline:
    return Pipeline.from_checkpoint(ckpt, device="cpu")


def decode_mp4(path: Path, keyframes: list | None = None) -> np.ndarray:
    import av

    frames = []
    with av.open(str(path)) as container:
        for f in container.decode(video=0):
            frames.append(f.to_ndarray(format="rgb24"))
            if keyframes is not None and f.key_frame:
                keyframes.append(len(frames) - 1)
    return np.stack(frames)


def luma(frames: np.ndarray) -> np.ndarray:
    """H.264 keeps luma; yuv420p chroma subsampling blurs the random model's per-pixel colour noise."""
    return frames.astype(float) @ np.array([0.299, 0.587, 0.114])


def assert_same_video(video: np.ndarray, frames: np.ndarray) -> None:
    """Lossy but the same frames in the same order: far closer to its own frame than to the next one."""
    assert video.shape == frames.shape
    err = np.abs(luma(video) - luma(frames)).mean()
    assert err < 0.25 * np.abs(luma(video[1:]) - luma(frames[:-1])).mean()


def collect(chunks) -> np.ndarray:
    return np.concatenate([c.frames for c in chunks])


# -- the schema ---------------------------------------------------------------------------------
def test_spec_round_trip_and_wan_defaults():
    spec = GenerationSpec.from_dict(META)
    assert spec.to_dict() == {**META, "video": {"height": H, "width": W, "fps": FPS}, "schedule": DEFAULT_SCHEDULE}
    assert GenerationSpec.from_dict(spec.to_dict()) == spec
    wan = GenerationSpec.from_dict({"format": "wan2.1"})  # foreign checkpoints carry no generation metadata
    assert (wan.codec.type, wan.text_encoder.type) == ("wan-vae", "umt5")
    assert (wan.video.height, wan.video.width, wan.video.fps) == (480, 832, 16.0)
    # ... and stream as their family was trained: Self-Forcing's 21 frames, no sink, absolute RoPE
    assert wan.stream == StreamConfig(sink_frames=0, window_frames=18, rope_mode="absolute")
    assert "self-forcing" in wan.stream_source
    with pytest.raises(ValueError, match="unknown keys"):
        GenerationSpec.from_dict({"codec": {"type": "pixel", "path": "x"}})
    with pytest.raises(ValueError, match="'type'"):
        GenerationSpec.from_dict({"text_encoder": {"type": "clip"}})
    with pytest.raises(ValueError, match="unknown keys"):
        GenerationSpec.from_dict({"video": {"height": 8, "fps": 8, "colour": True}})


def test_prompt_parsing():
    assert parse_prompt("a cat") == ("a cat", None)
    assert parse_prompt("a cat@20s") == ("a cat", 20.0)
    assert parse_prompt("mail me@home @ 7.5") == ("mail me@home", 7.5)
    for bad in ("x@abc", "x@", "@3s", "x@-1"):
        with pytest.raises(ValueError, match="malformed prompt"):
            parse_prompt(bad)
    assert prompt_schedule([("a", 0), ("b", 3)]) == [("a", 0.0), ("b", 3.0)]
    with pytest.raises(ValueError, match="must increase"):
        prompt_schedule([("a", 0), ("b", 3), ("c", 3)])
    with pytest.raises(ValueError, match="first prompt must start at 0"):
        prompt_schedule([("a", 1)])
    with pytest.raises(ValueError, match="needs a start time"):
        prompt_schedule(["a", "b"])


# -- files --------------------------------------------------------------------------------------
def test_mp4_has_every_frame(pipe, tmp_path, seed):
    out = tmp_path / "v.mp4"
    frames = collect(pipe.stream("a red ball", 2.5, out=out, seed=seed))
    keyframes: list[int] = []
    video = decode_mp4(out, keyframes)
    assert frames.shape == video.shape == (20, H, W, 3)  # 2.5 s x 8 fps; 7 chunks of 3, the last cut to 2
    assert keyframes == [0, 3, 6, 9, 12, 15, 18]  # one fragment per chunk
    assert_same_video(video, frames)


def test_gif_and_png_grid(pipe, tmp_path, seed):
    from PIL import Image

    gif = tmp_path / "v.gif"
    frames = collect(pipe.stream("a red ball", 1.5, out=gif, seed=seed))
    with Image.open(gif) as im:
        assert im.n_frames == len(frames) == 12
        im.seek(5)
        got = np.asarray(im.convert("RGB"), dtype=float)
        assert got.shape == (H, W, 3)
        assert np.abs(got - frames[5]).mean() < 0.25 * np.abs(got - frames[4]).mean()  # palette error only
        assert im.info["duration"] == 120  # 1/8 s in GIF centiseconds

    png = tmp_path / "grid.png"
    frames = collect(pipe.stream("a red ball", 3, out=png, seed=seed, grid_frames=5))
    grid = np.asarray(Image.open(png).convert("RGB"))
    assert grid.shape == (2 * H, 3 * W, 3)  # 5 frames in a 3-column grid
    for k, f in enumerate(np.linspace(0, 23, 5).round().astype(int)):  # lossless: exact frames
        r, c = divmod(k, 3)
        np.testing.assert_array_equal(grid[r * H : (r + 1) * H, c * W : (c + 1) * W], frames[f])
    assert not any(p.name.startswith(".grid") for p in tmp_path.iterdir())  # the temp file was renamed


def test_video_io_reads_what_its_writers_wrote(tmp_path, monkeypatch):
    from PIL import Image

    from videomla import video_io

    frames = np.zeros((6, 16, 24, 3), np.uint8)  # flat colours: nearly lossless through a GIF palette
    frames[:, 4:12, 6:18] = (200, 40, 40)
    frames[3:, :, :4] = 255
    for name, options in (("v.mp4", {"crf": 0, "pix_fmt": "yuv444p"}), ("v.gif", {})):
        writer = video_io.open_writer(tmp_path / name, video_io.format_for(name), 8, 16, 24, **options)
        writer.write(frames)
        writer.close()
        got, fps = video_io.read_frames(tmp_path / name)
        assert got.dtype == np.uint8 and got.shape == frames.shape and fps == pytest.approx(8, rel=0.05), name
        assert np.abs(got.astype(int) - frames).max() <= 2, name
        video, same_fps = video_io.load_video(tmp_path / name)
        assert video.shape == (3, 6, 16, 24) and same_fps == fps
        assert torch.equal(video, torch.from_numpy(got).permute(3, 0, 1, 2).float() / 127.5 - 1)

    clip = torch.from_numpy(frames).permute(3, 0, 1, 2).float() / 127.5 - 1  # [3, T, H, W] in [-1, 1]
    torch.save(clip[None], tmp_path / "batch.pt")  # a leading batch of 1 is dropped
    np.save(tmp_path / "last.npy", frames)  # channels last, uint8
    (tmp_path / "png").mkdir()
    for i, frame in enumerate(np.concatenate([frames, np.full((6, 16, 24, 1), 255, np.uint8)], -1)):  # RGBA
        Image.fromarray(frame).save(tmp_path / "png" / f"{i:03d}.png")
    for name in ("batch.pt", "last.npy", "png"):
        video, fps = video_io.load_video(tmp_path / name)
        assert fps is None and torch.equal(video, clip), name

    (tmp_path / "text.mp4").write_text("not a video")
    np.save(tmp_path / "bright.npy", clip.numpy() * 2)
    (tmp_path / "batch.pt.txt").touch()
    for name, error, message in (
        ("none.gif", FileNotFoundError, "no such video"),
        ("text.mp4", ValueError, "cannot read .*text.mp4 as video"),
        ("bright.npy", ValueError, r"must be in \[-1, 1\]"),
        ("batch.pt.txt", ValueError, "unknown format"),
    ):
        with pytest.raises(error, match=message):
            video_io.load_video(tmp_path / name)
    found = video_io.find_videos([tmp_path, tmp_path / "png"])  # a folder of videos, then a folder of frames
    videos = ("batch.pt", "bright.npy", "last.npy", "text.mp4", "v.gif", "v.mp4")
    assert found == [*(tmp_path / n for n in videos), tmp_path / "png"]
    assert video_io.find_videos([tmp_path / "png"]) == [tmp_path / "png"]

    class WithAlpha:  # a decoder giving RGBA frames and a frame duration, as GIFs with transparency do
        @staticmethod
        def imread(path, index=None, plugin=None):
            return np.concatenate([frames, np.zeros((6, 16, 24, 1), np.uint8)], -1)

        @staticmethod
        def immeta(path, plugin=None):
            return {"duration": 125}

    monkeypatch.setattr(video_io, "_imageio", lambda: WithAlpha)
    got, fps = video_io.read_frames(tmp_path / "v.gif")
    assert np.array_equal(got, frames) and fps == 8


def test_python_api_and_reuse(ckpt, pipe, tmp_path, seed):
    first = list(videomla.generate("a red ball", 1.5, ckpt, seed=seed, output="torch", device="cpu"))
    assert all(c.frames.dtype == torch.uint8 for c in first)
    again = collect(pipe.stream("a red ball", 1.5, seed=seed))
    np.testing.assert_array_equal(torch.cat([c.frames for c in first]).numpy(), again)
    assert [c.start_frame for c in first] == [0, 3, 6, 9]
    assert pipe.summary.frames == 12 and pipe.summary.chunks == 4 and pipe.summary.seed == seed
    other = collect(pipe.stream("a red ball", 1.5, seed=seed + 1))
    assert not np.array_equal(other, again)


# -- constant memory ----------------------------------------------------------------------------
@pytest.mark.parametrize("mla", [False, True])
def test_memory_after_chunk_10_equals_after_chunk_100(ckpt, mla_ckpt, mla, seed):
    pipe = Pipeline.from_checkpoint(mla_ckpt if mla else ckpt, device="cpu")
    seconds = 100 * 3 / FPS
    # a switch with KV-recache at chunk 50 must not allocate either
    seen = {}
    for chunk in pipe.stream([("a", 0), ("b", 50 * 3 / FPS)], seconds, seed=seed, recache=True):
        if chunk.index + 1 in (10, 100):
            buffers = [b for layer in pipe.engine.cache.layers for b in layer.buffers.values()]
            seen[chunk.index + 1] = (
                pipe.engine.cache.nbytes,
                [b.data_ptr() for b in buffers],
                [b.shape for b in buffers],
            )
    assert pipe.summary.chunks == 100 and pipe.summary.recaches == 1
    assert seen[10] == seen[100]
    assert pipe.summary.peak_cache_bytes == seen[100][0]
    if mla:  # the summary's comparison: an MLA window is smaller than a dense one
        assert pipe.summary.cache_window_bytes < pipe.summary.dense_window_bytes
    else:
        assert pipe.summary.cache_window_bytes == pipe.summary.dense_window_bytes


# -- interruption -------------------------------------------------------------------------------
def test_closing_the_generator_finishes_the_file(pipe, tmp_path, seed):
    out = tmp_path / "cut.mp4"
    chunks = pipe.stream("a red ball", 60, out=out, seed=seed)
    got = [next(chunks).frames for _ in range(3)]
    chunks.close()
    video = decode_mp4(out)
    assert video.shape == (9, H, W, 3)
    assert_same_video(video, np.concatenate(got))


def test_exception_mid_stream_keeps_the_earlier_file(pipe, tmp_path, monkeypatch, seed):
    out = tmp_path / "crash.gif"
    earlier = collect(pipe.stream("a red ball", 1.5, out=out, seed=seed))  # a good video to keep
    before = out.read_bytes()
    calls = {"n": 0}
    real = pipe.codec.stream_decoder

    class Failing:
        def __init__(self):
            self.inner = real()

        def decode(self, latents):
            calls["n"] += 1
            if calls["n"] == 5:
                raise RuntimeError("injected failure")
            return self.inner.decode(latents)

    monkeypatch.setattr(pipe.codec, "stream_decoder", Failing)
    with pytest.raises(RuntimeError, match="injected"):
        for _ in pipe.stream("a red ball", 60, out=out, seed=seed):
            pass
    from PIL import Image

    assert out.read_bytes() == before  # the failed run published nothing over it
    with Image.open(out) as im:
        assert im.n_frames == len(earlier) == 12
    assert [p.name for p in tmp_path.iterdir()] == ["crash.gif"]  # and left no temporary file


def test_killed_process_leaves_playable_mp4(ckpt, tmp_path):
    out = tmp_path / "killed.mp4"
    out.write_bytes(b"an earlier file")  # SIGKILL cannot publish: the earlier output stays
    entry = "import sys; from videomla.cli import main; sys.exit(main(sys.argv[1:]))"
    cmd = [sys.executable, "-c", entry, "generate", "--prompt", "a red ball", "--seconds", "600"]
    cmd += ["--out", str(out), "--checkpoint", str(ckpt), "--quiet", "--seed", "1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        frames = 0
        while frames < 9 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.3)
            partial = list(tmp_path.glob(".killed.mp4.*.partial.mp4"))  # written in place, renamed when done
            if partial and partial[0].stat().st_size > 0:
                try:
                    frames = len(decode_mp4(partial[0]))
                except Exception:  # header not complete yet
                    frames = 0
        assert proc.poll() is None, proc.stderr.read().decode()
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert out.read_bytes() == b"an earlier file"
    (partial,) = tmp_path.glob(".killed.mp4.*.partial.mp4")
    video = decode_mp4(partial)
    assert len(video) >= 9 and len(video) % 3 == 0  # whole chunks: one fragment per chunk
    assert video.shape[1:] == (H, W, 3)


def test_background_writer_keeps_order_and_reports_errors():
    from videomla.video_io import BackgroundWriter

    class Recorder:
        def __init__(self, fail_at: int | None = None):
            self.got, self.closed, self.fail_at = [], False, fail_at

        def write(self, frames, chunk_start=True):
            if len(self.got) == self.fail_at:
                raise OSError("disk full")
            self.got.append(int(frames[0, 0, 0, 0]))

        def close(self):
            self.closed = True

    inner = Recorder()
    writer = BackgroundWriter(inner, depth=1)
    for i in range(20):
        writer.write(np.full((1, 2, 2, 3), i, np.uint8))
    writer.close()
    assert inner.got == list(range(20)) and inner.closed

    inner = Recorder(fail_at=2)
    writer = BackgroundWriter(inner, depth=1)
    with pytest.raises(OSError, match="disk full"):
        for i in range(20):
            writer.write(np.full((1, 2, 2, 3), i, np.uint8))
            time.sleep(0.01)
    writer.close()  # the error was raised once; closing still closes the file
    assert inner.got == [0, 1] and inner.closed


# -- prompt switching ---------------------------------------------------------------------------
def spy_texts(pipe: Pipeline, monkeypatch) -> list[torch.Tensor]:
    """The embedded text of every forward_chunk call, in order."""
    texts: list[torch.Tensor] = []
    real = pipe.model.forward_chunk

    def spy(x, t, text, cache, write=False):
        texts.append(text)
        return real(x, t, text, cache, write)

    monkeypatch.setattr(pipe.model, "forward_chunk", spy)
    return texts


def test_prompt_switch_at_the_chunk_containing_the_time(pipe, monkeypatch, seed):
    texts = spy_texts(pipe, monkeypatch)
    plain = list(pipe.stream("a red ball", 3, seed=seed))
    texts.clear()
    switched = list(pipe.stream([("a red ball", 0), ("a blue cube", 2.0)], 3, seed=seed))
    # 2.0 s = frame 16, inside chunk 5 (frames 15-17)
    assert [c.prompt for c in switched] == ["a red ball"] * 5 + ["a blue cube"] * 3
    features = pipe.text_encoder.encode(["a red ball", "a blue cube"])
    with torch.no_grad():
        red, blue = pipe.model.embed_text(features)
    per_chunk = [texts[5 * k] for k in range(8)]  # 4 denoising passes + 1 clean write per chunk
    assert len(texts) == 40 and all(texts[5 * k + i] is per_chunk[k] for k in range(8) for i in range(5))
    for k, text in enumerate(per_chunk):
        torch.testing.assert_close(text[0], red if k < 5 else blue)
    for k in range(8):
        same = np.array_equal(plain[k].frames, switched[k].frames)
        assert same == (k < 5), f"chunk {k}"


@pytest.mark.parametrize("rope", ["window-relative", "absolute"])
def test_recache_under_the_same_prompt_changes_nothing(pipe, rope, seed):
    """With nothing evicted yet, re-running the window equals the original writes bit for bit."""
    stream = dataclasses.replace(pipe.spec.stream, rope_mode=rope)
    plain = collect(pipe.stream("a red ball", 3, seed=seed, stream=stream))
    # switch at chunk 2: the cache holds frames 0-5, all of chunks 0 and 1
    again = collect(pipe.stream([("a red ball", 0), ("a red ball", 0.75)], 3, seed=seed, stream=stream, recache=True))
    assert pipe.summary.recaches == 1
    np.testing.assert_array_equal(plain, again)


def test_recache_rebuilds_the_cache(pipe, seed):
    prompts = [("a red ball", 0), ("a blue cube", 2.0)]  # switch at chunk 5, after evictions
    no_recache = list(pipe.stream(prompts, 3, seed=seed))
    with_recache = list(pipe.stream(prompts, 3, seed=seed, recache=True))
    assert pipe.summary.recaches == 1
    for k in range(8):
        same = np.array_equal(no_recache[k].frames, with_recache[k].frames)
        assert same == (k < 5), f"chunk {k}"


def test_recache_replays_the_cached_frames(seed):
    model = tiny_model()
    stream = StreamConfig(frames_per_chunk=3, sink_frames=1, window_frames=4)
    geometry = LatentGeometry(4, 4, 4)
    a, b = torch.randn(1, 5, 32), torch.randn(1, 5, 32)
    with torch.no_grad():
        text_a, text_b = model.embed_text(a), model.embed_text(b)
    engine = StreamEngine(model, stream, geometry, keep_history=True)
    cache, chunks = engine.cache, []
    gen = torch.Generator().manual_seed(seed)
    for _ in range(4):
        chunks.append(engine.step(text_a, gen))
    history = engine.history
    every = torch.cat(chunks, dim=2)
    frames = sorted(cache.window.slot_frame)
    assert frames == [0, 8, 9, 10, 11]  # the sink and the 4 newest frames
    torch.testing.assert_close(history.latents(frames), every[:, :, frames], rtol=0, atol=0)
    assert replay_runs(frames, 3) == [[0], [8], [9, 10, 11]]

    # reference: a fresh cache written by hand, run by run, at the frames' own indices
    ref = model.new_cache(stream, 1, 4, 4)
    with torch.no_grad():
        for run in ([0], [8], [9, 10, 11]):
            ref.window.next_frame = run[0]
            model.forward_chunk(every[:, :, run], torch.zeros(1), text_b, ref, write=True)
    ptrs = [b.data_ptr() for layer in cache.layers for b in layer.buffers.values()]
    recache(model, cache, history, text_b)
    assert [b.data_ptr() for layer in cache.layers for b in layer.buffers.values()] == ptrs
    assert cache.window.next_frame == 12 and sorted(cache.window.slot_frame) == frames
    order = [cache.window.slot_frame.index(f) for f in frames]
    ref_order = [ref.window.slot_frame.index(f) for f in frames]
    tpf = cache.tokens_per_frame
    for layer, ref_layer in zip(cache.layers, ref.layers):
        for name in layer.buffers:
            got = torch.cat([layer.buffers[name][:, s * tpf : (s + 1) * tpf] for s in order], 1)
            want = torch.cat([ref_layer.buffers[name][:, s * tpf : (s + 1) * tpf] for s in ref_order], 1)
            torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_replay_runs_split_gaps_and_chunks():
    assert replay_runs([0, 2], 3) == [[0], [2]]  # sink 1 + window 1 after chunk 0
    assert replay_runs([0, 1, 2, 3, 4, 5], 3) == [[0, 1, 2], [3, 4, 5]]
    assert replay_runs([0, 1, 4, 5, 6], 3) == [[0, 1], [4, 5], [6]]


# -- bad input: one clear line, exit code 2 ------------------------------------------------------
def run_cli(args: list[str], capsys) -> tuple[int, str]:
    code = main(["generate", *args])
    captured = capsys.readouterr()
    return code, captured.err


def test_cli_writes_a_video_and_summary(ckpt, tmp_path, capsys):
    out = tmp_path / "v.mp4"
    args = ["--prompt", "a red ball", "--prompt", "a blue cube@1s", "--recache", "--seconds", "2", "--window", "2"]
    code = main(["generate", *args, "--out", str(out), "--checkpoint", str(ckpt), "--seed", "5"])
    assert code == 0
    text = capsys.readouterr().out
    assert "16 frames (2.0 s at 8 fps)" in text and "seed 5" in text and "1 re-caches" in text
    assert "KV cache: peak" in text and "dense cache of the same window" in text
    assert decode_mp4(out).shape == (16, H, W, 3)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--seconds", "0"], "--seconds must be positive"),
        (["--seconds", "-3"], "--seconds must be positive"),
        (["--prompt", "x@abc"], "malformed prompt 'x@abc'"),
        (["--prompt", "a", "--prompt", "late@99s"], "after the video ends"),
        (["--window", "0", "--sink", "0"], "leaves the cache no frame"),
        (["--out", "{tmp}/missing/v.mp4"], "output folder"),
        (["--out", "{tmp}"], "is a folder"),
        (["--out", "{tmp}/v.avi"], "cannot tell the output format"),
        (["--attention", "mla"], "checkpoint has dense attention in all layers"),
        (["--mla-path", "absorbed"], "an MLA path"),
        (["--vae", "{tmp}"], "uses the pixel codec"),
    ],
)
def test_cli_bad_input(ckpt, tmp_path, capsys, args, message):
    base = {"--prompt": "a red ball", "--seconds": "2", "--out": str(tmp_path / "v.mp4"), "--checkpoint": str(ckpt)}
    argv = [a.replace("{tmp}", str(tmp_path)) for a in args]
    extra = [x for k, v in base.items() if k not in argv for x in (k, v)]
    code, err = run_cli(argv + extra, capsys)
    assert code == 2 and message in err, err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_cli_bad_checkpoints(tmp_path, capsys, monkeypatch):
    common = ["--prompt", "a", "--seconds", "1", "--out", str(tmp_path / "v.mp4")]
    bogus = tmp_path / "weights.bin"
    bogus.write_bytes(b"not a checkpoint")
    code, err = run_cli([*common, "--checkpoint", str(bogus)], capsys)
    assert code == 2 and "cannot tell the checkpoint format" in err

    monkeypatch.setattr(checkpoint_module, "DEFAULT_CHECKPOINT", tmp_path / "no-default")
    code, err = run_cli(common, capsys)
    assert code == 2 and "no default model is installed" in err and "--checkpoint" in err

    wan = make_checkpoint(tmp_path / "wan-like", metadata={**META, "codec": {"type": "wan-vae"}})
    code, err = run_cli([*common, "--checkpoint", str(wan)], capsys)
    assert code == 2 and "--vae PATH" in err
    code, err = run_cli([*common, "--checkpoint", str(wan), "--vae", str(tmp_path / "nowhere")], capsys)
    assert code == 2 and "no Wan VAE at" in err and "AutoencoderKLWan" in err


def test_api_bad_input(pipe, tmp_path):
    with pytest.raises(ValueError, match=r"png-grid .* seconds"):
        pipe.stream("a", None, out=tmp_path / "g.png")
    with pytest.raises(ValueError, match="same chunk"):
        pipe.stream([("a", 0), ("b", 0.1)], 2)
    with pytest.raises(ValueError, match="seconds must be positive"):
        pipe.stream("a", float("nan"))
    with pytest.raises(ValueError, match="output must be"):
        pipe.stream("a", 1, output="list")
