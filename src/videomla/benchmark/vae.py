"""Chunk-by-chunk Wan-VAE decoding, the way a streaming player decodes.

``AutoencoderKLWan.decode`` decodes a whole clip and clears its causal feature cache before
and after. A stream decodes each new latent chunk as it arrives and must carry that cache
(the last frames every causal 3D conv saw) across chunks, so this drives diffusers' decoder
one latent frame at a time exactly as its ``_decode`` loop does, minus the clearing.
The first latent frame of a video decodes to 1 frame, every later one to 4.
"""

from __future__ import annotations

import torch


def random_wan_vae(device: torch.device | str, dtype: torch.dtype, **config):
    """A Wan2.1 VAE with random weights (its decode cost does not depend on the values)."""
    try:
        from diffusers import AutoencoderKLWan
    except ImportError as err:  # optional extra
        raise ValueError("VAE timing needs diffusers (pip install 'videomla[wan]'), or pass --no-vae") from err
    return AutoencoderKLWan(**config).to(device=device, dtype=dtype).eval().requires_grad_(False)


def set_layout(vae, channels_last: bool) -> None:
    """Store the 3D conv weights NDHWC (``channels_last``) or NCDHW; cuDNN's fastest bf16 3D
    convolutions on Hopper are NDHWC kernels, and which layout wins end to end is measured."""
    fmt = torch.channels_last_3d if channels_last else torch.contiguous_format
    for p in vae.parameters():
        if p.dim() == 5:
            p.data = p.data.contiguous(memory_format=fmt)


class StreamingVAEDecoder:
    """Decode latent chunks [B, z, n, h, w] in order; output frames [B, 3, frames, H, W] in [-1, 1]."""

    def __init__(self, vae, channels_last: bool = False):
        if getattr(vae.config, "patch_size", None) is not None:
            raise ValueError("streaming decode supports Wan2.1's VAE (no patchification)")
        self.vae = vae
        self.channels_last = channels_last
        self.started = False

    def reset(self) -> None:
        """Start a new video: forget the causal feature cache."""
        self.vae.clear_cache()
        self.started = False

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        vae = self.vae
        if not self.started:
            vae.clear_cache()
        if self.channels_last:
            z = z.contiguous(memory_format=torch.channels_last_3d)
        x = vae.post_quant_conv(z)
        frames = []
        for i in range(x.shape[2]):
            vae._conv_idx = [0]
            frames.append(
                vae.decoder(
                    x[:, :, i : i + 1], feat_cache=vae._feat_map, feat_idx=vae._conv_idx, first_chunk=not self.started
                )
            )
            self.started = True
        return torch.cat(frames, 2).clamp(-1.0, 1.0)
