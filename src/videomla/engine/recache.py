"""KV-recache: rebuild a stream's cache under a new prompt (what LongLive does on a prompt switch).

The engine keeps the clean latents of exactly the frames its cache holds (:class:`LatentHistory`,
a fixed buffer); on a switch they are re-run through the model under the new text, so the
window's keys stop carrying the old prompt. ``keep_sink`` leaves the sink frames as they are
(LongLive's ``global_sink``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..cache import StreamingCache
from ..model import CausalWanModel


class LatentHistory:
    """Clean latents of exactly the frames the cache holds, in a fixed buffer of ``capacity`` rows."""

    def __init__(self, capacity: int, chunk: torch.Tensor):
        b, c, _, h, w = chunk.shape
        self.buffer = torch.zeros(b, c, capacity, h, w, dtype=chunk.dtype, device=chunk.device)
        self.row_of: dict[int, int] = {}

    def update(self, chunk: torch.Tensor, first_frame: int, cached_frames: Sequence[int]) -> None:
        """Store the new chunk's frames the cache kept; forget frames it evicted."""
        keep = set(cached_frames)
        self.row_of = {f: r for f, r in self.row_of.items() if f in keep}
        free = sorted(set(range(self.buffer.shape[2])) - set(self.row_of.values()))
        for i in range(chunk.shape[2]):
            if first_frame + i in keep:
                row = free.pop(0)
                self.buffer[:, :, row].copy_(chunk[:, :, i])
                self.row_of[first_frame + i] = row
        missing = sorted(keep - set(self.row_of))
        if missing:
            raise RuntimeError(f"the cache holds frames {missing} whose latents were never recorded")

    def latents(self, frames: Sequence[int]) -> torch.Tensor:
        return self.buffer[:, :, [self.row_of[f] for f in frames]]

    def clone(self) -> LatentHistory:
        other = object.__new__(LatentHistory)
        other.buffer, other.row_of = self.buffer.clone(), dict(self.row_of)
        return other


def replay_runs(frames: Sequence[int], frames_per_chunk: int) -> list[list[int]]:
    """Split sorted frame indices into runs replayed together: consecutive and from one original chunk."""
    runs: list[list[int]] = []
    for f in frames:
        if runs and f == runs[-1][-1] + 1 and f // frames_per_chunk == runs[-1][0] // frames_per_chunk:
            runs[-1].append(f)
        else:
            runs.append([f])
    return runs


def recache(
    model: CausalWanModel,
    cache: StreamingCache,
    history: LatentHistory,
    text: torch.Tensor,
    keep_sink: bool = False,
) -> None:
    """Rebuild ``cache`` in place under ``text`` (embedded).

    The cached frames are re-run, oldest first, at their own frame indices, as clean (t = 0)
    writes: each run attends to the frames re-cached before it and to itself, the causal order
    they were generated in. With ``keep_sink`` the sink frames' entries stay as they were and
    only the window is re-run. Buffers are reused, so this allocates no cache memory.
    """
    window = cache.window
    frames = sorted(window.slot_frame)
    next_frame = window.next_frame
    sink = [f for f in frames if f < cache.stream.sink_frames] if keep_sink else []
    if sink and window.slot_frame[: len(sink)] != sink:
        raise RuntimeError(f"sink frames {sink} are not in the first cache slots {window.slot_frame}")
    replay = frames[len(sink) :]
    latents = history.latents(replay) if replay else None
    t0 = torch.zeros(cache.batch, dtype=torch.float64, device=text.device)
    cache.reset()
    if sink:  # the sink slots keep their entries: mark them cached again without recomputing
        window = cache.window
        window.slot_frame = list(sink)
        window.next_frame = sink[-1] + 1
    pos = 0
    with torch.no_grad():
        for run in replay_runs(replay, cache.stream.frames_per_chunk):
            cache.skip_to(run[0])
            model.forward_chunk(latents[:, :, pos : pos + len(run)], t0, text, cache, write=True)
            pos += len(run)
    cache.skip_to(next_frame)
