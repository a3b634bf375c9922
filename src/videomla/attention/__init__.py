"""Self-attention kinds, chosen per layer: dense (Wan2.1) or VideoMLA."""

from .context import AttentionContext
from .dense import DenseSelfAttention
from .mla import MLASelfAttention, absorb_threshold, choose_path

__all__ = ["AttentionContext", "DenseSelfAttention", "MLASelfAttention", "absorb_threshold", "choose_path"]
