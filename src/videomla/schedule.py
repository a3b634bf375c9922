"""The rectified-flow schedule of Wan / Self-Forcing: shift 5.0 over 1000 training timesteps.

x_t = (1 - sigma) x0 + sigma * eps, the model predicts the velocity eps - x0, and
sigma = t / 1000. A few-step list like [1000, 750, 500, 250] is warped through the shift, so
the timesteps actually used are [1000, 937.5, 833.3, 625].

Two solvers walk the list. ``renoise`` (Self-Forcing's few-step sampler, what distilled students
are trained for) predicts x0 at each step and noises it afresh to the next level. ``euler`` is
the flow-matching ODE (x <- x + (sigma' - sigma) v, as Wan's base sampler), the one a stage-1
(teacher-forcing) model wants: on the world teacher, 8 Euler steps score 0.64 overall where 8
re-noising steps score 0.47 and lose small objects altogether (docs/reproduction.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

NUM_TRAIN_TIMESTEPS = 1000
DEFAULT_SHIFT = 5.0
FOUR_STEPS = (1000, 750, 500, 250)
SOLVERS = ("renoise", "euler")


def shift_sigma(s: torch.Tensor | float, shift: float = DEFAULT_SHIFT) -> torch.Tensor:
    """sigma' = shift * s / (1 + (shift - 1) * s)."""
    s = torch.as_tensor(s, dtype=torch.float64)
    return shift * s / (1 + (shift - 1) * s)


def even_steps(n: int, name: str = "the step count") -> tuple[int, ...]:
    """``n`` evenly spaced timesteps from 1000 down (before the shift): diffusers' ``num_inference_steps``."""
    if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= NUM_TRAIN_TIMESTEPS:
        raise ValueError(f"{name} must be an integer in 1..{NUM_TRAIN_TIMESTEPS}, got {n!r}")
    return tuple(round(NUM_TRAIN_TIMESTEPS * (n - i) / n) for i in range(n))


def warp_steps(steps: tuple[int, ...] = FOUR_STEPS, shift: float = DEFAULT_SHIFT) -> torch.Tensor:
    """Model timesteps (float64, in [0, 1000]) for a denoising list, as Self-Forcing warps it."""
    for s in steps:
        if not 0 < s <= NUM_TRAIN_TIMESTEPS:
            raise ValueError(f"denoising steps must lie in (0, {NUM_TRAIN_TIMESTEPS}], got {s}")
    s = torch.tensor(steps, dtype=torch.float64) / NUM_TRAIN_TIMESTEPS
    return shift_sigma(s, shift) * NUM_TRAIN_TIMESTEPS


@dataclass(frozen=True)
class SamplingSchedule:
    """The few-step sampler a model was distilled for: its denoising list and the shift warping it.

    Stored as the ``schedule`` section of a checkpoint's metadata, so a model distilled with
    another list is sampled with it (``--steps`` / ``--shift`` override).
    """

    steps: tuple[int, ...] = FOUR_STEPS
    shift: float = DEFAULT_SHIFT
    solver: str = "renoise"  # one of SOLVERS (module docstring)

    def __post_init__(self) -> None:
        if self.solver not in SOLVERS:
            raise ValueError(f"unknown solver {self.solver!r}; choose from {list(SOLVERS)}")
        object.__setattr__(self, "steps", tuple(int(s) for s in self.steps))
        if not self.steps or list(self.steps) != sorted(set(self.steps), reverse=True):
            raise ValueError(f"schedule steps must be a non-empty, strictly decreasing list, got {list(self.steps)}")
        if not self.shift > 0:
            raise ValueError(f"schedule shift must be positive, got {self.shift}")
        warp_steps(self.steps, self.shift)  # range check

    def timesteps(self) -> torch.Tensor:
        return warp_steps(self.steps, self.shift)

    def to_dict(self) -> dict[str, Any]:
        return {"steps": list(self.steps), "shift": self.shift, "solver": self.solver}

    def describe(self) -> str:
        return f"{len(self.steps)} {self.solver} steps {list(self.steps)} at shift {self.shift:g}"


# How a stage-1 (teacher-forcing) model is sampled unless told otherwise: 16 Euler steps of the ODE.
TEACHER_SAMPLER = SamplingSchedule(even_steps(16), solver="euler")


def sigma_of(t: torch.Tensor | float) -> torch.Tensor:
    return torch.as_tensor(t, dtype=torch.float64) / NUM_TRAIN_TIMESTEPS


def add_noise(x0: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
    sigma = torch.as_tensor(sigma, dtype=x0.dtype, device=x0.device)
    return (1 - sigma) * x0 + sigma * noise


def to_x0(x_t: torch.Tensor, velocity: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
    sigma = torch.as_tensor(sigma, dtype=x_t.dtype, device=x_t.device)
    return x_t - sigma * velocity


def sample_training_timesteps(
    shape: tuple[int, ...], shift: float = DEFAULT_SHIFT, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Uniform s in (0, 1], shifted: the teacher-forcing timestep distribution (float64, x1000)."""
    u = torch.rand(shape, generator=generator, dtype=torch.float64)
    return shift_sigma(1 - u * (1 - 1 / NUM_TRAIN_TIMESTEPS), shift) * NUM_TRAIN_TIMESTEPS
