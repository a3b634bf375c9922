"""Video codecs: pixels <-> latents, decoded chunk by chunk while streaming.

:class:`PixelCodec` is an exact, weight-free space-to-depth codec used by the small models we
train on the procedural world: every latent is a block of pixels, so decoding can never be the
source of an artefact and the evaluator judges the DiT alone. The Wan2.1 VAE (real scale) plugs
in through the same interface.
"""

from __future__ import annotations

from typing import Protocol

import torch
from einops import rearrange


class ChunkDecoder(Protocol):
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latent chunk [B, C, n, h, w] -> frames [B, 3, m, H, W] in [-1, 1]."""


class VideoCodec(Protocol):
    latent_channels: int
    spatial_stride: int

    def encode(self, video: torch.Tensor) -> torch.Tensor:
        """Frames [B, 3, T, H, W] in [-1, 1] -> latents [B, C, t, h, w]."""

    def stream_decoder(self) -> ChunkDecoder:
        """A decoder that keeps whatever causal state it needs between chunks."""

    def frames_for(self, latent_frames: int) -> int:
        """Video frames produced by ``latent_frames`` latent frames."""


class PixelCodec:
    """Lossless space-to-depth: an ``s x s`` pixel block of RGB becomes ``3 s^2`` channels."""

    def __init__(self, spatial_stride: int = 4, scale: float = 1.0):
        self.spatial_stride = spatial_stride
        self.scale = scale  # latents = pixels * scale (keeps their std near 1 for a given world)
        self.latent_channels = 3 * spatial_stride**2

    def encode(self, video: torch.Tensor) -> torch.Tensor:
        s = self.spatial_stride
        if video.shape[-1] % s or video.shape[-2] % s:
            raise ValueError(f"frame size {tuple(video.shape[-2:])} is not divisible by the codec stride {s}")
        return rearrange(video, "b c t (h p) (w q) -> b (c p q) t h w", p=s, q=s) * self.scale

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        s = self.spatial_stride
        frames = rearrange(latents / self.scale, "b (c p q) t h w -> b c t (h p) (w q)", p=s, q=s)
        return frames.clamp(-1, 1)

    def stream_decoder(self) -> PixelCodec:
        return self  # stateless: each latent frame is one video frame

    def frames_for(self, latent_frames: int) -> int:
        return latent_frames
