"""LoRA adapters merged into a loaded model: how LongLive ships its weights (base ``.pt`` + LoRA ``.pt``).

A LoRA file holds, per adapted linear layer, ``lora_A`` [r, in] and ``lora_B`` [out, r] (peft's
``get_peft_model_state_dict`` naming, optionally inside a ``{"generator_lora": ...}`` dict, with
peft's ``base_model.model.`` and adapter-name segments). Merging adds ``(alpha / r) * B @ A`` to
each weight once, computed in fp32, so inference runs at the base model's speed with no adapter
code in the forward. ``alpha`` is not stored in the file; LongLive's default is ``alpha = r``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from .checkpoint import CheckpointError, from_diffusers_key

_PART = re.compile(r"^(?P<module>.+)\.lora_(?P<ab>[AB])(?:\.[^.]+)?\.weight$")
_PREFIXES = ("base_model.model.", "_fsdp_wrapped_module.", "model.diffusion_model.", "model.")


def read_lora(path: str | Path) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """{module name (our names): (A [r, in], B [out, r])} from a LoRA ``.pt`` / ``.safetensors`` file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no LoRA file at {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        obj: object = load_file(path)
    else:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(obj, dict):
        for key in ("generator_lora", "lora", "state_dict"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not obj:
        raise CheckpointError(f"{path}: expected a dict of LoRA tensors (lora_A / lora_B weights)")
    parts: dict[str, dict[str, torch.Tensor]] = {}
    ignored = []
    for key, value in obj.items():
        m = _PART.match(str(key))
        if m is None or not isinstance(value, torch.Tensor):
            ignored.append(key)
            continue
        parts.setdefault(_our_name(m["module"]), {})[m["ab"]] = value
    if not parts:
        raise CheckpointError(f"{path} holds no lora_A / lora_B weights (keys like {sorted(map(str, obj))[:3]})")
    if ignored:
        raise CheckpointError(f"{path}: keys that are not LoRA weights: {sorted(map(str, ignored))[:10]}")
    incomplete = sorted(name for name, ab in parts.items() if set(ab) != {"A", "B"})
    if incomplete:
        raise CheckpointError(f"{path}: LoRA layers without both lora_A and lora_B: {incomplete[:10]}")
    return {name: (ab["A"], ab["B"]) for name, ab in parts.items()}


def _our_name(name: str) -> str:
    for prefix in _PREFIXES:
        if name.startswith(prefix):
            name = name[len(prefix) :]
    return from_diffusers_key(name + ".weight")[: -len(".weight")]


def merge_lora(model: nn.Module, path: str | Path, alpha: float | None = None) -> int:
    """Add each layer's ``(alpha / r) B A`` to ``model`` in place; returns the number of layers merged.

    Every adapted layer must exist in the model with matching shapes (a named error otherwise).
    """
    layers = read_lora(path)
    modules = dict(model.named_modules())
    missing = sorted(name for name in layers if not isinstance(modules.get(name), nn.Linear))
    if missing:
        raise CheckpointError(f"{path}: LoRA layers the model has no linear layer for: {missing[:10]}")
    with torch.no_grad():
        for name, (a, b) in layers.items():
            linear = modules[name]
            rank = a.shape[0]
            if a.shape != (rank, linear.in_features) or b.shape != (linear.out_features, rank):
                raise CheckpointError(
                    f"{path}: LoRA {name} has A {tuple(a.shape)} and B {tuple(b.shape)}; the layer is "
                    f"{linear.out_features}x{linear.in_features}, so they must be [r, {linear.in_features}] "
                    f"and [{linear.out_features}, r]"
                )
            scale = (rank if alpha is None else alpha) / rank
            delta = scale * (b.float() @ a.float())
            if not torch.isfinite(delta).all():
                raise CheckpointError(f"{path}: LoRA {name} holds NaN/Inf")
            w = linear.weight
            w.copy_((w.float() + delta.to(w.device)).to(w.dtype))
    for attn in (m for m in model.modules() if hasattr(m, "_absorbed")):
        attn._absorbed = attn._padded = None  # weights changed: rebuild derived MLA weights
    return len(layers)
