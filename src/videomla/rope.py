"""Wan's factorised 3D rotary position embedding, and the subset VideoMLA keeps.

A head of ``D`` channels holds ``D/2`` complex pairs split over (t, h, w) as
:func:`~videomla.config.rope_axis_dims` says (128 -> 22/21/21 pairs). Pair ``i`` of an axis
with ``d`` channels turns at ``theta ** (-2i / d)``: pair 0 is the highest frequency.
VideoMLA's head-shared RoPE key keeps the first (6, 5, 5) pairs of each axis.

Angles are computed in float64 from positions on the fly (no 1024-slot table, so window-
relative and absolute positions work at any length), as Self-Forcing does for its tables.
"""

from __future__ import annotations

import torch

from .config import rope_axis_dims


class Rotary3D:
    """Angles for tokens on a (frame, row, column) grid for a chosen set of pairs per axis."""

    def __init__(self, head_dim: int, theta: float = 10000.0, pairs: tuple[int, int, int] | None = None):
        axis_dims = rope_axis_dims(head_dim)
        available = tuple(d // 2 for d in axis_dims)
        self.pairs = available if pairs is None else tuple(pairs)
        if any(p > a for p, a in zip(self.pairs, available)):
            raise ValueError(f"RoPE pairs {self.pairs} exceed the {available} pairs of head dim {head_dim}")
        # Always real CPU tensors: a model built on the meta device (checkpoint loading) still has usable RoPE.
        self.freqs = [
            1.0 / theta ** (torch.arange(0, d, 2, dtype=torch.float64, device="cpu")[:p] / d)
            for d, p in zip(axis_dims, self.pairs)
        ]
        self._on: dict[torch.device, list[torch.Tensor]] = {}

    @property
    def channels(self) -> int:
        return 2 * sum(self.pairs)

    def cos_sin(
        self, frame_positions: torch.Tensor, height: int, width: int, dtype: torch.dtype = torch.float64
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """cos/sin of shape [F*height*width, pairs] for frames at ``frame_positions`` (token order f, h, w)."""
        device = frame_positions.device
        freqs = self._on.get(device)
        if freqs is None:  # uploaded once per device, not per forward
            freqs = self._on[device] = [f.to(device) for f in self.freqs]
        t = frame_positions.to(torch.float64)
        f = t.numel()
        ang_t = torch.outer(t, freqs[0])
        ang_h = torch.outer(torch.arange(height, dtype=torch.float64, device=device), freqs[1])
        ang_w = torch.outer(torch.arange(width, dtype=torch.float64, device=device), freqs[2])
        angles = torch.cat(
            [
                ang_t[:, None, None, :].expand(f, height, width, -1),
                ang_h[None, :, None, :].expand(f, height, width, -1),
                ang_w[None, None, :, :].expand(f, height, width, -1),
            ],
            dim=-1,
        ).reshape(f * height * width, -1)
        return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate consecutive channel pairs of ``x`` [B, N, (H,) 2P] by angles given as cos/sin [N, P].

    Computed in the tables' dtype (float64 by default, like Self-Forcing) and cast back.
    """
    if x.dim() == 4:  # [B, N, H, D]: broadcast over heads
        cos, sin = cos[:, None, :], sin[:, None, :]
    pairs = x.to(cos.dtype).unflatten(-1, (-1, 2))
    x0, x1 = pairs[..., 0], pairs[..., 1]
    out = torch.stack([x0 * cos - x1 * sin, x0 * sin + x1 * cos], dim=-1)
    return out.flatten(-2).to(x.dtype)
