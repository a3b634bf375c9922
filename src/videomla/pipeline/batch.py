"""Batch generation from a prompt file into an output folder, sharded over processes.

The formats peers use:

* ``.txt``: one prompt per line (Self-Forcing's ``--data_path``, CausVid's ``--prompt_file_path``);
  blank lines and lines starting with ``#`` are skipped;
* ``.jsonl``: one video per line, LongLive's interactive format ``{"prompts": ["a", "b"],
  "switch_frame_indices": [21]}`` (switch points in latent frames, one fewer than prompts), or
  ours ``{"prompts": [["a", 0], ["b", 5.0]]}`` (start seconds); optional ``"name"`` and ``"seed"``.

Under ``torchrun`` (``RANK`` / ``WORLD_SIZE`` set) each process takes every WORLD_SIZE-th item, so
N GPUs share the list; seeds depend only on the item and sample index, so the videos are the same
for any number of processes.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from .prompts import prompt_schedule
from .spec import GenerationSpec


@dataclass(frozen=True)
class BatchItem:
    """One video of a batch: its file stem, timed prompts and seed."""

    name: str
    prompts: tuple[tuple[str, float], ...]
    seed: int


def _slug(text: str, limit: int = 40) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:limit] or "video"


def read_prompt_file(path: str | Path, spec: GenerationSpec, frames_per_chunk: int) -> list[dict]:
    """Entries ``{"name", "prompts": [(text, start_s)], "seed"?}`` of a .txt or .jsonl prompt file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no prompt file at {path}")
    lines = path.read_text(encoding="utf-8").splitlines()
    entries: list[dict] = []
    if path.suffix == ".jsonl":
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{n}: not JSON ({err.msg})") from None
            entries.append(_jsonl_entry(obj, spec, frames_per_chunk, f"{path}:{n}"))
    elif path.suffix in (".txt", ""):
        for line in lines:
            if line.strip() and not line.lstrip().startswith("#"):
                entries.append({"prompts": [(line.strip(), 0.0)]})
    else:
        raise ValueError(f"prompt file {path}: expected .txt (one prompt per line) or .jsonl")
    if not entries:
        raise ValueError(f"prompt file {path} holds no prompt")
    for entry in entries:
        prompt_schedule(entry["prompts"])  # the same checks as --prompt
    return entries


def _jsonl_entry(obj: object, spec: GenerationSpec, frames_per_chunk: int, where: str) -> dict:
    if not isinstance(obj, dict) or not isinstance(obj.get("prompts"), list) or not obj["prompts"]:
        raise ValueError(f'{where}: expected an object with a non-empty "prompts" list')
    unknown = sorted(set(obj) - {"prompts", "switch_frame_indices", "name", "seed"})
    if unknown:
        raise ValueError(f"{where}: unknown keys {unknown}")
    raw = obj["prompts"]
    if all(isinstance(p, str) for p in raw):
        switches = obj.get("switch_frame_indices", [])
        if not isinstance(switches, list) or len(switches) != len(raw) - 1:
            raise ValueError(f"{where}: {len(raw)} prompts need {len(raw) - 1} switch_frame_indices (latent frames)")
        starts = [0.0]
        for f in switches:
            if not isinstance(f, int) or f < 0 or f % frames_per_chunk:
                raise ValueError(f"{where}: switch frame {f!r} must be a latent frame at a chunk start")
            starts.append(spec.codec.frames_for(f) / spec.video.fps)  # the first video frame of that chunk
        prompts = list(zip(raw, starts))
    else:
        if "switch_frame_indices" in obj:
            raise ValueError(f"{where}: timed prompts [[text, seconds], ...] take no switch_frame_indices")
        try:
            prompts = [(str(t), float(s)) for t, s in raw]
        except (TypeError, ValueError):
            raise ValueError(f"{where}: prompts must be strings or [text, start_seconds] pairs") from None
    entry: dict = {"prompts": prompts}
    if "name" in obj:
        entry["name"] = _slug(str(obj["name"]), 80)
    if "seed" in obj:
        if not isinstance(obj["seed"], int) or obj["seed"] < 0:
            raise ValueError(f"{where}: seed must be a non-negative integer")
        entry["seed"] = obj["seed"]
    return entry


def batch_items(entries: list[dict], num_samples: int, base_seed: int) -> list[BatchItem]:
    """Every (entry, sample) pair, named ``0007-a-red-ball-s1``; seed = entry seed or base + index."""
    if num_samples < 1:
        raise ValueError(f"--num-samples must be >= 1, got {num_samples}")
    items = []
    for i, entry in enumerate(entries):
        stem = entry.get("name") or f"{i:04d}-{_slug(entry['prompts'][0][0])}"
        for s in range(num_samples):
            seed = entry.get("seed", base_seed + i * num_samples) + s
            name = stem if num_samples == 1 else f"{stem}-s{s}"
            items.append(BatchItem(name, tuple(entry["prompts"]), seed))
    names = [item.name for item in items]
    if len(set(names)) != len(names):
        raise ValueError('two videos of the prompt file would get the same name; give each line a unique "name"')
    return items


def shard() -> tuple[int, int]:
    """(rank, world size) from torchrun's environment; (0, 1) outside it."""
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    if not 0 <= rank < world:
        raise ValueError(f"RANK {rank} outside WORLD_SIZE {world}")
    return rank, world
