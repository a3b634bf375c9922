"""Streaming video writers: frames are appended as they are generated, never held in memory.

An mp4 is written as *fragmented* mp4 (``movflags frag_keyframe+empty_moov``) through PyAV,
with a keyframe at the start of every chunk, so the file on disk is a playable video at all
times: a run killed outright loses only the last chunks (the one being encoded and at most two
queued for the encoder thread), and one interrupted by an exception or Ctrl-C is closed cleanly
with every frame. A GIF is appended frame by frame (each
with its own palette); readers accept it even without the final trailer byte. ``png-grid`` keeps
only the frames it samples and writes one PNG at the end (atomically).
"""

from __future__ import annotations

import math
import os
import queue
import tempfile
import threading
from fractions import Fraction
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

FORMATS = ("mp4", "gif", "png-grid")
_SUFFIX_FORMAT = {".mp4": "mp4", ".gif": "gif", ".png": "png-grid"}


class FrameWriter(Protocol):
    def write(self, frames: np.ndarray, chunk_start: bool = True) -> None:
        """Append uint8 frames [n, H, W, 3]; ``chunk_start``: the first one begins a chunk."""

    def close(self) -> None:
        """Finish the file (idempotent)."""


def to_uint8(video: torch.Tensor) -> torch.Tensor:
    """Decoded frames [1, 3, n, H, W] in [-1, 1] -> uint8 [n, H, W, 3] (same device)."""
    if video.ndim != 5 or video.shape[0] != 1 or video.shape[1] != 3:
        raise ValueError(f"expected decoded frames [1, 3, n, H, W], got {tuple(video.shape)}")
    pixels = (video[0].float().permute(1, 2, 3, 0) + 1) * 127.5
    return pixels.round().clamp(0, 255).to(torch.uint8)


def format_for(path: str | Path, format: str | None = None) -> str:
    """The output format: ``format`` when given, else from the file suffix."""
    if format is not None:
        if format not in FORMATS:
            raise ValueError(f"unknown output format {format!r}; choose from {list(FORMATS)}")
        return format
    suffix = Path(path).suffix.lower()
    if suffix not in _SUFFIX_FORMAT:
        raise ValueError(
            f"cannot tell the output format of {path} from its suffix; use .mp4, .gif or .png or pass a format"
        )
    return _SUFFIX_FORMAT[suffix]


def check_writable(path: str | Path) -> Path:
    """Fail now, before any model is loaded, if ``path`` cannot be written."""
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise ValueError(f"output path {path} is a folder; give a file name")
    if not parent.exists():
        raise FileNotFoundError(f"output folder {parent} does not exist")
    if not parent.is_dir():
        raise FileNotFoundError(f"cannot write {path}: {parent} is not a folder")
    if not os.access(parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise PermissionError(f"cannot write {path}: permission denied")
    return path


class Mp4Writer:
    """H.264 in fragmented mp4; one fragment per chunk, flushed to disk as soon as it is complete."""

    def __init__(self, path: str | Path, fps: float, height: int, width: int, crf: int = 18):
        import av

        if height % 2 or width % 2:
            raise ValueError(f"mp4 (H.264, yuv420p) needs an even frame size, got {height}x{width}; use gif or png")
        self._file = open(path, "wb")  # noqa: SIM115 - closed in close(); PyAV writes through it
        self._container = av.open(
            self._file, "w", format="mp4", options={"movflags": "frag_keyframe+empty_moov+default_base_moof"}
        )
        rate = _fps_fraction(fps)
        # zerolatency: no lookahead or B-frames, so every frame leaves the encoder at once;
        # keyframes (fragment boundaries) exactly where chunks start: forced there, no scene cuts.
        options = {
            "crf": str(crf),
            "preset": "veryfast",
            "tune": "zerolatency",
            "forced-idr": "1",
            "x264-params": "scenecut=0",
        }
        self._stream = self._container.add_stream("libx264", rate=rate, options=options)
        self._stream.width, self._stream.height, self._stream.pix_fmt = width, height, "yuv420p"
        self._stream.codec_context.gop_size = 10**6  # keyframes only where a chunk starts
        self._closed = False

    def write(self, frames: np.ndarray, chunk_start: bool = True) -> None:
        import av

        for i, image in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
            if chunk_start and i == 0:
                frame.pict_type = av.video.frame.PictureType.I  # closes the previous fragment
            for packet in self._stream.encode(frame):
                self._container.mux(packet)
        self._file.flush()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            for packet in self._stream.encode():
                self._container.mux(packet)
            self._container.close()
        finally:
            self._file.close()


class GifWriter:
    """Animated GIF appended frame by frame through Pillow's GIF encoder (a palette per frame)."""

    def __init__(self, path: str | Path, fps: float):
        self._file = open(path, "wb")  # noqa: SIM115 - closed in close()
        self._duration_ms = 1000.0 / fps  # GIF stores centiseconds: 8 fps -> 12 cs
        self._started = False
        self._closed = False

    def write(self, frames: np.ndarray, chunk_start: bool = True) -> None:
        from PIL import GifImagePlugin, Image

        for image in frames:
            quantized = Image.fromarray(np.ascontiguousarray(image)).quantize(256)
            if not self._started:
                header, _ = GifImagePlugin.getheader(quantized, info={"loop": 0, "duration": self._duration_ms})
                self._file.write(b"".join(header))
                self._started = True
            data = GifImagePlugin.getdata(quantized, duration=self._duration_ms, include_color_table=True)
            self._file.write(b"".join(data))
        self._file.flush()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            if self._started:
                self._file.write(b";")  # GIF trailer
        finally:
            self._file.close()


class PngGridWriter:
    """One PNG showing ``count`` frames sampled evenly over the video; keeps only those frames."""

    def __init__(self, path: str | Path, total_frames: int, count: int = 16):
        if total_frames < 1:
            raise ValueError(f"a png grid needs a known, positive number of frames, got {total_frames}")
        if count < 1:
            raise ValueError(f"a png grid needs at least one frame, got {count}")
        self._path = Path(path)
        self._wanted = sorted({round(i * (total_frames - 1) / max(1, count - 1)) for i in range(count)})
        self._wanted_set = set(self._wanted)
        self._kept: list[np.ndarray] = []
        self._seen = 0
        self._closed = False

    @property
    def sampled_frames(self) -> list[int]:
        return list(self._wanted)

    def write(self, frames: np.ndarray, chunk_start: bool = True) -> None:
        for i in range(len(frames)):
            if self._seen + i in self._wanted_set:
                self._kept.append(np.array(frames[i]))
        self._seen += len(frames)

    def close(self) -> None:
        if self._closed or not self._kept:
            self._closed = True
            return
        self._closed = True
        from PIL import Image

        h, w, _ = self._kept[0].shape
        cols = math.ceil(math.sqrt(len(self._wanted)))
        rows = math.ceil(len(self._kept) / cols)
        grid = np.zeros((rows * h, cols * w, 3), np.uint8)
        for k, frame in enumerate(self._kept):
            r, c = divmod(k, cols)
            grid[r * h : (r + 1) * h, c * w : (c + 1) * w] = frame
        fd, tmp = tempfile.mkstemp(prefix=f".{self._path.name}.", suffix=".png", dir=self._path.parent or ".")
        try:
            with os.fdopen(fd, "wb") as f:
                Image.fromarray(grid).save(f, format="PNG")
            os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it private; give it a normal file's mode
            os.replace(tmp, self._path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


class BackgroundWriter:
    """Runs a writer on its own thread, so encoding (x264 is CPU work) overlaps generation.

    At most ``depth`` chunks wait in the queue, so memory stays bounded; ``close`` writes every
    queued chunk first. An error on the thread is raised by the next ``write`` or by ``close``.
    """

    def __init__(self, writer: FrameWriter, depth: int = 2):
        self._writer = writer
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._loop, name="videomla-writer", daemon=True)
        self._thread.start()
        self._closed = False

    def _loop(self) -> None:
        while (item := self._queue.get()) is not None:
            if self._error is None:
                try:
                    self._writer.write(*item)
                except BaseException as err:  # handed to the generating thread
                    self._error = err

    def _raise(self) -> None:
        if self._error is not None:
            err, self._error = self._error, None
            raise err

    def write(self, frames: np.ndarray, chunk_start: bool = True) -> None:
        self._raise()
        self._queue.put((frames, chunk_start))

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._queue.put(None)
        self._thread.join()
        try:
            self._writer.close()
        finally:
            self._raise()


def open_writer(
    path: str | Path,
    format: str,
    fps: float,
    height: int,
    width: int,
    total_frames: int | None = None,
    grid_frames: int = 16,
) -> FrameWriter:
    """A writer for ``format`` (see :data:`FORMATS`); ``total_frames`` is needed by png-grid only.

    mp4 and gif encode on a background thread (:class:`BackgroundWriter`).
    """
    if format == "mp4":
        return BackgroundWriter(Mp4Writer(path, fps, height, width))
    if format == "gif":
        return BackgroundWriter(GifWriter(path, fps))
    if format == "png-grid":
        if total_frames is None:
            raise ValueError("png-grid samples frames over the whole video: it needs a finite length (seconds)")
        return PngGridWriter(path, total_frames, grid_frames)
    raise ValueError(f"unknown output format {format!r}; choose from {list(FORMATS)}")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fps_fraction(fps: float) -> Fraction:
    """PyAV wants a rational frame rate: 16 -> 16/1, 12.5 -> 25/2."""
    return Fraction(fps).limit_denominator(1001)
