"""Shared test helpers: fresh random seeds each run (printed on failure), tiny models."""

from __future__ import annotations

import json
import os
import random

import pytest
import torch

from videomla.config import ModelConfig, preset
from videomla.model import CausalWanModel


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """scripts/seed_sweep.py: run each seeded test once per seed of the plan it writes (a JSON file)."""
    plan_file = os.environ.get("VIDEOMLA_SEED_PLAN")
    if not plan_file or "seed" not in metafunc.fixturenames:
        return
    with open(plan_file) as f:
        plan = json.load(f)
    seeds = plan.get(metafunc.definition.nodeid)
    if seeds:
        metafunc.parametrize("seed", seeds, indirect=True, ids=[f"seed{s}" for s in seeds])


@pytest.fixture
def seed(request: pytest.FixtureRequest) -> int:
    """A fresh seed per test (override with VIDEOMLA_TEST_SEED); shown in the failure report."""
    value = getattr(request, "param", None)  # set by a seed-sweep plan
    if value is None:
        value = int(os.environ.get("VIDEOMLA_TEST_SEED", random.randrange(2**31)))
    torch.manual_seed(value)
    request.node.user_properties.append(("seed", value))
    return value


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def tiny_model(cfg: ModelConfig | None = None, dtype: torch.dtype = torch.float32) -> CausalWanModel:
    model = CausalWanModel(cfg or preset("tiny")).to(dtype).eval()
    with torch.no_grad():  # make adaLN and gains non-trivial so tests exercise them
        for name, p in model.named_parameters():
            if "modulation" in name or "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    return model


PIXEL_META = {  # a 16x16 pixel-codec video model with the hash text encoder: loads without any weights folder
    "codec": {"type": "pixel", "spatial_stride": 2, "scale": 1.0, "offset": 0.0},
    "text_encoder": {"type": "hash", "text_dim": 32, "max_tokens": 16},
    "video": {"height": 16, "width": 16, "fps": 8},
}


def record_decoded_latents(codec, monkeypatch: pytest.MonkeyPatch) -> list[torch.Tensor]:
    """Make ``codec``'s stream decoders record every latent chunk they decode; returns that list."""
    latents, real = [], codec.stream_decoder

    class Recording:
        def __init__(self):
            self.inner = real()

        def decode(self, x):
            latents.append(x)
            return self.inner.decode(x)

    monkeypatch.setattr(codec, "stream_decoder", Recording)
    return latents


def tiny_mla_checkpoint(folder):
    """A tiny all-MLA model saved with :data:`PIXEL_META`, as ``Pipeline.from_checkpoint`` reads it."""
    import dataclasses

    from videomla.checkpoint import save_model

    model = tiny_model(dataclasses.replace(preset("tiny").with_mla(), in_channels=12, out_channels=12))
    return save_model(model, folder, PIXEL_META)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> None:
    if call.excinfo is not None:
        for key, value in item.user_properties:
            if key == "seed":
                item.add_report_section(call.when, "seed", f"VIDEOMLA_TEST_SEED={value}")
