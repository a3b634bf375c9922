"""Sequence parallelism for one stream: the tokens of every frame split over processes.

Why tokens, for both attention kinds. An MLA cache is one latent per token shared by all heads,
so splitting heads (Ulysses) would keep a full copy of the latent cache on every process; split
by tokens, each process caches only its slice (1/N of the memory) and, per layer, all-gathers
the window's latents, 224 numbers per token at Wan size, then attends its own queries to every
key. For a dense cache the same split is correct and keeps the code one path; its per-layer
gather moves 3072 numbers per token, 13.7x MLA's, which is where Ulysses (all-to-all of the
current chunk's q/k/v over heads, cache sharded by heads) would move less. That trade-off is
MLA's point: the smaller the cached token, the cheaper the token split.

Everything outside self-attention is per token (projections, cross-attention, FFN, adaLN per
frame), so it runs on the local slice with no communication; the patch embedding runs on the
whole chunk and the head's output is all-gathered, so every process holds the full velocity and
the sampler runs identically everywhere (same seed, same noise). The result equals the
one-process stream up to the order of floating-point sums (tested on CPU with gloo, 2 and 4
processes). Collectives are ``torch.distributed`` ones: NCCL on GPUs, gloo on CPU.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.distributed as dist


@dataclass
class TokenShard:
    """This process's slice of every frame's tokens: ``[rank * T / world, (rank + 1) * T / world)``."""

    rank: int
    world: int
    group: dist.ProcessGroup | None = None
    _index: dict = field(default_factory=dict, repr=False)

    @classmethod
    def from_process_group(cls, group: dist.ProcessGroup | None = None) -> TokenShard:
        if not dist.is_initialized():
            raise RuntimeError("sequence parallelism needs torch.distributed initialised (run under torchrun)")
        return cls(dist.get_rank(group), dist.get_world_size(group), group)

    def local_tokens(self, tokens_per_frame: int) -> int:
        if tokens_per_frame % self.world:
            raise ValueError(
                f"{tokens_per_frame} tokens per frame do not split over {self.world} processes; "
                f"use a process count that divides it"
            )
        return tokens_per_frame // self.world

    def local_slice(self, tokens_per_frame: int) -> slice:
        n = self.local_tokens(tokens_per_frame)
        return slice(self.rank * n, (self.rank + 1) * n)

    def query_rows(self, frames: int, tokens_per_frame: int, device: torch.device) -> torch.Tensor:
        """Rows of a full (frame, token) table that this process's queries use."""
        return self._rows(("q", frames, tokens_per_frame, device), [self.rank], frames, tokens_per_frame, device)

    def key_rows(self, frames: int, tokens_per_frame: int, device: torch.device) -> torch.Tensor:
        """Rows of a full table in the order :meth:`gather` lays keys out: rank-major, then frame, token."""
        ranks = list(range(self.world))
        return self._rows(("k", frames, tokens_per_frame, device), ranks, frames, tokens_per_frame, device)

    def _rows(self, key, ranks, frames, tokens_per_frame, device) -> torch.Tensor:
        if key not in self._index:
            n = self.local_tokens(tokens_per_frame)
            base = torch.arange(frames, device=device)[:, None] * tokens_per_frame
            parts = [(base + r * n + torch.arange(n, device=device)[None]).flatten() for r in ranks]
            self._index[key] = torch.cat(parts)
        return self._index[key]

    def gather(self, t: torch.Tensor, dim: int = 1) -> torch.Tensor:
        """Concatenate every process's ``t`` along ``dim`` in rank order."""
        parts = [torch.empty_like(t) for _ in range(self.world)]
        dist.all_gather(parts, t.contiguous(), group=self.group)
        return torch.cat(parts, dim=dim)


def init_from_torchrun(use_cuda: bool) -> TokenShard:
    """Join torchrun's process group (NCCL with one GPU per process, else gloo); this process's shard."""
    import os

    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        raise ValueError("--sequence-parallel runs under torchrun (RANK / WORLD_SIZE are not set)")
    if not dist.is_initialized():
        if use_cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return TokenShard.from_process_group()
