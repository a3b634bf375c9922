"""What the KV cache actually holds: capture each layer's cached tensors during a forward.

The weight spectra of :mod:`videomla.analysis.rank` measure an operator's capacity; the spectra
of the cached activations measure how much of it a given input uses. Forward hooks on the modules
whose outputs the cache stores (nothing in the model changes):

* dense: ``norm_k`` (k after its RMSNorm, before RoPE: what window-relative streaming caches) and
  ``v``, concatenated per token into [k; v] (2 d numbers per token);
* MLA: ``kv_norm`` (c_KV; an Identity when ``latent_norm=False``, its output is then W_DKV x) and
  ``k_rope`` (the unrotated k_R), analysed separately.

Tokens of every sample and frame are stacked into one (tokens x width) matrix, not centred: the
cache stores the raw vectors, mean included. Its rank is at most min(tokens, width), so the input
must hold more tokens than the width for a full-rank reading.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn

from ..attention import DenseSelfAttention, MLASelfAttention
from ..config import StreamConfig
from ..model import CausalWanModel
from .rank import Spectrum, spectrum

# Per attention kind: reported tensor -> the modules whose outputs are concatenated into it.
CACHED_MODULES: dict[str, dict[str, tuple[str, ...]]] = {
    "dense": {"kv": ("norm_k", "v")},
    "mla": {"c_kv": ("kv_norm",), "k_r": ("k_rope",)},
}


def _kind(attn: nn.Module) -> str:
    if isinstance(attn, MLASelfAttention):
        return "mla"
    if isinstance(attn, DenseSelfAttention):
        return "dense"
    raise ValueError(f"unknown self-attention module {type(attn).__name__}")


def check_capture_args(chunks: int, batch: int, text_tokens: int) -> None:
    for name, value in (("chunks", chunks), ("batch", batch), ("text_tokens", text_tokens)):
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")


@torch.no_grad()
def capture_cached(
    model: CausalWanModel,
    stream: StreamConfig,
    *,
    chunks: int = 3,
    latent_height: int = 16,
    latent_width: int = 16,
    text_tokens: int = 16,
    timestep: float = 0.0,
    batch: int = 2,
    generator: torch.Generator | None = None,
) -> dict[int, tuple[str, dict[str, torch.Tensor]]]:
    """Layer -> (kind, {tensor name: [tokens, width]}) from one chunk-causal forward on random inputs.

    Random latents and random text features (standard normal), ``chunks`` chunks of
    ``stream.frames_per_chunk`` frames, at one timestep for every frame (0 by default: the clean
    pass whose keys Self-Forcing-style streaming keeps). The whole clip runs at once under the
    chunk-causal block mask, which the project's tests check equals streaming chunk by chunk.
    """
    check_capture_args(chunks, batch, text_tokens)
    cfg = model.config
    param = next(model.parameters())
    frames = chunks * stream.frames_per_chunk * cfg.patch_size[0]
    model.token_grid(frames, latent_height, latent_width)  # validates the latent size
    x = torch.randn(batch, cfg.in_channels, frames, latent_height, latent_width, generator=generator)
    context = torch.randn(batch, text_tokens, cfg.text_dim, generator=generator)
    t = torch.full((batch,), float(timestep))
    x, context, t = (v.to(param.device, param.dtype) for v in (x, context, t))

    outputs: dict[tuple[int, str], torch.Tensor] = {}
    handles = []
    kinds: dict[int, str] = {}
    for layer, block in enumerate(model.blocks):
        kinds[layer] = _kind(block.self_attn)
        for modules in CACHED_MODULES[kinds[layer]].values():
            for name in modules:

                def hook(_m: nn.Module, _i: tuple, out: torch.Tensor, key: tuple[int, str] = (layer, name)) -> None:
                    outputs[key] = out.detach().flatten(0, -2).to("cpu", torch.float64)

                handles.append(getattr(block.self_attn, name).register_forward_hook(hook))
    try:
        model(x, t, context, stream=stream)
    finally:
        for h in handles:
            h.remove()
    return {
        layer: (
            kind,
            {
                tensor: torch.cat([outputs[(layer, m)] for m in modules], dim=-1)
                for tensor, modules in CACHED_MODULES[kind].items()
            },
        )
        for layer, kind in kinds.items()
    }


def activation_spectra(captured: dict[int, tuple[str, dict[str, torch.Tensor]]]) -> Iterator[Spectrum]:
    """Spectra of the captured (tokens x width) matrices, layer by layer."""
    for layer, (kind, tensors) in sorted(captured.items()):
        for name, matrix in tensors.items():
            yield spectrum(layer, "activations", kind, name, matrix)
