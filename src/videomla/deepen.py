"""A trained model made deeper without changing what it computes: the start of a capacity fine-tune.

Each new block is a copy of the block it follows with its three residual branches' output
projections (self-attention, cross-attention, FFN) set to zero, so it adds nothing until training
moves those projections. The copy (rather than a fresh init) gives the new block's inner weights
features that already mean something at that depth; the zeroed outputs make the deeper model
start exactly where the trained one stopped (tested to float tolerance).
"""

from __future__ import annotations

import copy
import dataclasses

import torch

from .model import CausalWanModel


def deepen_plan(old_layers: int, new_layers: int) -> list[int]:
    """For each new block, the old block it is made from; new copies spread evenly over the depth.

    The first ``(new - old) % old`` old blocks get one copy more than the rest.
    """
    if not isinstance(new_layers, int) or new_layers < old_layers:
        raise ValueError(f"num_layers must be a whole number >= the checkpoint's {old_layers}, got {new_layers!r}")
    extra, more = divmod(new_layers - old_layers, old_layers)
    return [i for i in range(old_layers) for _ in range(1 + extra + (i < more))]


@torch.no_grad()
def deepen(model: CausalWanModel, num_layers: int) -> CausalWanModel:
    """A copy of ``model`` with ``num_layers`` blocks that computes the same function (see the module docstring)."""
    cfg = model.config
    plan = deepen_plan(cfg.num_layers, num_layers)
    if num_layers == cfg.num_layers:
        return model
    if cfg.mla is not None and sorted(cfg.mla_layers) != list(range(cfg.num_layers)):
        raise ValueError("deepening a model with MLA in only some layers is not supported: convert every layer first")
    layers = tuple(range(num_layers)) if cfg.mla is not None else cfg.mla_layers
    deep = copy.deepcopy(model)
    deep.config = dataclasses.replace(cfg, num_layers=num_layers, mla_layers=layers)
    blocks = []
    for new, old in enumerate(plan):
        block = copy.deepcopy(model.blocks[old])
        if new and plan[new - 1] == old:  # a copy: silence its residual branches
            for out in (block.self_attn.o, block.cross_attn.o, block.ffn[-1]):
                out.weight.zero_()
                if out.bias is not None:
                    out.bias.zero_()
        blocks.append(block)
    deep.blocks = torch.nn.ModuleList(blocks)
    return deep.train(model.training)
