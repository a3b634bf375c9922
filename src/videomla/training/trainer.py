"""The training loop: build a stage from a :class:`TrainConfig`, run it, log, checkpoint, resume.

One code path for one process (CPU or one GPU) and for ``torchrun`` (FSDP2 over all processes):
the global batch is split over processes, every random draw is keyed by global sample index
(:mod:`.rng`), gradients are averaged by FSDP2's reduce-scatter, and logged losses are averaged
over processes, so N processes reproduce one process on the same global batch.

The step itself never waits for the device: metrics stay on the device and are read once per
logged step (``log.every``), which is also where non-finite values are caught. A non-finite loss,
gradient norm or held-out loss stops the run with :class:`NonFiniteError` naming the first bad
step; nothing after it is saved, so ``keep_last`` never rotates away the last finite checkpoint.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import sys
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch
import yaml
from tqdm.auto import tqdm

from ..model import CausalWanModel
from ..pipeline.spec import GenerationSpec
from .checkpointing import latest_checkpoint, load_checkpoint, save_checkpoint
from .config import TrainConfig
from .data import (
    Batch,
    DataOrder,
    LatentFolder,
    WorldSource,
    build_source,
    collate,
    load_negative_context,
    local_slice,
    pad_context,
)
from .distributed import DistInfo, init_distributed, mean_tensor_over_ranks, shard, shutdown
from .metrics import MetricsLogger
from .models import EMA, build_trained_model, enable_activation_checkpointing, load_frozen, trainable_copy
from .rng import StepRNG
from .samples import SAMPLES_DIR, RolloutSampler, gathered_model, heldout_captions
from .stages import ConsistencyStage, DMDStage, Stage, TeacherForcingStage

CONFIG_FILE = "config.yaml"
LR = "lr"


class NonFiniteError(FloatingPointError):
    """Training produced a NaN / Inf (loss, gradient norm, held-out loss or weights) at a named step.

    A failed run, not bad input: the command line reports it in one line and exits with status 1.
    """


class _Serial:
    """The in-thread stand-in for a pool: ``map`` in order."""

    def map(self, fn: Callable, items: Iterable) -> Iterator:
        return map(fn, items)


class Trainer:
    def __init__(self, cfg: TrainConfig, out_dir: str | Path, resume: bool = False):
        self.cfg = cfg
        self.out = Path(out_dir)
        self.info: DistInfo = init_distributed(cfg.device)
        # DCP's state-dict helpers warn when no process group exists: a single process is intended.
        warnings.filterwarnings("ignore", message=r"torch\.distributed is disabled, unavailable or uninitialized")
        self.ckpt_root = self.out / "checkpoints"
        existing = latest_checkpoint(self.ckpt_root)
        if resume and existing is None:
            raise FileNotFoundError(f"--resume: no checkpoint under {self.ckpt_root}")
        if not resume and existing is not None:
            raise ValueError(
                f"{self.out} already holds checkpoints (newest {existing.name}): pass --resume or another --out"
            )
        self.device = self.info.device
        self.compute_dtype = torch.bfloat16 if cfg.precision == "bf16" else torch.float32

        self._generator, conversion = build_trained_model(cfg.model, cfg.seed)
        self.source = build_source(cfg.data, self._generator.config, cfg.stream, cfg.seed)
        if cfg.model.checkpoint is not None:
            self._check_text_features(cfg.model.checkpoint, "starting checkpoint", strict=False)
        self.device_data = self._renders_on_device()
        self._loader = ThreadPoolExecutor(max_workers=cfg.data.workers) if cfg.data.workers > 1 else _Serial()
        self.text_len = cfg.data.text_len or self.source[0].context.shape[0]
        self.stage = self._build_stage()
        self.bank = self._heldout_bank()
        self._pending: list[tuple[int, dict[str, torch.Tensor], float]] = []
        self.order = DataOrder(len(self.source), cfg.data.batch_size, cfg.seed, cfg.data.shuffle)
        if cfg.data.batch_size % self.info.world:
            raise ValueError(f"data.batch_size {cfg.data.batch_size} is not divisible by {self.info.world} processes")
        self.step = 0
        if resume:
            assert existing is not None
            record = load_checkpoint(existing, self.stage.modules, self.stage.optimizers, self.info)
            if record["stage"] != cfg.stage:
                raise ValueError(f"{existing} was written by stage {record['stage']!r}, this config is {cfg.stage!r}")
            self.step = int(record["step"])
            self.order.load_state_dict(record["data"])
            self.stage.after_resume()
        if self.info.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / CONFIG_FILE).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
            if conversion is not None and not resume:
                (self.out / "mla_conversion.json").write_text(json.dumps(conversion, indent=2) + "\n")
        self.sampler = self._sampler()
        columns = (*self.stage.metrics, LR, *(self.stage.heldout_metrics if self.bank else ()))
        self.logger = MetricsLogger(
            self.out, columns, self.info.is_main, cfg.log.tensorboard, resume_step=self.step,
            videos=self.sampler is not None, wandb=cfg.log.wandb, config=cfg.to_dict(),
        )  # fmt: skip

    def _renders_on_device(self) -> bool:
        """World clips batched on the training device (``data.render``; ``auto``: on CUDA)."""
        render = self.cfg.data.render
        if render == "device" and not isinstance(self.source, WorldSource):
            raise ValueError("data.render: device renders procedural-world clips: it needs data.kind: world")
        return isinstance(self.source, WorldSource) and (
            render == "device" or (render == "auto" and self.device.type == "cuda")
        )

    def _heldout_bank(self) -> list[tuple[list[int], Batch]]:
        """The fixed held-out clips of this process as (bank positions, batch on the device) pairs."""
        h, info = self.cfg.heldout, self.info
        if h.every == 0:
            return []
        if h.clips % info.world:
            raise ValueError(f"heldout.clips {h.clips} is not divisible by the {info.world} processes")
        positions, _ = local_slice(list(range(h.clips)), info.rank, info.world)
        size = h.batch_size or max(1, self.cfg.data.batch_size // info.world)
        frames = self.cfg.data.num_frames
        bank = []
        if isinstance(self.source, WorldSource):
            for i in range(0, len(positions), size):
                part = positions[i : i + size]
                indices = [len(self.source) + p for p in part]  # past the training clips of the stream
                bank.append((part, self.source.device_batch(indices, self.device, frames, self.text_len)))
            return bank
        if h.path is None:
            if info.is_main:
                print("note: no held-out loss (a latent-folder run needs heldout.path)", file=sys.stderr)
            return []
        folder = LatentFolder(h.path)
        folder.check(self._generator.config, self.cfg.stream, frames, self.cfg.data.text_len)
        if len(folder) < h.clips:
            raise ValueError(f"heldout.path {h.path} has {len(folder)} clips, fewer than heldout.clips = {h.clips}")
        for i in range(0, len(positions), size):
            part = positions[i : i + size]
            batch = collate([folder[p] for p in part], frames, self.text_len)
            bank.append((part, batch.to(self.device)))
        return bank

    def _sampler(self) -> RolloutSampler | None:
        """The main process's writer of sample rollouts (``samples.every``), checked before the first step."""
        s = self.cfg.samples
        if s.every is None or not self.info.is_main:
            return None
        prompts = s.prompts or heldout_captions(self.source, self.cfg.heldout, s.count)
        spec = GenerationSpec.from_dict(self.export_metadata())  # what generate reads from the export
        return RolloutSampler(s, spec, prompts, self.out / SAMPLES_DIR, self._generator, resume_step=self.step)

    # -- construction ------------------------------------------------------------------------------
    def _uncond(self, length: int) -> torch.Tensor:
        """The unconditional context [L, D] (CFG and caption dropout): a stored empty-prompt embedding or zeros."""
        stored = load_negative_context(self.cfg.data.negative_context, self._generator.config)
        if stored is None:
            return torch.zeros(length, self._generator.config.text_dim, device=self.device)
        return pad_context(stored, length, "data.negative_context").to(self.device)

    def _build_stage(self) -> Stage:
        cfg, info = self.cfg, self.info
        generator = self._generator.to(self.device)
        uncond = self._uncond(self.text_len)
        ema = EMA(generator, cfg.ema_decay, cfg.ema.start) if cfg.ema_decay is not None else None
        teacher = critic = None
        if cfg.stage != "teacher_forcing":
            assert cfg.teacher.checkpoint is not None
            teacher = load_frozen(cfg.teacher.checkpoint, cfg.teacher.which, self.compute_dtype).to(self.device)
            self._check_compatible(teacher, "teacher")
            self._check_text_features(cfg.teacher.checkpoint, "teacher", strict=True)
        if cfg.stage == "dmd":
            assert teacher is not None
            critic = trainable_copy(teacher if cfg.dmd.critic_init == "teacher" else generator).to(self.device)
        if cfg.activation_checkpointing:  # after every deepcopy: copies must not share patched forwards
            for model in (generator, critic):
                if model is not None:
                    enable_activation_checkpointing(model)
        for model in (generator, ema.model if ema else None, teacher, critic):
            if model is not None:
                shard(model, info)
        autocast = self._autocast
        if cfg.stage == "teacher_forcing":
            return TeacherForcingStage(cfg, generator, ema, autocast, uncond)
        if cfg.stage == "consistency":
            return ConsistencyStage(cfg, generator, ema, autocast, teacher, uncond)
        return DMDStage(cfg, generator, ema, autocast, teacher, critic, uncond, self.compute_dtype)

    def _check_compatible(self, other: CausalWanModel, name: str) -> None:
        """The teacher must read and write the same latents and text features as the trained model."""

        def io(cfg):
            return cfg.in_channels, cfg.out_channels, cfg.text_dim, cfg.patch_size

        if io(other.config) != io(self._generator.config):
            raise ValueError(
                f"the {name} takes (in, out channels, text_dim, patch) = {io(other.config)}, "
                f"the trained model {io(self._generator.config)}"
            )

    def _check_text_features(self, checkpoint: str, name: str, strict: bool) -> None:
        """World runs: a checkpoint's hash text features against this run's. A frozen teacher must
        read the same features (``strict``: else it is prompted with noise); a starting point may
        differ (a run that changes the encoder, as the context ablation did), with a warning."""
        if not isinstance(self.source, WorldSource):
            return
        from ..checkpoint import load_metadata, resolve_checkpoint
        from ..pipeline.pipeline import build_text_encoder

        metadata = load_metadata(resolve_checkpoint(checkpoint))
        if "text_encoder" not in metadata:  # weights without generation metadata: nothing to compare
            return
        theirs, mine = GenerationSpec.from_dict(metadata).text_encoder, self.source.text
        if theirs.type == "hash":  # the encoder the checkpoint would be prompted with, defaults applied
            encoder = build_text_encoder(theirs, mine.text_dim, torch.device("cpu"), torch.float32)
            if (encoder.max_tokens, encoder.context) == (mine.max_tokens, mine.context):
                return
            theirs_text = f"hash text features (max_tokens {encoder.max_tokens}, context {encoder.context})"
        else:
            theirs_text = f"{theirs.type} text features"
        text = (
            f"the {name} {checkpoint} reads {theirs_text}; this run makes hash features with max_tokens "
            f"{mine.max_tokens}, context {mine.context} (data.world.max_tokens / text_context)"
        )
        if strict:
            raise ValueError(text)
        warnings.warn(text, stacklevel=2)

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.compute_dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.compute_dtype)

    def _kernels(self) -> contextlib.AbstractContextManager:
        from ..attention.common import fast_kernels
        from ..attention.context import clip_mask

        k = self.cfg.kernels
        stack = contextlib.ExitStack()
        stack.enter_context(clip_mask(k.clip_mask))
        if k.backend is not None:
            stack.enter_context(fast_kernels(k.backend, cudnn_first=k.cudnn_first))
        return stack

    # -- the loop --------------------------------------------------------------------------------------
    def next_batch(self):
        global_indices = self.order.next_indices()
        positions, indices = local_slice(global_indices, self.info.rank, self.info.world)
        if self.device_data:  # one batched render on the device: the host only samples clip parameters
            return positions, self.source.device_batch(indices, self.device, self.cfg.data.num_frames, self.text_len)
        # clips are made on the fly (procedural world: ~6 ms each on one core); torch releases the GIL
        clips = list(self._loader.map(self.source.__getitem__, indices))
        batch = collate(clips, self.cfg.data.num_frames, self.text_len)
        return positions, batch.to(self.device)

    def train_step(self) -> dict[str, torch.Tensor]:
        """One update; its metrics stay on the device (no host sync): :meth:`flush` reads them."""
        self.step += 1
        lr = self.stage.set_lr_factor(self.cfg.optim.lr_factor(self.step, self.cfg.steps))
        positions, batch = self.next_batch()
        rng = StepRNG(self.cfg.seed, self.step, positions, self.device)
        with self._kernels():
            values = self.stage.step(batch, rng, self.step)
            if self.bank and (self.step % self.cfg.heldout.every == 0 or self.step == self.cfg.steps):
                values.update(self.heldout())
        self._pending.append((self.step, values, lr))
        return values

    def heldout(self) -> dict[str, torch.Tensor]:
        """Mean held-out metrics of this process's part of the bank (device tensors)."""
        totals: dict[str, torch.Tensor] = {}
        count = 0
        for positions, batch in self.bank:
            rng = StepRNG(self.cfg.heldout.seed, 0, positions, self.device)
            for name, value in self.stage.heldout(batch, rng).items():
                totals[name] = totals.get(name, 0) + value * len(positions)
            count += len(positions)
        return {name: total / count for name, total in totals.items()}

    def flush(self) -> list[dict[str, float]]:
        """Read the pending steps' metrics (one host sync), log them, stop on the first non-finite one."""
        pending, self._pending = self._pending, []
        if not pending:
            return []
        keys = [(i, name) for i, (_, values, _) in enumerate(pending) for name in sorted(values)]
        stacked = torch.stack([pending[i][1][name].detach().float().reshape(()) for i, name in keys])
        numbers = mean_tensor_over_ranks(stacked, self.info).tolist()
        rows: list[dict[str, float]] = [{"step": step, LR: lr} for step, _, lr in pending]
        for (i, name), number in zip(keys, numbers):
            rows[i][name] = number
        cfg = self.cfg
        for row, (step, values, _) in zip(rows, pending):
            bad = sorted(k for k, v in row.items() if not math.isfinite(v))
            if bad or step % cfg.log.every == 0 or step == cfg.steps or any(k.startswith("heldout") for k in values):
                self.logger.log(step, {k: v for k, v in row.items() if k != "step"})
            if bad:
                last = latest_checkpoint(self.ckpt_root)
                kept = f"the last finite checkpoint is {last}" if last else "no checkpoint was written"
                shown = ", ".join(f"{k} = {row[k]}" for k in bad)
                raise NonFiniteError(
                    f"non-finite {shown} at step {step}: training stopped before saving anything of it; {kept} "
                    f"(lower optim.lr, check the data, or resume from it with --resume)"
                )
        return [{"step": float(r.pop("step")), **r} for r in rows]

    def run(self) -> list[dict[str, float]]:
        """Train to ``cfg.steps``; returns the metrics of the steps run here."""
        cfg, history = self.cfg, []
        bar = tqdm(total=cfg.steps, initial=self.step, disable=not self.info.is_main, desc=cfg.stage, file=sys.stderr)
        try:
            while self.step < cfg.steps:
                self.train_step()
                bar.update(1)
                save = self.step % cfg.checkpoint.every == 0 or self.step == cfg.steps
                sample = cfg.samples.due(self.step, cfg.steps)
                if save or sample or self.step % cfg.log.every == 0:  # rows before samples: W&B steps only increase
                    rows = self.flush()
                    history.extend(rows)
                    bar.set_postfix({k: f"{v:.4g}" for k, v in rows[-1].items() if "loss" in k})
                if save:
                    self.save()
                if sample:
                    self.write_samples()
            history.extend(self.flush())
        finally:
            bar.close()
            self.logger.close()
        for row in history:
            row["step"] = int(row["step"])
        return history

    def write_samples(self) -> None:
        """Sample rollouts of the exported model at this step, written and logged (a collective under FSDP2)."""
        model = gathered_model(self.stage.modules[self.stage.export_name], self.info)
        if self.sampler is None:  # not the main process
            return
        assert model is not None
        samples = self.sampler.write(model, self.step, keep_frames=self.logger.tensorboard_videos)
        self.logger.log_samples(self.step, samples, self.sampler.spec.video.fps)

    def check_finite_weights(self) -> None:
        """Refuse to save non-finite weights (one reduction per module), naming the first bad tensor."""
        for name, module in self.stage.modules.items():
            params = [(n, p.to_local() if hasattr(p, "to_local") else p) for n, p in module.state_dict().items()]
            params = [(n, p) for n, p in params if p.is_floating_point()]  # the same list on every rank
            flags = torch.stack([torch.isfinite(p).all() for _, p in params]).float()
            flags = mean_tensor_over_ranks(flags, self.info)
            bad = [n for (n, _), ok in zip(params, flags.tolist()) if ok < 1]
            if bad:
                last = latest_checkpoint(self.ckpt_root)
                raise NonFiniteError(
                    f"non-finite weights in {name} ({', '.join(bad[:3])}) at step {self.step}: not saved; "
                    f"the last finite checkpoint is {last or 'none'}"
                )

    def save(self) -> Path:
        self.check_finite_weights()
        cfg = self.cfg
        state = {"stage": cfg.stage, "data": self.order.state_dict(), "config": cfg.to_dict()}
        export = self._export if cfg.checkpoint.export else None
        return save_checkpoint(
            self.ckpt_root, self.step, self.stage.modules, self.stage.optimizers, state, self.info,
            cfg.checkpoint.keep_last, export, self.stage.export_name,
        )  # fmt: skip

    def export_metadata(self) -> dict[str, Any]:
        """The exported model's generation metadata (``GenerationSpec`` sections, the sampler included)."""
        schedule = self.cfg.schedule.sampler(self.cfg.stage)
        if isinstance(self.source, WorldSource):
            meta: dict[str, Any] = self.source.generation_spec(self.cfg.stream, schedule).to_dict()
        else:  # latents of the Wan VAE: codec, text and video take GenerationSpec's Wan defaults
            meta = {"stream": dataclasses.asdict(self.cfg.stream), "schedule": schedule.to_dict()}
        meta.update(self.cfg.checkpoint.metadata)
        meta["training"] = {"stage": self.cfg.stage, "step": self.step}
        return meta

    def _export(self, state: Mapping[str, torch.Tensor], path: Path) -> None:
        from ..checkpoint import model_from_state, save_model

        model = model_from_state(state, self._generator.config, "the trained model", dtype=torch.float32)
        save_model(model, path, self.export_metadata())

    def close(self) -> None:
        shutdown(self.info)


def train(cfg: TrainConfig, out_dir: str | Path, resume: bool = False) -> list[dict[str, float]]:
    trainer = Trainer(cfg, out_dir, resume)
    try:
        return trainer.run()
    finally:
        trainer.close()
