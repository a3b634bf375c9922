"""The ground-truth evaluator: components vs a flood fill, detection vs the renderer's own truth,
real clips near 1, each planted defect lowering its own metrics (and not the others), the CLI.
Degenerate clips: tests/test_evaluation_degenerate.py."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from videomla.cli import main
from videomla.data.world import (
    PALETTE,
    SHAPES,
    SIZES,
    ClipParams,
    caption,
    draw,
    render,
    sample_clip_params,
    shape_coverage,
    trajectories,
)
from videomla.evaluation import METRICS, detect, evaluate, label_components, window_bounds
from videomla.evaluation.degenerate import gaussian_blur
from videomla.evaluation.detection import MIN_AREA
from videomla.evaluation.scoring import geometric_mean, hidden_objects

# Real clips: the lowest Overall measured over 300 random 5 s clips was 0.987 (docs/evaluate.md).
REAL_OVERALL = 0.98


def flood_fill(mask: np.ndarray) -> np.ndarray:
    """Reference 8-connected labelling of one frame by breadth-first search."""
    labels = np.zeros(mask.shape, dtype=np.int64)
    h, w = mask.shape
    n = 0
    for y0 in range(h):
        for x0 in range(w):
            if mask[y0, x0] and not labels[y0, x0]:
                n += 1
                labels[y0, x0] = n
                todo = [(y0, x0)]
                while todo:
                    y, x = todo.pop()
                    for dy in (-1, 0, 1):
                        for dx in (-1, 0, 1):
                            v, u = y + dy, x + dx
                            if 0 <= v < h and 0 <= u < w and mask[v, u] and not labels[v, u]:
                                labels[v, u] = n
                                todo.append((v, u))
    return labels


@pytest.mark.parametrize("density", [0.2, 0.45, 0.6])
def test_components_equal_flood_fill(density, seed):
    mask = torch.rand(3, 24, 31) < density
    fast = label_components(mask)
    for t in range(3):
        ref = torch.from_numpy(flood_fill(mask[t].numpy()))
        assert ((fast[t] == 0) == ~mask[t]).all()
        on = mask[t]
        a, b = fast[t][on], ref[on]
        # the same partition: pixels share a fast label iff they share a reference label
        assert torch.equal(a[:, None] == a[None], b[:, None] == b[None])


def clip_with(seed: int, min_objects: int = 1) -> ClipParams:
    rng = np.random.default_rng(seed)
    while True:
        p = sample_clip_params(rng)
        if len(p.objects) >= min_objects:
            return p


def seen_whole(p: ClipParams, num_frames: int) -> bool:
    """Every object is fully visible (nothing drawn over it) in at least one frame. An object under
    another for a whole clip cannot show its shape: the evaluator takes its best partial look, which
    can be the wrong shape (0.5-0.9 adherence/persistence for such clips, ~1 in 200 random 5 s ones)."""
    visible, cover = visible_weights(p, num_frames, with_coverage=True)
    return bool(((cover - visible).flatten(2).amax(-1) < 0.01).any(1).all())


def all_whole(p: ClipParams, num_frames: int) -> torch.Tensor:
    """[T] bool: frames in which every object is fully visible."""
    visible, cover = visible_weights(p, num_frames, with_coverage=True)
    return ((cover - visible).flatten(2).amax(-1) < 0.01).all(0)


def real_clip(seed: int, num_frames: int) -> ClipParams:
    """A random clip in which every object shows itself whole at least once."""
    while not seen_whole(p := clip_with(seed), num_frames):
        seed += 7919
    return p


def test_real_clips_score_near_the_top(seed):
    for i in range(3):
        p = real_clip(seed + i, 40)
        result = evaluate(render(p, 40), caption(p))
        assert result.overall["overall"] >= REAL_OVERALL, (caption(p), result.table())
        assert min(result.overall[m] for m in METRICS) >= 0.9, (caption(p), result.table())
        assert result.overall["pass_rate"] == 1


def visible_weights(p: ClipParams, num_frames: int, with_coverage: bool = False):
    """[N, T, H, W] how much of each pixel each object contributes to the rendered frame: its own
    coverage times what the objects drawn over it leave uncovered (the renderer's painter's order:
    larger objects first, equal sizes in caption order)."""
    centres = trajectories([p], num_frames)[0]
    grid = torch.arange(p.spec.size) + 0.5
    cover = []
    for i, o in enumerate(p.objects):
        dx = grid.view(1, 1, -1) - centres[:, i, 0].view(-1, 1, 1)
        dy = grid.view(1, -1, 1) - centres[:, i, 1].view(-1, 1, 1)
        r = torch.tensor(p.spec.radius_of(o.size))
        cover.append(shape_coverage(torch.tensor(SHAPES.index(o.shape)), r, dx, dy))
    order = sorted(range(len(p.objects)), key=lambda i: -p.spec.radius_of(p.objects[i].size))
    visible = torch.stack(cover).clone()
    for k, i in enumerate(order):
        for j in order[k + 1 :]:
            visible[i] = visible[i] * (1 - cover[j])
    return (visible, torch.stack(cover)) if with_coverage else visible


def test_detection_recovers_positions_shapes_and_sizes(seed):
    """Where an object can be seen it is found; where it is fully visible, it is whole, with the
    right centroid, shape and size. Objects pass behind others of the same size (or larger): where
    fewer than 2 x MIN_AREA of an object's pixels are visible, the frame cannot tell it is there,
    and the evaluator must carry it as hidden instead (the test's premise before this fix was that
    every object is present in every frame, false for ~5% of random clips)."""
    p = clip_with(seed)
    video = render(p, 60)
    det = detect((video.permute(1, 2, 3, 0) + 1) / 2, p.spec)
    truth = trajectories([p], 60)[0]
    own = visible_weights(p, 60)  # [N, T, H, W]
    colours = list(PALETTE)
    hidden = hidden_objects(det, p.spec.fps, p.spec)
    for i, o in enumerate(p.objects):
        c = colours.index(o.colour)
        seen = (own[i] >= 0.95).sum((1, 2))  # pixels certainly its core
        assert det.present[seen >= 2 * MIN_AREA, c].all()
        after_first = torch.arange(60) >= int(det.present[:, c].float().argmax())
        assert (det.present[:, c] | hidden[:, c])[after_first].all()  # never lost once seen
        # alone: no other object within 2 px of it (so not even in its connected component)
        others = F.max_pool2d((own.sum(0) - own[i])[:, None], 5, 1, 2)[:, 0]
        alone = ((others > 0.01) & (own[i] > 0.01)).sum((1, 2)) == 0
        whole = det.whole[:, c]
        assert whole[alone].all()
        if not whole.any():  # under another object all along: never measured
            continue
        err = (det.centroid[:, c] - truth[:, i]).norm(dim=-1)
        clean = whole & alone
        assert not clean.any() or err[clean].median() < 0.1  # sub-pixel centroids, not half-pixel mask jumps
        # "whole" tolerates a sliver cut by an object on top (IoU >= 0.9, nothing inside its outline),
        # which biases the centroid by up to ~0.3 px
        assert err[whole].median() < 0.5
        assert (det.shape[whole, c] == SHAPES.index(o.shape)).float().mean() >= 0.95
        assert (det.size[whole, c] == SIZES.index(o.size)).float().mean() >= 0.95
    absent = [colours.index(c) for c in PALETTE if c not in {o.colour for o in p.objects}]
    assert not det.present[:, absent].any()
    assert det.blobs.sum() == 0 and not det.specks.any()


def test_minute_rollout_has_twelve_windows_and_stays_real(seed):
    p = clip_with(seed)
    result = evaluate(render(p, 480), caption(p))
    assert result.overall["overall"] >= REAL_OVERALL, result.table()
    assert len(result.windows) == 12 and result.windows[-1]["end_s"] == 60
    assert result.overall["overall"] >= REAL_OVERALL
    assert abs(result.drift["overall"]) <= 0.05
    assert result.drift["overall"] == pytest.approx(result.windows[0]["overall"] - result.windows[-1]["overall"])
    for win in result.windows:
        assert win["overall"] == pytest.approx(geometric_mean([win[m] for m in METRICS]))
        assert win["mean"] == pytest.approx(sum(win[m] for m in METRICS) / 6)
    assert result.overall["mean"] >= result.overall["overall"]  # the geometric mean is never above it


def hue_rotate(video: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    """Rotate each frame's colours about the grey axis (backgrounds, being grey, barely change)."""
    k = torch.ones(3) / math.sqrt(3)
    cross = torch.tensor([[0.0, -k[2], k[1]], [k[2], 0.0, -k[0]], [-k[1], k[0], 0.0]])
    rot = (
        torch.eye(3) * angles.cos().view(-1, 1, 1)
        + cross * angles.sin().view(-1, 1, 1)
        + torch.outer(k, k) * (1 - angles.cos()).view(-1, 1, 1)
    )
    x = torch.einsum("tij,jthw->ithw", rot, (video + 1) / 2)
    return x.clamp(0, 1) * 2 - 1


def defect(name: str, p: ClipParams, video: torch.Tensor, g: torch.Generator) -> tuple[torch.Tensor, str]:
    t = video.shape[1]
    k = t // 4
    if name == "frozen":  # on a frame near T/4 that shows every object whole (else shapes are unknowable)
        ok = torch.nonzero(all_whole(p, t)[: t // 2 - 2])[:, 0]  # the nearest such frame to T/4 before ~T/2
        k = int(ok[(ok - k).abs().argmin()]) if len(ok) else k
        out = video.clone()
        out[:, k:] = video[:, k : k + 1]
        return out, caption(p)
    if name == "colour drift":
        return hue_rotate(video, torch.arange(t) * math.pi / t), caption(p)
    if name == "blur":
        return gaussian_blur(video, 1.0), caption(p)
    if name == "noise":
        return (video + 0.1 * torch.randn(video.shape, generator=g)).clamp(-1, 1), caption(p)
    if name == "jitter":
        centres = trajectories([p], t)
        return draw([p], centres + torch.randn(centres.shape, generator=g))[0], caption(p)
    if name == "vanishing":
        out = video.clone()
        out[:, k:] = render(ClipParams(p.objects[1:], p.background, p.texture_seed), t)[:, k:]
        return out, caption(p)
    if name == "wrong prompt":
        others = [c for c in PALETTE if c not in {o.colour for o in p.objects}]
        return video, " and ".join(f"a {o.size} {c} {o.shape}" for o, c in zip(p.objects, others))
    raise KeyError(name)


# defect -> (metrics it must lower by at least the margin, margin, metrics it must leave alone)
DEFECTS = {
    "frozen": (("dynamic", "smoothness"), 0.45, ("adherence", "persistence", "shape", "imaging")),
    "colour drift": (("persistence", "adherence"), 0.3, ()),  # colours lost: their motion and shape go too
    "blur": (("imaging",), 0.4, ("adherence", "shape", "dynamic")),  # blurred small objects can fall below the mask
    "noise": (("imaging",), 0.5, ("adherence", "persistence", "shape", "dynamic")),
    "jitter": (("smoothness",), 0.5, ("shape", "imaging")),  # 1 px shifts can change who covers whom
    "vanishing": (("persistence", "adherence", "shape", "smoothness", "dynamic"), 0.15, ("imaging",)),
    "wrong prompt": (METRICS, 0.9, ()),  # none of the requested objects: every metric fails
}


@pytest.mark.parametrize("name", list(DEFECTS))
def test_defect_lowers_the_right_metric(name, seed):
    p = clip_with(seed, min_objects=2)
    while not (seen_whole(p, 80) and all_whole(p, 80)[:38].any()):  # see seen_whole; a frame to freeze on
        seed += 7919
        p = clip_with(seed, min_objects=2)
    video = render(p, 80)  # 10 s in four windows of 2.5 s
    real = evaluate(video, caption(p), window_seconds=2.5)
    bad = evaluate(*defect(name, p, video, torch.Generator().manual_seed(seed)), window_seconds=2.5)
    targets, margin, untouched = DEFECTS[name]
    report = f"{caption(p)}\nreal:\n{real.table()}\n{name}:\n{bad.table()}"
    for m in targets:
        assert real.overall[m] - bad.overall[m] >= margin, report
    for m in untouched:
        assert real.overall[m] - bad.overall[m] <= 0.05, report
    assert bad.overall["overall"] < real.overall["overall"] - 0.15, report
    assert bad.overall["mean"] < real.overall["mean"] - 0.05, report


def test_drift_shows_along_the_rollout(seed):
    p = clip_with(seed)
    while all(o.colour == "white" for o in p.objects):  # white lies on the grey axis: the hue turn leaves it
        seed += 1
        p = clip_with(seed)
    video = render(p, 80)
    # right for the first 2.5 s window, then the hue turns 3 degrees per frame: identities are lost
    # later in the rollout (a colour can pass another palette colour on the way, so a window may
    # recover a little; a turn that starts at frame 0 can already cost the first window)
    turn = (torch.arange(80) - 20).clamp(min=0) * math.pi / 60
    drifted = evaluate(hue_rotate(video, turn), caption(p), window_seconds=2.5)
    truth = evaluate(video, caption(p), window_seconds=2.5).windows[0]["persistence"]
    persistence = [w["persistence"] for w in drifted.windows]
    # identities are matched over the whole clip, so the later drift can cost the first window too
    # (seen: 0.5 for a first window the real clip scores 1.0); the finding is the later windows falling
    # well below the real clip
    assert truth - min(persistence[1:]) >= 0.3, (truth, persistence)
    assert drifted.drift["persistence"] >= 0.1


def test_empty_and_noise_videos_score_low():
    prompt = "a small red circle bouncing"
    empty = evaluate(torch.full((3, 24, 64, 64), -0.9), prompt)
    assert all(empty.overall[m] == 0 for m in (*METRICS, "overall", "mean", "pass_rate"))
    noise = evaluate(torch.rand(3, 24, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1, prompt)
    assert noise.overall["overall"] == 0 and noise.overall["mean"] < 0.1, noise.table()


def test_window_bounds():
    assert window_bounds(480, 40) == [(i, i + 40) for i in range(0, 480, 40)]
    assert window_bounds(45, 40) == [(0, 45)]  # a short tail joins the last window
    assert window_bounds(65, 40) == [(0, 40), (40, 65)]
    assert window_bounds(10, 40) == [(0, 10)]


def test_bad_input_is_a_clear_error():
    video = torch.zeros(3, 8, 64, 64)
    with pytest.raises(ValueError, match="64x64"):
        evaluate(torch.zeros(3, 8, 32, 32), "a red circle")
    with pytest.raises(ValueError, match=r"\[3, T, H, W\]"):
        evaluate(torch.zeros(8, 64, 64), "a red circle")
    with pytest.raises(ValueError, match="unexpected word"):
        evaluate(video, "a red dog")
    with pytest.raises(ValueError, match="one colour twice"):
        evaluate(video, "a red circle and a red square")
    with pytest.raises(ValueError, match="at least 3 frames"):
        evaluate(torch.zeros(3, 2, 64, 64), "a red circle")


def test_cli_reads_tensors_gifs_and_frames(tmp_path, capsys, seed):
    import imageio.v3 as iio

    p = clip_with(seed)
    video = render(p, 48)
    np.save(tmp_path / "clip.npy", video.numpy())
    (tmp_path / "clip.txt").write_text(caption(p))
    frames = ((video + 1) * 127.5).round().byte().permute(1, 2, 3, 0).numpy()
    iio.imwrite(tmp_path / "clip.gif", frames, duration=125, loop=0)
    torch.save(video.clone(), tmp_path / "copy.pt")
    png = tmp_path / "png"
    png.mkdir()
    for i, frame in enumerate(frames):
        iio.imwrite(png / f"{i:04d}.png", frame)
    out = tmp_path / "scores.json"
    per_video = tmp_path / "per-video"
    args = ["evaluate", str(tmp_path / "clip.npy"), str(tmp_path / "clip.gif"), "--json", str(out)]
    assert main([*args, "--json-dir", str(per_video)]) == 0
    assert main(["evaluate", str(png), str(tmp_path / "copy.pt"), "--prompt", caption(p), "--fps", "8"]) == 0
    printed = capsys.readouterr().out
    assert "mean over 2 videos" in printed and "drift" in printed
    data = json.loads(out.read_text())
    direct = evaluate(video, caption(p))
    npy = data["videos"][str(tmp_path / "clip.npy")]
    assert npy["overall"]["overall"] == pytest.approx(direct.overall["overall"])
    gif = data["videos"][str(tmp_path / "clip.gif")]  # 8-bit palette: nearly lossless for flat colours
    assert gif["overall"]["overall"] >= direct.overall["overall"] - 0.05
    assert set(data["mean"]) == {*METRICS, "overall", "mean", "pass_rate"}
    one = json.loads((per_video / "clip.npy.json").read_text())  # per video: every metric of every window
    assert one["video"] == str(tmp_path / "clip.npy") and one["prompt"] == caption(p)
    assert one["overall"]["overall"] == pytest.approx(direct.overall["overall"])
    assert all({*METRICS, "overall", "mean", "sharpness", "count_ok"} <= set(w) for w in one["windows"])


def test_cli_errors_are_one_line(tmp_path, capsys):
    np.save(tmp_path / "clip.npy", np.zeros((3, 8, 64, 64), dtype=np.float32))
    assert main(["evaluate", str(tmp_path / "clip.npy")]) == 2
    assert "no prompt for" in capsys.readouterr().err
    assert main(["evaluate", str(tmp_path / "missing.mp4"), "--prompt", "a red circle"]) == 2
    assert "no such video" in capsys.readouterr().err
    np.save(tmp_path / "big.npy", np.full((3, 8, 64, 64), 3.0, dtype=np.float32))
    assert main(["evaluate", str(tmp_path / "big.npy"), "--prompt", "a red circle"]) == 2
    assert "[-1, 1]" in capsys.readouterr().err
