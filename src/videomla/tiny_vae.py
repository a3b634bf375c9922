"""A tiny causal decoder for Wan2.1 latents: TAEHV's architecture, loading ``taew2_1`` weights from a local path.

Wan-VAE decode costs about as much as the DiT's steps on an H200 (240 vs 279 ms per 832x480 chunk,
benchmarks/engine/README.md), which caps streaming at ~25 FPS with decode. Self-Forcing's demo
offers TAEHV (github.com/madebyollin/taehv, MIT) as a preview decoder: 2D convolutions only, with
"memory" blocks that see the previous frame's input, so it streams with one frame of state per
block. This is that decoder written for our codec protocol; its module layout (``decoder.N...``)
is TAEHV's, so its released weights (``taew2_1.pth`` or ``.safetensors``) load unchanged. It reads
the DiT's normalised latents directly (TAEHV has no latent mean/std) and is a lossy preview of the
Wan-VAE's frames, not a reimplementation of it.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn

from .codecs import causal_frames

# Decoder widths per upsampling stage and whether that stage doubles time (taew2_1: 4x in time, 8x in space).
WIDTHS = (256, 128, 64, 64)
TIME_UPSCALE = (False, True, True)
TINY_VAE_FILES = "a TAEHV weight file for Wan2.1 latents (taew2_1.pth or taew2_1.safetensors)"


def conv3x3(n_in: int, n_out: int, bias: bool = True) -> nn.Conv2d:
    return nn.Conv2d(n_in, n_out, 3, padding=1, bias=bias)


class Clamp(nn.Module):
    """Soft clamp of the input latents to (-3, 3)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x / 3) * 3


class MemBlock(nn.Module):
    """Residual conv block over [this frame, the previous frame's input] (zeros before the first frame)."""

    def __init__(self, width: int):
        super().__init__()
        self.conv = nn.Sequential(
            conv3x3(2 * width, width), nn.ReLU(), conv3x3(width, width), nn.ReLU(), conv3x3(width, width)
        )  # fmt: skip

    def forward(self, x: torch.Tensor, past: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.conv(torch.cat([x, past], 1)) + x)


class TGrow(nn.Module):
    """A 1x1 conv to ``stride`` x the channels, read as ``stride`` consecutive frames."""

    def __init__(self, width: int, stride: int):
        super().__init__()
        self.stride = stride
        self.conv = nn.Conv2d(width, width * stride, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        return self.conv(x).reshape(n * self.stride, c, h, w)


def tiny_decoder(latent_channels: int = 16, widths: tuple[int, ...] = WIDTHS) -> nn.Sequential:
    """TAEHV's decoder: per stage three MemBlocks, 2x spatial upsampling, optional 2x temporal growth."""
    layers: list[nn.Module] = [Clamp(), conv3x3(latent_channels, widths[0]), nn.ReLU()]
    for stage, grow in enumerate(TIME_UPSCALE):
        w = widths[stage]
        layers += [MemBlock(w), MemBlock(w), MemBlock(w), nn.Upsample(scale_factor=2), TGrow(w, 2 if grow else 1)]
        layers.append(conv3x3(w, widths[stage + 1], bias=False))
    layers += [nn.ReLU(), conv3x3(widths[-1], 3)]
    return nn.Sequential(*layers)


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A TAEHV weight file's tensors (safetensors, or a ``torch.save`` dict read with ``weights_only``)."""
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"no tiny decoder at {file}: expected {TINY_VAE_FILES}")
    if file.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(file)
    state = torch.load(file, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{file} is not a state dict of tensors: expected {TINY_VAE_FILES}")
    return state


class TinyWanCodec:
    """Decode-only codec for Wan2.1 latents (16 channels, 8x spatial, 4x temporal) with TAEHV's decoder."""

    name = "taehv"
    spatial_stride = 8
    temporal_stride = 4

    def __init__(self, decoder: nn.Sequential, channels_last: bool | None = None):
        self.decoder = decoder.eval().requires_grad_(False)
        self.latent_channels = decoder[1].in_channels
        param = next(decoder.parameters())
        self.channels_last = param.device.type == "cuda" if channels_last is None else channels_last
        if self.channels_last:
            self.decoder.to(memory_format=torch.channels_last)

    @classmethod
    def random(cls, device: torch.device | str, dtype: torch.dtype, **kwargs) -> TinyWanCodec:
        """Random weights (decode cost does not depend on the values): for benchmarks and tests."""
        return cls(tiny_decoder(**kwargs).to(device=device, dtype=dtype))

    @classmethod
    def from_file(
        cls, path: str | Path, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
    ) -> TinyWanCodec:
        """Load a TAEHV Wan2.1 checkpoint; its encoder's tensors are ignored, anything else must fit exactly."""
        if "taew2_1" not in Path(path).name:  # same shapes, other latent spaces: nothing in the file tells them apart
            warnings.warn(
                f"{Path(path).name} is not named taew2_1: TAEHV files for other models' latents (taehv.pth for "
                "Hunyuan Video) have the same shapes and load, but decode Wan2.1 latents wrongly",
                stacklevel=2,
            )
        state = {k: v for k, v in load_state_dict(path).items() if not k.startswith("encoder.")}
        decoder = tiny_decoder()
        expected = {f"decoder.{k}": v for k, v in decoder.state_dict().items()}  # TAEHV's names
        if not any(k.startswith("decoder.") for k in state):
            raise ValueError(f"{path} holds no 'decoder.*' tensors: expected {TINY_VAE_FILES}")
        unknown = sorted(set(state) - set(expected))
        missing = sorted(set(expected) - set(state))
        if unknown or missing:
            raise ValueError(
                f"{path} does not fit the Wan2.1 tiny decoder: unknown keys {unknown[:5]}, missing {missing[:5]}"
            )
        for key, tensor in state.items():
            if tensor.shape != expected[key].shape:
                raise ValueError(
                    f"{path}: {key} has shape {tuple(tensor.shape)}, the Wan2.1 tiny decoder needs "
                    f"{tuple(expected[key].shape)} (a TAEHV file for another model's latents?)"
                )
        decoder.load_state_dict({k.removeprefix("decoder."): v for k, v in state.items()})
        return cls(decoder.to(device=device, dtype=dtype))

    def encode(self, video: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError("the tiny decoder only decodes: encode videos with the Wan2.1 VAE folder")

    def stream_decoder(self) -> TinyStreamDecoder:
        return TinyStreamDecoder(self)

    def frames_for(self, latent_frames: int) -> int:
        return causal_frames(latent_frames, self.temporal_stride)


class TinyStreamDecoder:
    """Decodes latent chunks in order; each MemBlock keeps the last frame it saw, so chunks equal one decode.

    Every latent frame becomes ``temporal_stride`` frames; the stream's first ``temporal_stride - 1``
    are dropped, giving Wan's 1 + 4k layout. Within a chunk all frames run in parallel: a MemBlock's
    past is the chunk shifted by one frame, led by the frame kept from the chunk before.
    """

    def __init__(self, codec: TinyWanCodec):
        self.codec = codec
        self.memory: dict[int, torch.Tensor] = {}
        self.to_trim = codec.temporal_stride - 1

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """[B, 16, n, H, W] normalised latents -> [B, 3, frames, 8H, 8W] video in [-1, 1]."""
        b, c, t, h, w = latents.shape
        param = next(self.codec.decoder.parameters())
        x = latents.to(param.dtype).permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w)
        if self.codec.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.no_grad():
            for i, layer in enumerate(self.codec.decoder):
                if isinstance(layer, MemBlock):
                    frames = x.reshape(b, t, *x.shape[1:])
                    before = self.memory[i] if i in self.memory else torch.zeros_like(frames[:, :1])
                    past = torch.cat([before, frames[:, :-1]], dim=1).reshape(x.shape)
                    self.memory[i] = frames[:, -1:].clone()
                    x = layer(x, past)
                else:
                    x = layer(x)
                    if isinstance(layer, TGrow):
                        t *= layer.stride
        video = x.reshape(b, t, *x.shape[1:]).permute(0, 2, 1, 3, 4)
        if self.to_trim:
            dropped = min(self.to_trim, video.shape[2])
            video, self.to_trim = video[:, :, dropped:], self.to_trim - dropped
        return video.clamp(0, 1) * 2 - 1
