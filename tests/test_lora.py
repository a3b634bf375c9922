"""LoRA merge against peft's own merge, on the same weights and adapters."""

from __future__ import annotations

import copy

import pytest
import torch

from videomla.checkpoint import CheckpointError
from videomla.config import preset
from videomla.lora import merge_lora, read_lora

from conftest import rel_err, tiny_model

TARGETS = ["blocks.0.self_attn.q", "blocks.1.cross_attn.v", "blocks.1.ffn.2"]


def peft_lora(model, rank: int, alpha: float, seed: int):
    """peft's LoRA on ``model`` with random A and B; (peft model, its adapter state dict)."""
    peft = pytest.importorskip("peft", reason="the reference implementation (pip install 'videomla[dev]')")
    torch.manual_seed(seed)
    wrapped = peft.get_peft_model(model, peft.LoraConfig(r=rank, lora_alpha=alpha, target_modules=TARGETS))
    with torch.no_grad():
        for name, p in wrapped.named_parameters():
            if "lora_" in name:
                p.normal_(0, 0.1)
    return wrapped, peft.get_peft_model_state_dict(wrapped)


@pytest.mark.parametrize("alpha", [None, 32.0])
def test_merge_equals_peft(tmp_path, seed, alpha):
    base = tiny_model()
    rank = 4
    wrapped, adapter = peft_lora(copy.deepcopy(base), rank, alpha or rank, seed)
    merged_by_peft = wrapped.merge_and_unload()
    torch.save({"generator_lora": adapter}, tmp_path / "lora.pt")  # LongLive's file layout
    ours = copy.deepcopy(base)
    assert merge_lora(ours, tmp_path / "lora.pt", alpha) == len(TARGETS)
    want, got = merged_by_peft.state_dict(), ours.state_dict()
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=1e-6, atol=1e-6)
    changed = [k for k in want if not torch.equal(base.state_dict()[k], got[k])]
    assert sorted(changed) == sorted(f"{t}.weight" for t in TARGETS)
    x, t = torch.randn(1, 4, 3, 4, 6), torch.full((1,), 500.0)
    with torch.no_grad():
        assert rel_err(ours(x, t, torch.randn(1, 5, 32)), base(x, t, torch.randn(1, 5, 32))) > 0


def test_bad_lora_files(tmp_path):
    model = tiny_model(preset("tiny"))
    a, b = torch.randn(4, 64), torch.randn(64, 4)
    cases = {
        "wrong-shape": {"blocks.0.self_attn.q.lora_A.weight": a, "blocks.0.self_attn.q.lora_B.weight": b[:32]},
        "no-layer": {"blocks.9.self_attn.q.lora_A.weight": a, "blocks.9.self_attn.q.lora_B.weight": b},
        "half": {"blocks.0.self_attn.q.lora_A.weight": a},
        "not-lora": {"blocks.0.self_attn.q.weight": torch.randn(64, 64)},
    }
    messages = {"wrong-shape": "must be", "no-layer": "no linear layer", "half": "both lora_A", "not-lora": "no lora_A"}
    for name, state in cases.items():
        torch.save(state, tmp_path / f"{name}.pt")
        with pytest.raises(CheckpointError, match=messages[name]):
            merge_lora(model, tmp_path / f"{name}.pt")
    with pytest.raises(FileNotFoundError):
        read_lora(tmp_path / "missing.pt")
