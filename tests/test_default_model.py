"""The embedded default model: it loads from the package and makes videos the world's evaluator likes."""

from __future__ import annotations

import numpy as np
import torch

from videomla.checkpoint import RESERVED_METADATA, load_metadata, load_model, save_model
from videomla.data.world import caption, clip_params_at
from videomla.evaluation import evaluate
from videomla.model import CausalWanModel
from videomla.pipeline import DEFAULT_CHECKPOINT, Pipeline

SECONDS = 2.625  # 21 frames at 8 fps: the training horizon
PROMPTS = [caption(clip_params_at(777, i)) for i in range(3)]  # not the study's evaluation prompts


def overall_scores(checkpoint) -> list[float]:
    pipe = Pipeline.from_checkpoint(checkpoint, device="cpu")
    scores = []
    for i, prompt in enumerate(PROMPTS):
        chunks = list(pipe.stream(prompt, SECONDS, seed=i, progress=False))
        frames = np.concatenate([np.asarray(c.frames) for c in chunks])  # [T, H, W, 3] uint8
        video = torch.from_numpy(frames).permute(3, 0, 1, 2).float() / 127.5 - 1
        scores.append(evaluate(video, prompt).overall["overall"])
    return scores


def test_default_model_is_shipped_small_and_mla():
    meta = load_metadata(DEFAULT_CHECKPOINT)
    assert (DEFAULT_CHECKPOINT / "model.safetensors").stat().st_size <= 20 * 2**20
    model = load_model(DEFAULT_CHECKPOINT)
    assert len(model.mla_layers()) == len(model.blocks)
    assert meta["stream"] == {
        "frames_per_chunk": 3,
        "sink_frames": 1,
        "window_frames": 6,
        "rope_mode": "window-relative",
    }


def test_default_model_keeps_its_measured_quality_and_beats_a_random_model(tmp_path):
    """A bar at the shipped model's measured level, not a goal it meets.

    On the evaluator of issue 17 (geometric-mean Overall: a clip with any metric at 0 scores 0;
    noise, frozen frames and floods all score 0) the shipped model scores 0.12 / 0.19 / 0.00 on these
    three held-out prompts (mean 0.106, 2026-12-01, CPU), far from the 0.85 the quality campaign
    aims at; a random model of the same size scores 0 on all three. The bar catches a broken model,
    codec or pipeline (which score 0) and a regression of the shipped weights.
    """
    trained = overall_scores(None)
    meta = {k: v for k, v in load_metadata(DEFAULT_CHECKPOINT).items() if k not in RESERVED_METADATA}
    torch.manual_seed(0)
    random_model = CausalWanModel(load_model(DEFAULT_CHECKPOINT).config)
    untrained = overall_scores(save_model(random_model, tmp_path / "random", meta))
    assert max(untrained) <= 0.01, untrained
    assert np.mean(trained) >= 0.08, trained
    assert sum(score > 0.05 for score in trained) >= 2, trained
