"""Atomic file writes shared by every command: a reader never sees half a file, a failure keeps the old one.

Each writer makes a temporary file (or folder) *beside* the target, writes it completely, flushes
and fsyncs it, gives it the mode an ordinary ``open()`` would (``0o666 & ~umask``; folders
``0o777 & ~umask``: ``mkstemp``/``mkdtemp`` make them private), and only then renames it over the
target with :func:`os.replace`, which is atomic on POSIX within one filesystem. On any failure,
including Ctrl-C, the temporary is removed and the target is left exactly as it was.

Public helpers (use them instead of hand-rolled ``tmp`` + ``os.replace`` copies):

* :func:`atomic_write_bytes`, :func:`atomic_write_text`, :func:`atomic_write_json`: one call;
* :func:`atomic_file`: a context manager yielding a binary/text file object to write into;
* :func:`atomic_folder`: the same for a folder of files (the target is swapped in by renames);
* :func:`make_temp_file`: a temp file beside a target (normal mode) for writers that publish later;
* :func:`publish`: fsync + rename a finished temp file onto its target;
* :func:`os_error_message`: a one-line description of an ``OSError`` naming the path
  (``no space left on device``, ``symbolic link loop`` ...), used by the CLI's error handler;
* :func:`deferred_signals`: hold SIGINT/SIGTERM during a short critical section (publishing).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import signal
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any


def umask() -> int:
    """The process umask (read without changing it for longer than two syscalls)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def file_mode() -> int:
    """The mode ``open(path, "w")`` would give a new file: 0o666 minus the umask."""
    return 0o666 & ~umask()


def folder_mode() -> int:
    """The mode ``mkdir`` would give a new folder: 0o777 minus the umask."""
    return 0o777 & ~umask()


def _parent(path: Path) -> Path:
    return path.parent if str(path.parent) else Path(".")


def make_temp_file(path: str | Path, suffix: str = ".tmp") -> tuple[int, Path]:
    """(fd, temp path) of a new file beside ``path`` (same folder, so the rename is atomic), normal mode.

    The name starts with a dot and holds the target's name, so a stray one is easy to attribute.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=_parent(path))
    try:
        os.fchmod(fd, file_mode())
    except BaseException:
        os.close(fd)
        Path(tmp).unlink(missing_ok=True)
        raise
    return fd, Path(tmp)


def fsync_path(path: str | Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_folder(folder: Path) -> None:
    with contextlib.suppress(OSError):  # not every filesystem lets a folder be opened or fsynced
        fsync_path(folder)


def publish(tmp: str | Path, path: str | Path) -> Path:
    """Rename the finished ``tmp`` onto ``path`` (fsynced first); the old ``path`` stays until then."""
    tmp, path = Path(tmp), Path(path)
    fsync_path(tmp)
    os.replace(tmp, path)
    _fsync_folder(_parent(path))
    return path


@contextlib.contextmanager
def atomic_file(path: str | Path, mode: str = "wb", encoding: str | None = None) -> Iterator[IO[Any]]:
    """Yield a file object; on a clean exit its content replaces ``path`` atomically.

    ``mode`` is ``"wb"`` or ``"w"`` (text, ``encoding`` default UTF-8). On an exception the
    temporary file is removed and ``path`` is untouched.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_file writes a new file: mode must be 'w' or 'wb', got {mode!r}")
    path = Path(path)
    fd, tmp = make_temp_file(path)
    try:
        if mode == "w":
            f: IO[Any] = os.fdopen(fd, "w", encoding=encoding or "utf-8")
        else:
            f = os.fdopen(fd, "wb")
        with f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_folder(_parent(path))
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (see the module docstring)."""
    with atomic_file(path, "wb") as f:
        f.write(data)
    return Path(path)


def atomic_write_text(path: str | Path, text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically."""
    return atomic_write_bytes(path, text.encode(encoding))


def atomic_write_json(path: str | Path, data: Any, indent: int | None = 2) -> Path:
    """Write ``data`` as JSON (plus a final newline) atomically; serialising errors raise before any file is made."""
    text = json.dumps(data, indent=indent) + "\n"
    return atomic_write_text(path, text)


@contextlib.contextmanager
def atomic_folder(target: str | Path, owned: set[str] | None = None) -> Iterator[Path]:
    """Yield a temp folder beside ``target``; on a clean exit it replaces ``target`` by renames.

    Files written into the yielded folder are fsynced before the swap; the folder and its files
    get the modes ``mkdir`` and ``open`` would give (``0o777``/``0o666`` minus the umask). An
    existing ``target`` must be a folder and, when ``owned`` is given, may only hold those file
    names (so a foreign file is never deleted). A failure before the swap leaves ``target``
    untouched; the old folder is removed only after the new one is in place.
    """
    target = Path(target)
    if target.exists():
        if not target.is_dir():
            raise FileExistsError(f"{target} exists and is not a folder")
        if owned is not None:
            foreign = sorted(p.name for p in target.iterdir() if p.name not in owned)
            if foreign:
                raise FileExistsError(
                    f"refusing to replace {target}: it holds files this writer does not own: {foreign}"
                )
    _parent(target).mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=_parent(target)))
    try:
        os.chmod(tmp, folder_mode())
        yield tmp
        for file in tmp.rglob("*"):
            if file.is_file():
                os.chmod(file, file_mode())  # e.g. safetensors' save_file makes its files 0600
                fsync_path(file)
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=_parent(target)))
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
        _fsync_folder(_parent(target))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# -- errors ---------------------------------------------------------------------------------------
_ERRNO_TEXT = {
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.ELOOP: "symbolic link loop (too many levels of symbolic links)",
    errno.ENAMETOOLONG: "file name too long",
    errno.EISDIR: "is a folder",
    errno.ENOTDIR: "a part of the path is not a folder",
    errno.ENOENT: "no such file or folder",
    errno.EIO: "input/output error",
    errno.EFBIG: "file too large",
}


def os_error_message(err: OSError, path: str | Path | None = None) -> str:
    """One line for an OSError: what failed, on which path, in plain words (no errno numbers)."""
    where = path if path is not None else (err.filename if err.filename is not None else None)
    reason = _ERRNO_TEXT.get(err.errno or -1) or (err.strerror or str(err) or type(err).__name__).strip()
    if where is None:
        return reason
    return f"{where}: {reason}"


# -- signals --------------------------------------------------------------------------------------
@contextlib.contextmanager
def deferred_signals() -> Iterator[None]:
    """Hold SIGINT and SIGTERM while the body runs (a short critical section), then deliver them.

    Used while a finished file is published, so a second Ctrl-C cannot leave a half-renamed
    output. Outside the main thread (where handlers cannot be set) it does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[int] = []
    wanted = [signal.SIGINT, signal.SIGTERM]
    previous = {}
    for sig in wanted:
        with contextlib.suppress(ValueError, OSError):  # an embedded interpreter may refuse
            previous[sig] = signal.signal(sig, lambda signum, frame: pending.append(signum))
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for signum in pending[:1]:
            handler = previous.get(signum)
            if callable(handler):
                handler(signum, None)
            elif handler == signal.SIG_DFL:
                os.kill(os.getpid(), signum)


__all__ = [
    "atomic_file",
    "atomic_folder",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "deferred_signals",
    "file_mode",
    "folder_mode",
    "fsync_path",
    "make_temp_file",
    "os_error_message",
    "publish",
    "umask",
]
