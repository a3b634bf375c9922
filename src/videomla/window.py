"""Which frames a chunk attends to, and at which RoPE temporal positions.

One rule serves streaming (:class:`FrameWindow`, slot bookkeeping of the KV cache) and
training (:func:`clip_layout`, the equivalent block mask over a whole clip):

* a chunk attends to all frames of itself;
* to the sink frames (the first ``sink_frames`` frames of the video) once they are in the past;
* to the newest ``window_frames`` past non-sink frames.

Teacher forcing (:func:`teacher_forcing_layout`) runs a clean and a noisy copy of a clip in
one forward: each noisy chunk sees itself and the clean past under the same rule.

Temporal positions are the frame index (``absolute``) or the frame's rank inside the active
window: sinks, then recent frames, then the current chunk (``window-relative``, as in
Infinity-RoPE / VideoMLA). Because RoPE only sees position differences, the window-relative
rule differs from absolute only for sink keys once frames have been evicted; the clip layout
therefore re-uses each sink frame as an extra key copy placed just before the window.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .config import StreamConfig


def _active_counts(start: int, stream: StreamConfig) -> tuple[int, int]:
    """(sink frames, recent frames) in the past of a chunk starting at frame ``start``."""
    sinks = min(stream.sink_frames, start)
    past = start - sinks
    recent = past if stream.window_frames is None else min(stream.window_frames, past)
    return sinks, recent


def sink_offset(start: int, stream: StreamConfig) -> int:
    """How far window-relative positions shift sink keys toward the chunk (0 before eviction)."""
    if stream.rope_mode == "absolute":
        return 0
    sinks, recent = _active_counts(start, stream)
    return start - recent - sinks


@dataclass(frozen=True)
class ClipLayout:
    """Key frames, positions and the frame-level mask of one masked forward over a clip.

    Keys are the clip's frames (both copies under teacher forcing) followed by extra frames
    (sink frames repeated with shifted positions for window-relative RoPE).
    ``mask[i, j]``: query frame ``i`` sees key frame ``j``.
    """

    query_positions: torch.Tensor  # [Fq]
    key_sources: torch.Tensor  # [Fq + extra] frame index each key frame copies
    key_positions: torch.Tensor  # [Fq + extra]
    mask: torch.Tensor  # [Fq, Fq + extra] bool
    num_extra: int

    def to(self, device: torch.device | None) -> ClipLayout:
        if device is None:
            return self
        moved = (t.to(device) for t in (self.query_positions, self.key_sources, self.key_positions, self.mask))
        return ClipLayout(*moved, self.num_extra)

    def token_mask(self, tokens_per_frame: int) -> torch.Tensor:
        t = tokens_per_frame
        return self.mask.repeat_interleave(t, 0).repeat_interleave(t, 1)


def clip_layout(num_frames: int, stream: StreamConfig | None, device: torch.device | None = None) -> ClipLayout:
    """The layout of a whole clip; ``stream=None`` means full bidirectional attention."""
    frames = torch.arange(num_frames)
    if stream is None:
        mask = torch.ones(num_frames, num_frames, dtype=torch.bool)
        return ClipLayout(frames, frames, frames, mask, 0).to(device)
    c = stream.frames_per_chunk
    mask = torch.zeros(num_frames, num_frames, dtype=torch.bool)
    extra_src: list[int] = []
    extra_pos: list[int] = []
    extra_rows: list[tuple[slice, int]] = []
    for start in range(0, num_frames, c):
        rows = slice(start, min(start + c, num_frames))
        mask[rows, rows] = True
        sinks, recent = _active_counts(start, stream)
        mask[rows, start - recent : start] = True
        offset = sink_offset(start, stream)
        for s in range(sinks):
            if offset == 0:
                mask[rows, s] = True
            else:
                extra_rows.append((rows, len(extra_src)))
                extra_src.append(s)
                extra_pos.append(s + offset)
    extra = torch.zeros(num_frames, len(extra_src), dtype=torch.bool)
    for rows, col in extra_rows:
        extra[rows, col] = True
    layout = ClipLayout(
        query_positions=frames,
        key_sources=torch.cat([frames, torch.tensor(extra_src, dtype=torch.long)]),
        key_positions=torch.cat([frames, torch.tensor(extra_pos, dtype=torch.long)]),
        mask=torch.cat([mask, extra], dim=1),
        num_extra=len(extra_src),
    )
    return layout.to(device)


def teacher_forcing_layout(num_frames: int, stream: StreamConfig, device: torch.device | None = None) -> ClipLayout:
    """Two copies of a clip, ``[clean ; noisy]`` (2F frames): teacher forcing in one forward.

    The clean copy follows :func:`clip_layout`, so its keys are exactly what streaming caches
    after each chunk's clean pass. Noisy chunk ``c`` sees its own noisy frames plus the *clean*
    frames chunk ``c`` would see in its past, at the same positions (CausVid / Causal Forcing's
    teacher forcing): its output equals a cached forward of that chunk after the clean chunks
    before it were committed. Extra sink keys (window-relative RoPE) copy clean sink frames.
    """
    base = clip_layout(num_frames, stream)
    f, c = num_frames, stream.frames_per_chunk
    chunk = torch.arange(f) // c
    same_chunk = chunk[:, None] == chunk[None, :]
    frames, extra = base.mask[:, :f], base.mask[:, f:]
    clean_rows = torch.cat([frames, torch.zeros(f, f, dtype=torch.bool), extra], dim=1)
    noisy_rows = torch.cat([frames & ~same_chunk, same_chunk, extra], dim=1)
    both = torch.arange(2 * f)
    layout = ClipLayout(
        query_positions=torch.cat([base.query_positions, base.query_positions]),
        key_sources=torch.cat([both, base.key_sources[f:]]),
        key_positions=torch.cat([base.key_positions[:f], base.key_positions]),
        mask=torch.cat([clean_rows, noisy_rows], dim=0),
        num_extra=base.num_extra,
    )
    return layout.to(device)


@dataclass(frozen=True)
class SlotMove:
    """Copy cache slot ``src`` (a frame's worth of tokens) into slot ``dst`` on commit."""

    src: int
    dst: int


class FrameWindow:
    """Slot bookkeeping of a fixed-size streaming cache, shared by all layers.

    The buffer has ``sink + window`` persistent frame slots plus ``frames_per_chunk`` staging
    slots. Valid persistent slots always form a prefix ``[0, n_valid)``; the current chunk is
    staged right after it, so the active keys are always the contiguous prefix
    ``[0, n_valid + n_current)`` (order inside it does not matter: positions are explicit).
    """

    def __init__(self, stream: StreamConfig):
        if stream.window_frames is None:
            raise ValueError(
                "streaming needs a finite window_frames (None means unbounded global attention, "
                "whose memory grows with the video); e.g. Self-Forcing's 21-frame global window "
                "is window_frames=18 with sink_frames=0"
            )
        self.stream = stream
        self.capacity = stream.cached_frames
        self.slots = self.capacity + stream.frames_per_chunk
        self.slot_frame: list[int] = []  # frame index held by each valid persistent slot
        self.next_frame = 0  # first frame of the chunk being generated

    @property
    def n_valid(self) -> int:
        return len(self.slot_frame)

    def stage_slot(self) -> int:
        """First slot of the current chunk."""
        return self.n_valid

    def active_frames(self, n_current: int) -> list[int]:
        """Frame index of every active slot, in slot order (cached slots, then the current chunk)."""
        self._check_chunk(n_current)
        return self.slot_frame + list(range(self.next_frame, self.next_frame + n_current))

    def positions(self, n_current: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Temporal positions of (query frames, active key frames) under the stream's rope mode."""
        frames = self.active_frames(n_current)
        keys = torch.tensor(frames, dtype=torch.long)
        if self.stream.rope_mode == "window-relative":
            keys = torch.argsort(torch.argsort(keys))  # rank of each frame in the window
        return keys[len(self.slot_frame) :], keys

    def commit(self, n_current: int) -> list[SlotMove]:
        """Make the staged chunk part of the cache; evict FIFO; return the slot copies to apply."""
        frames = self.active_frames(n_current)
        sinks = [f for f in frames if f < self.stream.sink_frames]
        recent = sorted(f for f in frames if f >= self.stream.sink_frames)
        keep = set(sinks + recent[max(0, len(recent) - self.stream.window_frames) :])
        n_new = len(keep)
        slot_of = {f: i for i, f in enumerate(frames)}
        holes = [i for i in range(n_new) if frames[i] not in keep]
        movers = [f for f in sorted(keep) if slot_of[f] >= n_new]
        moves = [SlotMove(slot_of[f], dst) for f, dst in zip(movers, holes)]
        new_slots = frames[:n_new]
        for m in moves:
            new_slots[m.dst] = frames[m.src]
        self.slot_frame = new_slots
        self.next_frame += n_current
        return moves

    def _check_chunk(self, n_current: int) -> None:
        if not 1 <= n_current <= self.stream.frames_per_chunk:
            raise ValueError(f"a chunk has 1..{self.stream.frames_per_chunk} frames, got {n_current}")
