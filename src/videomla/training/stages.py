"""One training step of each stage: which models, which optimisers, which losses, in which order.

A stage owns its trainable models and optimisers (:attr:`Stage.modules`, :attr:`Stage.optimizers`
are what a checkpoint saves) and turns a batch into parameter updates and scalar metrics.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from contextlib import AbstractContextManager

import torch
from torch import nn

from ..config import StreamConfig
from ..model import CausalWanModel
from ..schedule import warp_steps
from .config import TrainConfig
from .data import Batch
from .losses import (
    Guidance,
    consistency_loss,
    critic_loss,
    dmd_generator_loss,
    ode_grid,
    teacher_forcing_errors,
    teacher_forcing_loss,
)
from .models import EMA
from .rng import StepRNG

Autocast = Callable[[], AbstractContextManager]


def adamw(model: nn.Module, cfg: TrainConfig, lr: float) -> torch.optim.AdamW:
    o = cfg.optim
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.AdamW(params, lr=lr, betas=tuple(o.betas), weight_decay=o.weight_decay, eps=o.eps)


def apply_hyperparameters(optimizer: torch.optim.Optimizer, lr: float, cfg: TrainConfig) -> None:
    """The config's values win over those a resumed optimiser state carried."""
    for group in optimizer.param_groups:
        group.update(lr=lr, betas=tuple(cfg.optim.betas), weight_decay=cfg.optim.weight_decay, eps=cfg.optim.eps)


def update(model: nn.Module, optimizer: torch.optim.Optimizer, loss: torch.Tensor, max_norm: float | None):
    """backward, clip, step; returns the pre-clip gradient norm."""
    loss.backward()
    params = [p for p in model.parameters() if p.grad is not None]
    norm = torch.nn.utils.clip_grad_norm_(params, max_norm if max_norm is not None else float("inf"))
    if hasattr(norm, "full_tensor"):  # a DTensor under FSDP2
        norm = norm.full_tensor()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return norm.detach()


class Stage(abc.ABC):
    """Common state: the trained generator, its optimiser, its optional EMA."""

    metrics: tuple[str, ...] = ()

    def __init__(self, cfg: TrainConfig, generator: CausalWanModel, ema: EMA | None, autocast: Autocast):
        self.cfg = cfg
        self.stream: StreamConfig = cfg.stream
        self.generator = generator
        self.ema = ema
        self.autocast = autocast
        self.optimizer = adamw(generator, cfg, cfg.lr)

    @property
    def modules(self) -> dict[str, nn.Module]:
        out: dict[str, nn.Module] = {"generator": self.generator}
        if self.ema is not None:
            out["ema"] = self.ema.model
        return out

    @property
    def optimizers(self) -> dict[str, tuple[nn.Module, torch.optim.Optimizer]]:
        return {"generator_optim": (self.generator, self.optimizer)}

    def after_resume(self) -> None:
        apply_hyperparameters(self.optimizer, self.cfg.lr, self.cfg)

    @property
    def export_name(self) -> str:
        """The module handed to ``videomla generate``: the EMA when kept (Self-Forcing samples with it)."""
        return "ema" if self.ema is not None else "generator"

    @property
    def base_lrs(self) -> dict[str, float]:
        """Each optimiser's lr before the schedule's multiplier."""
        return {"generator_optim": self.cfg.lr}

    def set_lr_factor(self, factor: float) -> float:
        """Apply the schedule's multiplier to every optimiser; returns the generator's lr."""
        for name, (_, optimizer) in self.optimizers.items():
            for group in optimizer.param_groups:
                group["lr"] = self.base_lrs[name] * factor
        return self.cfg.lr * factor

    @property
    def heldout_metrics(self) -> tuple[str, ...]:
        return ("heldout_loss", "heldout_first_chunk_loss")

    @torch.no_grad()
    def heldout(self, batch: Batch, rng: StepRNG) -> dict[str, torch.Tensor]:
        """Losses of the exported model on a batch of the fixed held-out bank (``rng``: its fixed draws).

        ``heldout_loss`` is the stage-1 objective (teacher-forced velocity MSE, unweighted) in every
        stage, so runs of all stages read on one scale; ``heldout_first_chunk_loss`` is its first
        chunk alone (drawn from the text, no past: where sampling starts and layout is decided,
        and a small share of the mean). Stages add their own objective.
        """
        model = self.modules[self.export_name]
        shift = self.cfg.heldout.shift or self.cfg.schedule.shift
        with self.autocast():
            errors = teacher_forcing_errors(model, batch.latents, batch.context, self.stream, rng, shift)
        first = errors[:, :, : self.stream.frames_per_chunk]
        return {"heldout_loss": errors.mean(), "heldout_first_chunk_loss": first.mean()}

    def _generator_update(self, loss: torch.Tensor, step: int) -> torch.Tensor:
        norm = update(self.generator, self.optimizer, loss, self.cfg.optim.max_grad_norm)
        if self.ema is not None:
            self.ema.update(self.generator, step)
        return norm

    @abc.abstractmethod
    def step(self, batch: Batch, rng: StepRNG, step: int) -> dict[str, torch.Tensor]:
        """Update on one batch (``step`` counts from 1); returns scalar metrics named as :attr:`metrics`."""


class TeacherForcingStage(Stage):
    metrics = ("loss", "grad_norm")

    def __init__(self, cfg: TrainConfig, generator: CausalWanModel, ema: EMA | None, autocast: Autocast, uncond):
        super().__init__(cfg, generator, ema, autocast)
        self.uncond = uncond  # [L, D]: what dropped captions are replaced with

    def step(self, batch: Batch, rng: StepRNG, step: int) -> dict[str, torch.Tensor]:
        context = batch.context
        if self.cfg.data.text_dropout > 0:
            drop = rng.rand("tf/text_dropout") < self.cfg.data.text_dropout
            context = torch.where(drop[:, None, None], self.uncond.to(context), context)
        with self.autocast():
            loss = teacher_forcing_loss(
                self.generator, batch.latents, context, self.stream, rng, self.cfg.schedule.shift,
                self.cfg.loss.first_chunk_weight,
            )  # fmt: skip
        return {"loss": loss.detach(), "grad_norm": self._generator_update(loss, step)}


class ConsistencyStage(Stage):
    metrics = ("loss", "grad_norm")

    def __init__(self, cfg, generator, ema, autocast, teacher: CausalWanModel, uncond: torch.Tensor):
        super().__init__(cfg, generator, ema, autocast)
        self.teacher = teacher
        self.uncond = uncond
        self.grid = ode_grid(cfg.consistency.ode_steps, cfg.schedule.shift)

    def _grid_on(self, device: torch.device) -> torch.Tensor:
        if self.grid.device != device:  # once: indexing a CPU grid with device indices would sync every step
            self.grid = self.grid.to(device)
        return self.grid

    @property
    def heldout_metrics(self) -> tuple[str, ...]:
        return (*super().heldout_metrics, "heldout_cd_loss")

    @torch.no_grad()
    def heldout(self, batch: Batch, rng: StepRNG) -> dict[str, torch.Tensor]:
        out = super().heldout(batch, rng)
        guidance = Guidance(self.cfg.teacher.cfg_scale, self.uncond.expand_as(batch.context))
        grid = self._grid_on(batch.latents.device)
        with self.autocast():
            loss = consistency_loss(
                self.generator, self.teacher, batch.latents, batch.context, self.stream, rng, guidance, grid
            )
        return {**out, "heldout_cd_loss": loss.float()}

    def step(self, batch: Batch, rng: StepRNG, step: int) -> dict[str, torch.Tensor]:
        guidance = Guidance(self.cfg.teacher.cfg_scale, self.uncond.expand_as(batch.context))
        self._grid_on(batch.latents.device)
        with self.autocast():
            loss = consistency_loss(
                self.generator, self.teacher, batch.latents, batch.context, self.stream, rng, guidance, self.grid
            )
        return {"loss": loss.detach(), "grad_norm": self._generator_update(loss, step)}


class DMDStage(Stage):
    """Generator update on every ``critic_updates``-th step (first), critic update on every step."""

    metrics = ("critic_loss", "critic_grad_norm", "generator_loss", "grad_norm")

    def __init__(self, cfg, generator, ema, autocast, teacher, critic: CausalWanModel, uncond, cache_dtype):
        super().__init__(cfg, generator, ema, autocast)
        self.teacher = teacher
        self.critic = critic
        self.uncond = uncond
        self.cache_dtype = cache_dtype
        self.critic_optimizer = adamw(critic, cfg, cfg.dmd.critic_lr)
        self.timesteps = warp_steps(tuple(cfg.schedule.steps), cfg.schedule.shift)

    @property
    def modules(self) -> dict[str, nn.Module]:
        return {**super().modules, "critic": self.critic}

    @property
    def optimizers(self) -> dict[str, tuple[nn.Module, torch.optim.Optimizer]]:
        return {**super().optimizers, "critic_optim": (self.critic, self.critic_optimizer)}

    def after_resume(self) -> None:
        super().after_resume()
        apply_hyperparameters(self.critic_optimizer, self.cfg.dmd.critic_lr, self.cfg)

    @property
    def base_lrs(self) -> dict[str, float]:
        return {**super().base_lrs, "critic_optim": self.cfg.dmd.critic_lr}

    def trains_generator(self, step: int) -> bool:
        return (step - 1) % self.cfg.dmd.critic_updates == 0

    def step(self, batch: Batch, rng: StepRNG, step: int) -> dict[str, torch.Tensor]:
        cfg, shape = self.cfg, tuple(batch.latents.shape)
        out: dict[str, torch.Tensor] = {}
        if self.trains_generator(step):
            guidance = Guidance(cfg.teacher.cfg_scale, self.uncond.expand_as(batch.context))
            t_range = (cfg.dmd.min_timestep, cfg.dmd.max_timestep)
            with self.autocast():
                loss = dmd_generator_loss(
                    self.generator, self.critic, self.teacher, batch.context, shape, self.stream, rng,
                    guidance, self.timesteps, cfg.schedule.shift, t_range, self.cache_dtype,
                )  # fmt: skip
            out["generator_loss"] = loss.detach()
            out["grad_norm"] = self._generator_update(loss, step)
        with self.autocast():
            loss = critic_loss(
                self.generator, self.critic, batch.context, shape, self.stream, rng,
                self.timesteps, cfg.schedule.shift, self.cache_dtype,
            )  # fmt: skip
        out["critic_loss"] = loss.detach()
        out["critic_grad_norm"] = update(self.critic, self.critic_optimizer, loss, cfg.optim.max_grad_norm)
        return out
