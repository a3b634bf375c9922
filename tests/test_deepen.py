"""A deepened model computes what the trained one did, in a full forward and chunk by chunk, and can learn."""

from __future__ import annotations

import pytest
import torch

from test_streaming import stream_chunks
from videomla.config import StreamConfig, preset
from videomla.deepen import deepen, deepen_plan

from conftest import tiny_model


def perturbed(model: torch.nn.Module) -> torch.nn.Module:
    """Non-zero output projections everywhere, so that a deepen that forgot to zero a copy's branch shows."""
    with torch.no_grad():
        for block in model.blocks:
            for out in (block.self_attn.o, block.cross_attn.o, block.ffn[-1]):
                out.bias.add_(0.1 * torch.randn_like(out.bias))
    return model


@pytest.mark.parametrize("attention", ["dense", "mla"])
@pytest.mark.parametrize("layers", [3, 4, 5])
def test_deeper_model_computes_the_same_function(seed, attention, layers):
    cfg = preset("tiny") if attention == "dense" else preset("tiny").with_mla()
    model = perturbed(tiny_model(cfg))
    deep = deepen(model, layers)
    assert len(deep.blocks) == deep.config.num_layers == layers and len(model.blocks) == cfg.num_layers
    if attention == "mla":
        assert len(deep.mla_layers()) == layers
    x, t, context = torch.randn(1, 4, 6, 4, 6), torch.rand(1, 6) * 1000, torch.randn(1, 5, 32)
    with torch.no_grad():
        assert torch.allclose(deep(x, t, context), model(x, t, context), atol=1e-5)
        stream = StreamConfig(frames_per_chunk=3, sink_frames=1, window_frames=3, rope_mode="window-relative")
        got, _ = stream_chunks(deep, x, t, context, stream)
        want, _ = stream_chunks(model, x, t, context, stream)
    assert torch.allclose(got, want, atol=1e-5)


def test_copies_learn(seed):
    deep = deepen(perturbed(tiny_model()).train(), 4)
    x, t, context = torch.randn(1, 4, 3, 4, 6), torch.rand(1, 3) * 1000, torch.randn(1, 5, 32)
    deep(x, t, context).square().mean().backward()
    for i in range(4):
        assert deep.blocks[i].self_attn.o.weight.grad.abs().sum() > 0, i
    assert deep.training


def test_plan_spreads_copies_and_refuses_shallower():
    assert deepen_plan(2, 2) == [0, 1]
    assert deepen_plan(2, 4) == [0, 0, 1, 1]
    assert deepen_plan(3, 5) == [0, 0, 1, 1, 2]
    assert deepen_plan(6, 12) == [i // 2 for i in range(12)]
    model = tiny_model()
    assert deepen(model, model.config.num_layers) is model
    for bad in (1, 2.5, "3"):
        with pytest.raises(ValueError, match="num_layers must be"):
            deepen(model, bad)


def test_partial_mla_is_refused():
    with pytest.raises(ValueError, match="only some layers"):
        deepen(tiny_model(preset("tiny").with_mla(layers=(1,))), 3)
