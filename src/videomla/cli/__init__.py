"""The ``videomla`` command: one module per subcommand, each with ``register(subparsers)``.

:func:`main` is the one error boundary of every command:

* bad input (``ValueError`` and its subclasses such as ``CheckpointError``, ``FileNotFoundError``,
  ``PermissionError``, ``KeyError``, a missing optional extra) -> one line ``videomla CMD: error: ...``,
  exit 2;
* any other exception (``OSError`` such as a full disk, out of memory, a bug) -> one line naming
  the command's inputs and the error, exit 1; ``--debug`` (or ``VIDEOMLA_DEBUG=1``) shows the
  traceback instead;
* Ctrl-C -> exit 130 and SIGTERM -> exit 143, at any moment, including while the subcommands'
  modules (torch) are still being imported; a second Ctrl-C while the first is being handled is
  ignored, never a traceback;
* a closed stdout (``videomla info | head``) -> quiet, exit 141 like other tools killed by SIGPIPE.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import re
import signal
import sys
import traceback

# Subcommand modules under videomla.cli, in the order ``videomla --help`` lists them.
COMMANDS = ("info", "rank", "generate", "train", "evaluate", "bench", "convert", "serve")
# Exit codes: 128 + the signal number, as shells report a process a signal ended.
EXIT_BAD_INPUT, EXIT_FAILED, EXIT_SIGINT, EXIT_SIGTERM, EXIT_SIGPIPE = 2, 1, 130, 143, 141
# Arguments that name a command's inputs and outputs, in the order an error message lists them.
_INPUT_ARGS = ("config", "src", "checkpoint", "checkpoints", "videos", "video", "dst", "out", "json")


class Terminated(KeyboardInterrupt):
    """Raised in the main thread on SIGTERM, so every ``except KeyboardInterrupt`` / ``finally`` that
    finishes a file on Ctrl-C does the same on TERM; :func:`main` then exits 143 instead of 130."""


def _debug_wanted(argv: list[str]) -> bool:
    return "--debug" in argv or os.environ.get("VIDEOMLA_DEBUG", "") not in ("", "0")


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = argparse.ArgumentParser(
        prog="videomla", description="Streaming video diffusion with a low-rank latent KV cache (VideoMLA)."
    )
    parser.add_argument("--version", action="version", version=f"videomla {__version__}")
    parser.add_argument("--debug", action="store_true", help="on an error, show the full traceback")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"{__name__}.{name}").register(sub)
    for p in sub.choices.values():  # `videomla CMD ... --debug` works too
        if not any("--debug" in a.option_strings for a in p._actions):
            p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    return parser


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    if isinstance(err, KeyError) and len(err.args) == 1 and isinstance(err.args[0], str):
        text = err.args[0]  # str(KeyError) adds quotes
    return text.splitlines()[0] if text else type(err).__name__


def _message(err: BaseException) -> str:
    if isinstance(err, KeyError) and len(err.args) == 1 and isinstance(err.args[0], str):
        return err.args[0]
    return str(err).strip() or type(err).__name__


def _inputs(args: argparse.Namespace | None) -> str:
    if args is None:
        return ""
    named = []
    for name in _INPUT_ARGS:
        value = getattr(args, name, None)
        if value in (None, [], "", True, False):
            continue
        values = value if isinstance(value, list | tuple) else [value]
        named += [str(v) for v in values]
    return f" (inputs: {', '.join(named)})" if named else ""


def _describe(err: BaseException, args: argparse.Namespace | None) -> str:
    """One line for an unexpected error: its kind in words, the message, and the command's inputs."""
    from ..io_utils import os_error_message

    if isinstance(err, OSError):
        if type(err).__name__ == "WriteError":  # video_io's own one-line message names the output
            return _first_line(err)
        return os_error_message(err) + _inputs(args)
    name = type(err).__name__
    text = str(err)
    asked = re.search(r"tried to allocate (\d+) bytes", text)
    if asked or "can't allocate memory" in text:  # torch's CPU allocator: a RuntimeError
        size = f"{int(asked[1]) / 2**30:,.1f} GiB" if asked else "more than is free"
        return f"out of memory: an allocation of {size} failed; try a smaller window or size{_inputs(args)}"
    if isinstance(err, MemoryError) or name == "OutOfMemoryError":
        return f"out of memory: {_first_line(err)}; try a smaller window or size{_inputs(args)}"
    return f"{name}: {_first_line(err)}{_inputs(args)}"


def _is_bad_input(err: BaseException) -> bool:
    if isinstance(err, (ValueError, FileNotFoundError, PermissionError, KeyError)):
        return True
    if isinstance(err, ImportError):  # a missing optional extra; messages carry the pip line
        return True
    return isinstance(err, OverflowError)  # e.g. a --seed beyond 64 bits


def _silence_stdout() -> None:
    """After a BrokenPipe, point stdout at /dev/null so the flush at exit does not fail again."""
    with contextlib.suppress(OSError, ValueError, AttributeError):  # stdout is not a real file (tests)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


def main(argv: list[str] | None = None) -> int:
    """Run ``videomla ARGS`` (``argv``: default ``sys.argv[1:]``) and return its exit status.

    Run as the program (``argv`` None), an interrupted command ends the process right after its
    files are finished, with 130 / 143: a signal arriving during interpreter shutdown (threads,
    atexit) can then no longer turn the exit status into a death by signal.
    """
    as_program = argv is None
    code = _main(list(sys.argv[1:] if argv is None else argv))
    if as_program and code in (EXIT_SIGINT, EXIT_SIGTERM):
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(code)
    return code


def _main(argv: list[str]) -> int:
    debug = _debug_wanted(argv)
    state = {"terminated": False}

    def on_term(signum, frame):
        state["terminated"] = True
        raise Terminated(f"signal {signum}")

    previous = {}
    in_main_thread = True
    try:
        # Start-up: importing torch can swallow a KeyboardInterrupt (or leave numpy half-imported),
        # so until the imports are done a signal ends the process at once: nothing is written yet.
        previous[signal.SIGINT] = signal.signal(signal.SIGINT, _exit_during_startup)
        previous[signal.SIGTERM] = signal.signal(signal.SIGTERM, _exit_during_startup)
    except ValueError:  # not the main thread (an embedding application): leave signals alone
        in_main_thread = False
    command, args = "", None
    try:
        try:
            parser = build_parser()  # imports torch & co
            args = parser.parse_args(argv)
            command = args.command
            if in_main_thread:
                signal.signal(signal.SIGINT, signal.default_int_handler)
                signal.signal(signal.SIGTERM, on_term)
            code = int(args.func(args) or 0)
            sys.stdout.flush()  # a closed pipe shows here, not at interpreter exit
            return EXIT_SIGTERM if state["terminated"] and code == EXIT_SIGINT else code
        except KeyboardInterrupt:
            _ignore_signals(in_main_thread)
            if debug:
                traceback.print_exc()
            terminated = state["terminated"] or isinstance(sys.exc_info()[1], Terminated)
            _say(command, "terminated (SIGTERM)" if terminated else "interrupted (Ctrl-C)")
            return EXIT_SIGTERM if terminated else EXIT_SIGINT
        except BrokenPipeError:
            _silence_stdout()
            return EXIT_SIGPIPE
        except SystemExit:
            raise  # argparse: --help, --version and usage errors (exit 2) keep their own output
        except Exception as err:  # the boundary: one line, never a traceback unless --debug
            _ignore_signals(in_main_thread)
            if debug:
                traceback.print_exc()
            if _is_bad_input(err):  # our own messages: shown whole (a checkpoint's key listing is indented lines)
                _say(command, f"error: {_message(err)}")
                return EXIT_BAD_INPUT
            hint = "" if debug or isinstance(err, OSError) else " (--debug shows the traceback)"
            _say(command, f"error: {_describe(err, args)}{hint}")
            return EXIT_FAILED
    finally:
        if in_main_thread:
            for sig, handler in previous.items():
                signal.signal(sig, handler if handler is not None else signal.SIG_DFL)


def _exit_during_startup(signum: int, frame: object) -> None:
    terminated = signum == signal.SIGTERM
    _say("", "terminated (SIGTERM)" if terminated else "interrupted (Ctrl-C)")
    with contextlib.suppress(Exception):
        sys.stderr.flush()
    os._exit(EXIT_SIGTERM if terminated else EXIT_SIGINT)


def _ignore_signals(in_main_thread: bool) -> None:
    """While an error or interrupt is reported, a further Ctrl-C / TERM is not another traceback."""
    if in_main_thread:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)


def _say(command: str, text: str) -> None:
    with contextlib.suppress(OSError, ValueError):  # stderr closed too: nothing left to tell
        print(f"videomla{' ' + command if command else ''}: {text}", file=sys.stderr)
