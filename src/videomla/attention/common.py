"""Pieces shared by every attention kind: RMSNorm, RoPE, the SDPA call, and the fast-kernel switch.

:func:`fast_kernels` turns on the inference fast paths for the block it guards, in the current
thread (or asyncio task) only: a context variable, not process state, so one server thread
streaming with fused kernels does not change what a reference run in another thread computes.
Outside it every helper runs its eager reference code unchanged, so tests compare the two.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.nn.functional as F
from torch import nn

from ..rope import apply_rope

Fn = TypeVar("Fn", bound=Callable)


# the torch.compile backend while fast_kernels() is active in this context (None: reference code)
_BACKEND: ContextVar[str | None] = ContextVar("videomla_fast_backend", default=None)
_COMPILED: dict[tuple[Callable, str], Callable] = {}  # compiled helpers, built once per backend


def fast_enabled() -> bool:
    return _BACKEND.get() is not None


@contextmanager
def same_kernels_as(backend: str | None) -> Iterator[None]:
    """Run the block with ``backend`` as the fast-kernel state (None: reference), whatever thread it is:
    activation checkpointing recomputes on autograd's thread, which does not see the forward's context."""
    token = _BACKEND.set(backend)
    try:
        yield
    finally:
        _BACKEND.reset(token)


def current_backend() -> str | None:
    return _BACKEND.get()


@contextmanager
def fast_kernels(backend: str = "inductor", cudnn_first: bool = True) -> Iterator[None]:
    """Inference fast paths inside this block (this thread / task), for every model it runs.

    * helpers marked :func:`fusable` (norms, RoPE, adaLN modulation, gated residuals, fp8
      (de)quantisation) run as one ``torch.compile``'d kernel each instead of 3-10 eager
      kernels: they are memory-bound, so fewer passes over the activations is the whole gain;
    * RoPE tables are float32 instead of float64 (bf16 activations cannot tell them apart);
    * SDPA tries cuDNN first (about 1.65x FlashAttention-2 on an H100 at chunk sizes), then
      flash, memory-efficient and math (``cudnn_first=False`` keeps PyTorch's own order).
    """
    from torch.nn.attention import SDPBackend, sdpa_kernel

    # each helper sees a few shapes (query side, key side, batch sizes): never fall back to eager.
    # Only ever raised (on older torch dynamo's config is process-wide: no restore race between threads)
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
    token = _BACKEND.set(backend)
    try:
        with ExitStack() as stack:
            if cudnn_first:
                order = [
                    SDPBackend.CUDNN_ATTENTION,
                    SDPBackend.FLASH_ATTENTION,
                    SDPBackend.EFFICIENT_ATTENTION,
                    SDPBackend.MATH,
                ]
                stack.enter_context(sdpa_kernel(order, set_priority=True))
            yield
    finally:
        _BACKEND.reset(token)


def fusable(fn: Fn) -> Fn:
    """Mark a pure tensor function: inside :func:`fast_kernels` it runs compiled (fused)."""

    @functools.wraps(fn)
    def call(*args):
        backend = _BACKEND.get()
        if backend is None:
            return fn(*args)
        key = (fn, backend)
        compiled = _COMPILED.get(key)
        if compiled is None:
            compiled = _COMPILED[key] = torch.compile(fn, backend=backend, fullgraph=True)
        return compiled(*args)

    call.reference = fn  # type: ignore[attr-defined]
    return call  # type: ignore[return-value]


@fusable
def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Normalise in fp32 (as Wan / Self-Forcing do), cast back, then apply the gain."""
    xf = x.float()
    normed = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return normed.type_as(x) * weight


rope = fusable(apply_rope)


class RMSNorm(nn.Module):
    """RMSNorm computed in fp32 (as Wan / Self-Forcing do), with a learned gain."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.weight, self.eps)


# Below this many scores per stream (16 MiB of fp32), folded multi-query attention on the CPU is
# two matmuls and a softmax: 1.5-2.2x faster than the CPU SDPA kernel at the world model's shapes
# (768 folded queries x 192-640 keys, one thread), and the score matrix is small enough to hold.
SMALL_SCORES = 1 << 22


def small_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """softmax(q k^T * scale) v with the scores materialised: SDPA's math, for small CPU problems.

    The scale goes on q (N x D numbers), not on the N x K scores: a tenth of the multiplies here."""
    return torch.softmax((q * scale) @ k.transpose(-1, -2), dim=-1) @ v


@dataclass(frozen=True, eq=False)
class BlockMask:
    """A clip's chunk-causal mask as runs of query tokens, each with the key tokens it sees.

    The mask of a clip is block-structured (whole frames see whole frames), and rows of one chunk
    are identical; so instead of one [Nq, Nk] boolean mask, which sends SDPA to a kernel that
    computes every score and then discards three quarters of them, each run of identical rows
    attends, unmasked, to its own keys (a slice when they are contiguous, else gathered): the
    flash kernels run and only the needed scores are computed. Equal to the dense mask up to float
    summation order (softmax does not care about key order).
    """

    runs: tuple[tuple[int, int, slice | torch.Tensor], ...]  # (first query, end query, keys)
    shape: tuple[int, int]  # (Nq, Nk) of the equivalent dense mask

    @classmethod
    def from_frames(cls, frame_mask: torch.Tensor, tokens_per_frame: int) -> BlockMask:
        """From a frame-level mask [Fq, Fk] (query frame i sees key frame j)."""
        t = tokens_per_frame
        rows = frame_mask.cpu()
        runs: list[tuple[int, int, slice | torch.Tensor]] = []
        start = 0
        for i in range(1, rows.shape[0] + 1):
            if i < rows.shape[0] and torch.equal(rows[i], rows[start]):
                continue
            cols = rows[start].nonzero().flatten()
            if cols.numel() == 0:
                raise ValueError(f"query frame {start} sees no key frame: the mask is malformed")
            if int(cols[-1] - cols[0]) + 1 == cols.numel():  # contiguous frames
                keys: slice | torch.Tensor = slice(int(cols[0]) * t, (int(cols[-1]) + 1) * t)
            else:
                keys = (cols[:, None] * t + torch.arange(t)).flatten().to(frame_mask.device)
            runs.append((start * t, i * t, keys))
            start = i
        return cls(tuple(runs), (rows.shape[0] * t, rows.shape[1] * t))

    def dense(self) -> torch.Tensor:
        """The equivalent [Nq, Nk] boolean mask (for tests and the reference path)."""
        out = torch.zeros(self.shape, dtype=torch.bool)
        for a, b, keys in self.runs:
            out[a:b, keys if isinstance(keys, slice) else keys.cpu()] = True
        return out


def _take(x: torch.Tensor, keys: slice | torch.Tensor) -> torch.Tensor:
    return x[:, keys] if isinstance(keys, slice) else x.index_select(1, keys)


def attend(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, mask: torch.Tensor | BlockMask | None = None
) -> torch.Tensor:
    """Softmax attention on [B, N, H, D] tensors (k/v may have one head: multi-query).

    The scale is always passed explicitly: MLA's q/k width differs from its head size.
    Multi-query attention without a mask folds the heads into the query axis (one key head,
    N*H queries): the same numbers, with no stride-0 head expansion for the kernel to refuse.
    A :class:`BlockMask` runs each of its query runs unmasked against that run's keys.
    """
    if isinstance(mask, BlockMask):
        if (q.shape[1], k.shape[1]) != mask.shape:
            raise ValueError(f"block mask is for {mask.shape} queries x keys, got {q.shape[1]} x {k.shape[1]}")
        outs = [attend(q[:, a:b], _take(k, keys), _take(v, keys), scale) for a, b, keys in mask.runs]
        return torch.cat(outs, dim=1)
    if k.shape[2] == 1 and q.shape[2] > 1 and mask is None:
        b, n, h, _ = q.shape
        q1, k1, v1 = q.reshape(b, 1, n * h, -1), k.transpose(1, 2), v.transpose(1, 2)
        if q.device.type == "cpu" and q.dtype == torch.float32 and n * h * k.shape[1] <= SMALL_SCORES:
            out = small_attention(q1, k1, v1, scale)
        else:
            out = F.scaled_dot_product_attention(q1, k1, v1, scale=scale)
        return out.reshape(b, n, h, -1)
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))
    if k.shape[1] != q.shape[1]:
        k = k.expand(-1, q.shape[1], -1, -1)
        v = v.expand(-1, q.shape[1], -1, -1)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
    return out.transpose(1, 2)
