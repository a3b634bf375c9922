"""FP8 compute: row-wise e4m3 linears against the float reference, and a whole stream on it."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from videomla.config import StreamConfig, preset
from videomla.engine import EngineOptions, LatentGeometry, StreamEngine
from videomla.quant import FP8Linear, set_compute, use_fp8_compute

from conftest import rel_err, tiny_model


def test_fp8_linear_matches_the_float_linear(seed):
    layer = nn.Linear(64, 48)
    with torch.no_grad():  # output rows of very different sizes: each needs its own scale
        layer.weight.mul_(torch.logspace(-2, 1, 48)[torch.randperm(48)][:, None])
    x = torch.randn(2, 37, 64)
    x[0, 3] *= 50  # an outlier token: its own row scale keeps the other tokens precise
    fp8 = FP8Linear(layer)
    with torch.no_grad():
        want, got = layer(x), fp8(x)
    assert got.shape == want.shape
    # Rounding to e4m3 (3 mantissa bits) moves each operand by at most u = 2^-4 of itself, so each
    # product by at most (1 + u)^2 - 1 < 0.13 of |x||w|; values below e4m3's normal range (2^-6 of
    # a row's scale) round absolutely, by at most 2^-10 of the scale. A wrong scale breaks this at once.
    xs, ws = x.abs().amax(-1, keepdim=True) / 448, layer.weight.abs().amax(-1) / 448
    tiny = 2 * 2**-10 * x.shape[-1] * xs * ws * 448
    bound = 0.13 * (x.abs() @ layer.weight.abs().t()) + tiny + 1e-6
    assert (got - want).abs().le(bound).all()
    assert rel_err(got, want) < 0.2
    # the dequantised weight is what the fp8 matmul multiplies: exact up to the input's rounding
    torch.testing.assert_close(fp8.weight, layer.weight, rtol=2**-3, atol=1e-6)


@pytest.mark.parametrize("mla", [False, True])
def test_a_stream_in_fp8_stays_close_to_the_reference(seed, mla):
    model = tiny_model(preset("tiny").with_mla() if mla else preset("tiny"))
    fp8_model = copy.deepcopy(model)
    swapped = use_fp8_compute(fp8_model)
    per_block = (8 if mla else 4) + 4 + 2  # self-attention, cross-attention, FFN linears
    assert swapped == per_block * len(model.blocks)
    assert set_compute(copy.deepcopy(model), "bf16") == 0
    with torch.no_grad():
        text = model.embed_text(torch.randn(1, 5, model.config.text_dim))
    stream, geometry = StreamConfig(sink_frames=1, window_frames=3), LatentGeometry(4, 4, 6)
    outs = []
    absorbed = EngineOptions(compile=False, cuda_graphs=False, mla_path="absorbed")  # reads weights directly too
    for m in (model, fp8_model):
        engine, gen = StreamEngine(m, stream, geometry, options=absorbed), torch.Generator().manual_seed(seed)
        outs.append(torch.cat([engine.step(text, gen) for _ in range(5)], dim=2))
    assert rel_err(outs[1], outs[0]) < 0.03  # 5 chunks on e4m3 projections: worst of 200 runs 0.0095
    assert not torch.equal(outs[1], outs[0])
    with pytest.raises(ValueError, match="compute must be"):
        set_compute(model, "int4")
