"""A trained model moved to a finer token grid: the start of a fine-tune at smaller patches.

A patch-(1, 2, 2) model sees a 2x2 block of latent pixels as one token; the same weights at patch
(1, 1, 1) see four times as many tokens, each one latent pixel. Everything but the two ends of
the network is patch-free (RoPE gives positions, nothing is learned per position), so only those
two are resampled, as a resolution fine-tune would start:

* the patch embedding of a fine token is the coarse embedding of a block whose pixels all equal
  it (the coarse kernel summed over each block of sub-positions);
* the head's prediction for a fine token is the mean of the coarse head's predictions over the
  sub-positions it replaces.

The grid is then twice as fine in RoPE units, which the fine-tune has to learn; it does not start
from an equivalent model, only from a close one.
"""

from __future__ import annotations

import dataclasses

import torch

from .model import CausalWanModel


def refine_factors(old: tuple[int, int, int], new: tuple[int, int, int]) -> tuple[int, int, int]:
    """How many new patches fit in an old one, per axis; a clear error unless each divides."""
    if len(new) != 3 or any(n < 1 for n in new):
        raise ValueError(f"patch_size must be three positive integers, got {list(new)}")
    if any(o % n for o, n in zip(old, new)):
        raise ValueError(
            f"patch {list(new)} does not divide the model's patch {list(old)}: only a finer grid is supported"
        )
    return tuple(o // n for o, n in zip(old, new))  # type: ignore[return-value]


@torch.no_grad()
def refine_patches(model: CausalWanModel, patch_size: tuple[int, int, int]) -> CausalWanModel:
    """A copy of ``model`` at the finer ``patch_size`` (see the module docstring)."""
    old = tuple(model.config.patch_size)
    new = tuple(patch_size)
    factors = refine_factors(old, new)  # type: ignore[arg-type]
    if factors == (1, 1, 1):
        return model
    param = next(model.parameters())
    fine = CausalWanModel(dataclasses.replace(model.config, patch_size=new)).to(param.device, param.dtype)
    state = {k: v for k, v in model.state_dict().items() if not k.startswith(("patch_embedding.", "head.head."))}
    missing, unexpected = fine.load_state_dict(state, strict=False)
    assert not unexpected and sorted(missing) == sorted(
        ["patch_embedding.weight", "patch_embedding.bias", "head.head.weight", "head.head.bias"]
    ), (missing, unexpected)

    (ft, fh, fw), (nt, nh, nw) = factors, new
    # an old kernel position along an axis is (which fine patch, position inside it): o = f * n
    kernel = model.patch_embedding.weight  # [dim, C, ot, oh, ow]
    kernel = kernel.reshape(*kernel.shape[:2], ft, nt, fh, nh, fw, nw).sum(dim=(2, 4, 6))
    fine.patch_embedding.weight.copy_(kernel)
    fine.patch_embedding.bias.copy_(model.patch_embedding.bias)

    # head rows are ordered (pt, ph, pw, C): average the sub-positions each fine position replaces
    c = model.config.out_channels
    weight = model.head.head.weight.reshape(ft, nt, fh, nh, fw, nw, c, -1).mean(dim=(0, 2, 4))
    bias = model.head.head.bias.reshape(ft, nt, fh, nh, fw, nw, c).mean(dim=(0, 2, 4))
    fine.head.head.weight.copy_(weight.reshape(-1, weight.shape[-1]))
    fine.head.head.bias.copy_(bias.flatten())
    return fine.train(model.training)
