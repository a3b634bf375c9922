"""Fault injection (issue 18): full disks, signals, bad checkpoints, impossible sizes, closed pipes.

Every test asserts three things: the message (one line naming the problem, no traceback), the
exit code, and that nothing already written was lost. In-process tests inject faults through a
file object that fails after N bytes; the subprocess tests run the real ``videomla`` command and
signal it at several moments, or cap its file size (``RLIMIT_FSIZE``: the same ``write`` failure a
full disk gives, without needing a tmpfs). CPU only, bounded: the whole file runs in about a minute.
"""

from __future__ import annotations

import errno
import glob
import json
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from videomla import io_utils, video_io
from videomla.checkpoint import CheckpointError, check_text_encoder_folder, check_vae_folder, load_model, save_model
from videomla.cli import main
from videomla.config import preset

from conftest import tiny_model

SRC = Path(__file__).resolve().parents[1] / "src"
H = W = 32


def frames(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, H, W, 3), dtype=np.uint8)


def decode(path: Path) -> int:
    import av

    with av.open(str(path)) as container:
        return sum(1 for _ in container.decode(video=0))


def leftovers(folder: Path) -> list[str]:
    """Temporary files a writer left behind (names starting with a dot)."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


class FullDisk:
    """A binary file that accepts ``limit`` bytes, then fails every write like a full disk (ENOSPC)."""

    def __init__(self, raw, limit: int):
        self.raw, self.limit, self.written = raw, limit, 0

    def write(self, data) -> int:
        n = len(memoryview(data))
        if self.written + n > self.limit:
            raise OSError(errno.ENOSPC, "No space left on device")
        self.written += n
        return self.raw.write(data)

    def __getattr__(self, name):
        return getattr(self.raw, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.raw.close()


@pytest.fixture
def full_disk(monkeypatch):
    """Make every video writer's file fail after ``limit`` bytes; returns a setter for the limit."""
    state = {"limit": 10**12}
    real = video_io._open_fd
    monkeypatch.setattr(video_io, "_open_fd", lambda fd: FullDisk(real(fd), state["limit"]))
    return lambda limit: state.__setitem__("limit", limit)


# -- disk full, in process ---------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["mp4", "gif", "png-grid"])
def test_disk_full_keeps_the_earlier_output(tmp_path, full_disk, fmt):
    out = tmp_path / {"mp4": "v.mp4", "gif": "v.gif", "png-grid": "v.png"}[fmt]
    out.write_bytes(b"an earlier video")
    full_disk(3000)
    writer = video_io.open_writer(out, fmt, 8, H, W, total_frames=30)
    with pytest.raises(video_io.WriteError) as err:
        try:
            for k in range(10):
                writer.write(frames(3, k))
                time.sleep(0.02)  # let the encoder thread hit the limit
        finally:
            writer.close()
    msg = str(err.value)
    assert msg.startswith(f"cannot write {out}: no space left on device") and "\n" not in msg
    assert "earlier file of that name is left as it was" in msg
    assert out.read_bytes() == b"an earlier video"
    assert leftovers(tmp_path) == []


def test_disk_full_with_no_earlier_output_leaves_no_file(tmp_path, full_disk):
    out = tmp_path / "new.mp4"
    full_disk(100)  # not even the header fits
    with pytest.raises(video_io.WriteError, match="no space left"):
        writer = video_io.open_writer(out, "mp4", 8, H, W)
        try:
            writer.write(frames(3))
            time.sleep(0.05)
            writer.write(frames(3))
        finally:
            writer.close()
    assert list(tmp_path.iterdir()) == []


def test_atomic_helpers_keep_the_old_file_on_failure(tmp_path, monkeypatch):
    path = tmp_path / "report.json"
    io_utils.atomic_write_json(path, {"a": 1})
    assert json.loads(path.read_text()) == {"a": 1}
    with pytest.raises(TypeError):  # not serialisable: fails before any file is made
        io_utils.atomic_write_json(path, {"a": object()})
    real = os.fdopen
    monkeypatch.setattr(io_utils.os, "fdopen", lambda fd, *a, **k: FullDisk(real(fd, *a, **k), 3))
    with pytest.raises(OSError, match="No space left"):
        io_utils.atomic_write_text(path, "a longer text than three bytes")
    assert json.loads(path.read_text()) == {"a": 1} and leftovers(tmp_path) == []
    assert "no space left on device" in io_utils.os_error_message(OSError(errno.ENOSPC, "x"), path)


def test_atomic_folder_replaces_whole_or_not_at_all(tmp_path):
    target = tmp_path / "ckpt"
    with io_utils.atomic_folder(target) as tmp:
        (tmp / "a.txt").write_text("one")
    with pytest.raises(RuntimeError), io_utils.atomic_folder(target) as tmp:
        (tmp / "a.txt").write_text("two")
        raise RuntimeError("crash mid-write")
    assert (target / "a.txt").read_text() == "one" and leftovers(tmp_path) == []


@pytest.mark.parametrize("mask", [0o022, 0o027])
def test_files_get_the_umask_mode(tmp_path, mask):
    old = os.umask(mask)
    try:
        io_utils.atomic_write_text(tmp_path / "a.txt", "x")
        with io_utils.atomic_folder(tmp_path / "folder") as tmp:
            (tmp / "f").write_text("x")
        writer = video_io.open_writer(tmp_path / "v.gif", "gif", 8, H, W)
        writer.write(frames(2))
        writer.close()
        ckpt = save_model(tiny_model(), tmp_path / "ckpt")
    finally:
        os.umask(old)
    assert ckpt.stat().st_mode & 0o777 == 0o777 & ~mask  # not mkdtemp's 0700
    assert (ckpt / "model.safetensors").stat().st_mode & 0o777 == 0o666 & ~mask  # not save_file's 0600
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o666 & ~mask
    assert (tmp_path / "v.gif").stat().st_mode & 0o777 == 0o666 & ~mask
    assert (tmp_path / "folder").stat().st_mode & 0o777 == 0o777 & ~mask


# -- publishing rules --------------------------------------------------------------------------------
def test_mp4_temp_file_decodes_at_every_chunk_boundary(tmp_path):
    out = tmp_path / "v.mp4"
    writer = video_io.Mp4Writer(out, 8, H, W)
    (partial,) = tmp_path.glob(".v.mp4.*.partial.mp4")
    for k in range(1, 4):
        writer.write(frames(3, k))
        # a chunk's fragment is complete once the next keyframe starts: every earlier chunk decodes
        assert decode(partial) == 3 * (k - 1) and not out.exists()
    writer.close()
    assert decode(out) == 9 and leftovers(tmp_path) == []


@pytest.mark.parametrize("fmt", ["mp4", "gif", "png-grid"])
def test_failure_discards_interrupt_publishes(tmp_path, fmt):
    suffix = {"mp4": ".mp4", "gif": ".gif", "png-grid": ".png"}[fmt]
    out = tmp_path / f"v{suffix}"
    out.write_bytes(b"old")
    writer = video_io.open_writer(out, fmt, 8, H, W, total_frames=12)
    with pytest.raises(RuntimeError):
        try:
            writer.write(frames(3))
            raise RuntimeError("the run failed")
        finally:
            writer.close()  # while an error propagates: the earlier file stays
    assert out.read_bytes() == b"old" and leftovers(tmp_path) == []
    writer = video_io.open_writer(out, fmt, 8, H, W, total_frames=12)
    with pytest.raises(KeyboardInterrupt):
        try:
            writer.write(frames(3))
            raise KeyboardInterrupt
        finally:
            writer.close()  # Ctrl-C: the frames so far are published
    assert out.read_bytes() != b"old" and leftovers(tmp_path) == []
    if fmt == "mp4":
        assert decode(out) == 3
    else:
        from PIL import Image

        with Image.open(out) as im:
            assert getattr(im, "n_frames", 1) == (3 if fmt == "gif" else 1)


@pytest.mark.parametrize("fmt", ["mp4", "gif", "png-grid"])
def test_interrupt_before_the_first_frame_publishes_nothing(tmp_path, fmt):
    out = tmp_path / f"v.{fmt.removesuffix('-grid')}"
    out.write_bytes(b"old")
    writer = video_io.open_writer(out, fmt, 8, H, W, total_frames=12)
    with pytest.raises(KeyboardInterrupt):
        try:
            raise KeyboardInterrupt
        finally:
            writer.close()
    assert out.read_bytes() == b"old" and leftovers(tmp_path) == []


def test_mp4_crf_and_pix_fmt(tmp_path):
    import av

    out = tmp_path / "v444.mp4"
    writer = video_io.open_writer(out, "mp4", 8, 30, 34 + 1, crf=0, pix_fmt="yuv444p")  # odd width: fine in 4:4:4
    writer.write(np.full((3, 30, 35, 3), 77, np.uint8))
    writer.close()
    with av.open(str(out)) as c:
        stream = c.streams.video[0]
        assert stream.codec_context.pix_fmt == "yuv444p"
        first = next(c.decode(video=0)).to_ndarray(format="rgb24")
    assert np.abs(first.astype(int) - 77).max() <= 1  # crf 0: lossless up to the RGB<->YUV rounding
    for kwargs, message in (
        ({"pix_fmt": "yuv422p"}, "pixel format must be one of"),
        ({"crf": 52}, "crf must be an integer from 0"),
        ({"crf": 1.5}, "crf must be an integer"),
    ):
        with pytest.raises(ValueError, match=message):
            video_io.open_writer(tmp_path / "x.mp4", "mp4", 8, H, W, **kwargs)
    with pytest.raises(ValueError, match="even frame size"):
        video_io.open_writer(tmp_path / "x.mp4", "mp4", 8, 31, W)
    with pytest.raises(ValueError, match="mp4 options"):
        video_io.open_writer(tmp_path / "x.gif", "gif", 8, H, W, crf=10)
    assert leftovers(tmp_path) == [] and sorted(p.name for p in tmp_path.iterdir()) == ["v444.mp4"]


def test_missing_writer_module_is_named_before_anything_loads(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "av", None)  # `import av` now raises ImportError
    with pytest.raises(video_io.MissingWriterError, match=r'writing mp4 needs PyAV.*pip install "videomla\[video\]"'):
        video_io.format_for(tmp_path / "v.mp4")
    monkeypatch.setitem(sys.modules, "PIL", None)
    for name in ("v.gif", "v.png"):
        with pytest.raises(ImportError, match=r"needs Pillow.*videomla\[video\]"):
            video_io.format_for(tmp_path / name)
    assert video_io.format_for(tmp_path / "v.mp4", check_modules=False) == "mp4"
    assert list(tmp_path.iterdir()) == []


def test_output_path_checks(tmp_path):
    (tmp_path / "loop1").symlink_to(tmp_path / "loop2")
    (tmp_path / "loop2").symlink_to(tmp_path / "loop1")
    with pytest.raises(ValueError, match="is a symbolic link loop"):
        video_io.check_writable(tmp_path / "loop1")
    with pytest.raises(ValueError, match=r"output folder .* symbolic link loop"):
        video_io.check_writable(tmp_path / "loop1" / "v.mp4")
    real = tmp_path / "real.gif"
    real.write_bytes(b"old")
    (tmp_path / "link.gif").symlink_to(real)
    writer = video_io.open_writer(tmp_path / "link.gif", "gif", 8, H, W)
    writer.write(frames(2))
    writer.close()
    assert (tmp_path / "link.gif").is_symlink() and real.read_bytes()[:3] == b"GIF"  # written through the link


# -- checkpoints -------------------------------------------------------------------------------------
@pytest.fixture
def ckpt(tmp_path, seed):
    return save_model(tiny_model(), tmp_path / "ckpt")


def edit(ckpt: Path, change) -> Path:
    state = load_file(ckpt / "model.safetensors")
    change(state)
    save_file(state, ckpt / "model.safetensors")
    return ckpt


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda s: s["head.head.weight"].view(-1).__setitem__(3, float("nan")), r"head\.head\.weight \(1 NaN of"),
        (lambda s: s["blocks.0.ffn.0.weight"].fill_(float("inf")), r"blocks\.0\.ffn\.0\.weight \(8192 Inf of 8192\)"),
        (lambda s: [v.fill_(float("nan")) for v in s.values()], r"tensors with NaN/Inf: .* and \d+ more"),
    ],
    ids=["one-nan", "inf-tensor", "all-nan"],
)
def test_non_finite_checkpoints_are_refused(ckpt, capsys, change, message):
    edit(ckpt, change)
    with pytest.raises(CheckpointError, match=message):
        load_model(ckpt)
    assert main(["info", "--checkpoint", str(ckpt)]) == 2
    err = capsys.readouterr().err
    assert "holds non-finite values (NaN/Inf)" in err and "Traceback" not in err


@pytest.mark.parametrize("dtype", [torch.int32, torch.uint8, torch.bool, torch.int64])
def test_integer_checkpoints_are_refused(ckpt, dtype):
    edit(ckpt, lambda s: s.__setitem__("head.head.bias", s["head.head.bias"].to(dtype)))
    name = str(dtype).removeprefix("torch.")
    with pytest.raises(CheckpointError, match=rf"non-floating tensors.*\n  1 tensors: head\.head\.bias \({name}\)"):
        load_model(ckpt)


def _header_only(data: bytes) -> bytes:
    return data[: 8 + int.from_bytes(data[:8], "little")]


@pytest.mark.parametrize(
    ("suffix", "content", "message"),
    [
        (".safetensors", lambda d: b"", "is not a checkpoint: it is empty"),
        (
            ".safetensors",
            lambda d: os.urandom(4096),
            "is not a checkpoint: it does not start with a safetensors header",
        ),
        (".safetensors", lambda d: d[: len(d) // 2], "is truncated: its header describes"),
        (".safetensors", _header_only, "is truncated: its header describes"),
        (".pt", lambda d: b"", "is not a checkpoint: it is empty"),
        (".pt", lambda d: os.urandom(4096), "is not a checkpoint: it is neither a torch.save zip nor a pickle"),
        (".pt", lambda d: d[: len(d) // 2], "is truncated: its zip directory"),
    ],
    ids=["st-empty", "st-random", "st-truncated", "st-header-only", "pt-empty", "pt-random", "pt-truncated"],
)
def test_broken_files_are_not_checkpoints(tmp_path, seed, suffix, content, message, capsys):
    path = tmp_path / f"model{suffix}"
    state = tiny_model().state_dict()
    if suffix == ".pt":
        torch.save(state, path)
    else:
        save_file(state, path)
    path.write_bytes(content(path.read_bytes()))
    with pytest.raises(CheckpointError, match=message):
        load_model(path, preset="tiny")
    out = tmp_path / "v.mp4"
    code = main(["generate", "--prompt", "a", "--seconds", "1", "--out", str(out), "--checkpoint", str(path)])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "--vae" not in err and err.count("\n") == 1  # no VAE hint
    assert not out.exists() and leftovers(tmp_path) == []


def test_symlink_loop_checkpoint(tmp_path, capsys):
    (tmp_path / "a").symlink_to(tmp_path / "b")
    (tmp_path / "b").symlink_to(tmp_path / "a")
    with pytest.raises(CheckpointError, match="is a symbolic link loop"):
        load_model(tmp_path / "a")
    assert main(["info", "--checkpoint", str(tmp_path / "a")]) == 2
    assert "symbolic link loop" in capsys.readouterr().err


def test_vae_and_text_encoder_folders_are_checked(tmp_path):
    vae = tmp_path / "vae"
    vae.mkdir()
    with pytest.raises(FileNotFoundError, match=r"no Wan VAE at .*AutoencoderKLWan"):
        check_vae_folder(vae)
    (vae / "config.json").write_text("{broken")
    with pytest.raises(CheckpointError, match=r"config\.json \(JSON\)"):
        check_vae_folder(vae)
    (vae / "config.json").write_text(json.dumps({"_class_name": "AutoencoderKL"}))
    with pytest.raises(CheckpointError, match="describes AutoencoderKL, not an AutoencoderKLWan"):
        check_vae_folder(vae)
    (vae / "config.json").write_text(json.dumps({"_class_name": "AutoencoderKLWan"}))
    with pytest.raises(FileNotFoundError, match=r"has a config\.json but no weights"):
        check_vae_folder(vae)
    (vae / "diffusion_pytorch_model.safetensors").write_bytes(os.urandom(100))
    with pytest.raises(CheckpointError, match="is not a checkpoint"):
        check_vae_folder(tmp_path)  # the root holding vae/
    enc = tmp_path / "te"
    (enc / "text_encoder").mkdir(parents=True)
    (enc / "tokenizer").mkdir()
    (enc / "text_encoder" / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(CheckpointError, match="not a UMT5 encoder"):
        check_text_encoder_folder(enc)
    (enc / "text_encoder" / "config.json").write_text(json.dumps({"model_type": "umt5"}))
    save_file({"w": torch.zeros(2)}, enc / "text_encoder" / "model.safetensors")
    with pytest.raises(FileNotFoundError, match="no tokenizer in"):
        check_text_encoder_folder(enc)
    (enc / "tokenizer" / "tokenizer.json").write_text("{}")
    assert check_text_encoder_folder(enc) == (enc / "text_encoder", enc / "tokenizer")


# -- impossible sizes and other bad arguments -----------------------------------------------------------
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["info", "--height", "0"], "--height must be a positive number of pixels, got 0"),
        (["info", "--width", "-16"], "--width must be a positive number of pixels, got -16"),
        (["info", "--vae-stride", "0"], "--vae-stride must be >= 1"),
        (["info", "--height", "33"], "--height 33 is not a multiple of the VAE stride 8; use 32 or 40"),
        (["info", "--height", "24", "--width", "24"], "not divisible by the patch 2x2"),
        (["rank", "--preset", "tiny", "--out", "{tmp}/r", "--seed", str(2**64)], "seed must be from 0 to 2**64 - 1"),
        (["convert", "{tmp}/x", "{tmp}/y", "--seed", "-1"], "seed must be from 0"),
        (["convert", "{tmp}/x", "{tmp}/y", "--device", "nonsense"], "'nonsense' is not a device name"),
        (["rank", "--preset", "tiny", "--out", "{tmp}/r", "--activations", "--device", "cuda:7"], "--device cuda:7"),
        (["bench", "--device", "cuda"], "--device cuda"),  # the one device check, here too
        (["bench", "--device", "nonsense"], "'nonsense' is not a device name"),
    ],
)
def test_bad_sizes_and_arguments(tmp_path, capsys, args, message):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in args]
    if "cuda" in message and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(SystemExit) if "seed" in message else _nothing() as exited:
        code = main(argv)
    code = exited.value.code if "seed" in message else code
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err, err
    assert list(tmp_path.iterdir()) == []  # refused before anything was written


class _nothing:
    value = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_any_other_error_is_one_line_and_debug_shows_the_traceback(monkeypatch, capsys):
    import videomla.cli.info as info

    def boom(args):
        raise RuntimeError("something deep inside\nsecond line")

    monkeypatch.setattr(info, "run", boom)
    assert main(["info"]) == 1
    err = capsys.readouterr().err
    assert err == "videomla info: error: RuntimeError: something deep inside (--debug shows the traceback)\n"
    assert main(["--debug", "info"]) == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "something deep inside" in err
    assert main(["info", "--debug"]) == 1 and "Traceback" in capsys.readouterr().err

    def huge(args):
        raise RuntimeError(
            "[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: "
            "you tried to allocate 8192000032768 bytes. Error code 12 (Cannot allocate memory)"
        )

    monkeypatch.setattr(info, "run", huge)
    assert main(["info"]) == 1
    err = capsys.readouterr().err
    assert (
        err.startswith("videomla info: error: out of memory: an allocation of 7,629.4 GiB failed")
        and err.count("\n") == 1
    )

    def full(args):
        raise OSError(errno.ENOSPC, "No space left on device", "/data/out.json")

    monkeypatch.setattr(info, "run", full)
    assert main(["info"]) == 1
    assert capsys.readouterr().err == "videomla info: error: /data/out.json: no space left on device\n"


# -- the real command, signalled and starved ----------------------------------------------------------
def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1", "VIDEOMLA_DEBUG": ""}


def _videomla(args: list[str], **kwargs) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "videomla", *args], env=_env(), stderr=subprocess.PIPE, text=True, **kwargs
    )


def _wait_for_torch(proc: subprocess.Popen, limit: float = 60) -> None:
    """Until the process maps libtorch: videomla's own code runs (torch is imported by the CLI's set-up)."""
    maps = Path(f"/proc/{proc.pid}/maps")
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if "libtorch" in maps.read_text():
                return
        except OSError:
            return  # no /proc: fall back to the fixed delays of the caller
        time.sleep(0.005)


def _wait_for_frames(folder: Path, name: str, proc: subprocess.Popen, size: int = 2000, limit: float = 90) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline and proc.poll() is None:
        partial = glob.glob(str(folder / f".{name}.*.partial*"))
        if partial and os.path.getsize(partial[0]) > size:
            return
        time.sleep(0.1)
    raise AssertionError(f"no frames after {limit} s: {proc.stderr.read() if proc.poll() is not None else ''}")


@pytest.mark.parametrize(
    ("fmt", "sig", "moment"),
    [
        ("mp4", signal.SIGINT, 0.0),  # while torch is being imported
        ("mp4", signal.SIGTERM, 1.0),  # a second later: importing or loading, depending on the machine
        ("mp4", signal.SIGINT, "frames"),
        ("mp4", signal.SIGTERM, "frames"),
        ("gif", signal.SIGINT, "frames"),
    ],
    ids=["mp4-int-startup", "mp4-term-loading", "mp4-int-frames", "mp4-term-frames", "gif-int-frames"],
)
def test_signals_leave_the_old_file_or_a_playable_one(tmp_path, fmt, sig, moment):
    out = tmp_path / f"v.{fmt}"
    out.write_bytes(b"an earlier video")
    proc = _videomla(["generate", "--prompt", "a red ball", "--seconds", "600", "--out", str(out), "--quiet"])
    try:
        if moment == "frames":
            _wait_for_frames(tmp_path, out.name, proc)
        else:
            _wait_for_torch(proc)
            time.sleep(moment)
        proc.send_signal(sig)
        err = proc.communicate(timeout=60)[1]
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == (130 if sig == signal.SIGINT else 143), err
    assert "Traceback" not in err and err.count("\n") <= 1, err
    assert leftovers(tmp_path) == []
    if moment != "frames":
        assert out.read_bytes() == b"an earlier video"  # nothing was generated yet: nothing replaced
    elif fmt == "mp4":
        assert decode(out) >= 3
    else:
        from PIL import Image

        with Image.open(out) as im:
            assert im.n_frames >= 3


def test_second_ctrl_c_while_finishing_is_no_traceback(tmp_path):
    out = tmp_path / "v.mp4"
    proc = _videomla(["generate", "--prompt", "a red ball", "--seconds", "600", "--out", str(out), "--quiet"])
    try:
        _wait_for_frames(tmp_path, out.name, proc)
        proc.send_signal(signal.SIGINT)
        time.sleep(0.02)
        proc.send_signal(signal.SIGINT)
        err = proc.communicate(timeout=60)[1]
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130 and "Traceback" not in err, err
    assert decode(out) >= 3 and leftovers(tmp_path) == []


def _cap_file_size(limit: int):
    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the cap fail with EFBIG, like a full disk
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def test_full_disk_during_generate_keeps_the_earlier_video(tmp_path):
    out = tmp_path / "v.mp4"
    out.write_bytes(b"an earlier video")
    proc = _videomla(
        ["generate", "--prompt", "a red ball", "--seconds", "30", "--out", str(out), "--quiet"],
        preexec_fn=_cap_file_size(16_000),
    )
    err = proc.communicate(timeout=120)[1]
    assert proc.returncode == 1, err
    assert err.startswith(f"videomla generate: error: cannot write {out}: file too large") and err.count("\n") == 1
    assert out.read_bytes() == b"an earlier video" and leftovers(tmp_path) == []


def test_closed_pipe_is_quiet(tmp_path):
    read, write = os.pipe()
    os.close(read)  # like `videomla info --json | head -0`: nobody reads what it prints
    try:
        proc = _videomla(["info", "--json"], stdout=write)
    finally:
        os.close(write)
    err = proc.communicate(timeout=60)[1]
    assert proc.returncode == 141 and err == "", err


def test_every_command_runs_with_its_defaults_on_cpu(tmp_path):
    """`info` with no argument at all, and the argument-free parts of the others, on a CPU-only machine."""
    proc = _videomla(["info"], stdout=subprocess.PIPE)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0 and "preset wan2.1-t2v-1.3b" in out, err
    assert main(["rank", "--preset", "tiny", "--out", str(tmp_path / "r"), "--no-plots"]) == 0
    assert (tmp_path / "r" / "ranks.json").is_file() and leftovers(tmp_path / "r") == []
    assert preset("tiny").dim == 64
