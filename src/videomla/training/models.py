"""Building the models a stage trains: initialisation, MLA conversion, activation checkpointing, EMA."""

from __future__ import annotations

import copy
from contextlib import nullcontext

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..attention.common import current_backend, same_kernels_as
from ..config import MLAConfig, ModelConfig, mla_config, preset
from ..model import CausalWanModel
from .config import ModelSection
from .distributed import reshard


def build_trained_model(section: ModelSection, seed: int) -> tuple[CausalWanModel, dict | None]:
    """The trained model in fp32 (master weights), identical on every process (seeded init), and
    the MLA conversion report when the checkpoint was converted."""
    torch.manual_seed(seed)
    report = None
    if section.checkpoint is not None:
        from ..checkpoint import load_model

        model = load_model(section.checkpoint, preset=section.preset, which=section.which, dtype=torch.float32)
        if section.patch_size is not None:
            from ..repatch import refine_patches

            model = refine_patches(model, tuple(section.patch_size))
        if section.num_layers is not None:
            from ..deepen import deepen

            model = deepen(model, section.num_layers)
        if section.mla:
            model, report = convert_section(model, section, seed)
    else:
        assert section.preset is not None  # ModelSection validated it
        cfg = preset(section.preset)
        if section.mla:
            layers = None if section.mla_layers is None else tuple(section.mla_layers)
            cfg = cfg.with_mla(mla_dims(cfg, section), layers=layers)
        model = CausalWanModel(cfg)
    return model.float().train(), report


def convert_section(model: CausalWanModel, section: ModelSection, seed: int) -> tuple[CausalWanModel, dict]:
    """Dense -> VideoMLA self-attention (SVD or random init of the new projections)."""
    from ..convert import convert_to_mla as convert

    layers = None if section.mla_layers is None else tuple(section.mla_layers)
    generator = torch.Generator().manual_seed(seed)
    converted, report = convert(
        model,
        mla_dims(model.config, section),
        layers=layers,
        init=section.mla_init,
        generator=generator,
        progress=True,
    )
    return converted, report.to_dict()


def mla_dims(cfg: ModelConfig, section: ModelSection) -> MLAConfig:
    """The MLA dimensions a config section asks for (the paper's ratios where it is silent)."""
    return mla_config(cfg, section.mla_kv_latent_dim, section.mla_q_latent_dim, section.mla_rope_head_dim)


def load_frozen(path: str, which: str, dtype: torch.dtype) -> CausalWanModel:
    """A teacher: no gradients, stored in the compute dtype (it has no master weights to keep)."""
    from ..checkpoint import load_model

    model = load_model(path, which=which, dtype=dtype)
    return freeze(model)


def freeze(model: nn.Module) -> nn.Module:
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def trainable_copy(model: CausalWanModel) -> CausalWanModel:
    """An fp32, trainable copy (the DMD critic starts as the teacher or the generator)."""
    twin = copy.deepcopy(model).float().train()
    for p in twin.parameters():
        p.requires_grad_(True)
    return twin


def enable_activation_checkpointing(model: CausalWanModel) -> None:
    """Recompute each block's activations in backward (clip forwards with gradients only).

    Streaming forwards (a cache is passed) are left alone: they stage keys into the cache in
    place, which a recomputation would repeat. The parameter names do not change.
    """
    for block in model.blocks:
        inner = block.forward

        def forward(x, e, text, ctx, cache=None, _inner=inner):
            if cache is None and torch.is_grad_enabled():
                backend = current_backend()  # the recompute must run the same kernels as this forward
                return checkpoint(
                    _inner, x, e, text, ctx, None, use_reentrant=False,
                    context_fn=lambda: (nullcontext(), same_kernels_as(backend)),
                )  # fmt: skip
            return _inner(x, e, text, ctx, cache)

        block.forward = forward


class EMA:
    """Exponential moving average of a model's parameters, kept as a model (sharded like it)."""

    def __init__(self, model: CausalWanModel, decay: float, start: int):
        self.model = freeze(copy.deepcopy(model))
        self.decay = decay
        self.start = start

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        if step < self.start:
            return
        reshard(self.model)
        reshard(model)
        for ema, p in zip(self.model.parameters(), model.parameters()):
            ema.lerp_(p.detach(), 1.0 - self.decay)
