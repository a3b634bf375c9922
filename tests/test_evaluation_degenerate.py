"""Degenerate clips score <= 0.5 Overall, real clips >= 0.98; and the properties behind that: motion
only on present, moving objects; no carry-over into windows without the requested objects; noise
and floods are no objects; unrequested blobs cost adherence and persistence; persistence against
the prompt; distribution checks against the world's."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from test_evaluation import all_whole, real_clip, seen_whole
from videomla.data.world import PALETTE, ClipParams, WorldObject, caption, render, sample_clip_params
from videomla.evaluation import METRICS, detect, evaluate
from videomla.evaluation.degenerate import DEGENERATE, oversized_blobs, recoloured, variants

REAL = 0.98
DEGENERATE_MAX = 0.5


def clip_with(seed: int, min_objects: int = 1, max_objects: int = 3) -> ClipParams:
    rng = np.random.default_rng(seed)
    while True:
        p = sample_clip_params(rng)
        if min_objects <= len(p.objects) <= max_objects:
            return p


def test_degenerate_clips_score_low_and_real_clips_high(seed):
    for k in range(2):
        p = real_clip(seed + k, 24)  # every object seen whole at least once (see seen_whole)
        made = variants(p, 24, torch.Generator().manual_seed(seed + k))
        real = evaluate(made["real"](), caption(p))
        assert real.overall["overall"] >= REAL, (caption(p), real.table())
        for name in DEGENERATE:
            bad = evaluate(made[name](), caption(p))
            assert bad.overall["overall"] <= DEGENERATE_MAX, (name, caption(p), bad.table())
            assert bad.overall["pass_rate"] <= 0.5, (name, caption(p), bad.table())


def test_degenerate_clips_fail_over_several_windows(seed):
    """4 windows: the objects gone for the last two score 0 there (nothing carried over)."""
    p = real_clip(seed, 48)
    made = variants(p, 48, torch.Generator().manual_seed(seed))
    gone = evaluate(made["objects vanish at T/2"](), caption(p), window_seconds=1.5)
    assert gone.overall["overall"] <= DEGENERATE_MAX, gone.table()
    for win in gone.windows[2:]:
        for m in (*METRICS, "sharpness", "overall"):
            assert win[m] == 0, (m, gone.table())
    for win in gone.windows[:2]:
        assert win["overall"] >= REAL - 0.03, gone.table()
    for name in ("single frozen real frame", "wrong colours, prompt unchanged", "uniform noise U(-1, 1)"):
        bad = evaluate(made[name](), caption(p), window_seconds=1.5)
        assert all(win["overall"] == 0 for win in bad.windows), (name, bad.table())


def still(p: ClipParams) -> ClipParams:
    return dataclasses.replace(p, objects=tuple(dataclasses.replace(o, velocity=(0.0, 0.0)) for o in p.objects))


def test_motion_is_scored_only_on_present_moving_objects(seed):
    p = clip_with(seed)
    while not all_whole(p, 1)[0]:  # standing still, every object must show itself whole in frame 0
        seed += 7919
        p = clip_with(seed)
    frozen = evaluate(render(still(p), 40), caption(p))
    assert frozen.overall["smoothness"] == 0 and frozen.overall["dynamic"] == 0, frozen.table()
    assert frozen.overall["shape"] >= 0.95 and frozen.overall["adherence"] >= 0.95  # the objects are there
    # the prompt's objects are not there at all: another colour moving does not count
    other = recoloured(p)
    moved = evaluate(render(other, 40), caption(p))
    assert moved.overall["smoothness"] == 0 and moved.overall["dynamic"] == 0, moved.table()


def test_noise_and_floods_hold_no_objects(seed):
    p = clip_with(seed)
    made = variants(p, 12, torch.Generator().manual_seed(seed))
    for name in ("Gaussian noise N(0, 0.5)", "uniform noise U(-1, 1)", "flood: one palette colour"):
        det = detect((made[name]().permute(1, 2, 3, 0) + 1) / 2, p.spec)
        assert not det.present.any(), name
        assert (det.blobs >= 1).all(), name  # seen, and counted against the video
    # blobs 4x a large object: none is an object, though where they overlap each other or the frame's
    # edge a fragment can be cut to about an object's size and shape (up to 58% of one colour's frames
    # in a 200-seed sweep; the clips still score 0 Overall)
    flood = made["flood: blobs 4x a large object"]()
    det = detect((flood.permute(1, 2, 3, 0) + 1) / 2, p.spec)
    assert (det.blobs >= 1).float().mean() >= 0.5  # the blobs are seen and counted against the video
    assert evaluate(flood, caption(p)).overall["overall"] <= DEGENERATE_MAX  # fragments never make it a video


def test_unrequested_objects_and_blobs_lower_adherence_and_persistence(seed):
    p = clip_with(seed, min_objects=2)
    video = render(p, 40)
    full = evaluate(video, caption(p))
    fewer = evaluate(video, caption(dataclasses.replace(p, objects=p.objects[:-1])))  # one object not asked for
    for m in ("adherence", "persistence"):
        assert fewer.overall[m] <= full.overall[m] - 0.15, (m, fewer.table())
    # a blob of an unused colour, four times a large object, laid over the real clip
    unused = next(c for c in PALETTE if c not in {o.colour for o in p.objects})
    blob_clip = dataclasses.replace(p, objects=(dataclasses.replace(p.objects[0], colour=unused),))
    blob = oversized_blobs(blob_clip, 40)
    bg = render(dataclasses.replace(p, objects=()), 40)
    with_blob = torch.where((blob - bg).abs().amax(0, keepdim=True) > 0.2, blob, video)
    blobbed = evaluate(with_blob, caption(p))
    for m in ("adherence", "persistence"):
        assert blobbed.overall[m] <= full.overall[m] - 0.15, (m, blobbed.table())


def whole_clip(seed: int, num_frames: int, max_objects: int = 3) -> ClipParams:
    """A clip whose objects each show themselves whole at least once (see ``seen_whole``: an object
    hidden under another for a whole clip cannot show its shape, a documented limit of the evaluator)."""
    while not seen_whole(p := clip_with(seed, max_objects=max_objects), num_frames):
        seed += 7919
    return p


def test_persistence_is_measured_against_the_prompt(seed):
    p = whole_clip(seed, 80)
    wrong = render(recoloured(p), 80)
    real = render(p, 80)
    assert evaluate(wrong, caption(p)).overall["persistence"] == 0  # wrong from the start: not "persistent"
    late = torch.cat([wrong[:, :40], real[:, 40:]], 1)  # wrong for 5 s, then right
    result = evaluate(late, caption(p))
    # from 5 s on, what the real clip itself scores there (objects passing behind others cost it a little)
    truth = evaluate(real, caption(p)).windows[1]["persistence"]
    assert result.windows[0]["persistence"] == 0, result.table()
    assert result.windows[1]["persistence"] >= min(0.9, truth - 0.02), (truth, result.table())


def scaled(p: ClipParams, speed: float) -> ClipParams:
    objects = tuple(dataclasses.replace(o, velocity=(o.velocity[0] * speed, o.velocity[1] * speed)) for o in p.objects)
    return dataclasses.replace(p, objects=objects)


def test_distribution_checks_against_the_world(seed):
    p = whole_clip(seed, 40, max_objects=2)
    real = evaluate(render(p, 40), caption(p)).overall
    # speed is a finite difference: the few frames around a bounce off a wall read slow (0.936 seen)
    assert real["count_ok"] == 1 and real["size_ok"] >= 0.95 and real["speed_ok"] >= 0.9, real
    assert real["objects"] == pytest.approx(len(p.objects), abs=0.05)
    fast = evaluate(render(scaled(p, 4.0), 40), caption(p)).overall  # 32-80 px/s: faster than the world's
    assert fast["speed_ok"] <= 0.5, fast
    crowd = [o.colour for o in p.objects]
    extra = [c for c in PALETTE if c not in crowd][: 4 - len(p.objects)]
    many = ClipParams(
        p.objects
        + tuple(WorldObject("circle", c, "small", (12.0 + 14 * i, 52.0), (9.0, -9.0)) for i, c in enumerate(extra)),
        p.background,
        p.texture_seed,
        p.spec,
    )
    assert evaluate(render(many, 40), caption(many)).overall["count_ok"] <= 0.1  # 4 objects: the world makes <= 3
