"""The configurations `videomla bench` compares, side by side, by name.

Dense variants reproduce peers' attention windows (docs/generate.md, "Which window runs"): Self-Forcing attends
to at most 21 latent frames with no sink and keys cached after RoPE at absolute positions;
LongLive attends to 12 frames (3 sink); Reward Forcing to 9 (3 sink, unroped keys re-indexed in
the cache). ``la6_sink1`` is the released VideoMLA checkpoint's name read as peers read
``local_attn_size``: 6 frames in all (1 sink + 2 cached + the 3-frame chunk). The VideoMLA
variants use the paper's 1 sink + 6 cached frames with window-relative RoPE.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..attention import choose_path
from ..config import ModelConfig, StreamConfig

SELF_FORCING = StreamConfig(sink_frames=0, window_frames=18, rope_mode="absolute")
PAPER_WINDOW = StreamConfig(sink_frames=1, window_frames=6)


@dataclass(frozen=True)
class Variant:
    """One benchmarked configuration: attention kind, window, MLA path, cache storage, kernels."""

    name: str
    description: str
    attention: str  # "dense" | "mla"
    stream: StreamConfig
    mla_path: str = "auto"
    kv_fp8: bool = False
    fast: bool = True  # fast_kernels(): fused helpers, fp32 RoPE tables, cuDNN-first SDPA
    compute: str = "bf16"  # "fp8": the blocks' linears in e4m3 (videomla.quant)

    def resolved_path(self, cfg: ModelConfig, tokens_per_stream: int) -> str:
        """The MLA path the model will take for a chunk of ``tokens_per_stream`` queries."""
        if self.attention != "mla":
            return "dense"
        assert cfg.mla is not None
        return choose_path(self.mla_path, tokens_per_stream, cfg.mla, cfg.head_dim)

    @property
    def kv_dtype(self) -> torch.dtype | None:
        return torch.float8_e4m3fn if self.kv_fp8 else None

    @property
    def window_label(self) -> str:
        s = self.stream
        return f"{s.sink_frames} sink + {s.window_frames} cached + {s.frames_per_chunk} chunk = {s.attended_frames}"


VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in (
        Variant("sf21", "Self-Forcing: dense, 21 frames attended, no sink", "dense", SELF_FORCING),
        Variant(
            "sf21-eager",
            "Self-Forcing window with the reference kernels (eager, fp64 RoPE, PyTorch's SDPA order)",
            "dense",
            SELF_FORCING,
            fast=False,
        ),
        Variant(
            "longlive12",
            "LongLive: dense, 12 frames incl. 3 sink",
            "dense",
            StreamConfig.from_local_attn_size(12, 3, rope_mode="absolute"),
        ),
        Variant(
            "reward9", "Reward Forcing: dense, 9 frames incl. 3 sink", "dense", StreamConfig.from_local_attn_size(9, 3)
        ),
        Variant("dense-s1w6", "dense at the paper's window: 1 sink + 6 cached", "dense", PAPER_WINDOW),
        Variant(
            "dense-la6s1",
            "dense, la6_sink1 read as 6 frames in all (1 sink + 2 cached + chunk)",
            "dense",
            StreamConfig.from_local_attn_size(6, 1),
        ),
        Variant("mla-mat", "VideoMLA, materialised per-head K/V", "mla", PAPER_WINDOW, mla_path="materialised"),
        Variant("mla-abs", "VideoMLA, absorbed (one latent key head)", "mla", PAPER_WINDOW, mla_path="absorbed"),
        Variant("mla-auto", "VideoMLA, path chosen by the cost model", "mla", PAPER_WINDOW),
        Variant("mla-fp8", "VideoMLA auto, fp8 e4m3 latent cache", "mla", PAPER_WINDOW, kv_fp8=True),
        Variant("mla-eager", "VideoMLA auto with the reference kernels", "mla", PAPER_WINDOW, fast=False),
        Variant("mla-sf21", "VideoMLA auto at Self-Forcing's window (21 frames, no sink)", "mla", SELF_FORCING),
        Variant("mla-fp8c", "VideoMLA auto with fp8 (e4m3) linear layers", "mla", PAPER_WINDOW, compute="fp8"),
        Variant("dense-fp8c", "dense 1 sink + 6 with fp8 (e4m3) linear layers", "dense", PAPER_WINDOW, compute="fp8"),
    )
}

DEFAULT_VARIANTS = (
    "sf21",
    "sf21-eager",
    "longlive12",
    "reward9",
    "dense-s1w6",
    "dense-la6s1",
    "mla-mat",
    "mla-abs",
    "mla-auto",
    "mla-fp8",
    "mla-eager",
)


def parse_variants(spec: str) -> list[Variant]:
    """Comma-separated names (``all`` = every variant), in the order given."""
    names = list(VARIANTS) if spec.strip() == "all" else [n.strip() for n in spec.split(",") if n.strip()]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown or not names:
        raise ValueError(f"unknown variants {unknown or spec!r}; choose from {', '.join(VARIANTS)} or 'all'")
    if len(set(names)) != len(names):
        raise ValueError(f"variant listed twice in {spec!r}")
    return [VARIANTS[n] for n in names]
