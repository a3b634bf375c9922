"""FP8 (e4m3) compute for the linear layers of the chunk step.

At chunk size the step is compute-bound (docs/bench.md): its FLOPs are the projections and the
FFN, so Hopper's fp8 tensor cores (twice bf16's rate) are where the remaining speed is. Each
swapped layer keeps its weight in e4m3 with one fp32 scale per output row, quantises its input
per token (one scale per row, amax -> 448) and multiplies with ``torch._scaled_mm``, adding the
bias in the output dtype. Row-wise scales follow outliers in single tokens and channels that a
per-tensor scale would flatten; the error against bf16 is measured in the tests and the bench.

Swapped: every block's self-attention (dense q/k/v/o; MLA down, up and RoPE projections),
cross-attention and FFN. Kept in the compute dtype: the patch, text and time embeddings, the
modulation and the head (small, and where precision matters most). A swapped layer still has a
``weight`` (the dequantised e4m3 weight), so code reading weights directly (MLA's absorbed path)
computes with the same numbers the fp8 matmul uses.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

Compute = Literal["bf16", "fp8"]
FP8 = torch.float8_e4m3fn
FP8_MAX = torch.finfo(FP8).max


def _rowwise(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """e4m3 values and fp32 scales [rows, 1] of a 2D tensor, one scale per row."""
    scale = x.float().abs().amax(-1, keepdim=True).clamp_min(1e-12) / FP8_MAX
    return (x.float() / scale).to(FP8), scale


class FP8Linear(nn.Module):
    """``nn.Linear`` computed in e4m3 with row-wise scales (weights per output row, inputs per token)."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        weight = linear.weight.detach()
        q, scale = _rowwise(weight)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.register_buffer("weight_fp8", q)
        self.register_buffer("weight_scale", scale.t().contiguous())  # [1, out]
        self.register_buffer("weight", (q.float() * scale).to(weight.dtype))  # what the fp8 matmul multiplies
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, x.shape[-1])
        n = rows.shape[0]
        pad = (-n) % 16 if x.is_cuda else 0  # cuBLASLt wants multiples of 16
        if pad:
            rows = F.pad(rows, (0, 0, 0, pad))
        q, scale = _rowwise(rows)
        out = torch._scaled_mm(
            q,
            self.weight_fp8.t(),
            scale_a=scale,
            scale_b=self.weight_scale,
            bias=None if self.bias is None else self.bias.to(self.weight.dtype),
            out_dtype=self.weight.dtype,
        )
        return out[:n].reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, e4m3 row-wise"


def use_fp8_compute(model: nn.Module) -> int:
    """Swap the chunk step's linear layers (see the module docstring) for :class:`FP8Linear`; returns how many.

    An inference-time transform of a loaded model (its state dict changes): reload to go back.
    """
    swapped = 0
    for block in model.blocks:
        for parent in (block.self_attn, block.cross_attn, block.ffn):
            for name, child in list(parent.named_children()):
                if isinstance(child, nn.Linear):
                    setattr(parent, name, FP8Linear(child))
                    swapped += 1
    if hasattr(model, "blocks"):
        for attn in (b.self_attn for b in model.blocks):
            for cache in ("_absorbed", "_padded"):  # weights changed: rebuild derived ones
                if hasattr(attn, cache):
                    setattr(attn, cache, None)
    return swapped


def set_compute(model: nn.Module, compute: Compute) -> int:
    """``"bf16"``: leave the model as loaded (the reference); ``"fp8"``: :func:`use_fp8_compute`."""
    if compute == "bf16":
        return 0
    if compute == "fp8":
        return use_fp8_compute(model)
    raise ValueError(f"compute must be 'bf16' or 'fp8', got {compute!r}")
