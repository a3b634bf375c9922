"""Image-to-video proven on the procedural world: the objects of the given first frame persist.

The model is the dense world teacher of the reproduction (docs/reproduction.md, teacher 2), the
best world model in the tree; the embedded default student does not follow prompts yet, so it
cannot show conditioning. Three held-out prompts (world seed 777), each animated from its real
first frame and generated from text alone with the same noise: the evaluator must find the given
objects through the clip, and far more often than without the image.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from videomla.data.world import caption, clip_params_at, render
from videomla.evaluation import evaluate
from videomla.pipeline import Pipeline

TEACHER = Path(__file__).resolve().parents[1] / "docs" / "reproduction" / "world-teacher-5-model"
FRAMES = 15  # the image + 14 generated frames: 5 chunks of 3 latent frames


@pytest.fixture(scope="module")
def teacher():
    return Pipeline.from_checkpoint(TEACHER, device="cpu", threads=1)


def first_frame(params) -> np.ndarray:
    real = render(params, 1)[:, 0]  # [3, H, W] in [-1, 1]
    return ((real.permute(1, 2, 0).clamp(-1, 1) + 1) * 127.5).round().byte().numpy()


def score(frames: np.ndarray, prompt: str) -> dict[str, float]:
    return evaluate(torch.from_numpy(frames).permute(3, 0, 1, 2).float() / 127.5 - 1, prompt).overall


def test_image_to_video_keeps_the_given_objects(teacher):
    i2v, t2v = [], []
    for i in range(3):
        params = clip_params_at(777, i)
        prompt, image = caption(params), first_frame(params)
        out = teacher(prompt, num_frames=FRAMES - 1, seed=i, num_inference_steps=8, image=image)
        assert out.frames.shape[0] == FRAMES - 1 and out.summary.run["context_frames"] == 1
        i2v.append(score(np.concatenate([image[None], out.frames]), prompt))
        t2v.append(score(teacher(prompt, num_frames=FRAMES, seed=i, num_inference_steps=8).frames, prompt))
    persistence = [np.mean([r["persistence"] for r in rows]) for rows in (i2v, t2v)]
    adherence = [np.mean([r["adherence"] for r in rows]) for rows in (i2v, t2v)]
    print(f"image-to-video persistence {persistence[0]:.3f} adherence {adherence[0]:.3f}; "
          f"text only {persistence[1]:.3f} / {adherence[1]:.3f}")  # fmt: skip
    assert persistence[0] >= 0.6 and adherence[0] >= 0.7
    assert persistence[0] > persistence[1] + 0.15
