"""The procedural world: coloured shapes bouncing on a dark background, rendered from a seed.

No pretrained video model can be downloaded here, so the project trains small text-to-video
models on this world and scores them with an evaluator that knows how it is made
(:mod:`videomla.evaluation`). Everything is analytic: an object's position at frame ``t`` is a
closed-form reflection of ``p0 + v t`` between the walls, and each shape is drawn from its signed
distance function with one-pixel anti-aliasing, so a minute of video costs one vectorised pass.

Conventions: frames are 64x64 RGB in [-1, 1] as a tensor ``[3, T, H, W]``; positions are pixel
coordinates ``(x, y)`` with y pointing down and pixel centres at ``i + 0.5``; an object's position
is the centroid of its area; velocities are in pixels per second. Object colours are saturated,
backgrounds are dark and nearly grey, and the two sets are far apart in RGB so segmentation by
nearest colour is unambiguous. Colours are distinct within a clip, so colour is an object's identity.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

# Saturated object colours, RGB in [0, 1]; every pair is at least 0.6 apart (Euclidean).
PALETTE: dict[str, tuple[float, float, float]] = {
    "red": (0.95, 0.15, 0.15),
    "green": (0.10, 0.85, 0.10),
    "blue": (0.15, 0.25, 1.00),
    "yellow": (0.95, 0.90, 0.15),
    "magenta": (0.90, 0.15, 0.90),
    "cyan": (0.10, 0.85, 1.00),
    "white": (0.95, 0.95, 0.95),
}
# Dark, nearly grey backgrounds (base colour; a texture adds at most TEXTURE_AMPLITUDE of brightness).
BACKGROUNDS: dict[str, tuple[float, float, float]] = {
    "black": (0.05, 0.05, 0.06),
    "slate": (0.07, 0.09, 0.13),
    "umber": (0.12, 0.10, 0.08),
}
TEXTURE_AMPLITUDE = 0.04
TEXTURE_GRID = 6  # the static texture is a bilinear upsampling of a 6x6 grid of random offsets
SHAPES = ("circle", "square", "triangle")
SIZES = ("small", "large")
# Per shape: scale from the size's radius to the SDF's own parameter, chosen so every shape of a
# size has the area of a circle of that radius (the size word means the same amount of colour).
_SQUARE_HALF = math.sqrt(math.pi) / 2  # half side of the square with area pi r^2
_TRI_HALF = math.sqrt(math.pi / math.sqrt(3))  # half side of the equilateral triangle with area pi r^2


@dataclass(frozen=True)
class WorldSpec:
    """What the world may contain; the evaluator takes the same spec to know what to expect."""

    size: int = 64
    fps: float = 8.0
    min_objects: int = 1
    max_objects: int = 3
    radius: tuple[float, float] = (5.0, 9.0)  # small, large: radius of the equal-area circle, in pixels
    speed: tuple[float, float] = (8.0, 20.0)  # pixels per second
    texture_prob: float = 0.5
    colours: tuple[str, ...] = tuple(PALETTE)
    backgrounds: tuple[str, ...] = tuple(BACKGROUNDS)

    def __post_init__(self) -> None:
        unknown = [c for c in self.colours if c not in PALETTE] + [b for b in self.backgrounds if b not in BACKGROUNDS]
        if unknown:
            raise ValueError(f"unknown colours/backgrounds {unknown}; palette {list(PALETTE)}, {list(BACKGROUNDS)}")
        if not 1 <= self.min_objects <= self.max_objects <= len(self.colours):
            raise ValueError(
                f"need 1 <= min_objects <= max_objects <= {len(self.colours)} colours, "
                f"got {self.min_objects}..{self.max_objects}"
            )
        if self.size < 4 * max(self.radius):
            raise ValueError(f"frame size {self.size} is too small for objects of radius {max(self.radius)}")

    def radius_of(self, size: str) -> float:
        return self.radius[SIZES.index(size)]


@dataclass(frozen=True)
class WorldObject:
    shape: str
    colour: str
    size: str
    position: tuple[float, float]  # centroid (x, y) at t = 0, pixels
    velocity: tuple[float, float]  # pixels per second

    def __post_init__(self) -> None:
        if self.shape not in SHAPES or self.colour not in PALETTE or self.size not in SIZES:
            raise ValueError(
                f"bad object {self.size} {self.colour} {self.shape}: use {SIZES} x {list(PALETTE)} x {SHAPES}"
            )


@dataclass(frozen=True)
class ClipParams:
    """Everything a clip is made of; :func:`render` is a pure function of it."""

    objects: tuple[WorldObject, ...]
    background: str = "black"
    texture_seed: int | None = None  # None: plain background
    spec: WorldSpec = field(default_factory=WorldSpec)

    def __post_init__(self) -> None:
        colours = [o.colour for o in self.objects]
        if len(set(colours)) != len(colours):
            raise ValueError(f"object colours must be distinct within a clip (they are identities), got {colours}")
        if self.background not in BACKGROUNDS:
            raise ValueError(f"unknown background {self.background!r}; choose from {list(BACKGROUNDS)}")


def shape_extent(shape: str, radius: float) -> tuple[float, float, float, float]:
    """Offsets of the shape's bounding box from its centroid: (left, right, top, bottom), top < 0."""
    if shape == "circle":
        return -radius, radius, -radius, radius
    if shape == "square":
        h = _SQUARE_HALF * radius
        return -h, h, -h, h
    half = _TRI_HALF * radius  # apex up: the centroid is 2/3 of the height below the apex
    height = math.sqrt(3) * half
    return -half, half, -2 * height / 3, height / 3


def sample_clip_params(rng: np.random.Generator | int, spec: WorldSpec | None = None) -> ClipParams:
    """A random clip of the world; the same seed (or generator state) always gives the same clip."""
    spec = spec or WorldSpec()
    rng = np.random.default_rng(rng)
    n = int(rng.integers(spec.min_objects, spec.max_objects + 1))
    colours = rng.choice(len(spec.colours), size=n, replace=False)
    objects = []
    for c in colours:
        shape, size = SHAPES[rng.integers(len(SHAPES))], SIZES[rng.integers(len(SIZES))]
        left, right, top, bottom = shape_extent(shape, spec.radius_of(size))
        x = rng.uniform(-left, spec.size - right)
        y = rng.uniform(-top, spec.size - bottom)
        speed = rng.uniform(*spec.speed)
        # Keep both components at least a third of the speed: no object slides along a wall, and a
        # bounce on one axis never stops it (dynamic degree is 1 for every real clip).
        angle = rng.uniform(math.asin(1 / 3), math.pi / 2 - math.asin(1 / 3)) + math.pi / 2 * rng.integers(4)
        objects.append(
            WorldObject(shape, spec.colours[c], size, (x, y), (speed * math.cos(angle), speed * math.sin(angle)))
        )
    background = spec.backgrounds[rng.integers(len(spec.backgrounds))]
    texture_seed = int(rng.integers(2**31)) if rng.random() < spec.texture_prob else None
    return ClipParams(tuple(objects), background, texture_seed, spec)


# ---------------------------------------------------------------- captions


def caption(params: ClipParams) -> str:
    """'a large red circle, a small blue square and a small green triangle bouncing' (<= 14 words)."""
    phrases = [f"a {o.size} {o.colour} {o.shape}" for o in params.objects]
    listed = phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]
    return f"{listed} bouncing"


@dataclass(frozen=True)
class ObjectQuery:
    """One object a prompt asks for; ``size`` None means the prompt did not say."""

    colour: str
    shape: str
    size: str | None = None


_FILLER = {"a", "an", "and", "bouncing", "one"}


def parse_caption(text: str) -> list[ObjectQuery]:
    """The objects a prompt of the world's grammar asks for: ``[a] [small|large] COLOUR SHAPE``, joined by
    ``and``/commas, optionally ending in ``bouncing``. Anything else is a ValueError naming the word."""
    words = re.findall(r"[a-z0-9]+", text.lower())
    queries: list[ObjectQuery] = []
    size: str | None = None
    colour: str | None = None
    for word in words:
        word = word[:-1] if word.endswith("s") and word[:-1] in SHAPES else word  # "circles"
        if word in _FILLER:
            if size or colour:
                raise ValueError(f"incomplete object before {word!r} in prompt {text!r}")
        elif word in SIZES and size is None and colour is None:
            size = word
        elif word in PALETTE and colour is None:
            colour = word
        elif word in SHAPES and colour is not None:
            queries.append(ObjectQuery(colour, word, size))
            size = colour = None
        else:
            raise ValueError(
                f"unexpected word {word!r} in prompt {text!r}: the world's grammar is "
                f"'[a] [small|large] COLOUR SHAPE and ... bouncing' with colours {list(PALETTE)}, shapes {list(SHAPES)}"
            )
    if size or colour:
        raise ValueError(f"prompt {text!r} ends in an incomplete object (a shape word is missing)")
    if not queries:
        raise ValueError(f"prompt {text!r} names no object")
    return queries


# ---------------------------------------------------------------- rendering


def trajectories(params: Sequence[ClipParams], num_frames: int, fps: float | None = None) -> torch.Tensor:
    """Centroids [B, T, N, 2] (x, y) of every object slot at every frame; padded slots are NaN.

    Closed form: the unbounded path ``p0 + v t`` folded into [lo, hi] (a triangle wave) is exactly
    the path bouncing elastically off the walls, so frame 10,000 costs what frame 1 does.
    """
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    n = max(len(p.objects) for p in params)
    p0 = torch.full((len(params), n, 2), float("nan"), dtype=torch.float64)
    vel, lo, hi = torch.zeros_like(p0), torch.zeros_like(p0), torch.ones_like(p0)
    for b, clip in enumerate(params):
        rate = fps or clip.spec.fps
        for i, o in enumerate(clip.objects):
            left, right, top, bottom = shape_extent(o.shape, clip.spec.radius_of(o.size))
            p0[b, i] = torch.tensor(o.position, dtype=torch.float64)
            vel[b, i] = torch.tensor(o.velocity, dtype=torch.float64) / rate
            lo[b, i] = torch.tensor((-left, -top), dtype=torch.float64)
            hi[b, i] = torch.tensor((clip.spec.size - right, clip.spec.size - bottom), dtype=torch.float64)
    t = torch.arange(num_frames, dtype=torch.float64)[None, :, None, None]
    span = (hi - lo)[:, None]
    u = torch.remainder(p0[:, None] - lo[:, None] + vel[:, None] * t, 2 * span)
    return (lo[:, None] + torch.where(u <= span, u, 2 * span - u)).float()


def _sdf(shape_id: torch.Tensor, radius: torch.Tensor, dx: torch.Tensor, dy: torch.Tensor) -> torch.Tensor:
    """Signed distance (pixels, < 0 inside) of circle/square/triangle with the given equal-area radius,
    centred on its centroid; ``shape_id`` and ``radius`` broadcast against the offsets ``dx, dy``."""
    circle = torch.hypot(dx, dy) - radius
    h = _SQUARE_HALF * radius
    qx, qy = dx.abs() - h, dy.abs() - h
    square = torch.hypot(qx.clamp(min=0), qy.clamp(min=0)) + torch.maximum(qx, qy).clamp(max=0)
    # Inigo Quilez's equilateral triangle, apex up (image y points down, so flip y).
    r = _TRI_HALF * radius
    k = math.sqrt(3)
    px, py = dx.abs() - r, -dy + r / k
    fold = px + k * py > 0
    px, py = torch.where(fold, (px - k * py) / 2, px), torch.where(fold, (-k * px - py) / 2, py)
    px = px - torch.minimum(torch.maximum(px, -2 * r), torch.zeros_like(px))
    triangle = -torch.hypot(px, py) * torch.sign(py)
    return torch.where(shape_id == 0, circle, torch.where(shape_id == 1, square, triangle))


def shape_coverage(shape_id: torch.Tensor, radius: torch.Tensor, dx: torch.Tensor, dy: torch.Tensor) -> torch.Tensor:
    """Fraction of each pixel the shape covers (one-pixel linear ramp across the edge: cheap anti-aliasing)."""
    return (0.5 - _sdf(shape_id, radius, dx, dy)).clamp(0, 1)


def background_image(params: ClipParams) -> torch.Tensor:
    """The static background [3, H, W] in [0, 1]."""
    size = params.spec.size
    base = torch.tensor(BACKGROUNDS[params.background]).view(3, 1, 1).expand(3, size, size)
    if params.texture_seed is None:
        return base.clone()
    g = torch.Generator().manual_seed(params.texture_seed)
    grid = (torch.rand(1, 1, TEXTURE_GRID, TEXTURE_GRID, generator=g) * 2 - 1) * TEXTURE_AMPLITUDE
    texture = F.interpolate(grid, size=(size, size), mode="bilinear", align_corners=True)[0]
    return base + texture  # same offset on all channels: brightness only, stays grey


def draw(params: Sequence[ClipParams], centres: torch.Tensor) -> torch.Tensor:
    """Frames [B, 3, T, H, W] in [-1, 1] with every object at the given centroids [B, T, N, 2].

    Larger objects are drawn first, so a small object over a large one stays visible; equal sizes
    keep caption order. Each object is rasterised only in a square crop around it (a few times
    cheaper than whole frames). Separate from :func:`trajectories` so tests can draw perturbed paths.
    """
    spec = params[0].spec
    if any(p.spec.size != spec.size or p.spec.radius != spec.radius for p in params):
        raise ValueError("all clips of a batch must share frame size and object radii")
    b, t, n, _ = centres.shape
    size = spec.size
    shape_id = torch.zeros(b, n, dtype=torch.long)
    radius = torch.zeros(b, n)
    colour = torch.zeros(b, n, 3)
    order = torch.zeros(b, n, dtype=torch.long)
    for i, clip in enumerate(params):
        radii = [clip.spec.radius_of(o.size) for o in clip.objects]
        # padded slots come last (and cover nothing: see ``active``)
        order[i] = torch.tensor(sorted(range(len(radii)), key=lambda j: -radii[j]) + list(range(len(radii), n)))
        for j, o in enumerate(clip.objects):
            shape_id[i, j], radius[i, j] = SHAPES.index(o.shape), radii[j]
            colour[i, j] = torch.tensor(PALETTE[o.colour])
    # crop side: the farthest any shape reaches from its centroid (triangle apex), + AA ramp + rounding
    half = math.ceil(max(-shape_extent("triangle", max(spec.radius))[2], max(spec.radius)) + 2)
    pad = half + 1
    canvas = torch.stack([background_image(p) for p in params]).permute(0, 2, 3, 1)  # [B, H, W, 3]
    side = size + 2 * pad
    canvas = (
        F.pad(canvas, (0, 0, pad, pad, pad, pad))[:, None]
        .expand(b, t, side, side, 3)
        .contiguous()
        .view(b * t, side, side, 3)
    )
    offsets = torch.arange(-half, half, dtype=torch.float32)
    rows = torch.arange(b * t).view(-1, 1, 1)
    for slot in range(n):
        pick = order[:, slot]
        c = centres[torch.arange(b), :, pick].reshape(b * t, 2)  # [BT, 2]
        active = ~c.isnan().any(-1)
        c = c.nan_to_num(size / 2)
        anchor = c.floor()  # crop pixel k covers pixel index anchor + offsets[k]
        px = anchor[:, None] + offsets[:, None]  # [BT, K, 2] pixel indices
        idx = (px.long() + pad).clamp(0, side - 1)
        dx = (px[..., 0] + 0.5 - c[:, None, 0]).view(-1, 1, 2 * half)
        dy = (px[..., 1] + 0.5 - c[:, None, 1]).view(-1, 2 * half, 1)
        sid = shape_id[torch.arange(b), pick].repeat_interleave(t).view(-1, 1, 1)
        rad = radius[torch.arange(b), pick].repeat_interleave(t).view(-1, 1, 1)
        cover = shape_coverage(sid, rad, dx, dy) * active.view(-1, 1, 1)
        ys, xs = idx[:, :, 1].view(-1, 2 * half, 1), idx[:, :, 0].view(-1, 1, 2 * half)
        col = colour[torch.arange(b), pick].repeat_interleave(t, 0).view(-1, 1, 1, 3)
        region = canvas[rows, ys, xs]
        canvas[rows, ys, xs] = region + cover[..., None] * (col - region)
    frames = canvas[:, pad : pad + size, pad : pad + size].reshape(b, t, size, size, 3).permute(0, 4, 1, 2, 3)
    return frames * 2 - 1


def render_batch(params: Sequence[ClipParams], num_frames: int, fps: float | None = None) -> torch.Tensor:
    """Clips [B, 3, T, H, W] in [-1, 1] (``fps`` defaults to each clip's spec)."""
    return draw(params, trajectories(params, num_frames, fps))


def render(params: ClipParams, num_frames: int, fps: float | None = None) -> torch.Tensor:
    """One clip [3, T, H, W] in [-1, 1]."""
    return render_batch([params], num_frames, fps)[0]


# ---------------------------------------------------------------- batched rendering on any device
#
# The same clips as :func:`render_batch`, rendered on any torch device (a GPU: the trainer's
# data path) from parameters packed into one float64 tensor on the host, so a batch costs one
# host-to-device copy and a few dozen kernels. Every value goes through the same float32 /
# float64 arithmetic as the CPU renderer: on the CPU the two are bitwise equal (tested); on a
# GPU they differ only by the device's rounding of hypot / interpolation (measured in
# ``benchmarks/training-throughput``). Whole frames are rasterised per object (no crops): a
# pixel outside an object's crop is more than 0.5 px from its edge, so its coverage is exactly 0
# and ``x + 0 * (c - x) == x`` leaves it untouched, as the crop leaves it.

_SLOT = 14  # per object slot: shape, radius, rgb, p0 (2), velocity / fps (2), lo (2), hi (2), active
_CLIP = 4 + TEXTURE_GRID * TEXTURE_GRID  # per clip: background rgb, textured flag, texture grid


def _texture_grid(seed: int) -> torch.Tensor:
    """The 6x6 brightness offsets of :func:`background_image` (float32, same draws)."""
    g = torch.Generator().manual_seed(seed)
    return ((torch.rand(1, 1, TEXTURE_GRID, TEXTURE_GRID, generator=g) * 2 - 1) * TEXTURE_AMPLITUDE).view(-1)


def pack_params(params: Sequence[ClipParams], fps: float | None = None) -> torch.Tensor:
    """Clips as one float64 tensor [B, _CLIP + N * _SLOT] for :func:`render_packed`.

    Object slots are stored in draw order (larger first, equal sizes in caption order; empty
    slots last). Values the CPU renderer holds in float32 (radius, colours, texture) are rounded
    to float32 here, so the device computes with exactly the same numbers.
    """
    spec = params[0].spec
    if any(p.spec.size != spec.size or p.spec.radius != spec.radius for p in params):
        raise ValueError("all clips of a batch must share frame size and object radii")
    n = max(len(p.objects) for p in params)
    out = np.zeros((len(params), _CLIP + n * _SLOT), dtype=np.float64)
    for b, clip in enumerate(params):
        rate = fps or clip.spec.fps
        row = out[b]
        row[:3] = np.float32(BACKGROUNDS[clip.background])
        if clip.texture_seed is not None:
            row[3] = 1.0
            row[4:_CLIP] = _texture_grid(clip.texture_seed).numpy()
        radii = [clip.spec.radius_of(o.size) for o in clip.objects]
        for slot, j in enumerate(sorted(range(len(radii)), key=lambda j: -radii[j])):
            o = clip.objects[j]
            left, right, top, bottom = shape_extent(o.shape, radii[j])
            k = _CLIP + slot * _SLOT
            row[k] = SHAPES.index(o.shape)
            row[k + 1] = np.float32(radii[j])
            row[k + 2 : k + 5] = np.float32(PALETTE[o.colour])
            row[k + 5 : k + 7] = o.position
            row[k + 7 : k + 9] = (o.velocity[0] / rate, o.velocity[1] / rate)
            row[k + 9 : k + 11] = (-left, -top)
            row[k + 11 : k + 13] = (clip.spec.size - right, clip.spec.size - bottom)
            row[k + 13] = 1.0
    return torch.from_numpy(out)


def render_packed(packed: torch.Tensor, num_frames: int, size: int) -> torch.Tensor:
    """Clips [B, 3, T, H, W] in [-1, 1] from :func:`pack_params`, on ``packed``'s device."""
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    device, b = packed.device, packed.shape[0]
    n = (packed.shape[1] - _CLIP) // _SLOT
    slots = packed[:, _CLIP:].view(b, n, _SLOT)
    # trajectories (float64, the closed-form bounce of :func:`trajectories`), then float32
    p0, vel, lo, hi = (slots[:, None, :, k : k + 2] for k in (5, 7, 9, 11))
    t = torch.arange(num_frames, dtype=torch.float64, device=device)[None, :, None, None]
    span = hi - lo
    u = torch.remainder(p0 - lo + vel * t, 2 * span)
    centres = (lo + torch.where(u <= span, u, 2 * span - u)).float()  # [B, T, N, 2]
    # background: base colour plus (textured clips) the bilinear upsampling of the grid
    base = packed[:, :3].float().view(b, 3, 1, 1).expand(b, 3, size, size)
    grid = packed[:, 4:_CLIP].float().view(b, 1, TEXTURE_GRID, TEXTURE_GRID)
    texture = F.interpolate(grid, size=(size, size), mode="bilinear", align_corners=True)
    textured = packed[:, 3].view(b, 1, 1, 1) > 0
    background = torch.where(textured, base + texture, base)  # [B, 3, H, W]
    canvas = background.permute(0, 2, 3, 1)[:, None].expand(b, num_frames, size, size, 3)
    coords = torch.arange(size, dtype=torch.float32, device=device) + 0.5
    for slot in range(n):
        s = slots[:, slot].float()
        c = centres[:, :, slot]  # [B, T, 2]
        active = s[:, 13].view(b, 1, 1, 1)
        c = c.nan_to_num(size / 2)
        dx = (coords.view(1, 1, 1, -1) - c[..., 0, None, None]).expand(b, num_frames, size, size)
        dy = (coords.view(1, 1, -1, 1) - c[..., 1, None, None]).expand(b, num_frames, size, size)
        sid = s[:, 0].long().view(b, 1, 1, 1)
        rad = s[:, 1].view(b, 1, 1, 1)
        cover = shape_coverage(sid, rad, dx, dy) * active
        colour = s[:, 2:5].view(b, 1, 1, 1, 3)
        canvas = canvas + cover[..., None] * (colour - canvas)
    return canvas.permute(0, 4, 1, 2, 3) * 2 - 1


def render_batch_on(
    params: Sequence[ClipParams], num_frames: int, device: torch.device | str, fps: float | None = None
) -> torch.Tensor:
    """:func:`render_batch` on ``device`` (one host-to-device copy of the packed parameters)."""
    packed = upload(pack_params(params, fps), torch.device(device))
    return render_packed(packed, num_frames, params[0].spec.size)


def upload(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host tensor onto ``device``; to a GPU through pinned memory, without a host sync."""
    return t.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else t.to(device)


# ---------------------------------------------------------------- datasets


def clip_params_at(seed: int, index: int, spec: WorldSpec | None = None) -> ClipParams:
    """Clip ``index`` of the stream seeded by ``seed``: every dataset view below agrees on it."""
    if index < 0:
        raise ValueError(f"clip index must be >= 0, got {index}")
    return sample_clip_params(np.random.default_rng([seed, index]), spec)


class WorldClips(torch.utils.data.Dataset):
    """``num_clips`` fixed clips: item i is ``(video [3, T, H, W], caption)``, the same on every call."""

    def __init__(self, num_clips: int, num_frames: int, seed: int = 0, spec: WorldSpec | None = None):
        self.num_clips, self.num_frames, self.seed, self.spec = num_clips, num_frames, seed, spec or WorldSpec()

    def __len__(self) -> int:
        return self.num_clips

    def params(self, index: int) -> ClipParams:
        if not 0 <= index < self.num_clips:
            raise IndexError(f"clip {index} out of range for {self.num_clips} clips")
        return clip_params_at(self.seed, index, self.spec)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, str]:
        p = self.params(index)
        return render(p, self.num_frames), caption(p)

    def __getitems__(self, indices: list[int]) -> list[tuple[torch.Tensor, str]]:
        """DataLoader's batched fetch: one vectorised render for the whole batch."""
        ps = [self.params(i) for i in indices]
        return list(zip(render_batch(ps, self.num_frames).unbind(0), map(caption, ps)))


class WorldBatches(torch.utils.data.IterableDataset):
    """An endless stream of training batches, rendered (and optionally encoded) a batch at a time.

    Batch k holds clips ``k*B .. k*B+B-1`` of the seed's stream (:func:`clip_params_at`). Each
    DataLoader worker renders every n-th batch, so the stream is the same for any worker count
    (use ``DataLoader(ds, batch_size=None, num_workers=n)``). Yields dicts with ``captions`` and
    either ``video`` [B, 3, T, H, W] or, given a codec, ``latents``; given a text encoder, ``text``.
    """

    def __init__(
        self,
        batch_size: int,
        num_frames: int,
        seed: int = 0,
        spec: WorldSpec | None = None,
        codec=None,
        text_encoder=None,
        num_batches: int | None = None,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size, self.num_frames, self.seed = batch_size, num_frames, seed
        self.spec, self.codec, self.text_encoder, self.num_batches = (
            spec or WorldSpec(),
            codec,
            text_encoder,
            num_batches,
        )

    def batch(self, k: int) -> dict:
        ps = [clip_params_at(self.seed, k * self.batch_size + i, self.spec) for i in range(self.batch_size)]
        captions = [caption(p) for p in ps]
        video = render_batch(ps, self.num_frames)
        out: dict = {"captions": captions}
        if self.codec is not None:
            out["latents"] = self.codec.encode(video)
        else:
            out["video"] = video
        if self.text_encoder is not None:
            out["text"] = self.text_encoder.encode(captions)
        return out

    def __iter__(self) -> Iterator[dict]:
        info = torch.utils.data.get_worker_info()
        k, step = (0, 1) if info is None else (info.id, info.num_workers)
        while self.num_batches is None or k < self.num_batches:
            yield self.batch(k)
            k += step
