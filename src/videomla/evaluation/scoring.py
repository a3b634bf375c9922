"""Scores of one video against its prompt: six metrics per window and the aggregates.

Everything is measured against the prompt's requested objects. Per frame and requested object,
an object is *shown* (present, or hidden behind another object for a while), *whole* (present and
fully visible), or *absent*. A metric's per-frame value is 0 where the requested object is absent,
so a window without the requested objects scores 0 on shape, smoothness, dynamic and sharpness;
values are left out (not measurable) only where the object is shown but covered, and only such
windows take a neighbouring window's value.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from ..data.world import PALETTE, SHAPES, SIZES, WorldSpec, parse_caption
from ..tables import render_table
from .detection import NUM_COLOURS, Detections, detect, ideal_areas

METRICS = ("adherence", "persistence", "shape", "smoothness", "dynamic", "imaging")
COLOURS = tuple(PALETTE)
AGGREGATES = ("overall", "mean", "pass_rate")
FACTORS = ("sharpness", "noise", "cleanliness")  # imaging = their product
DISTRIBUTION = ("objects", "count_ok", "size_ok", "speed_ok")  # checks against the world's (not in Overall)

# Calibration against real clips (measured on random clips, see docs/evaluate.md):
HIDDEN_SECONDS = 2.0  # an object missing where another now stands is hidden (not gone) this long
HIDDEN_REACH = 3  # px: "where another now stands" is another object's pixels this close to where it was ...
HIDDEN_MAX_REACH = 18  # ... plus its possible motion since, up to this (twice a large object's radius)
IOU_REF = 0.90  # shape IoU with the ideal template a clean render reaches (real median 0.94, 5th pct 0.90)
SHARP_REF = 0.75  # edge steepness of real one-pixel anti-aliased edges (real: median 0.88, 1st pct 0.77)
SHARP_FLOOR = 0.45  # steepness scored 0 (a Gaussian blur of sigma ~1.2 px; sigma 1 gives ~0.49)
ACCEL_SCALE = 1.0  # px/frame^2 where smoothness halves (real centroid jitter: ~0.1)
MOVING_SPEED = 3.0  # px/s below which an object counts as standing still (real objects: >= 8)
SPEED_LIMIT = 2.0  # times the world's top speed above which a step is a jump, not motion
NOISE_SCALE = 0.02  # residual noise std (in [0, 1]) where the noise score halves
DIRTY_SCALE = 0.01  # fraction of the frame in specks where cleanliness is 1/e
PASS_LEVEL = 0.5  # a window passes when every metric reaches this
SIZE_TOLERANCE = 0.3  # distribution check: an object's area within this fraction of a world size's
SPEED_TOLERANCE = 0.5  # distribution check: speed within [lo * (1 - tol), hi * (1 + tol)] of the world's


# ---------------------------------------------------------------- object states over time


def _forward_fill(values: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Along dim 0: each entry takes the last valid value at or before it (the first valid one before
    any); columns with no valid entry keep ``values``."""
    t = values.shape[0]
    steps = torch.arange(t).view(-1, *([1] * (values.dim() - 1)))
    last = torch.where(valid, steps, -1).cummax(0).values
    first = torch.where(valid, steps, t).amin(0, keepdim=True).expand_as(last)
    src = torch.where(last >= 0, last, first).clamp(max=t - 1)
    return values.gather(0, src)


def hidden_objects(det: Detections, fps: float, spec: WorldSpec | None = None) -> torch.Tensor:
    """[T, C] bool: missing now, but seen within HIDDEN_SECONDS, touching another object when last seen,
    and that object's pixels lie where it could be now (it passed behind it, as real objects do):
    within HIDDEN_REACH px of where it was last seen, plus how far the world's fastest object moves
    since, up to HIDDEN_MAX_REACH px. An object that vanishes in the open, or where an object stands
    that was not there before, is gone, not hidden."""
    spec = spec or WorldSpec()
    t, nc = det.present.shape
    steps = torch.arange(t).view(-1, 1)
    last = torch.where(det.present, steps, -1).cummax(0).values  # [T, C]
    missing = ~det.present & (last >= 0) & (steps - last <= HIDDEN_SECONDS * fps)
    frame, colour = torch.nonzero(missing, as_tuple=True)
    seen_at = last[frame, colour]
    where = det.centroid[seen_at, colour]  # [N, 2] last seen (x, y)
    reach = (HIDDEN_REACH + (frame - seen_at) * spec.speed[1] / fps).clamp(max=HIDDEN_MAX_REACH)
    comp = det.component[seen_at]  # [N, C] components of every colour in the frame it was last seen
    touching = (comp == comp.gather(1, colour[:, None])) & (comp >= 0)  # [N, C] in its component then
    touching[torch.arange(len(frame)), colour] = False
    cls = det.cls[frame]  # [N, H, W]
    other = touching.gather(1, cls.clamp(max=nc - 1).flatten(1)).view_as(cls) & (cls < nc)
    h, w = cls.shape[1:]
    dx = torch.arange(w) + 0.5 - where[:, 0, None, None]
    dy = torch.arange(h)[:, None] + 0.5 - where[:, 1, None, None]
    near = (dx**2 + dy**2 <= reach[:, None, None] ** 2) & other
    hidden = torch.zeros(t, nc, dtype=torch.bool)
    hidden[frame, colour] = near.flatten(1).any(1)
    return hidden


def object_labels(det: Detections) -> tuple[torch.Tensor, torch.Tensor]:
    """Each colour's shape and size index [T, C] in every frame: its last whole look (objects keep
    theirs while passing behind others); one never seen whole keeps its best partial look
    throughout; -1 for colours never present."""
    fit = torch.where(det.present, det.iou.amax((-1, -2)), -1.0)
    best_look = det.present & (fit == fit.amax(0)) & (torch.cumsum(fit == fit.amax(0), 0) == 1)
    valid = torch.where(det.whole.any(0), det.whole, best_look)
    labels = []
    for best in (det.iou.amax(-1).argmax(-1), det.iou.amax(-2).argmax(-1)):
        labels.append(torch.where(valid.any(0), _forward_fill(best, valid), -1))
    return labels[0], labels[1]


# ---------------------------------------------------------------- per-frame measurements


@dataclass
class Samples:
    """Scores of one quantity, each belonging to a frame: the window mean is over ``keep``."""

    values: torch.Tensor  # [N, ...] indexed by frame - offset along dim 0
    keep: torch.Tensor  # bool, same shape
    offset: int = 0  # values[i] belongs to frame i + offset (a triple to its middle frame)

    def mean(self, a: int, b: int) -> float | None:
        """Mean over frames [a, b); None where nothing could be measured."""
        lo, hi = max(a - self.offset, 0), max(b - self.offset, 0)
        keep = self.keep[lo:hi]
        return float(self.values[lo:hi][keep].float().mean()) if keep.any() else None


def scored(value: torch.Tensor, measurable: torch.Tensor, absent: torch.Tensor) -> Samples:
    """Per (frame, requested object): ``value`` where measurable, 0 where the object is absent,
    left out where it is shown but cannot be measured (covered by another object)."""
    return Samples(torch.where(absent, 0.0, value.float()), measurable | absent)


def persistence_per_frame(
    det: Detections, shape: torch.Tensor, shown: torch.Tensor, wanted: list[int], wanted_shape: list[int]
) -> torch.Tensor:
    """[T] multiset Jaccard of the frame's (colour, shape) identities with the prompt's: a duplicated
    object counts twice, one hidden behind another once, each blob that is no object once."""
    n = torch.where(det.present, det.count, shown.long())  # [T, C] objects per colour
    ref = torch.zeros(NUM_COLOURS, dtype=torch.long)
    ref_shape = torch.full((NUM_COLOURS,), -2)
    ref[wanted], ref_shape[wanted] = 1, torch.tensor(wanted_shape)
    same = shape == ref_shape
    inter = torch.where(same, torch.minimum(n, ref), 0).sum(1)
    union = torch.where(same, torch.maximum(n, ref), n + ref).sum(1) + det.blobs
    return inter / union.clamp(min=1)


def sharpness_per_frame(frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Edge steepness [T] (largest one-pixel step / contrast within 5x5, over edge pixels and
    channels: ~0.7 for a one-pixel anti-aliased edge, ~0.3 for a sigma-1.5 blur) and its support."""
    x = frames.permute(0, 3, 1, 2)  # [T, 3, H, W]
    contrast = F.max_pool2d(x, 5, 1, 2) + F.max_pool2d(-x, 5, 1, 2)
    step = torch.maximum(
        F.pad((x[..., 1:] - x[..., :-1]).abs(), (0, 1)), F.pad((x[..., 1:, :] - x[..., :-1, :]).abs(), (0, 0, 0, 1))
    )
    steep = (F.max_pool2d(step, 5, 1, 2) / contrast.clamp(min=1e-6)).clamp(max=1)
    edge = contrast >= 0.25
    n = edge.sum((1, 2, 3))
    return torch.where(edge, steep, 0).sum((1, 2, 3)) / n.clamp(min=1), n


def noise_per_frame(frames: torch.Tensor, cls: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Residual noise std [T] (robust, in [0, 1] units) over flat pixels (3x3 all one class), and their count."""
    c = cls[:, None].float()
    flat = ((F.max_pool2d(c, 3, 1, 1) == c) & (F.max_pool2d(-c, 3, 1, 1) == -c) & (c <= NUM_COLOURS))[:, 0]
    flat[:, [0, -1]] = False
    flat[:, :, [0, -1]] = False
    x = frames.permute(0, 3, 1, 2)
    resid = (x - F.avg_pool2d(x, 3, 1, 1)).abs()  # [T, 3, H, W]
    resid = torch.where(flat[:, None], resid, float("nan")).flatten(1)
    # median absolute residual -> std of Gaussian noise (the 3x3 mean keeps 1/9 of it: var * 8/9)
    sigmas = resid.nanmedian(1).values.nan_to_num(0.0) * 1.4826 / math.sqrt(8 / 9)
    return sigmas, flat.sum((1, 2))


def motion_samples(
    det: Detections, shown: torch.Tensor, fps: float, spec: WorldSpec, wanted: list[int]
) -> tuple[Samples, Samples, torch.Tensor]:
    """Per requested object: smoothness per triple of frames (0 for an object standing still or
    absent; walls exempt, where a bounce is a legitimate kink), dynamic degree per pair (moving at
    a speed the world's objects could have: 0 when still, jumping, or absent), and speeds [T-1, R]."""
    pos, present, whole = det.centroid[:, wanted], det.present[:, wanted], det.whole[:, wanted]
    shown = shown[:, wanted]
    step = pos[1:] - pos[:-1]
    speed = step.norm(dim=-1) * fps  # px/s [T-1, R]
    moving = (speed >= MOVING_SPEED) & (speed <= SPEED_LIMIT * spec.speed[1])
    absent_pair = ~(shown[1:] & shown[:-1])
    dynamic = scored(moving, present[1:] & present[:-1], absent_pair)

    d1, d2 = step[:-1], step[1:]
    reach = torch.maximum(d1.abs(), d2.abs()) + 1.5  # a bounce happens within a step of the wall
    bbox = det.bbox[1:-1, wanted]
    at_wall = (bbox[..., 0::2] <= reach) | (bbox[..., 1::2] >= spec.size - 1 - reach)
    accel = torch.where(at_wall, 0.0, d2 - d1).norm(dim=-1)
    still = (speed[:-1] + speed[1:]) / 2 < MOVING_SPEED
    smooth = torch.where(still, 0.0, 1 / (1 + (accel / ACCEL_SCALE) ** 2))
    smoothness = scored(smooth, whole[:-2] & whole[1:-1] & whole[2:], ~shown[1:-1])
    smoothness.offset = 1
    return smoothness, dynamic, torch.where(present[1:] & present[:-1], speed, float("nan"))


# ---------------------------------------------------------------- windows and aggregates


@dataclass
class Evaluation:
    """Scores of one video: ``windows`` (one dict per window), ``overall`` (frame-weighted mean over
    windows) and ``drift`` (first window - last)."""

    prompt: str
    fps: float
    num_frames: int
    windows: list[dict]
    overall: dict
    drift: dict

    def to_dict(self) -> dict:
        return asdict(self)

    def table(self) -> str:
        """Every window's scores, then ``all`` and ``drift``: what ``videomla evaluate`` prints."""
        cols = (*METRICS, *AGGREGATES)
        rows = [[f"{w['start_s']:.1f}-{w['end_s']:.1f} s", *(f"{w[c]:.3f}" for c in cols)] for w in self.windows]
        rows.append(["all", *(f"{self.overall[c]:.3f}" for c in cols)])
        rows.append(["drift", *(f"{self.drift[c]:+.3f}" for c in cols)])
        return render_table(["window", *cols], rows)


def window_bounds(num_frames: int, frames_per_window: int) -> list[tuple[int, int]]:
    """Consecutive windows; a last piece shorter than half a window joins the one before it."""
    n = max(1, num_frames // frames_per_window + (num_frames % frames_per_window >= frames_per_window / 2))
    edges = [min(i * frames_per_window, num_frames) for i in range(n)] + [num_frames]
    return list(itertools.pairwise(edges))


def _fill(values: list[float | None]) -> list[float]:
    """A window where a quantity could not be measured (the requested objects shown but all covered,
    say) takes the nearest earlier measured window's value, else the nearest later one; never
    measured: 0. Windows where the objects are absent are measured: 0."""
    known = [i for i, v in enumerate(values) if v is not None]
    if not known:
        return [0.0] * len(values)
    return [
        v if v is not None else values[max([k for k in known if k < i], default=known[0])] for i, v in enumerate(values)
    ]


def geometric_mean(values: list[float]) -> float:
    """0 as soon as one value is 0: a total failure on one metric is a total failure."""
    if min(values) <= 0:
        return 0.0
    return math.exp(sum(math.log(v) for v in values) / len(values))


def aggregate(win: dict) -> None:
    """A window's Overall (geometric mean of the six), mean (arithmetic, VBench's) and pass (all >= 0.5)."""
    scores = [win[m] for m in METRICS]
    win["overall"] = geometric_mean(scores)
    win["mean"] = sum(scores) / len(scores)
    win["pass_rate"] = float(min(scores) >= PASS_LEVEL)


def _as_frames(video: torch.Tensor, spec: WorldSpec) -> torch.Tensor:
    if video.dim() == 5 and video.shape[0] == 1:
        video = video[0]
    if video.dim() != 4 or video.shape[0] != 3:
        raise ValueError(f"expected a video [3, T, H, W] in [-1, 1], got shape {tuple(video.shape)}")
    if tuple(video.shape[2:]) != (spec.size, spec.size):
        raise ValueError(f"the world's frames are {spec.size}x{spec.size}, got {tuple(video.shape[2:])}")
    if video.shape[1] < 3:
        raise ValueError(f"need at least 3 frames to score motion, got {video.shape[1]}")
    if not video.is_floating_point():
        raise ValueError(f"expected a float video in [-1, 1], got {video.dtype}")
    return ((video.detach().float().cpu().permute(1, 2, 3, 0) + 1) / 2).clamp(0, 1)  # [T, H, W, 3] in [0, 1]


def _mean(values: torch.Tensor, keep: torch.Tensor) -> float:
    """Mean of ``values`` where ``keep``; 0 where there is nothing to average."""
    return float(values[keep].float().mean()) if keep.any() else 0.0


def evaluate(
    video: torch.Tensor,
    prompt: str,
    fps: float | None = None,
    window_seconds: float = 5.0,
    spec: WorldSpec | None = None,
) -> Evaluation:
    """Score a video [3, T, H, W] in [-1, 1] generated for ``prompt`` (see docs/evaluate.md)."""
    spec = spec or WorldSpec()
    fps = float(fps or spec.fps)
    queries = parse_caption(prompt)
    wanted = [COLOURS.index(q.colour) for q in queries]
    if len(set(wanted)) != len(wanted):
        raise ValueError(f"prompt {prompt!r} asks for one colour twice; colours are identities in this world")
    if window_seconds <= 0:
        raise ValueError(f"window_seconds must be > 0, got {window_seconds}")
    frames = _as_frames(video, spec)
    t = frames.shape[0]
    det = detect(frames, spec)
    shown = det.present | hidden_objects(det, fps, spec)
    shape_id, size_id = object_labels(det)
    absent = ~shown[:, wanted]  # [T, R]

    # shape fidelity: IoU with the best shape at the requested size (either size if not requested)
    iou = det.iou[:, wanted]  # [T, R, S, Z]
    fit = torch.stack(
        [
            iou[:, r, :, SIZES.index(q.size)].amax(-1) if q.size else iou[:, r].amax((-1, -2))
            for r, q in enumerate(queries)
        ],
        -1,
    )
    smooth, moving, speeds = motion_samples(det, shown, fps, spec, wanted)
    sharp, edges = sharpness_per_frame(frames)
    sigma, flat = noise_per_frame(frames, det.cls)
    nothing_shown = absent.all(1)
    ones = torch.ones(t, dtype=torch.bool)
    samples = {
        "persistence": Samples(
            persistence_per_frame(det, shape_id, shown, wanted, [SHAPES.index(q.shape) for q in queries]), ones
        ),
        "shape": scored((fit / IOU_REF).clamp(max=1), det.whole[:, wanted], absent),
        "smoothness": smooth,
        "dynamic": moving,
        "sharpness": scored(((sharp - SHARP_FLOOR) / (SHARP_REF - SHARP_FLOOR)).clamp(0, 1), edges > 0, nothing_shown),
        "noise": Samples(1 / (1 + (sigma / NOISE_SCALE) ** 2), flat >= 64),
        "cleanliness": Samples(torch.exp(-det.specks.flatten(1).float().mean(1) / DIRTY_SCALE), ones),
    }
    # everything shown that was not asked for: unrequested objects, duplicates, blobs that are no object
    unrequested = [c for c in range(NUM_COLOURS) if c not in wanted]
    extras = (det.count[:, unrequested].sum(1) + (det.count[:, wanted] - 1).clamp(min=0).sum(1) + det.blobs).float()
    distribution = distribution_samples(det, shown, speeds, spec)

    bounds = window_bounds(t, max(1, round(window_seconds * fps)))
    windows = [{"start_s": a / fps, "end_s": b / fps} for a, b in bounds]
    for name, s in {**samples, **distribution}.items():
        for win, value in zip(windows, _fill([s.mean(a, b) for a, b in bounds])):
            win[name] = value
    for win, (a, b) in zip(windows, bounds):
        per_object = []
        for r, q in enumerate(queries):
            c = wanted[r]
            seen = shown[a:b, c]
            shape_ok = _mean(shape_id[a:b, c] == SHAPES.index(q.shape), seen)
            size_ok = 1.0 if q.size is None else _mean(size_id[a:b, c] == SIZES.index(q.size), seen)
            per_object.append(float(seen.float().mean()) * (1 + shape_ok + size_ok) / 3)
        # extra objects and blobs dilute adherence: n wanted among n + extra shown
        n = len(queries)
        win["adherence"] = sum(per_object) / (n + float(extras[a:b].mean()))
        win["imaging"] = win["sharpness"] * win["noise"] * win["cleanliness"]
        aggregate(win)
    keys = (*METRICS, *AGGREGATES, *FACTORS, *DISTRIBUTION)
    weights = [b - a for a, b in bounds]
    overall = {k: sum(w[k] * wt for w, wt in zip(windows, weights)) / sum(weights) for k in keys}
    drift = {k: windows[0][k] - windows[-1][k] for k in keys}
    return Evaluation(prompt, fps, t, windows, overall, drift)


def distribution_samples(det: Detections, shown: torch.Tensor, speeds: torch.Tensor, spec: WorldSpec) -> dict:
    """Checks against the world's own distribution (reported beside the metrics, not in Overall):
    objects per frame (shown objects plus blobs), whether that count is one the world makes,
    whether each whole object's area is that of one of the world's sizes, whether each requested
    object's speed is one the world's objects have."""
    t = det.present.shape[0]
    ones = torch.ones(t, dtype=torch.bool)
    n = torch.where(det.present, det.count, shown.long()).sum(1) + det.blobs
    areas = ideal_areas(spec)
    rel = (det.area[..., None] / areas - 1).abs().amin(-1)  # [T, C] distance to the nearest size's area
    lo, hi = spec.speed[0] * (1 - SPEED_TOLERANCE), spec.speed[1] * (1 + SPEED_TOLERANCE)
    return {
        "objects": Samples(n.float(), ones),
        "count_ok": Samples((n >= spec.min_objects) & (n <= spec.max_objects), ones),
        "size_ok": Samples(rel <= SIZE_TOLERANCE, det.whole),
        "speed_ok": Samples((speeds >= lo) & (speeds <= hi), ~speeds.isnan()),
    }
