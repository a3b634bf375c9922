"""Video files in and out: streaming writers (frames appended as generated, never held in memory)
and the readers ``evaluate`` and ``generate --continue-from`` use (:func:`load_video`, :func:`read_frames`).

Every writer works on a temporary file *beside* the output (``.NAME.XXXXXXXX.partial.SUFFIX``)
and publishes it onto the output name with an atomic rename only when the file is finished, so an
existing output is never destroyed by a run that fails, and a refused or failed run leaves no
partial or empty file (see :meth:`Mp4Writer.close` for what counts as finished).

An mp4 is written as *fragmented* mp4 (``movflags frag_keyframe+empty_moov``) through PyAV,
with a keyframe at the start of every chunk, so the temporary file is a playable video at every
chunk boundary: a run killed outright (SIGKILL, power loss) leaves the earlier output untouched
and the frames so far, but for the last chunks (the one being encoded and at most two queued for
the encoder thread), in the playable ``.partial.mp4`` beside it. A run interrupted by Ctrl-C or
SIGTERM publishes every frame made so far. A GIF is appended frame by frame (each with its own
palette); readers accept it even without the final trailer byte. ``png-grid`` keeps only the
frames it samples and writes one PNG at the end.

Disk-full and other I/O errors end in one :class:`WriteError` (an ``OSError``) naming the output
and the reason; the temporary file is removed and the earlier output, if any, is intact.
"""

from __future__ import annotations

import contextlib
import errno
import math
import os
import queue
import sys
import threading
from collections.abc import Iterable
from fractions import Fraction
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from .io_utils import deferred_signals, make_temp_file, os_error_message, publish

FORMATS = ("mp4", "gif", "png-grid")
VIDEO_SUFFIXES = (".mp4", ".gif", ".webm", ".avi", ".mov", ".mkv")  # what read_frames decodes
TENSOR_SUFFIXES = (".pt", ".npy")  # saved arrays load_video also reads
LOSSY_SUFFIXES = (".mp4", ".webm", ".avi", ".mov", ".mkv")  # usually 4:2:0 chroma: small objects' edges smear
_SUFFIX_FORMAT = {".mp4": "mp4", ".gif": "gif", ".png": "png-grid"}
PIX_FMTS = ("yuv420p", "yuv444p")
DEFAULT_CRF = 18
DEFAULT_PIX_FMT = "yuv420p"
INSTALL_HINT = 'pip install "videomla[video]"'
# Python modules each format's writer imports, and what they are called on PyPI.
_NEEDS = {"mp4": (("av", "PyAV"),), "gif": (("PIL", "Pillow"),), "png-grid": (("PIL", "Pillow"),)}
# Exceptions that end a run without it having failed: the frames so far are a valid video.
_INTERRUPTS = (KeyboardInterrupt, SystemExit, GeneratorExit)


class MissingWriterError(ImportError):
    """The optional modules an output format needs are not installed; the message gives the pip line."""


class WriteError(OSError):
    """Writing an output failed (disk full, I/O error ...); the earlier output, if any, is untouched."""


def _write_error(path: Path, err: BaseException) -> WriteError:
    if isinstance(err, WriteError):
        return err
    if isinstance(err, OSError):
        reason = os_error_message(err, None)
        code = err.errno
    else:  # PyAV / Pillow errors that are not OSErrors
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        code = errno.EIO
    msg = f"cannot write {path}: {reason}"
    if code in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        msg += " (free some space or write elsewhere)"
    new = WriteError(msg + "; an earlier file of that name is left as it was")
    new.errno = code  # str(new) stays the one line above
    return new


def _error_in_flight() -> bool:
    """True while an exception other than an interrupt is propagating through the caller's ``finally``."""
    err = sys.exc_info()[1]
    return err is not None and not isinstance(err, _INTERRUPTS)


class FrameWriter(Protocol):
    def write(self, frames: np.ndarray, chunk_start: bool = True) -> None:
        """Append uint8 frames [n, H, W, 3]; ``chunk_start``: the first one begins a chunk."""

    def close(self, commit: bool | None = None) -> None:
        """Finish the file and publish it (idempotent); ``commit=False`` throws it away."""

    def abort(self) -> None:
        """Throw the file away; an earlier output stays as it was."""


def to_uint8(video: torch.Tensor) -> torch.Tensor:
    """Decoded frames [1, 3, n, H, W] in [-1, 1] -> uint8 [n, H, W, 3] (same device)."""
    if video.ndim != 5 or video.shape[0] != 1 or video.shape[1] != 3:
        raise ValueError(f"expected decoded frames [1, 3, n, H, W], got {tuple(video.shape)}")
    pixels = (video[0].float().permute(1, 2, 3, 0) + 1) * 127.5
    return pixels.round().clamp(0, 255).to(torch.uint8)


def format_for(path: str | Path, format: str | None = None, check_modules: bool = True) -> str:
    """The output format: ``format`` when given, else from the file suffix.

    With ``check_modules`` (default) it also imports the modules the format's writer needs
    (PyAV for mp4, Pillow for gif and png-grid), so a missing extra is reported before any model
    loads, by a :class:`MissingWriterError` (an ``ImportError``) naming the pip line.
    """
    if format is not None:
        if format not in FORMATS:
            raise ValueError(f"unknown output format {format!r}; choose from {list(FORMATS)}")
        fmt = format
    else:
        suffix = Path(path).suffix.lower()
        if suffix not in _SUFFIX_FORMAT:
            raise ValueError(
                f"cannot tell the output format of {path} from its suffix; use .mp4, .gif or .png or pass a format"
            )
        fmt = _SUFFIX_FORMAT[suffix]
    if check_modules:
        check_writer_modules(fmt)
    return fmt


def check_writer_modules(format: str) -> None:
    """Import what the ``format`` writer needs, or raise :class:`MissingWriterError` with the pip line."""
    import importlib

    for module, package in _NEEDS.get(format, ()):
        try:
            importlib.import_module(module)
        except ImportError as err:
            raise MissingWriterError(
                f"writing {format} needs {package}, which is not installed ({err}): {INSTALL_HINT}"
            ) from None


def _stat_error(path: Path) -> OSError | None:
    try:
        os.stat(path)
    except FileNotFoundError:
        return None
    except OSError as err:
        return err
    return None


def check_writable(path: str | Path) -> Path:
    """Fail now, before any model is loaded, if ``path`` cannot be written."""
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    for where, what in ((parent, "output folder"), (path, "output path")):
        err = _stat_error(where)
        if err is not None:
            if err.errno == errno.ELOOP:
                raise ValueError(f"{what} {where} is a symbolic link loop")
            raise ValueError(f"cannot use {what} {where}: {os_error_message(err, None)}")
    if path.is_dir():
        raise ValueError(f"output path {path} is a folder; give a file name")
    if path.is_symlink() and not path.exists():
        raise FileNotFoundError(f"output path {path} is a symbolic link to nothing ({os.readlink(path)})")
    if not parent.exists():
        raise FileNotFoundError(f"output folder {parent} does not exist")
    if not parent.is_dir():
        raise FileNotFoundError(f"cannot write {path}: {parent} is not a folder")
    target = _target(path)
    folder = target.parent
    if not os.access(folder, os.W_OK | os.X_OK) or (target.exists() and not os.access(target, os.W_OK)):
        raise PermissionError(f"cannot write {path}: permission denied")
    return path


def _target(path: Path) -> Path:
    """Where the output really goes: through a symbolic link to a file, to that file."""
    return path.resolve() if path.is_symlink() else path


def _open_fd(fd: int):
    """The file object a writer writes through (a seam: tests swap in one that fails after N bytes)."""
    return os.fdopen(fd, "wb")


class _Output:
    """The temporary file of one output: written in place, published onto the output name once finished."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.target = _target(self.path)
        fd, self.tmp = make_temp_file(self.target, suffix=".partial" + self.target.suffix)
        self.file = _open_fd(fd)
        self.done = False

    def publish(self) -> None:
        self.file.close()
        publish(self.tmp, self.target)
        self.done = True

    def discard(self) -> None:
        with contextlib.suppress(OSError):  # closing flushes; a full disk fails the flush too
            self.file.close()
        self.tmp.unlink(missing_ok=True)
        self.done = True


def _first_close(writer, commit: bool | None) -> bool | None:
    """None when ``writer`` is already closed; else marks it closed and resolves ``commit``
    (``None``: publish unless an error other than an interrupt is propagating)."""
    if writer._closed:
        return None
    writer._closed = True
    return not _error_in_flight() if commit is None else commit


class _PublishingWriter:
    """Shared close/abort logic: ``_finish()`` completes the file, then it is published or discarded."""

    _out: _Output
    _closed = False

    def _finish(self) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def close(self, commit: bool | None = None) -> None:
        """Finish the file and publish it (idempotent); ``commit=False`` discards it instead (see :meth:`abort`).

        ``commit=None`` (default) publishes unless an exception other than an interrupt
        (KeyboardInterrupt, SystemExit, GeneratorExit) is propagating through the caller's
        ``finally`` at the time: a run that *fails* keeps the earlier output, a run that is
        interrupted or stopped early publishes the frames so far. Pass ``commit=True`` to keep the
        frames so far even when failing.
        """
        commit = _first_close(self, commit)
        if commit is None:
            return  # closed before: close is idempotent
        if not commit:
            self._discard()
            return
        with deferred_signals():  # a second Ctrl-C waits until the file is in place
            try:
                self._finish()
                self._out.publish()
            except BaseException as err:
                self._discard()
                if isinstance(err, Exception):
                    raise _write_error(self._out.path, err) from err
                raise

    def abort(self) -> None:
        """Drop the temporary file; an earlier output stays as it was (idempotent)."""
        self.close(commit=False)

    def _discard(self) -> None:
        try:
            self._release()
        finally:
            self._out.discard()

    def _release(self) -> None:
        """Free the encoder without finishing the file (default: nothing to free)."""

    def __enter__(self):
        return self

    def __exit__(self, kind, err, tb) -> None:
        self.close(commit=err is None or isinstance(err, _INTERRUPTS))


class Mp4Writer(_PublishingWriter):
    """H.264 in fragmented mp4; one fragment per chunk, flushed to disk as soon as it is complete.

    ``crf`` (0-51, default 18; 0 is lossless) and ``pix_fmt`` (``yuv420p``, the default, which
    every player reads, or ``yuv444p``, full-resolution colour for evaluation) are x264 options.
    """

    def __init__(
        self,
        path: str | Path,
        fps: float,
        height: int,
        width: int,
        crf: int | None = None,
        pix_fmt: str | None = None,
    ):
        crf = DEFAULT_CRF if crf is None else crf
        pix_fmt = DEFAULT_PIX_FMT if pix_fmt is None else pix_fmt
        check_mp4_options(height, width, crf, pix_fmt)
        check_writer_modules("mp4")
        import av

        self._out = _Output(path)
        try:
            self._container = av.open(
                self._out.file, "w", format="mp4", options={"movflags": "frag_keyframe+empty_moov+default_base_moof"}
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
            self._stream.width, self._stream.height, self._stream.pix_fmt = width, height, pix_fmt
            self._stream.codec_context.gop_size = 10**6  # keyframes only where a chunk starts
            self._frames = 0
        except BaseException as err:
            self._out.discard()
            if isinstance(err, Exception):
                raise _write_error(self._out.path, err) from err
            raise
        self._closed = False

    def write(self, frames: np.ndarray, chunk_start: bool = True) -> None:
        import av

        try:
            for i, image in enumerate(frames):
                frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
                if chunk_start and i == 0:
                    frame.pict_type = av.video.frame.PictureType.I  # closes the previous fragment
                for packet in self._stream.encode(frame):
                    self._container.mux(packet)
                self._frames += 1
            self._out.file.flush()
        except Exception as err:
            raise _write_error(self._out.path, err) from err

    def close(self, commit: bool | None = None) -> None:
        if commit is None and not self._closed and self._frames == 0:
            commit = False  # interrupted before the first frame: an mp4 without frames is no video
        super().close(commit)

    def _finish(self) -> None:
        for packet in self._stream.encode():
            self._container.mux(packet)
        self._container.close()

    def _release(self) -> None:
        with contextlib.suppress(Exception):  # the file is thrown away; a full disk may fail the last write
            self._container.close()


def check_mp4_options(height: int, width: int, crf: int = DEFAULT_CRF, pix_fmt: str = DEFAULT_PIX_FMT) -> None:
    """Refuse mp4 settings x264 cannot honour, before anything is written."""
    if pix_fmt not in PIX_FMTS:
        raise ValueError(f"mp4 pixel format must be one of {list(PIX_FMTS)}, got {pix_fmt!r}")
    if isinstance(crf, bool) or not isinstance(crf, int) or not 0 <= crf <= 51:
        raise ValueError(f"mp4 crf must be an integer from 0 (lossless) to 51, got {crf!r}")
    if pix_fmt == "yuv420p" and (height % 2 or width % 2):
        raise ValueError(
            f"mp4 (H.264, yuv420p) needs an even frame size, got {height}x{width}; use yuv444p, gif or png"
        )


class GifWriter(_PublishingWriter):
    """Animated GIF appended frame by frame through Pillow's GIF encoder (a palette per frame)."""

    def __init__(self, path: str | Path, fps: float):
        check_writer_modules("gif")
        self._out = _Output(path)
        self._duration_ms = 1000.0 / fps  # GIF stores centiseconds: 8 fps -> 12 cs
        self._started = False
        self._closed = False

    def write(self, frames: np.ndarray, chunk_start: bool = True) -> None:
        from PIL import GifImagePlugin, Image

        try:
            for image in frames:
                quantized = Image.fromarray(np.ascontiguousarray(image)).quantize(256)
                if not self._started:
                    header, _ = GifImagePlugin.getheader(quantized, info={"loop": 0, "duration": self._duration_ms})
                    self._out.file.write(b"".join(header))
                    self._started = True
                data = GifImagePlugin.getdata(quantized, duration=self._duration_ms, include_color_table=True)
                self._out.file.write(b"".join(data))
            self._out.file.flush()
        except Exception as err:
            raise _write_error(self._out.path, err) from err

    def close(self, commit: bool | None = None) -> None:
        if commit is None and not self._closed and not self._started:
            commit = False  # no frame at all: a GIF without frames is not a GIF
        super().close(commit)

    def _finish(self) -> None:
        self._out.file.write(b";")  # GIF trailer
        self._out.file.flush()


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

    def write(self, frames: np.ndarray, chunk_start: bool = True) -> None:
        for i in range(len(frames)):
            if self._seen + i in self._wanted_set:
                self._kept.append(np.array(frames[i]))
        self._seen += len(frames)

    def close(self, commit: bool | None = None) -> None:
        """Write the grid of the frames sampled so far and publish it (see :meth:`Mp4Writer.close`)."""
        commit = _first_close(self, commit)
        if commit is None:
            return  # closed before: close is idempotent
        if not commit or not self._kept:
            return  # nothing was written: png-grid makes its file only here
        check_writer_modules("png-grid")
        from PIL import Image

        h, w, _ = self._kept[0].shape
        cols = math.ceil(math.sqrt(len(self._wanted)))
        rows = math.ceil(len(self._kept) / cols)
        grid = np.zeros((rows * h, cols * w, 3), np.uint8)
        for k, frame in enumerate(self._kept):
            r, c = divmod(k, cols)
            grid[r * h : (r + 1) * h, c * w : (c + 1) * w] = frame
        with deferred_signals():
            out = _Output(self._path)
            try:
                Image.fromarray(grid).save(out.file, format="PNG")
                out.publish()
            except BaseException as err:
                out.discard()
                if isinstance(err, Exception):
                    raise _write_error(self._path, err) from err
                raise

    def abort(self) -> None:
        self.close(commit=False)


class BackgroundWriter:
    """Runs a writer on its own thread, so encoding (x264 is CPU work) overlaps generation.

    At most ``depth`` chunks wait in the queue, so memory stays bounded; ``close`` writes every
    queued chunk first. An error on the thread is raised by the next ``write`` or by ``close``;
    the file is then discarded (the earlier output, if any, is kept).
    """

    def __init__(self, writer: FrameWriter, depth: int = 2):
        self._writer = writer
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None
        self._failed = False
        self._dropping = False
        self._thread = threading.Thread(target=self._loop, name="videomla-writer", daemon=True)
        self._thread.start()
        self._closed = False

    def _loop(self) -> None:
        while (item := self._queue.get()) is not None:
            if self._error is None and not self._failed and not self._dropping:
                try:
                    self._writer.write(*item)
                except BaseException as err:  # handed to the generating thread
                    self._error, self._failed = err, True

    def _raise(self) -> None:
        if self._error is not None:
            err, self._error = self._error, None
            raise err

    def write(self, frames: np.ndarray, chunk_start: bool = True) -> None:
        self._raise()
        self._queue.put((frames, chunk_start))

    def close(self, commit: bool | None = None) -> None:
        """Write what is queued, then close the inner writer (see :meth:`Mp4Writer.close` for ``commit``)."""
        commit = _first_close(self, commit)
        if commit is None:
            return  # closed before: close is idempotent
        if self._failed:
            commit = False  # the file is torn: never publish it
        with deferred_signals() if commit else _nothing():
            self._dropping = not commit  # skip queued chunks of a file that will be thrown away
            self._queue.put(None)
            self._thread.join()
            try:
                if commit:
                    self._writer.close()
                elif hasattr(self._writer, "abort"):
                    self._writer.abort()
                else:
                    self._writer.close()
            finally:
                self._raise()

    def abort(self) -> None:
        """Discard the file; an earlier output stays as it was."""
        self.close(commit=False)

    def __enter__(self):
        return self

    def __exit__(self, kind, err, tb) -> None:
        self.close(commit=err is None or isinstance(err, _INTERRUPTS))


class _nothing:
    def __enter__(self):
        return None

    def __exit__(self, *exc) -> None:
        return None


def open_writer(
    path: str | Path,
    format: str,
    fps: float,
    height: int,
    width: int,
    total_frames: int | None = None,
    grid_frames: int = 16,
    *,
    crf: int | None = None,
    pix_fmt: str | None = None,
) -> FrameWriter:
    """A writer for ``format`` (see :data:`FORMATS`); ``total_frames`` is needed by png-grid only.

    mp4 and gif encode on a background thread (:class:`BackgroundWriter`). ``crf`` and
    ``pix_fmt`` are mp4 options (default 18 and yuv420p); other formats refuse them.

    Every writer publishes its file on ``close()`` (also on Ctrl-C / SIGTERM / an early stop) and
    throws it away on ``abort()`` or when ``close()`` runs while an error propagates; use it as a
    context manager for the same rule.
    """
    if format != "mp4" and (crf is not None or pix_fmt is not None):
        raise ValueError(f"crf and pix_fmt are mp4 options; the output format is {format}")
    if format == "mp4":
        return BackgroundWriter(Mp4Writer(path, fps, height, width, crf=crf, pix_fmt=pix_fmt))
    if format == "gif":
        return BackgroundWriter(GifWriter(path, fps))
    if format == "png-grid":
        if total_frames is None:
            raise ValueError("png-grid samples frames over the whole video: it needs a finite length (seconds)")
        return PngGridWriter(path, total_frames, grid_frames)
    raise ValueError(f"unknown output format {format!r}; choose from {list(FORMATS)}")


def _fps_fraction(fps: float) -> Fraction:
    """PyAV wants a rational frame rate: 16 -> 16/1, 12.5 -> 25/2."""
    return Fraction(fps).limit_denominator(1001)


# -- reading -------------------------------------------------------------------------------------
def _imageio() -> Any:
    try:
        import imageio.v3 as iio
    except ImportError as err:  # an optional extra
        raise ImportError(f"reading video files needs imageio: {INSTALL_HINT}") from err
    return iio


def read_frames(path: str | Path) -> tuple[np.ndarray, float | None]:
    """(uint8 frames [T, H, W, 3] of a video file, its frame rate or None), decoded by imageio and PyAV.

    Alpha is dropped (GIF frames may come as RGBA); a file that does not decode is one ValueError
    naming it, not the decoder's traceback.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such video: {path}")
    iio = _imageio()
    plugin = None if path.suffix.lower() == ".gif" else "pyav"  # what the video extra installs (no ffmpeg binary)
    try:
        frames = iio.imread(path, index=None, plugin=plugin)
        meta = iio.immeta(path, plugin=plugin)
    except Exception as err:  # any decoder failure: one line naming the file
        raise ValueError(f"cannot read {path} as video ({type(err).__name__}: {err})") from None
    if frames.ndim != 4 or frames.shape[-1] not in (3, 4):
        raise ValueError(f"{path}: expected colour frames [T, H, W, 3], got shape {tuple(frames.shape)}")
    fps = meta.get("fps") or (1000 / meta["duration"] if meta.get("duration") else None)
    return frames[..., :3], fps


def read_image(path: str | Path, height: int, width: int) -> np.ndarray:
    """uint8 [height, width, 3] of an image file: centre-cropped to the aspect, then resized (Lanczos).

    What image-to-video conditions on; the crop and resize are the usual I2V preprocessing, so a
    photo of another size works. An unreadable file is one ValueError naming it.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such image: {path}")
    try:
        from PIL import Image, ImageOps
    except ImportError as err:  # an optional extra
        raise ImportError(f"reading images needs Pillow: {INSTALL_HINT}") from err
    try:
        image = ImageOps.exif_transpose(Image.open(path)).convert("RGB")  # as a viewer shows it
    except Exception as err:  # any decoder failure: one line naming the file
        raise ValueError(f"cannot read {path} as an image ({type(err).__name__}: {err})") from None
    w, h = image.size
    scale = min(w / width, h / height)  # the largest box of the target aspect inside the image
    cw, ch = max(1, round(width * scale)), max(1, round(height * scale))
    left, top = (w - cw) // 2, (h - ch) // 2
    image = image.crop((left, top, left + cw, top + ch))
    if image.size != (width, height):
        image = image.resize((width, height), Image.Resampling.LANCZOS)
    return np.asarray(image, dtype=np.uint8)


def to_video(array: np.ndarray | torch.Tensor, source: str) -> torch.Tensor:
    """An array in a common layout -> float video [3, T, H, W] in [-1, 1].

    Channels first [3, T, H, W] (this package's layout, floats in [-1, 1]) or last [T, H, W, 3]
    (what image readers give, uint8 0..255 or floats in [-1, 1]); a leading batch of 1 is dropped.
    """
    x = torch.as_tensor(np.asarray(array)) if not isinstance(array, torch.Tensor) else array
    if x.dim() == 5 and x.shape[0] == 1:
        x = x[0]
    if x.dim() != 4:
        raise ValueError(f"{source}: expected a video [3, T, H, W] or [T, H, W, 3], got shape {tuple(x.shape)}")
    if x.shape[0] not in (3, 4) and x.shape[-1] in (3, 4):
        x = x[..., :3].permute(3, 0, 1, 2)  # [T, H, W, C] -> [3, T, H, W], alpha dropped
    elif x.shape[0] != 3:
        raise ValueError(f"{source}: no RGB axis in shape {tuple(x.shape)} (need 3 channels first or last)")
    if x.dtype == torch.uint8:
        return x.float() / 127.5 - 1
    if not x.is_floating_point():
        raise ValueError(f"{source}: expected uint8 or float values, got {x.dtype}")
    lo, hi = float(x.min()), float(x.max())
    if lo < -1.05 or hi > 1.05:
        raise ValueError(f"{source}: float values must be in [-1, 1], got [{lo:.3f}, {hi:.3f}]")
    return x.float()


def load_video(path: str | Path) -> tuple[torch.Tensor, float | None]:
    """(video [3, T, H, W] in [-1, 1], the file's frame rate or None) from a video file, a saved
    tensor (.pt / .npy) or a folder of PNG frames."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no such video: {path}")
    if path.is_dir():
        frames = sorted(path.glob("*.png"))
        if not frames:
            raise FileNotFoundError(f"{path} holds no .png frames")
        iio = _imageio()
        return to_video(np.stack([iio.imread(f) for f in frames]), str(path)), None
    suffix = path.suffix.lower()
    if suffix == ".pt":
        data = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(data, torch.Tensor):
            raise ValueError(f"{path}: expected a saved tensor, got {type(data).__name__}")
        return to_video(data, str(path)), None
    if suffix == ".npy":
        return to_video(np.load(path, allow_pickle=False), str(path)), None
    if suffix in VIDEO_SUFFIXES:
        frames, fps = read_frames(path)
        return to_video(frames, str(path)), fps
    raise ValueError(f"{path}: unknown format; use {', '.join(VIDEO_SUFFIXES + TENSOR_SUFFIXES)} or a folder of .png")


def find_videos(paths: Iterable[str | Path]) -> list[Path]:
    """What :func:`load_video` reads in ``paths``: folders of videos/tensors become their files; a
    folder of PNG frames stays one video."""
    out = []
    for name in paths:
        path = Path(name)
        if path.is_dir() and not any(path.glob("*.png")):
            found = sorted(f for f in path.iterdir() if f.suffix.lower() in VIDEO_SUFFIXES + TENSOR_SUFFIXES)
            if not found:
                raise FileNotFoundError(f"{path} holds no videos, tensors or .png frames")
            out.extend(found)
        else:
            out.append(path)
    return out
