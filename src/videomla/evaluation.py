"""Ground-truth scores for videos of the procedural world (:mod:`videomla.data.world`), VBench-style.

The paper scores minute-long rollouts with VBench; its networks cannot be downloaded here, and
they would judge our 64x64 world poorly anyway. This evaluator knows how the world is made
(palette, backgrounds, shapes, sizes, elastic motion), so it measures the same six qualities
directly. Each metric is in [0, 1] (1 = a real clip), computed per window along the rollout
(default 5 s, so decay over a long horizon is visible) and overall; Overall = the mean of the six,
as VBench's. ``drift`` = first window minus last window.

Detection: each pixel takes the nearest palette/background colour (or none when far from all);
8-connected components of non-background pixels are found per frame; an object of colour c is
the component holding most pixels of c. A component holding other colours too is *occluded*
(objects overlap or touch) and is left out of shape and motion scores, which would be biased.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from .data.world import BACKGROUNDS, PALETTE, SHAPES, SIZES, ObjectQuery, WorldSpec, parse_caption, shape_coverage

METRICS = ("adherence", "persistence", "shape", "smoothness", "dynamic", "imaging")
COLOURS = tuple(PALETTE)

# Thresholds. Colours are in [0, 1]; object colours are >= 0.6 apart, backgrounds >= 0.75 from any.
BACKGROUND_RADIUS = 0.15  # pixels this close to a background prototype estimate the frame's background
MIX_RADIUS = 0.35  # farther than this from every background-to-colour mix: the pixel is nobody's
CORE_COVERAGE = 0.8  # a pixel this covered by one colour is that object's core
MIN_AREA = 12  # pixels of one colour in a component to count as an object (a small object has 79)
TOUCH_AREA = 4  # pixels of another colour in the same component: occluded / touching
WHOLE_IOU = 0.9  # an occluded object whose mask still matches a clean shape this well is on top: whole
HIDDEN_SECONDS = 2.0  # an object missing where another now stands is hidden (not gone) this long
# Calibration against real clips (measured on 200 random 5 s clips, see docs/evaluate.md):
IOU_REF = 0.90  # shape IoU with the ideal template a clean render reaches (real median 0.94, 5th pct 0.90)
SHARP_REF = 0.75  # edge steepness of real one-pixel anti-aliased edges (real: median 0.88, 1st pct 0.77)
SHARP_FLOOR = 0.3  # steepness scored 0 (a Gaussian blur of sigma ~2 px)
ACCEL_SCALE = 1.0  # px/frame^2 where smoothness halves (real centroid jitter: ~0.1)
MOVING_SPEED = 3.0  # px/s below which an object counts as standing still (real objects: >= 8)
NOISE_SCALE = 0.02  # residual noise std (in [0, 1]) where the noise score halves
SPECK_AREA = 40  # non-background blobs smaller than this (half a small object) holding no object are specks
DIRTY_SCALE = 0.01  # fraction of the frame in specks where cleanliness is 1/e


# ---------------------------------------------------------------- detection


def label_components(mask: torch.Tensor) -> torch.Tensor:
    """8-connected components of each frame of a bool mask [T, H, W]: 0 off the mask, else an id
    unique within its frame (1 + flat index of the component's last pixel).

    Max-label propagation (a 3x3 max-pool) plus pointer jumping (each pixel takes the label its
    label's pixel holds, which lies in the same component), vectorised over frames.
    """
    t, h, w = mask.shape
    m = mask.float()
    lab = torch.arange(1, h * w + 1, dtype=torch.float32).view(1, h, w) * m  # exact in float32 for 64x64
    while True:
        new = F.max_pool2d(lab[:, None], 3, 1, 1)[:, 0] * m
        flat = new.view(t, h * w)
        new = flat.gather(1, (flat.long() - 1).clamp(min=0)).view(t, h, w) * m
        if torch.equal(new, lab):
            return lab.long()
        lab = new


def estimate_background(frames: torch.Tensor) -> torch.Tensor:
    """Each frame's background colour [T, 3]: the mean of pixels near a background prototype
    (black where there are none)."""
    protos = torch.tensor(list(BACKGROUNDS.values()))
    near = torch.cdist(frames.reshape(-1, 3), protos).amin(-1).view(frames.shape[:-1]) < BACKGROUND_RADIUS
    mean = (frames * near[..., None]).sum((1, 2)) / near.sum((1, 2))[:, None].clamp(min=1)
    return torch.where(near.any(-1).any(-1)[:, None], mean, protos[0])


def coverage_by_colour(frames: torch.Tensor, bg: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Under the renderer's mixing model ``pixel = bg + a (colour - bg)``: each palette colour's
    coverage ``a`` [T, H, W, C] (unclamped) and the pixel's distance from that mixing segment."""
    axis = torch.tensor(list(PALETTE.values()))[None] - bg[:, None]  # [T, C, 3]
    rel = frames - bg[:, None, None]  # [T, H, W, 3]
    alpha = torch.einsum("thwk,tck->thwc", rel, axis) / (axis * axis).sum(-1)[:, None, None]
    resid = (rel[..., None, :] - alpha.clamp(0, 1)[..., None] * axis[:, None, None]).norm(dim=-1)
    return alpha, resid


def classify_pixels(frames: torch.Tensor, bg: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Frames [T, H, W, 3] in [0, 1] -> class [T, H, W] and core [T, H, W] bool.

    Class: the palette index where the pixel is a mix of background and that colour covering at
    least half of it (where a renderer's edge lies), len(PALETTE) = background, len(PALETTE) + 1 =
    unassigned (a colour no object has, or a blend of two objects). Core: covered >= CORE_COVERAGE,
    the pixels that count towards an object's existence. Blends of two objects can pass for a
    half-covered edge of a third colour (blue + yellow = a grey like white's edge), never for its core.
    """
    alpha, resid = coverage_by_colour(frames, bg)
    best, colour = resid.min(-1)
    a = alpha.gather(-1, colour[..., None])[..., 0]
    far = best > MIX_RADIUS
    cls = torch.where(far, len(PALETTE) + 1, torch.where(a >= 0.5, colour, len(PALETTE)))
    return cls, ~far & (a >= CORE_COVERAGE)


@dataclass
class Detections:
    """Per frame and palette colour ([T, C] unless noted): the primary object of that colour."""

    cls: torch.Tensor  # [T, H, W] pixel classes (see classify_pixels)
    specks: torch.Tensor  # [T, H, W] bool: pixels of small non-background blobs holding no object
    count: torch.Tensor  # components with >= MIN_AREA pixels of the colour (2+ = duplicated)
    present: torch.Tensor  # bool
    occluded: torch.Tensor  # bool: its component holds other colours too (overlapping or touching)
    centroid: torch.Tensor  # [T, C, 2] (x, y), pixel centres at i + 0.5, sub-pixel (see measure_objects)
    bbox: torch.Tensor  # [T, C, 4] xmin, xmax, ymin, ymax (pixel indices)
    iou: torch.Tensor  # [T, C, S, Z] IoU with each ideal shape x size (0 where absent)

    @property
    def whole(self) -> torch.Tensor:
        """[T, C] bool: present and fully visible (alone, or touching others with its mask still a
        clean shape: on top of them). Shape and motion are measured only here; under another
        object the mask, and so the centroid, is cut."""
        return self.present & (~self.occluded | (self.iou.amax((-1, -2)) >= WHOLE_IOU))

    @property
    def shape(self) -> torch.Tensor:
        """Best-matching shape index [T, C] (by IoU over both sizes); -1 where not whole."""
        return torch.where(self.whole, self.iou.amax(-1).argmax(-1), -1)

    @property
    def size(self) -> torch.Tensor:
        return torch.where(self.whole, self.iou.amax(-2).argmax(-1), -1)


def detect(frames: torch.Tensor, spec: WorldSpec) -> Detections:
    """Find each palette colour's object in every frame of ``frames`` [T, H, W, 3] in [0, 1]."""
    t, h, w, _ = frames.shape
    nc = len(PALETTE)
    bg = estimate_background(frames)
    cls, core = classify_pixels(frames, bg)
    fg = cls != nc
    lab = label_components(fg)
    frame_of_pixel = torch.arange(t).view(t, 1, 1).expand(t, h, w)
    gid, comp = torch.unique(frame_of_pixel[fg] * (h * w + 1) + lab[fg], return_inverse=True)
    comp_frame = gid // (h * w + 1)
    pcls, pframe = cls[fg], frame_of_pixel[fg]
    coloured = pcls < nc
    counted = coloured & core[fg]  # core pixels per component and colour
    counts = torch.zeros(len(gid), nc, dtype=torch.long)
    counts.index_put_((comp[counted], pcls[counted]), torch.ones(int(counted.sum()), dtype=torch.long), accumulate=True)

    # the primary component of each (frame, colour): the one holding most of that colour
    key = (comp_frame[:, None] * nc + torch.arange(nc)).flatten()
    best = torch.zeros(t * nc, dtype=torch.long).scatter_reduce(0, key, counts.flatten(), "amax")
    big = counts.flatten() >= MIN_AREA
    count = torch.zeros(t * nc, dtype=torch.long).scatter_add(0, key, big.long()).view(t, nc)
    is_best = big & (counts.flatten() == best[key])
    comp_ids = torch.arange(len(gid)).repeat_interleave(nc)
    primary = torch.full((t * nc,), -1).scatter_reduce(0, key, torch.where(is_best, comp_ids, -1), "amax")
    present = (primary >= 0).view(t, nc)
    others = F.pad(counts.sum(1), (0, 1))[primary] - best  # index -1 (no object) hits the padded 0
    occluded = present & (others >= TOUCH_AREA).view(t, nc)

    # pixel statistics of each primary object
    mine = coloured.clone()
    mine[coloured] = comp[coloured] == primary[pframe[coloured] * nc + pcls[coloured]]
    okey = pframe[mine] * nc + pcls[mine]
    ys, xs = torch.nonzero(fg, as_tuple=True)[1:]
    ys, xs = ys[mine].float(), xs[mine].float()
    area = torch.zeros(t * nc).scatter_add(0, okey, torch.ones_like(xs))
    safe = area.clamp(min=1)
    centroid = (
        torch.stack(
            [torch.zeros(t * nc).scatter_add(0, okey, xs) / safe, torch.zeros(t * nc).scatter_add(0, okey, ys) / safe],
            -1,
        )
        + 0.5
    )
    bbox = torch.stack(
        [
            torch.zeros(t * nc).scatter_reduce(0, okey, xs, "amin", include_self=False),
            torch.zeros(t * nc).scatter_reduce(0, okey, xs, "amax", include_self=False),
            torch.zeros(t * nc).scatter_reduce(0, okey, ys, "amin", include_self=False),
            torch.zeros(t * nc).scatter_reduce(0, okey, ys, "amax", include_self=False),
        ],
        -1,
    )
    owner = torch.full((t, h, w), -1)
    owner[fg] = torch.where(mine, pframe * nc + pcls, -1)
    found = present.flatten()
    iou = torch.zeros(t * nc, len(SHAPES), len(SIZES))
    keys = torch.nonzero(found)[:, 0]
    centroid[found], iou[found] = measure_objects(frames, bg, owner, keys, centroid[found], spec)
    speck = (counts.amax(1) < MIN_AREA) & (torch.bincount(comp, minlength=len(gid)) < SPECK_AREA)
    specks = torch.zeros(t, h, w, dtype=torch.bool)
    specks[fg] = speck[comp]
    return Detections(
        cls,
        specks,
        count,
        present,
        occluded,
        centroid.view(t, nc, 2),
        bbox.view(t, nc, 4),
        iou.view(t, nc, len(SHAPES), len(SIZES)),
    )


def measure_objects(
    frames: torch.Tensor,
    bg: torch.Tensor,
    owner: torch.Tensor,
    keys: torch.Tensor,
    centroid: torch.Tensor,
    spec: WorldSpec,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sub-pixel centroids [D, 2] and IoUs [D, S, Z] with each ideal shape x size of the objects ``keys``.

    A hard mask's centroid moves in half-pixel jumps; weighting each pixel within a pixel of the
    mask by its estimated coverage (the projection of its colour onto object-minus-background
    colour, which undoes anti-aliasing) gives a centroid accurate to ~0.05 px on real clips, so
    motion smoothness measures motion, not rasterisation. The IoU compares the mask with the
    ideal shape drawn at that centroid (pixels covered >= half, where segmentation puts the edge).
    """
    if len(keys) == 0:
        return torch.zeros(0, 2), torch.zeros(0, len(SHAPES), len(SIZES))
    _t, h, w = owner.shape
    nc = len(PALETTE)
    half = math.ceil(1.6 * max(spec.radius) + 2)  # the farthest reach of a shape (triangle apex) + margin
    frame, colour = keys // nc, keys % nc
    anchor = centroid.floor().long()  # [D, 2]
    off = torch.arange(-half, half)
    ys = (anchor[:, 1, None] + off + half).clamp(0, h + 2 * half - 1)[:, :, None]
    xs = (anchor[:, 0, None] + off + half).clamp(0, w + 2 * half - 1)[:, None, :]
    f = frame[:, None, None]
    mask = F.pad(owner, (half,) * 4, value=-1)[f, ys, xs] == keys[:, None, None]  # [D, K, K]
    pixels = F.pad(frames.permute(0, 3, 1, 2), (half,) * 4).permute(0, 2, 3, 1)[f, ys, xs]  # [D, K, K, 3]
    axis = (torch.tensor(list(PALETTE.values()))[colour] - bg[frame])[:, None, None]  # [D, 1, 1, 3]
    rel = pixels - bg[frame][:, None, None]
    alpha = ((rel * axis).sum(-1) / (axis * axis).sum(-1)).clamp(0, 1)
    on_mix = (rel - alpha[..., None] * axis).norm(dim=-1) <= MIX_RADIUS  # not another object's pixel
    ring = F.max_pool2d(mask[:, None].float(), 3, 1, 1)[:, 0] > 0
    alpha = torch.where(ring & on_mix, alpha, 0)
    grid = (anchor[:, :, None] + off + 0.5).float()  # [D, 2, K] pixel-centre coordinates
    mass = alpha.sum((1, 2)).clamp(min=1e-6)
    soft = torch.stack([(alpha.sum(1) * grid[:, 0]).sum(-1), (alpha.sum(2) * grid[:, 1]).sum(-1)], -1) / mass[:, None]
    dx = (grid[:, 0] - soft[:, 0, None]).view(-1, 1, 1, 1, 2 * half)
    dy = (grid[:, 1] - soft[:, 1, None]).view(-1, 1, 1, 2 * half, 1)
    sid = torch.arange(len(SHAPES)).view(1, -1, 1, 1, 1)
    rad = torch.tensor(spec.radius).view(1, 1, -1, 1, 1)
    ideal = shape_coverage(sid, rad, dx, dy) >= 0.5  # [D, S, Z, K, K]
    inter = (ideal & mask[:, None, None]).sum((-1, -2)).float()
    union = mask.sum((1, 2))[:, None, None] + ideal.sum((-1, -2)) - inter
    return soft, inter / union


# ---------------------------------------------------------------- per-frame measurements


def _forward_fill(values: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Along dim 0: each entry takes the last valid value at or before it (the first valid one before
    any); columns with no valid entry keep ``values``."""
    t = values.shape[0]
    steps = torch.arange(t).view(-1, *([1] * (values.dim() - 1)))
    last = torch.where(valid, steps, -1).cummax(0).values
    first = torch.where(valid, steps, t).amin(0, keepdim=True).expand_as(last)
    src = torch.where(last >= 0, last, first).clamp(max=t - 1)
    return values.gather(0, src)


def hidden_objects(det: Detections, fps: float) -> torch.Tensor:
    """[T, C] bool: missing now, but seen within HIDDEN_SECONDS and another object's pixels cover
    where it was last seen (it passed behind something, as real objects do)."""
    t, nc = det.present.shape
    steps = torch.arange(t).view(-1, 1)
    last = torch.where(det.present, steps, -1).cummax(0).values  # [T, C]
    seen = last >= 0
    xy = det.centroid.gather(0, last.clamp(min=0)[..., None].expand(t, nc, 2)).floor().long()
    h, w = det.cls.shape[1:]
    under = det.cls[steps.expand(t, nc), xy[..., 1].clamp(0, h - 1), xy[..., 0].clamp(0, w - 1)]
    covered = (under < nc) & (under != torch.arange(nc))
    return ~det.present & seen & (steps - last <= HIDDEN_SECONDS * fps) & covered


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


def persistence_per_frame(det: Detections, shape: torch.Tensor, shown: torch.Tensor, fps: float) -> torch.Tensor:
    """[T] multiset Jaccard of (colour, shape) identities vs those of the first second (an object
    duplicated counts twice, one hidden behind another once)."""
    n = torch.where(det.present, det.count, shown.long())  # hidden objects still count once
    head = max(1, round(fps))
    ref_n = (shown[:head].float().mean(0) >= 0.5).long()  # [C]
    votes = F.one_hot(shape[:head] + 1, len(SHAPES) + 1)[..., 1:].sum(0)  # [C, S]
    ref_shape = torch.where(votes.sum(-1) > 0, votes.argmax(-1), -1)
    same = shape == ref_shape
    inter = torch.where(same, torch.minimum(n, ref_n), 0).sum(1)
    union = torch.where(same, torch.maximum(n, ref_n), n + ref_n).sum(1)
    return inter / union.clamp(min=1)  # no objects at all: nothing persisted, 0


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
    flat = ((F.max_pool2d(c, 3, 1, 1) == c) & (F.max_pool2d(-c, 3, 1, 1) == -c) & (c <= len(PALETTE)))[:, 0]
    flat[:, [0, -1]] = False
    flat[:, :, [0, -1]] = False
    x = frames.permute(0, 3, 1, 2)
    resid = (x - F.avg_pool2d(x, 3, 1, 1)).abs()  # [T, 3, H, W]
    resid = torch.where(flat[:, None], resid, float("nan")).flatten(1)
    # median absolute residual -> std of Gaussian noise (the 3x3 mean keeps 1/9 of it: var * 8/9)
    sigmas = resid.nanmedian(1).values.nan_to_num(0.0) * 1.4826 / math.sqrt(8 / 9)
    return sigmas, flat.sum((1, 2))


def dirt_per_frame(det: Detections) -> torch.Tensor:
    """[T] fraction of pixels in specks: small non-background blobs that are no object (rendering
    debris; a large unknown blob is an object problem, for persistence and adherence)."""
    return det.specks.sum((1, 2)) / det.specks[0].numel()


# ---------------------------------------------------------------- scores


@dataclass
class Evaluation:
    """Scores of one video: ``windows`` (one dict per window), ``overall`` and ``drift`` (first - last)."""

    prompt: str
    fps: float
    num_frames: int
    windows: list[dict]
    overall: dict
    drift: dict

    def to_dict(self) -> dict:
        return asdict(self)

    def table(self) -> str:
        cols = (*METRICS, "overall")
        lines = [f"{'window':>13} " + " ".join(f"{c[:11]:>11}" for c in cols)]
        for win in self.windows:
            lines.append(f"{win['start_s']:5.1f}-{win['end_s']:5.1f} s " + " ".join(f"{win[c]:11.3f}" for c in cols))
        lines.append(f"{'all':>13} " + " ".join(f"{self.overall[c]:11.3f}" for c in cols))
        lines.append(f"{'drift':>13} " + " ".join(f"{self.drift[c]:+11.3f}" for c in cols))
        return "\n".join(lines)


def window_bounds(num_frames: int, frames_per_window: int) -> list[tuple[int, int]]:
    """Consecutive windows; a last piece shorter than half a window joins the one before it."""
    n = max(1, num_frames // frames_per_window + (num_frames % frames_per_window >= frames_per_window / 2))
    edges = [min(i * frames_per_window, num_frames) for i in range(n)] + [num_frames]
    return list(itertools.pairwise(edges))


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


def _fill(values: list[float | None]) -> list[float]:
    """A window where a quantity could not be measured (objects all overlapping, say) takes the
    nearest earlier measured window's value, else the nearest later one; never measured: 0."""
    known = [i for i, v in enumerate(values) if v is not None]
    if not known:
        return [0.0] * len(values)
    return [
        v if v is not None else values[max([k for k in known if k < i], default=known[0])] for i, v in enumerate(values)
    ]


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


def motion_samples(det: Detections, fps: float, size: int) -> tuple[Samples, Samples]:
    """Smoothness (per whole triple; walls exempt, where a bounce is a legitimate kink) and
    dynamic degree (per present pair: is the object moving?)."""
    pos = det.centroid
    d1, d2 = pos[1:-1] - pos[:-2], pos[2:] - pos[1:-1]
    reach = torch.maximum(d1.abs(), d2.abs()) + 1.5  # a bounce happens within a step of the wall
    lo, hi = det.bbox[1:-1, :, 0::2], det.bbox[1:-1, :, 1::2]
    at_wall = (lo <= reach) | (hi >= size - 1 - reach)
    accel = torch.where(at_wall, 0.0, d2 - d1).norm(dim=-1)
    whole = det.whole
    smooth = Samples(1 / (1 + (accel / ACCEL_SCALE) ** 2), whole[:-2] & whole[1:-1] & whole[2:], offset=1)
    moving = (pos[1:] - pos[:-1]).norm(dim=-1) * fps >= MOVING_SPEED
    return smooth, Samples(moving, det.present[:-1] & det.present[1:])


def evaluate(
    video: torch.Tensor,
    prompt: str,
    fps: float | None = None,
    window_seconds: float = 5.0,
    spec: WorldSpec | None = None,
) -> Evaluation:
    """Score a video [3, T, H, W] in [-1, 1] generated for ``prompt`` (see module docstring)."""
    spec = spec or WorldSpec()
    fps = float(fps or spec.fps)
    queries = parse_caption(prompt)
    wanted = [COLOURS.index(q.colour) for q in queries]
    if len(set(wanted)) != len(wanted):
        raise ValueError(f"prompt {prompt!r} asks for one colour twice; colours are identities in this world")
    if window_seconds <= 0:
        raise ValueError(f"window_seconds must be > 0, got {window_seconds}")
    frames = _as_frames(video, spec)
    t, nc = frames.shape[0], len(PALETTE)
    det = detect(frames, spec)
    shown = det.present | hidden_objects(det, fps)
    shape_id, size_id = object_labels(det)

    # shape fidelity: IoU with the best shape at the requested size (any size if not requested)
    size_of = torch.full((nc,), -1)
    for q, c in zip(queries, wanted):
        size_of[c] = -1 if q.size is None else SIZES.index(q.size)
    at_size = det.iou.amax(-2).gather(-1, size_of.clamp(min=0).view(1, nc, 1).expand(t, nc, 1))[..., 0]
    fit = torch.where(size_of >= 0, at_size, det.iou.amax((-1, -2)))
    smooth, moving = motion_samples(det, fps, spec.size)
    sharp, edges = sharpness_per_frame(frames)
    sigma, flat = noise_per_frame(frames, det.cls)
    samples = {
        "persistence": Samples(persistence_per_frame(det, shape_id, shown, fps), torch.ones(t, dtype=torch.bool)),
        "shape": Samples((fit / IOU_REF).clamp(max=1), det.whole),
        "smoothness": smooth,
        "dynamic": moving,
        "sharpness": Samples(((sharp - SHARP_FLOOR) / (SHARP_REF - SHARP_FLOOR)).clamp(0, 1), edges > 0),
        "noise": Samples(1 / (1 + (sigma / NOISE_SCALE) ** 2), flat >= 64),
        "cleanliness": Samples(torch.exp(-dirt_per_frame(det) / DIRTY_SCALE), torch.ones(t, dtype=torch.bool)),
    }
    extras = det.count[:, [c for c in range(nc) if c not in wanted]].sum(1).float()  # unrequested objects

    bounds = window_bounds(t, max(1, round(window_seconds * fps)))
    windows = [{"start_s": a / fps, "end_s": b / fps} for a, b in bounds]
    for name, s in samples.items():
        for win, value in zip(windows, _fill([s.mean(a, b) for a, b in bounds])):
            win[name] = value
    for win, (a, b) in zip(windows, bounds):
        per_object = []
        for q, c in zip(queries, wanted):
            seen = shown[a:b, c]
            shape_ok = _mean(shape_id[a:b, c] == SHAPES.index(q.shape), seen)
            size_ok = 1.0 if q.size is None else _mean(size_id[a:b, c] == SIZES.index(q.size), seen)
            per_object.append(float(seen.float().mean()) * (1 + shape_ok + size_ok) / 3)
        # extra objects dilute adherence: n wanted among n + extra shown
        win["adherence"] = sum(per_object) / len(queries) * len(queries) / (len(queries) + float(extras[a:b].mean()))
        win["imaging"] = win["sharpness"] * win["noise"] * win["cleanliness"]
        win["overall"] = sum(win[m] for m in METRICS) / len(METRICS)
    keys = (*METRICS, "overall", "sharpness", "noise", "cleanliness")
    weights = [b - a for a, b in bounds]
    overall = {k: sum(w[k] * wt for w, wt in zip(windows, weights)) / sum(weights) for k in keys}
    drift = {k: windows[0][k] - windows[-1][k] for k in keys}
    return Evaluation(prompt, fps, t, windows, overall, drift)


def _mean(values: torch.Tensor, keep: torch.Tensor) -> float:
    """Mean of ``values`` where ``keep``; 0 where there is nothing to average."""
    return float(values[keep].float().mean()) if keep.any() else 0.0


__all__ = ["METRICS", "Detections", "Evaluation", "ObjectQuery", "detect", "evaluate", "label_components"]
