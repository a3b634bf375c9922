"""Degenerate clips: what every score of the evaluator is checked against.

Each variant takes a real clip of the world and breaks it totally in one way, keeping the real
clip's prompt. A valid evaluator scores all of them far below real clips (tests/test_evaluation.py
requires Overall <= 0.5 for each, >= 0.98 for real clips). The table in docs/evaluate.md is::

    python -m videomla.evaluation.degenerate --clips 8 --seconds 30
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from ..data.world import (
    PALETTE,
    SHAPES,
    ClipParams,
    WorldObject,
    background_image,
    caption,
    clip_params_at,
    render,
    shape_coverage,
    trajectories,
)
from ..tables import render_table


def gaussian_blur(video: torch.Tensor, sigma: float) -> torch.Tensor:
    """A separable Gaussian blur of every frame of ``video`` [3, T, H, W] (edges replicated)."""
    r = math.ceil(3 * sigma)
    g = torch.exp(-(torch.arange(-r, r + 1.0) ** 2) / (2 * sigma**2))
    g = (g / g.sum()).repeat(3, 1)
    x = video.permute(1, 0, 2, 3)
    x = F.conv2d(F.pad(x, (r, r, 0, 0), mode="replicate"), g.view(3, 1, 1, -1), groups=3)
    x = F.conv2d(F.pad(x, (0, 0, r, r), mode="replicate"), g.view(3, 1, -1, 1), groups=3)
    return x.permute(1, 0, 2, 3)


def recoloured(p: ClipParams) -> ClipParams:
    """The same clip with every object in a palette colour the clip does not use."""
    unused = [c for c in PALETTE if c not in {o.colour for o in p.objects}]
    objects = tuple(
        WorldObject(o.shape, c, o.size, o.position, o.velocity) for o, c in zip(p.objects, unused, strict=False)
    )
    return ClipParams(objects, p.background, p.texture_seed, p.spec)


def background_only(p: ClipParams, num_frames: int) -> torch.Tensor:
    return render(ClipParams((), p.background, p.texture_seed, p.spec), num_frames)


def oversized_blobs(p: ClipParams, num_frames: int, scale: float = 2.0) -> torch.Tensor:
    """The clip's objects, in their colours and shapes and on their paths, each drawn ``scale`` x as
    wide as the world's large objects (4x their area at 2): blobs of the right colours that no
    object of the world is."""
    bg = background_image(p).permute(1, 2, 0)  # [H, W, 3] in [0, 1]
    size = p.spec.size
    frame = bg.expand(num_frames, size, size, 3).clone()
    centres = trajectories([p], num_frames)[0]  # [T, N, 2]
    grid = torch.arange(size) + 0.5
    for i, o in enumerate(p.objects):
        dx = grid.view(1, 1, -1) - centres[:, i, 0].view(-1, 1, 1)
        dy = grid.view(1, -1, 1) - centres[:, i, 1].view(-1, 1, 1)
        cover = shape_coverage(torch.tensor(SHAPES.index(o.shape)), torch.tensor(scale * max(p.spec.radius)), dx, dy)
        frame = frame + cover[..., None] * (torch.tensor(PALETTE[o.colour]) - frame)
    return frame.permute(3, 0, 1, 2) * 2 - 1


def flood(p: ClipParams, num_frames: int) -> torch.Tensor:
    """Every frame filled by the first requested object's colour."""
    colour = torch.tensor(PALETTE[p.objects[0].colour]) * 2 - 1
    return colour.view(3, 1, 1, 1).expand(3, num_frames, p.spec.size, p.spec.size).clone()


def variants(p: ClipParams, num_frames: int, generator: torch.Generator) -> dict[str, Callable[[], torch.Tensor]]:
    """name -> a function making the variant [3, T, H, W] (lazily: each costs a render)."""
    real = render(p, num_frames)
    half = num_frames // 2

    def vanish() -> torch.Tensor:
        out = real.clone()
        out[:, half:] = background_only(p, num_frames)[:, half:]
        return out

    def noise(std: float) -> Callable[[], torch.Tensor]:
        return lambda: (std * torch.randn(real.shape, generator=generator)).clamp(-1, 1)

    return {
        "real": lambda: real,
        "Gaussian noise N(0, 0.5)": noise(0.5),
        "Gaussian noise N(0, 1)": noise(1.0),
        "uniform noise U(-1, 1)": lambda: torch.rand(real.shape, generator=generator) * 2 - 1,
        "single frozen real frame": lambda: real[:, :1].expand_as(real).clone(),
        "wrong colours, prompt unchanged": lambda: render(recoloured(p), num_frames),
        "objects vanish at T/2": vanish,
        "background only": lambda: background_only(p, num_frames),
        "flood: one palette colour": lambda: flood(p, num_frames),
        "flood: blobs 4x a large object": lambda: oversized_blobs(p, num_frames),
        "blur sigma 1.5 px": lambda: gaussian_blur(real, 1.5),
        "blur sigma 3 px": lambda: gaussian_blur(real, 3.0),
        # not required to fail outright (one metric dents), listed for reference
        "real + noise std 0.1": lambda: (real + 0.1 * torch.randn(real.shape, generator=generator)).clamp(-1, 1),
        "blur sigma 1 px": lambda: gaussian_blur(real, 1.0),
    }


# variants every valid score must fail (Overall <= 0.5); the others are for reference
DEGENERATE = (
    "Gaussian noise N(0, 0.5)",
    "Gaussian noise N(0, 1)",
    "uniform noise U(-1, 1)",
    "single frozen real frame",
    "wrong colours, prompt unchanged",
    "objects vanish at T/2",
    "background only",
    "flood: one palette colour",
    "flood: blobs 4x a large object",
    "blur sigma 1.5 px",
    "blur sigma 3 px",
)


def table(clips: int, seconds: float, seed: int = 12345, evaluate: Callable | None = None) -> list[dict]:
    """Scores of every variant of the clips ``clip_params_at(seed, 0..clips-1)``, one row per variant."""
    from . import METRICS
    from . import evaluate as default_evaluate

    score = evaluate or default_evaluate
    rows: dict[str, list[dict]] = {}
    for i in range(clips):
        p = clip_params_at(seed, i)
        n = round(seconds * p.spec.fps)
        for name, make in variants(p, n, torch.Generator().manual_seed(seed + i)).items():
            rows.setdefault(name, []).append(score(make(), caption(p)).overall)
    out = []
    for name, results in rows.items():
        keys = [k for k in (*METRICS, "overall", "mean", "pass_rate") if k in results[0]]
        row = {"variant": name, **{k: sum(r[k] for r in results) / len(results) for k in keys}}
        row["min"], row["max"] = min(r["overall"] for r in results), max(r["overall"] for r in results)
        out.append(row)
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clips", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--seed", type=int, default=12345)
    args = ap.parse_args(argv)
    rows = table(args.clips, args.seconds, args.seed)
    keys = [k for k in rows[0] if k != "variant"]
    cells = ([row["variant"], *(f"{row[k]:.3f}" for k in keys)] for row in rows)
    print(render_table(["variant", *keys], cells, markdown=True))


if __name__ == "__main__":
    main()
