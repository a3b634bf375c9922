"""The three objectives of the Causal Forcing recipe, as functions of models and one batch.

Notation (rectified flow, :mod:`videomla.schedule`): x_t = (1 - s) x0 + s eps with s = t / 1000,
the model predicts the velocity v = eps - x0, and x0 = x_t - s v. Timesteps are drawn one per
chunk and held constant over the chunk's frames.

* :func:`teacher_forcing_loss` (stage 1): velocity MSE on noisy chunks whose context is the
  clean previous chunks (two-copy forward, :func:`~videomla.window.teacher_forcing_layout`).
* :func:`consistency_loss` (stage 2): causal consistency distillation, teacher-forced.
* :func:`rollout`, :func:`dmd_generator_loss`, :func:`critic_loss` (stage 3): Self-Forcing's
  DMD with the generator rolling out chunk by chunk on its own cache.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..config import StreamConfig
from ..model import CausalWanModel
from ..schedule import add_noise, shift_sigma, sigma_of, to_x0
from .rng import StepRNG


@dataclass(frozen=True)
class Guidance:
    """Classifier-free guidance: v = v_uncond + scale (v_cond - v_uncond)."""

    scale: float
    uncond: torch.Tensor  # [B, L, D] unconditional context (empty prompt / zeros)


# -- shared pieces -------------------------------------------------------------------------------
def per_frame(chunk_values: torch.Tensor, stream: StreamConfig) -> torch.Tensor:
    """[B, n_chunks] -> [B, F]: one value per chunk, repeated over its frames."""
    return chunk_values.repeat_interleave(stream.frames_per_chunk, dim=1)


def frame_sigma(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Timesteps [B, F] -> sigmas [B, 1, F, 1, 1] in ``like``'s dtype, broadcastable over latents."""
    return sigma_of(t).to(like.dtype)[:, None, :, None, None]


def num_chunks(latents: torch.Tensor, stream: StreamConfig) -> int:
    frames = latents.shape[2]
    if frames % stream.frames_per_chunk:
        raise ValueError(f"{frames} latent frames is not a whole number of {stream.frames_per_chunk}-frame chunks")
    return frames // stream.frames_per_chunk


def forced_velocity(
    model: CausalWanModel,
    clean: torch.Tensor,
    noisy: torch.Tensor,
    t: torch.Tensor,
    context: torch.Tensor,
    stream: StreamConfig,
) -> torch.Tensor:
    """Velocity of ``noisy`` [B,C,F,H,W] at timesteps ``t`` [B,F], each chunk seeing the clean past.

    The clean copy runs at t = 0, exactly as streaming inference's cache-writing pass does.
    """
    frames = clean.shape[2]
    x = torch.cat([clean, noisy], dim=2)
    timesteps = torch.cat([torch.zeros_like(t), t], dim=1)
    return model(x, timesteps, context, stream, teacher_forcing=True)[:, :, frames:]


def guided_velocity(
    model: CausalWanModel,
    clean: torch.Tensor,
    noisy: torch.Tensor,
    t: torch.Tensor,
    context: torch.Tensor,
    stream: StreamConfig,
    guidance: Guidance,
) -> torch.Tensor:
    """:func:`forced_velocity` with CFG; conditional and unconditional branches in one batch."""
    b = clean.shape[0]
    both = forced_velocity(
        model, clean.repeat(2, 1, 1, 1, 1), noisy.repeat(2, 1, 1, 1, 1), t.repeat(2, 1),
        torch.cat([context, guidance.uncond.to(context.dtype)]), stream,
    )  # fmt: skip
    cond, uncond = both[:b], both[b:]
    return uncond + guidance.scale * (cond - uncond)


def noised(x0: torch.Tensor, rng: StepRNG, purpose: str, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(x_t, eps) for per-frame timesteps ``t`` [B, F]."""
    eps = rng.randn(purpose, tuple(x0.shape[1:]), x0.dtype)
    return add_noise(x0, eps, frame_sigma(t, x0)), eps


# -- stage 1 ---------------------------------------------------------------------------------------
def teacher_forcing_loss(
    model: CausalWanModel,
    x0: torch.Tensor,
    context: torch.Tensor,
    stream: StreamConfig,
    rng: StepRNG,
    shift: float,
    first_chunk_weight: float = 1.0,
) -> torch.Tensor:
    """Velocity MSE of every noisy chunk given the clean chunks before it (one timestep per chunk).

    ``first_chunk_weight`` weighs the first chunk's MSE against each later chunk's: the first
    chunk is drawn from the text alone (as every sampled video starts), the later ones continue a
    clean past, an easier task that otherwise holds all but one chunk's share of the loss.
    """
    errors = teacher_forcing_errors(model, x0, context, stream, rng, shift)
    if first_chunk_weight == 1.0:
        return errors.mean()
    weights = torch.ones(errors.shape[2], device=errors.device)
    weights[: stream.frames_per_chunk] = first_chunk_weight
    return (errors.mean(dim=(0, 1, 3, 4)) * weights).sum() / weights.sum()


def teacher_forcing_errors(
    model: CausalWanModel,
    x0: torch.Tensor,
    context: torch.Tensor,
    stream: StreamConfig,
    rng: StepRNG,
    shift: float,
) -> torch.Tensor:
    """Squared velocity errors [B, C, F, H, W] (float32) of :func:`teacher_forcing_loss`, unreduced."""
    t = per_frame(rng.timesteps("tf/t", num_chunks(x0, stream), shift), stream)
    x_t, eps = noised(x0, rng, "tf/noise", t)
    velocity = forced_velocity(model, x0, x_t, t, context, stream)
    return (velocity.float() - (eps - x0).float()) ** 2


# -- stage 2 ---------------------------------------------------------------------------------------
def ode_grid(ode_steps: int, shift: float) -> torch.Tensor:
    """Sigmas s_0 = 0 < s_1 < ... < s_N = 1: a uniform grid warped by the shift (float64).

    With N a multiple of 4 the grid contains the warped 4-step list (s = 1, .75, .5, .25 before
    the shift), so the points the sampler visits are points the consistency loss trains.
    """
    return shift_sigma(torch.arange(ode_steps + 1, dtype=torch.float64) / ode_steps, shift)


def consistency_loss(
    student: CausalWanModel,
    teacher: CausalWanModel,
    x0: torch.Tensor,
    context: torch.Tensor,
    stream: StreamConfig,
    rng: StepRNG,
    guidance: Guidance,
    grid: torch.Tensor,
) -> torch.Tensor:
    """Causal consistency distillation (discrete time), teacher-forced.

    Per chunk: draw a grid index n in 1..N, x_n = noise(x0, s_n); the teacher (CFG) takes one
    Euler step of its probability-flow ODE to s_{n-1}; the student's x0-prediction at (x_n, s_n)
    regresses the stop-gradient student prediction at (x_{n-1}, s_{n-1}). The x0
    parameterisation x_t - s v is exact at s = 0, which pins the boundary f(x, 0) = x.
    Every chunk's context is the clean data past (teacher forcing), so the student learns the
    AR-conditional flow map of the causal teacher (Causal Forcing++'s causal CD); the guided
    teacher step follows LCM, the stop-gradient target without EMA follows improved CT.
    """
    n = rng.integers("cd/n", len(grid) - 1, num_chunks(x0, stream)) + 1  # [B, chunks] in 1..N
    s_hi = per_frame(grid.to(n.device)[n], stream)
    s_lo = per_frame(grid.to(n.device)[n - 1], stream)
    t_hi, t_lo = s_hi * 1000, s_lo * 1000
    x_hi, _ = noised(x0, rng, "cd/noise", t_hi)
    with torch.no_grad():
        v_teacher = guided_velocity(teacher, x0, x_hi, t_hi, context, stream, guidance)
        x_lo = x_hi + frame_sigma(t_lo - t_hi, x_hi) * v_teacher.to(x_hi.dtype)
        target = to_x0(x_lo, forced_velocity(student, x0, x_lo, t_lo, context, stream), frame_sigma(t_lo, x_lo))
    pred = to_x0(x_hi, forced_velocity(student, x0, x_hi, t_hi, context, stream), frame_sigma(t_hi, x_hi))
    return F.mse_loss(pred.float(), target.float())


# -- stage 3 ---------------------------------------------------------------------------------------
def rollout(
    generator: CausalWanModel,
    context: torch.Tensor,
    shape: tuple[int, ...],
    stream: StreamConfig,
    timesteps: torch.Tensor,
    rng: StepRNG,
    purpose: str,
    grad: bool,
    cache_dtype: torch.dtype,
) -> torch.Tensor:
    """Self-Forcing rollout: generate a clip [B,C,F,H,W] chunk by chunk on the generator's own cache.

    Each chunk runs the few-step sampler of :func:`videomla.sampler.stream_latents` from fresh
    noise, but stops at an exit step drawn per chunk (the same on every process, so all ranks
    run the same forwards). With ``grad``, only that exit step's forward builds a graph: its
    x0 prediction is the chunk's output. The earlier steps, the clean cache-writing pass at
    t = 0 and therefore every cached key of the past run without gradients.
    """
    b, c, frames, h, w = shape
    if frames % stream.frames_per_chunk:
        raise ValueError(f"{frames} latent frames is not a whole number of {stream.frames_per_chunk}-frame chunks")
    chunks = frames // stream.frames_per_chunk
    chunk_shape = (c, stream.frames_per_chunk, h, w)
    exits = rng.shared_integers(f"{purpose}/exit", len(timesteps), chunks)
    device = context.device
    cache = generator.new_cache(stream, b, h, w, cache_dtype, device)
    with torch.set_grad_enabled(grad):
        text = generator.embed_text(context)
    outputs = []
    for k in range(chunks):
        x = rng.randn(f"{purpose}/noise/{k}/0", chunk_shape)
        for i, t in enumerate(timesteps[: exits[k] + 1]):
            keep = grad and i == exits[k]
            with torch.set_grad_enabled(keep):
                tb = torch.full((b,), float(t), device=device, dtype=torch.float64)
                # the step that keeps gradients stages into private buffers (cache.clone()), which the
                # cache-writing pass, overwriting the same slots in place, never touches
                velocity = generator.forward_chunk(x, tb, text, cache.clone() if keep else cache)
                x0 = to_x0(x, velocity.to(x.dtype), sigma_of(t))
            if i < exits[k]:
                noise = rng.randn(f"{purpose}/noise/{k}/{i + 1}", chunk_shape)
                x = add_noise(x0, noise, sigma_of(timesteps[i + 1]))
        outputs.append(x0)
        with torch.no_grad():
            zero = torch.zeros(b, device=device, dtype=torch.float64)
            generator.forward_chunk(x0.detach(), zero, text.detach(), cache, write=True)
    return torch.cat(outputs, dim=2)


def dmd_timesteps(
    rng: StepRNG, purpose: str, chunks: int, stream: StreamConfig, shift: float, lo: float, hi: float
) -> torch.Tensor:
    """Per-chunk DMD noise levels: shifted uniform, clamped to [lo, hi] (Self-Forcing's min/max step)."""
    return per_frame(rng.timesteps(purpose, chunks, shift).clamp(lo, hi), stream)


def dmd_direction(
    critic: CausalWanModel,
    teacher: CausalWanModel,
    sample: torch.Tensor,
    context: torch.Tensor,
    stream: StreamConfig,
    rng: StepRNG,
    guidance: Guidance,
    shift: float,
    t_range: tuple[float, float],
) -> torch.Tensor:
    """g = (x0_fake - x0_real) / mean|x0 - x0_real| at per-chunk noise levels (DMD / Self-Forcing).

    Both scores denoise the same noised copy of ``sample`` with the clean ``sample`` as each
    chunk's past (teacher forcing); the real score is the teacher with CFG, the fake score the
    critic without. The per-sample normaliser is DMD's.
    """
    with torch.no_grad():
        t = dmd_timesteps(rng, "gen/t", num_chunks(sample, stream), stream, shift, *t_range)
        x_t, _ = noised(sample, rng, "gen/noise", t)
        sigma = frame_sigma(t, x_t)
        fake = to_x0(x_t, forced_velocity(critic, sample, x_t, t, context, stream).to(x_t.dtype), sigma)
        real = to_x0(x_t, guided_velocity(teacher, sample, x_t, t, context, stream, guidance).to(x_t.dtype), sigma)
        normaliser = (sample - real).abs().mean(dim=(1, 2, 3, 4), keepdim=True)
        return torch.nan_to_num((fake - real) / normaliser)


def dmd_generator_loss(
    generator: CausalWanModel,
    critic: CausalWanModel,
    teacher: CausalWanModel,
    context: torch.Tensor,
    shape: tuple[int, ...],
    stream: StreamConfig,
    rng: StepRNG,
    guidance: Guidance,
    timesteps: torch.Tensor,
    shift: float,
    t_range: tuple[float, float],
    cache_dtype: torch.dtype,
) -> torch.Tensor:
    """0.5 ||x0 - sg(x0 - g)||^2 on a fresh rollout: its gradient with respect to x0 is g / numel, so
    a descent step moves the generated clip against ``g``, toward the teacher. The gradient reaches
    the generator through the exit step of every chunk of the rollout (nothing else)."""
    x0 = rollout(generator, context, shape, stream, timesteps, rng, "gen/rollout", True, cache_dtype)
    g = dmd_direction(critic, teacher, x0.detach(), context, stream, rng, guidance, shift, t_range)
    return 0.5 * F.mse_loss(x0.float(), (x0.detach() - g).float())


def critic_loss(
    generator: CausalWanModel,
    critic: CausalWanModel,
    context: torch.Tensor,
    shape: tuple[int, ...],
    stream: StreamConfig,
    rng: StepRNG,
    timesteps: torch.Tensor,
    shift: float,
    cache_dtype: torch.dtype,
) -> torch.Tensor:
    """The fake score learns the generator's distribution: flow matching on fresh rollouts."""
    with torch.no_grad():
        sample = rollout(generator, context, shape, stream, timesteps, rng, "critic/rollout", False, cache_dtype)
    t = per_frame(rng.timesteps("critic/t", num_chunks(sample, stream), shift), stream)
    x_t, eps = noised(sample, rng, "critic/noise", t)
    velocity = forced_velocity(critic, sample, x_t, t, context, stream)
    return F.mse_loss(velocity.float(), (eps - sample).float())
