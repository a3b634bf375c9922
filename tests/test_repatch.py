"""A model moved to a finer token grid keeps its ends' meaning and everything else unchanged."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from videomla.config import preset
from videomla.repatch import refine_patches

from conftest import tiny_model

CASES = [((1, 2, 2), (1, 1, 1)), ((1, 4, 4), (1, 2, 2)), ((2, 2, 2), (1, 1, 1)), ((2, 4, 2), (2, 2, 1))]


def tiled(y: torch.Tensor, factors: tuple[int, int, int], new: tuple[int, int, int]) -> torch.Tensor:
    """Each fine patch of ``y`` repeated ``factors`` times inside its coarse patch (per axis)."""
    b, c, f, h, w = y.shape
    (ft, fh, fw), (nt, nh, nw) = factors, new
    grid = y.reshape(b, c, f // nt, 1, nt, h // nh, 1, nh, w // nw, 1, nw)
    grid = grid.expand(-1, -1, -1, ft, -1, -1, fh, -1, -1, fw, -1)
    return grid.reshape(b, c, f * ft, h * fh, w * fw)


@pytest.mark.parametrize(("old", "new"), CASES)
def test_fine_tokens_embed_and_predict_like_coarse_ones(seed, old, new):
    coarse = tiny_model(dataclasses.replace(preset("tiny"), patch_size=old))
    fine = refine_patches(coarse, new)
    assert fine.config.patch_size == new and coarse.config.patch_size == old
    factors = tuple(o // n for o, n in zip(old, new))

    # a fine latent, and the coarse latent that holds each fine patch repeated inside its coarse patch
    y = torch.randn(2, 4, 2 * new[0], 2 * new[1], 2 * new[2])
    with torch.no_grad():
        assert torch.allclose(fine.patch_embedding(y), coarse.patch_embedding(tiled(y, factors, new)), atol=1e-5)

        # the head: a fine prediction is the mean of the coarse sub-positions it replaces
        tokens, temb = torch.randn(2, 3, 5, 64), torch.randn(2, 3, 64)
        got = fine.head(tokens, temb).reshape(2, 3, 5, *new, 4)
        want = coarse.head(tokens, temb).reshape(2, 3, 5, *(x for pair in zip(factors, new) for x in pair), 4)
        assert torch.allclose(got, want.mean(dim=(3, 5, 7)), atol=1e-5)

    coarse_state, fine_state = coarse.state_dict(), fine.state_dict()
    ends = ("patch_embedding.", "head.head.")
    assert sorted(coarse_state) == sorted(fine_state)
    for name, value in coarse_state.items():
        if not name.startswith(ends):
            assert torch.equal(fine_state[name], value), name


def test_refined_model_runs_at_the_finer_grid(seed):
    coarse = tiny_model()
    fine = refine_patches(coarse, (1, 1, 1))
    x = torch.randn(1, 4, 3, 4, 6)
    with torch.no_grad():
        out = fine(x, torch.full((1,), 500.0), torch.randn(1, 5, 32))
    assert out.shape == x.shape and torch.isfinite(out).all()
    assert fine.tokens_per_frame(4, 6) == 4 * coarse.tokens_per_frame(4, 6)
    assert refine_patches(coarse, (1, 2, 2)) is coarse  # same grid: nothing to do


@pytest.mark.parametrize(
    ("patch", "message"),
    [((1, 4, 4), "does not divide"), ((1, 3, 2), "does not divide"), ((1, 0, 1), "positive"), ((1, 1), "three")],
)
def test_refuses_coarser_or_foreign_grids(patch, message):
    with pytest.raises(ValueError, match=message):
        refine_patches(tiny_model(), patch)
