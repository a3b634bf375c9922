"""The anchor that our architecture is Wan2.1: same weights, same output as diffusers' WanTransformer3DModel.

diffusers computes the timestep sinusoid in fp32 (angles up to 1000 rad, so ~1e-4 rad off), while
Wan, Self-Forcing and we compute it in float64. The exact comparisons therefore give diffusers the
float64 features (checked against its own definition in the first test); the last test bounds
the gap to diffusers as released.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from videomla.checkpoint import config_from_diffusers, export_diffusers, from_diffusers_key, load_model
from videomla.config import preset
from videomla.model import CausalWanModel, sinusoidal_embedding

from conftest import rel_err, tiny_model

diffusers = pytest.importorskip("diffusers")

TINY = dict(
    num_attention_heads=2,
    attention_head_dim=32,
    in_channels=4,
    out_channels=4,
    text_dim=32,
    freq_dim=32,
    ffn_dim=128,
    num_layers=2,
    patch_size=(1, 2, 2),
    cross_attn_norm=True,
    qk_norm="rms_norm_across_heads",
    eps=1e-6,
    rope_max_seq_len=1024,
)


def random_diffusers() -> nn.Module:
    """The tiny diffusers Wan with every parameter random (its init leaves norms at 1, biases at 0)."""
    model = diffusers.WanTransformer3DModel(**TINY).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() >= 2 and "scale_shift_table" not in name:
                p.copy_(torch.randn_like(p) / p[0].numel() ** 0.5)
            elif "norm" in name:
                p.copy_(1 + 0.3 * torch.randn_like(p))
            else:  # biases, modulation tables
                p.copy_(0.3 * torch.randn_like(p))
    return model


class Float64Timesteps(nn.Module):
    """Wan's float64 timestep sinusoid, in place of diffusers' fp32 ``Timesteps``."""

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return sinusoidal_embedding(t, self.dim)


def with_float64_timesteps(model: nn.Module) -> nn.Module:
    model.condition_embedder.timesteps_proj = Float64Timesteps(model.config.freq_dim)
    return model


def ours_from(model: nn.Module) -> CausalWanModel:
    ours = CausalWanModel(config_from_diffusers(model.config)).eval()
    ours.load_state_dict({from_diffusers_key(k): v for k, v in model.state_dict().items()}, strict=True)
    return ours


def inputs(batch: int = 2) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return torch.randn(batch, 4, 5, 8, 12), torch.rand(batch) * 1000, torch.randn(batch, 7, 32)


@torch.no_grad()
def test_timestep_features_match_diffusers_definition(seed):
    """Our [cos, sin] features are diffusers' Timesteps(flip_sin_to_cos, shift 0), up to its fp32 angles."""
    from diffusers.models.embeddings import Timesteps

    t = torch.rand(64) * 1000
    ref = Timesteps(32, flip_sin_to_cos=True, downscale_freq_shift=0)(t)
    ours = sinusoidal_embedding(t, 32).float()
    assert (ours - ref).abs().max() < 2e-4  # fp32 angle error at t ~ 1000; a wrong order or base gives ~1
    small = torch.rand(64)  # small angles: fp32 is exact enough to agree to rounding
    assert (sinusoidal_embedding(small, 32).float() - Timesteps(32, True, 0)(small)).abs().max() < 1e-6


@torch.no_grad()
def test_forward_matches_diffusers(seed):
    ref = with_float64_timesteps(random_diffusers())
    ours = ours_from(ref)
    assert ours.config == preset("tiny")
    x, t, context = inputs()
    expected = ref(x, t, context).sample
    got = ours(x, t, context, stream=None)
    assert got.shape == expected.shape == x.shape
    assert rel_err(got, expected) < 1e-5


@torch.no_grad()
def test_per_frame_timesteps_match_diffusers_per_token_timesteps(seed):
    """Self-Forcing's per-frame timesteps [B, F] equal diffusers' per-token ones repeated over each frame."""
    ref = with_float64_timesteps(random_diffusers())
    ours = ours_from(ref)
    x, _, context = inputs()
    t = torch.rand(2, 5) * 1000
    tokens_per_frame = (8 // 2) * (12 // 2)
    expected = ref(x, t.repeat_interleave(tokens_per_frame, dim=1), context).sample
    assert rel_err(ours(x, t, context), expected) < 1e-5


@torch.no_grad()
def test_forward_close_to_diffusers_as_released(seed):
    """Unpatched diffusers differs only by its fp32 timestep sinusoid: ~1e-5 relative."""
    ref = random_diffusers()
    ours = ours_from(ref)
    x, t, context = inputs()
    assert rel_err(ours(x, t, context), ref(x, t, context).sample) < 1e-4


@torch.no_grad()
def test_exported_model_loads_into_diffusers_and_matches(seed, tmp_path):
    ours = tiny_model()
    folder = export_diffusers(ours, tmp_path / "diffusers")
    ref = with_float64_timesteps(diffusers.WanTransformer3DModel.from_pretrained(folder, local_files_only=True).eval())
    theirs = {from_diffusers_key(k): v for k, v in ref.state_dict().items()}
    mine = ours.state_dict()
    assert theirs.keys() == mine.keys()
    assert all(torch.equal(theirs[k], mine[k]) for k in mine)
    x, t, context = inputs()
    assert rel_err(ours(x, t, context), ref(x, t, context).sample) < 1e-5
    back = load_model(folder)  # and our loader reads the exported folder back
    assert all(torch.equal(back.state_dict()[k], mine[k]) for k in mine)
