"""Finding the world's objects in frames: pixel colours, connected components, candidate objects,
and which candidates look like an object of the world.

Steps (each a function below):

1. :func:`estimate_background` and :func:`classify_pixels`: each pixel is background, one palette
   colour (at least half covered by it under the renderer's mixing model), or unassigned.
2. :func:`label_components`: 8-connected components of non-background pixels, per frame.
3. :func:`find_candidates`: a *candidate* is the pixels of one colour within one component, where
   at least ``MIN_AREA`` of them are that colour's core (covered >= ``CORE_COVERAGE``).
4. :func:`measure_candidates`: area, sub-pixel centroid, bounding box, IoU with each ideal shape x size,
   and how many pixels of other colours lie inside the best-fitting ideal shape (``intruders``).
5. :func:`looks_like_object`: a candidate is an object if it fits a shape of the world at one of its
   sizes (IoU >= ``LOOK_IOU``), or if it is the cut remainder of one: in a component with a candidate
   that does fit (the object on top), and no larger than the world's largest object. Noise speckle,
   floods and oversized blobs are not objects; they are *blobs*, counted against the video.
6. :func:`detect`: per frame and colour, the primary object (the object candidate of that colour with
   most core pixels), how many objects of that colour there are, and the frame's blobs and specks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..data.world import BACKGROUNDS, PALETTE, SHAPES, SIZES, WorldSpec, shape_coverage

NUM_COLOURS = len(PALETTE)
BACKGROUND = NUM_COLOURS  # pixel class: background
UNASSIGNED = NUM_COLOURS + 1  # pixel class: no palette colour (an unknown colour, or a blend of two objects)

# Thresholds. Colours are in [0, 1]; object colours are >= 0.6 apart, backgrounds >= 0.75 from any.
BACKGROUND_RADIUS = 0.15  # pixels this close to a background prototype estimate the frame's background
MIX_RADIUS = 0.35  # farther than this from every background-to-colour mix: the pixel is nobody's
CORE_COVERAGE = 0.8  # a pixel this covered by one colour is that object's core
TOUCHED_COVERAGE = 0.25  # a pixel this covered is not background, for connectivity (its class may be)
MIN_AREA = 12  # core pixels of one colour in a component to be a candidate (a small object has 79)
TOUCH_AREA = 4  # core pixels of another colour in the same component: occluded / touching
LOOK_IOU = 0.5  # a candidate this close (IoU) to an ideal shape of the world looks like an object
ANCHOR_IOU = 0.6  # ... and one this close may have a cut object under it (the cut one need not fit)
WHOLE_IOU = 0.9  # a touching object whose mask matches a clean shape this well, no other colour inside, is on top
MAX_AREA_RATIO = 1.25  # a cut remainder is at most this times the world's largest object area
SPECK_AREA = 40  # non-background blobs smaller than this (half a small object) holding no object are specks


# ---------------------------------------------------------------- pixels


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


def classify_pixels(frames: torch.Tensor, bg: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Frames [T, H, W, 3] in [0, 1] -> class [T, H, W], core [T, H, W] bool and touched [T, H, W] bool.

    Class: the palette index where the pixel is a mix of background and that colour covering at
    least half of it (where a renderer's edge lies), ``BACKGROUND``, or ``UNASSIGNED`` (a colour no
    object has, or a blend of two objects). Core: covered >= CORE_COVERAGE, the pixels that count
    towards an object's existence. Blends of two objects can pass for a half-covered edge of a third
    colour (blue + yellow = a grey like white's edge), never for its core. Touched: anything but
    plain background (covered >= TOUCHED_COVERAGE): what components are made of, so that two
    objects meeting at a seam of grey blends, which read as a faint white edge, stay one component.
    """
    alpha, resid = coverage_by_colour(frames, bg)
    best, colour = resid.min(-1)
    a = alpha.gather(-1, colour[..., None])[..., 0]
    far = best > MIX_RADIUS
    cls = torch.where(far, UNASSIGNED, torch.where(a >= 0.5, colour, BACKGROUND))
    return cls, ~far & (a >= CORE_COVERAGE), far | (a >= TOUCHED_COVERAGE)


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


# ---------------------------------------------------------------- candidates


@dataclass
class Candidates:
    """One row per candidate (the pixels of one colour in one component holding >= MIN_AREA of its core)."""

    frame: torch.Tensor  # [D] frame index
    colour: torch.Tensor  # [D] palette index
    component: torch.Tensor  # [D] index into the frame-unique component list (see find_candidates)
    core: torch.Tensor  # [D] core pixels of its colour
    others: torch.Tensor  # [D] core pixels of other colours in the same component

    def __len__(self) -> int:
        return len(self.frame)


def _component_ids(labels: torch.Tensor) -> torch.Tensor:
    """[T, H, W] a component id unique over the whole video (label 0, background, stays 0)."""
    t, h, w = labels.shape
    frame = torch.arange(t).view(t, 1, 1)
    return torch.where(labels > 0, frame * (h * w + 1) + labels, 0)


def find_candidates(cls: torch.Tensor, core: torch.Tensor, labels: torch.Tensor) -> tuple[Candidates, torch.Tensor]:
    """The candidates of a video, and the owner map [T, H, W]: each pixel's candidate index, or -1.

    Every pixel of colour c in a component belongs to that component's candidate of colour c (edge
    pixels too, not only the core), if it has one.
    """
    _, h, w = cls.shape
    comp = _component_ids(labels)
    coloured = cls < NUM_COLOURS
    pixel_key = comp * NUM_COLOURS + cls.clamp(max=NUM_COLOURS - 1)  # (component, colour) per coloured pixel
    keys, n_core = torch.unique(pixel_key[coloured & core], return_counts=True)
    comp_of_key, total = torch.unique(keys // NUM_COLOURS, return_inverse=True)
    core_in_comp = torch.zeros(len(comp_of_key), dtype=torch.long).index_add_(0, total, n_core)
    others = core_in_comp[total] - n_core
    keep = n_core >= MIN_AREA
    keys, n_core, others = keys[keep], n_core[keep], others[keep]
    component = keys // NUM_COLOURS
    cands = Candidates(component // (h * w + 1), keys % NUM_COLOURS, component, n_core, others)

    idx = torch.searchsorted(keys, pixel_key).clamp(max=max(len(keys) - 1, 0))
    hit = coloured & (keys[idx] == pixel_key) if len(keys) else torch.zeros_like(coloured)
    owner = torch.where(hit, idx, -1)
    return cands, owner


@dataclass
class Measurements:
    """Per candidate ([D] unless noted)."""

    area: torch.Tensor  # pixels of its colour in its component
    centroid: torch.Tensor  # [D, 2] (x, y), pixel centres at i + 0.5, sub-pixel (see measure_candidates)
    bbox: torch.Tensor  # [D, 4] xmin, xmax, ymin, ymax (pixel indices)
    iou: torch.Tensor  # [D, S, Z] IoU with each ideal shape x size drawn at its centroid
    intruders: torch.Tensor  # [D] other objects' pixels inside its best-fitting ideal shape


def measure_candidates(
    frames: torch.Tensor, bg: torch.Tensor, cls: torch.Tensor, owner: torch.Tensor, cands: Candidates, spec: WorldSpec
) -> Measurements:
    """Area, hard-mask bounding box and sub-pixel centroid, IoUs and intruders of every candidate.

    A hard mask's centroid moves in half-pixel jumps; weighting each pixel within a pixel of the
    mask by its estimated coverage (the projection of its colour onto object-minus-background
    colour, which undoes anti-aliasing) gives a centroid accurate to ~0.05 px on real clips, so
    motion smoothness measures motion, not rasterisation. The IoU compares the mask with the
    ideal shape drawn at that centroid (pixels covered >= half, where segmentation puts the edge).
    """
    d = len(cands)
    _, h, w = owner.shape
    mine = owner >= 0
    who = owner[mine]
    ys, xs = torch.nonzero(mine, as_tuple=True)[1:]
    area = torch.bincount(who, minlength=d).float()
    hard = (
        torch.stack([torch.bincount(who, xs + 0.5, d), torch.bincount(who, ys + 0.5, d)], -1)
        / area.clamp(min=1)[:, None]
    )
    bbox = torch.stack(
        [
            torch.zeros(d).scatter_reduce(0, who, v.float(), op, include_self=False)
            for v in (xs, ys)
            for op in ("amin", "amax")
        ],
        -1,
    )
    if d == 0:
        return Measurements(area, hard, bbox, torch.zeros(0, len(SHAPES), len(SIZES)), torch.zeros(0, dtype=torch.long))

    # a square crop around each candidate, K = 2 * half pixels wide
    half = math.ceil(1.6 * max(spec.radius) + 2)  # the farthest reach of a shape (triangle apex) + margin
    anchor = hard.floor().long()  # [D, 2]
    off = torch.arange(-half, half)
    cy = (anchor[:, 1, None] + off + half).clamp(0, h + 2 * half - 1)[:, :, None]
    cx = (anchor[:, 0, None] + off + half).clamp(0, w + 2 * half - 1)[:, None, :]
    f = cands.frame[:, None, None]
    mask = F.pad(owner, (half,) * 4, value=-1)[f, cy, cx] == torch.arange(d)[:, None, None]  # [D, K, K]
    crop_cls = F.pad(cls, (half,) * 4, value=BACKGROUND)[f, cy, cx]
    pixels = F.pad(frames.permute(0, 3, 1, 2), (half,) * 4).permute(0, 2, 3, 1)[f, cy, cx]  # [D, K, K, 3]

    # sub-pixel centroid: coverage-weighted, over the mask and the ring of pixels around it. A ring
    # pixel is the object's colour over the background, or over another object (the one on top's
    # anti-aliased edge): its coverage is the projection onto the best-fitting of those mixes.
    colour = torch.tensor(list(PALETTE.values()))[cands.colour][:, None, None, None]  # [D, 1, 1, 1, 3]
    unders = torch.cat([bg[cands.frame][:, None], torch.tensor(list(PALETTE.values())).expand(d, -1, -1)], 1)
    unders = unders[:, None, None]  # [D, 1, 1, 1 + C, 3]: the background, then every palette colour
    axis = colour - unders
    rel = pixels[..., None, :] - unders  # [D, K, K, 1 + C, 3]
    alpha = ((rel * axis).sum(-1) / (axis * axis).sum(-1).clamp(min=1e-6)).clamp(0, 1)
    resid = (rel - alpha[..., None] * axis).norm(dim=-1)
    resid[..., 1:][(torch.arange(NUM_COLOURS) == cands.colour[:, None])[:, None, None].expand_as(resid[..., 1:])] = (
        math.inf
    )
    best_resid, best_under = resid.min(-1)
    alpha = alpha.gather(-1, best_under[..., None])[..., 0]
    on_mix = best_resid <= MIX_RADIUS
    ring = F.max_pool2d(mask[:, None].float(), 3, 1, 1)[:, 0] > 0
    alpha = torch.where(ring & on_mix, alpha, 0)
    grid = (anchor[:, :, None] + off + 0.5).float()  # [D, 2, K] pixel-centre coordinates
    mass = alpha.sum((1, 2)).clamp(min=1e-6)
    soft = torch.stack([(alpha.sum(1) * grid[:, 0]).sum(-1), (alpha.sum(2) * grid[:, 1]).sum(-1)], -1) / mass[:, None]

    # ideal shapes at the centroid: IoU (union over the whole mask, which may exceed the crop) and intruders
    dx = (grid[:, 0] - soft[:, 0, None]).view(-1, 1, 1, 1, 2 * half)
    dy = (grid[:, 1] - soft[:, 1, None]).view(-1, 1, 1, 2 * half, 1)
    sid = torch.arange(len(SHAPES)).view(1, -1, 1, 1, 1)
    rad = torch.tensor(spec.radius).view(1, 1, -1, 1, 1)
    cover = shape_coverage(sid, rad, dx, dy)  # [D, S, Z, K, K]
    ideal = cover >= 0.5
    inter = (ideal & mask[:, None, None]).sum((-1, -2)).float()
    iou = inter / (area[:, None, None] + ideal.sum((-1, -2)) - inter)
    foreign = ((crop_cls < NUM_COLOURS) & (crop_cls != cands.colour[:, None, None]))[:, None, None]
    intruding = ((cover >= 1) & foreign).sum((-1, -2))  # [D, S, Z]
    best = iou.flatten(1).argmax(1)
    intruders = intruding.flatten(1).gather(1, best[:, None])[:, 0]
    return Measurements(area, soft, bbox, iou, intruders)


def ideal_areas(spec: WorldSpec) -> torch.Tensor:
    """[Z] the area of an object of each size (every shape of a size has the same area)."""
    return math.pi * torch.tensor(spec.radius) ** 2


def looks_like_object(cands: Candidates, m: Measurements, spec: WorldSpec) -> torch.Tensor:
    """[D] bool: the candidate fits a shape of the world at one of its sizes, or it is the cut
    remainder of an object under one that does (same component, no larger than the largest object)."""
    fit = m.iou.amax((-1, -2)) if len(cands) else torch.zeros(0)
    fits = fit >= LOOK_IOU
    # components holding an anchor: a candidate fitting well enough to be on top of a cut one
    anchors = cands.component[fit >= ANCHOR_IOU]
    anchored = torch.isin(cands.component, anchors) & (fit < ANCHOR_IOU)  # anchored by another candidate
    cut = anchored & (cands.others >= TOUCH_AREA) & (m.area <= MAX_AREA_RATIO * ideal_areas(spec).max())
    return fits | cut


# ---------------------------------------------------------------- per frame and colour


@dataclass
class Detections:
    """Per frame and palette colour ([T, C] unless noted): the primary object of that colour."""

    cls: torch.Tensor  # [T, H, W] pixel classes (see classify_pixels)
    specks: torch.Tensor  # [T, H, W] bool: pixels of small non-background blobs holding no object
    blobs: torch.Tensor  # [T] non-background blobs that are no object (noise clumps, floods, oversized masses)
    count: torch.Tensor  # objects of the colour (2+ = duplicated)
    present: torch.Tensor  # bool: an object of the colour is there
    occluded: torch.Tensor  # bool: its component holds other colours too (overlapping or touching)
    whole: torch.Tensor  # bool: present and fully visible (alone, or on top: a clean shape, no other colour inside)
    area: torch.Tensor  # pixels of its mask (0 where absent)
    component: torch.Tensor  # the connected component it is in, unique over the video (-1 where absent)
    centroid: torch.Tensor  # [T, C, 2] (x, y), pixel centres at i + 0.5, sub-pixel
    bbox: torch.Tensor  # [T, C, 4] xmin, xmax, ymin, ymax (pixel indices)
    iou: torch.Tensor  # [T, C, S, Z] IoU with each ideal shape x size (0 where absent)

    @property
    def shape(self) -> torch.Tensor:
        """Best-matching shape index [T, C] (by IoU over both sizes); -1 where not whole."""
        return torch.where(self.whole, self.iou.amax(-1).argmax(-1), -1)

    @property
    def size(self) -> torch.Tensor:
        return torch.where(self.whole, self.iou.amax(-2).argmax(-1), -1)


def _first_max_per_group(group: torch.Tensor, value: torch.Tensor, num_groups: int) -> torch.Tensor:
    """[num_groups] the index of the row with the largest ``value`` in each group (the last on ties), or -1."""
    rows = torch.arange(len(group))
    best = torch.full((num_groups,), -1, dtype=value.dtype).scatter_reduce(0, group, value, "amax")
    return torch.full((num_groups,), -1).scatter_reduce(0, group, torch.where(value == best[group], rows, -1), "amax")


def detect(frames: torch.Tensor, spec: WorldSpec) -> Detections:
    """Find each palette colour's object in every frame of ``frames`` [T, H, W, 3] in [0, 1]."""
    t, h, w, _ = frames.shape
    nc = NUM_COLOURS
    bg = estimate_background(frames)
    cls, core, touched = classify_pixels(frames, bg)
    labels = label_components(touched)
    cands, owner = find_candidates(cls, core, labels)
    m = measure_candidates(frames, bg, cls, owner, cands, spec)
    is_object = looks_like_object(cands, m, spec)

    # the primary object of each (frame, colour): its object candidate with most core pixels
    slot = cands.frame * nc + cands.colour
    objects = torch.nonzero(is_object)[:, 0]
    primary = _first_max_per_group(slot[objects], cands.core[objects], t * nc)
    present = primary >= 0
    pick = objects[primary.clamp(min=0)] if len(objects) else torch.zeros_like(primary)
    count = torch.bincount(slot[objects], minlength=t * nc).view(t, nc)

    def per_slot(values: torch.Tensor, fill: float = 0.0) -> torch.Tensor:
        out = torch.full((t * nc, *values.shape[1:]), fill, dtype=values.dtype)
        out[present] = values[pick[present]]
        return out.view(t, nc, *values.shape[1:])

    occluded = per_slot(cands.others >= TOUCH_AREA)
    on_top = (m.iou.flatten(1).amax(1) >= WHOLE_IOU) & (m.intruders == 0) if len(cands) else is_object
    whole = per_slot(is_object & ((cands.others < TOUCH_AREA) | on_top))

    # components with no object: specks when small, blobs when not; plus non-object candidates
    # (oversized masses) in components that do hold an object
    comp = _component_ids(labels)
    comp_ids, comp_of_pixel, comp_area = torch.unique(comp[comp > 0], return_inverse=True, return_counts=True)
    has_object = torch.isin(comp_ids, cands.component[is_object])
    comp_frame = comp_ids // (h * w + 1)
    blobs = torch.bincount(comp_frame[~has_object & (comp_area >= SPECK_AREA)], minlength=t)
    stray = ~is_object & torch.isin(cands.component, cands.component[is_object])
    blobs = blobs + torch.bincount(cands.frame[stray], minlength=t)
    specks = torch.zeros(t, h, w, dtype=torch.bool)
    specks[comp > 0] = (~has_object & (comp_area < SPECK_AREA))[comp_of_pixel]

    return Detections(
        cls=cls,
        specks=specks,
        blobs=blobs,
        count=count,
        present=present.view(t, nc),
        occluded=occluded,
        whole=whole,
        area=per_slot(m.area),
        component=per_slot(cands.component, -1),
        centroid=per_slot(m.centroid),
        bbox=per_slot(m.bbox),
        iou=per_slot(m.iou),
    )
