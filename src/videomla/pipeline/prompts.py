"""Prompt schedules: one prompt, or several with start times (``"a storm@20s"``)."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

Prompts = str | Sequence[str | tuple[str, float]]

_TIME = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*s?\s*")


def parse_prompt(arg: str) -> tuple[str, float | None]:
    """``"text"`` -> (text, None); ``"text@20s"`` / ``"text@20"`` -> (text, 20.0): start time in seconds."""
    text, at, when = arg.rpartition("@")
    if not at:
        text, start = arg, None
    else:
        m = _TIME.fullmatch(when)
        if m is None:
            raise ValueError(
                f"malformed prompt {arg!r}: what follows the last '@' must be a start time in seconds "
                f"like 'text@20s' or 'text@7.5', got {when!r}"
            )
        start = float(m[1])
    if not text.strip():
        raise ValueError(f"malformed prompt {arg!r}: the prompt text is empty")
    return text.strip(), start


def prompt_schedule(prompts: Prompts) -> list[tuple[str, float]]:
    """Normalise ``prompts`` to [(text, start_seconds)], the first at 0, starts strictly increasing."""
    items = [prompts] if isinstance(prompts, str) else list(prompts)
    if not items:
        raise ValueError("no prompt given")
    schedule: list[tuple[str, float]] = []
    for i, item in enumerate(items):
        text, start = (item, None) if isinstance(item, str) else item
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"prompt {i} is empty or not text: {item!r}")
        if start is None:
            if i > 0:
                raise ValueError(f"prompt {i} ({text!r}) needs a start time: every prompt after the first does")
            start = 0.0
        if not math.isfinite(start) or start < 0:
            raise ValueError(f"prompt {text!r} starts at {start} s; start times must be >= 0")
        if i == 0 and start != 0:
            raise ValueError(f"the first prompt must start at 0 s, {text!r} starts at {start} s")
        if schedule and start <= schedule[-1][1]:
            raise ValueError(f"prompt start times must increase: {text!r} at {start} s follows {schedule[-1][1]} s")
        schedule.append((text, float(start)))
    return schedule
