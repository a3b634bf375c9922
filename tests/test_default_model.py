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


def test_default_model_scores_well_above_a_random_model_of_its_size(tmp_path):
    trained = overall_scores(None)
    meta = {k: v for k, v in load_metadata(DEFAULT_CHECKPOINT).items() if k not in RESERVED_METADATA}
    torch.manual_seed(0)
    random_model = CausalWanModel(load_model(DEFAULT_CHECKPOINT).config)
    untrained = overall_scores(save_model(random_model, tmp_path / "random", meta))
    assert min(trained) > max(untrained), (trained, untrained)
    assert np.mean(trained) > np.mean(untrained) + 0.15, (trained, untrained)
