"""The few-step streaming sampler: Self-Forcing's schedule and loop, as a constant-memory generator."""

from __future__ import annotations

import itertools

import pytest
import torch

from videomla.config import StreamConfig, preset
from videomla.sampler import LatentGeometry, stream_latents
from videomla.schedule import (
    FOUR_STEPS,
    SOLVERS,
    SamplingSchedule,
    add_noise,
    even_steps,
    sample_training_timesteps,
    sigma_of,
    to_x0,
    warp_steps,
)

from conftest import rel_err, tiny_model


def test_warped_four_step_list():
    assert warp_steps().tolist() == pytest.approx([1000.0, 937.5, 2500 / 3, 625.0])
    with pytest.raises(ValueError, match="denoising steps"):
        warp_steps((1000, 0))


def test_x0_round_trip(seed):
    x0, noise = torch.randn(3, 4), torch.randn(3, 4)
    sigma = sigma_of(833.3)
    x_t = add_noise(x0, noise, sigma)
    assert rel_err(to_x0(x_t, noise - x0, sigma), x0) < 1e-6  # velocity target is eps - x0


def test_training_timesteps_are_shifted(seed):
    t = sample_training_timesteps((20000,))
    assert t.min() > 0 and t.max() <= 1000
    # shift 5 pushes mass to high noise: the median maps s=0.5 to 833.3
    assert t.median().item() == pytest.approx(1000 * 2.5 / 3, rel=0.03)


def plain_loop(model, text, geometry, stream, num_chunks, generator, solver="renoise", steps=FOUR_STEPS):
    """The sampler written out as one loop: the reference the generator must equal."""
    cache = model.new_cache(stream, 1, geometry.height, geometry.width)
    ts = warp_steps(steps)
    shape = (1, geometry.channels, stream.frames_per_chunk, geometry.height, geometry.width)
    out = []
    with torch.no_grad():
        for _ in range(num_chunks):
            x = torch.randn(shape, generator=generator)
            for i, t in enumerate(ts):
                v = model.forward_chunk(x, torch.full((1,), float(t)), text, cache)
                x0 = x - (t / 1000) * v
                if i + 1 < len(ts) and solver == "euler":
                    x = x + (ts[i + 1] - t) / 1000 * v  # the ODE dx/dsigma = v, one Euler step
                elif i + 1 < len(ts):
                    s = ts[i + 1] / 1000
                    x = (1 - s) * x0 + s * torch.randn(shape, generator=generator)
            model.forward_chunk(x0, torch.zeros(1), text, cache, write=True)
            out.append(x0)
    return torch.cat(out, dim=2)


def test_generator_equals_plain_loop(seed):
    model = tiny_model(preset("tiny").with_mla(layers=(0,)))
    geometry = LatentGeometry(4, 4, 6)
    stream = StreamConfig(sink_frames=1, window_frames=3)
    text = model.embed_text(torch.randn(1, 5, 32))
    chunks = stream_latents(model, text, geometry, stream, num_chunks=5, generator=torch.Generator().manual_seed(seed))
    streamed = torch.cat(list(chunks), dim=2)
    reference = plain_loop(model, text, geometry, stream, 5, torch.Generator().manual_seed(seed))
    assert streamed.shape == (1, 4, 15, 4, 6)
    assert rel_err(streamed, reference) < 1e-6


def test_euler_solver_equals_plain_loop(seed):
    model = tiny_model(preset("tiny").with_mla(layers=(0,)))
    geometry, stream = LatentGeometry(4, 4, 6), StreamConfig(sink_frames=1, window_frames=3)
    text = model.embed_text(torch.randn(1, 5, 32))
    schedule = SamplingSchedule(even_steps(6), solver="euler")
    gen = torch.Generator().manual_seed(seed)
    streamed = torch.cat(list(stream_latents(model, text, geometry, stream, 4, schedule, generator=gen)), dim=2)
    reference = plain_loop(
        model, text, geometry, stream, 4, torch.Generator().manual_seed(seed), "euler", even_steps(6)
    )
    assert rel_err(streamed, reference) < 1e-6
    renoised = plain_loop(
        model, text, geometry, stream, 4, torch.Generator().manual_seed(seed), "renoise", even_steps(6)
    )
    assert rel_err(streamed, renoised) > 1e-3  # the two solvers are different samplers


@pytest.mark.parametrize("solver", SOLVERS)
def test_solvers_land_on_the_data_under_the_exact_velocity(seed, solver):
    """One-point data x0 = c: the true velocity is (x - c) / sigma, the flow a straight line.

    Both solvers must land on c; Euler walks that line from its one noise draw (every input is
    (1 - sigma) c + sigma eps0), the re-noising sampler draws fresh noise at every step.
    """
    model = tiny_model(preset("tiny"))
    geometry, stream = LatentGeometry(4, 4, 6), StreamConfig(sink_frames=1, window_frames=3)
    target = torch.randn(1, 4, 3, 4, 6)
    seen: list[tuple[torch.Tensor, float]] = []

    def exact_velocity(x, timestep, text, cache, write=False):
        sigma = float(timestep.flatten()[0]) / 1000
        if write:
            cache.commit(3)  # the chunk's 3 frames
            return torch.zeros_like(x)
        seen.append((x.clone(), sigma))
        return (x - target) / sigma

    model.forward_chunk = exact_velocity
    schedule = SamplingSchedule(even_steps(5), solver=solver)
    gen, text = torch.Generator().manual_seed(seed), torch.zeros(1, 5, model.config.dim)
    chunks = list(stream_latents(model, text, geometry, stream, 2, schedule, generator=gen))
    assert all(rel_err(chunk, target) < 1e-5 for chunk in chunks)
    eps0 = seen[0][0]  # sigma 1: pure noise
    on_line = [rel_err(x, (1 - s) * target + s * eps0) < 1e-5 for x, s in seen[:5]]
    assert all(on_line) if solver == "euler" else not any(on_line[1:])


def test_unbounded_stream_and_prompt_function(seed):
    """num_chunks=None never stops; a text function is asked once per chunk, in order."""
    model = tiny_model()
    texts = [model.embed_text(torch.randn(1, 5, 32)) for _ in range(2)]
    asked = []

    def text_for(chunk: int) -> torch.Tensor:
        asked.append(chunk)
        return texts[chunk >= 3]

    gen = stream_latents(model, text_for, LatentGeometry(4, 4, 6), StreamConfig(sink_frames=0, window_frames=3))
    first = list(itertools.islice(gen, 7))
    assert len(first) == 7 and asked == list(range(7))
