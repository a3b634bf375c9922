"""The schema of one training run: a YAML file read into dataclasses, validated key by key.

Every section is a dataclass; :func:`load_config` rejects unknown keys and wrong types with the
dotted path of the offending key, so a typo (``optim.lrr``) fails before any model is built.
``--set a.b=value`` overrides are applied to the raw YAML before validation.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from ..checkpoint import Which
from ..config import StreamConfig
from ..schedule import DEFAULT_SHIFT, FOUR_STEPS, SOLVERS, TEACHER_SAMPLER, SamplingSchedule

Stage = Literal["teacher_forcing", "consistency", "dmd"]
STAGES: tuple[str, ...] = typing.get_args(Stage)

# The paper's learning rates (Table 4 / Appendix D.6): TF 5e-6, CD 2e-6, DMD generator 2e-6.
DEFAULT_LR = {"teacher_forcing": 5e-6, "consistency": 2e-6, "dmd": 2e-6}


@dataclass
class ModelSection:
    """Where the trained model starts: a preset (random init) or a checkpoint, optionally made MLA."""

    preset: str | None = None  # a random init of this preset; with a checkpoint: used when it carries no config
    checkpoint: str | None = None  # any format videomla.checkpoint.load_model reads, or a training run/step dir
    which: Which = "auto"  # Self-Forcing .pt files: which weights
    mla: bool = False  # VideoMLA self-attention: convert the checkpoint (videomla.convert), or a random MLA init
    mla_layers: list[int] | None = None  # layers to convert (None: all)
    mla_init: Literal["svd", "random"] = "svd"  # how a converted checkpoint's MLA projections start
    mla_kv_latent_dim: int | None = None  # d_c (None: the paper's ratio, width / 8)
    mla_q_latent_dim: int | None = None  # d_q (None: width / 2)
    mla_rope_head_dim: int | None = None  # RoPE channels per head (None: head dim / 4); NoPE = the rest
    patch_size: list[int] | None = None  # a finer token grid than the checkpoint's (videomla.repatch)
    num_layers: int | None = None  # more blocks than the checkpoint's, starting as identities (videomla.deepen)

    def __post_init__(self) -> None:
        if self.preset is None and self.checkpoint is None:
            raise ValueError("set model.preset (random init) or model.checkpoint")
        if self.patch_size is not None and self.checkpoint is None:
            raise ValueError("model.patch_size refines a checkpoint's token grid; a preset sets its own patch size")
        if self.num_layers is not None and self.checkpoint is None:
            raise ValueError("model.num_layers deepens a checkpoint; a preset sets its own depth")


@dataclass
class DataSection:
    """Training clips: a folder of pre-encoded latents, or the procedural world."""

    kind: Literal["latents", "world"] = "latents"
    path: str | None = None  # latents: folder of *.safetensors (latents [C,F,H,W], context [L,D])
    batch_size: int = 1  # global batch per step, split evenly over processes
    num_frames: int | None = None  # latent frames per clip (crop; None: the clips' own length)
    text_len: int | None = None  # pad contexts to this many tokens (None: all clips must agree)
    negative_context: str | None = None  # .safetensors with 'context' [L,D] of the empty prompt (None: zeros)
    text_dropout: float = 0.0  # probability of training on the unconditional context (teaches CFG)
    shuffle: bool = True
    workers: int = 1  # threads making a batch's clips (order and content do not depend on it)
    render: Literal["auto", "cpu", "device"] = "auto"  # world clips: per clip on the CPU, or batched on the device
    world: dict[str, Any] = field(default_factory=dict)  # kind=world: arguments of the world generator

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"data.batch_size must be >= 1, got {self.batch_size}")
        if self.workers < 1:
            raise ValueError(f"data.workers must be >= 1, got {self.workers}")
        if self.num_frames is not None and self.num_frames < 1:
            raise ValueError(f"data.num_frames must be >= 1, got {self.num_frames}")
        if not 0.0 <= self.text_dropout < 1.0:
            raise ValueError(f"data.text_dropout must be in [0, 1), got {self.text_dropout}")
        if self.kind == "latents" and not self.path:
            raise ValueError("data.path (a folder of latent .safetensors) is required when data.kind is 'latents'")


@dataclass
class OptimSection:
    """AdamW; the paper's betas are (0, 0.999). ``lr: null`` takes the stage's paper value."""

    lr: float | None = None
    betas: tuple[float, float] = (0.0, 0.999)
    weight_decay: float = 0.01
    eps: float = 1e-8
    max_grad_norm: float | None = 10.0
    # learning-rate schedule over the run's steps (a multiplier of every optimiser's lr)
    schedule: Literal["constant", "cosine", "linear"] = "constant"
    warmup_steps: int = 0  # linear warmup from lr / warmup_steps at step 1 to lr
    decay_steps: int | None = None  # decay over the last this many steps (None: all steps after warmup)
    min_lr_ratio: float = 0.0  # the decay ends at lr * min_lr_ratio
    total_steps: int | None = None  # the schedule's horizon (None: ``steps``); set it to split one run over calls

    def __post_init__(self) -> None:
        if self.lr is not None and self.lr <= 0:
            raise ValueError(f"optim.lr must be positive, got {self.lr}")
        if not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"optim.betas must lie in [0, 1), got {self.betas}")
        if self.warmup_steps < 0 or (self.decay_steps is not None and self.decay_steps < 1):
            raise ValueError(f"optim.warmup_steps must be >= 0 and optim.decay_steps >= 1, got {self}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError(f"optim.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if self.total_steps is not None and self.total_steps < 1:
            raise ValueError(f"optim.total_steps must be >= 1, got {self.total_steps}")

    def lr_factor(self, step: int, steps: int) -> float:
        """The schedule's multiplier of the base lr at ``step`` (counted from 1) of a ``steps``-step run."""
        total = self.total_steps or steps
        if self.warmup_steps and step <= self.warmup_steps:
            return step / self.warmup_steps
        if self.schedule == "constant":
            return 1.0
        start = self.warmup_steps if self.decay_steps is None else max(self.warmup_steps, total - self.decay_steps)
        if step <= start:
            return 1.0
        progress = min(1.0, (step - start) / max(1, total - start))
        shape = 0.5 * (1 + math.cos(math.pi * progress)) if self.schedule == "cosine" else 1 - progress
        return self.min_lr_ratio + (1 - self.min_lr_ratio) * shape


@dataclass
class TeacherSection:
    """The frozen teacher of stages 2 and 3 (the stage-1 model) and its guidance."""

    checkpoint: str | None = None
    which: Which = "auto"
    cfg_scale: float = 3.0


@dataclass
class LossSection:
    """The teacher-forcing objective (stage 1).

    ``first_chunk_weight``: the first chunk's velocity MSE against each later chunk's (1: the
    plain mean). The first chunk is the only one drawn from the text alone, as a sampled video starts.
    """

    first_chunk_weight: float = 1.0

    def __post_init__(self) -> None:
        if not self.first_chunk_weight > 0:
            raise ValueError(f"loss.first_chunk_weight must be positive, got {self.first_chunk_weight}")


@dataclass
class ScheduleSection:
    """The sampler: the distilled stages train for it; every export records it.

    ``solver`` None: a stage-1 (teacher-forcing) export records the flow-matching ODE over
    ``steps`` (over :data:`TEACHER_SAMPLER`'s 16 steps when ``steps`` is left at the default), a
    distilled one ``renoise`` over ``steps``: the only sampler their self-rollouts train for.
    """

    shift: float = DEFAULT_SHIFT
    steps: tuple[int, ...] = FOUR_STEPS  # the few-step list, warped through ``shift``
    solver: str | None = None

    def __post_init__(self) -> None:
        if list(self.steps) != sorted(self.steps, reverse=True) or not self.steps:
            raise ValueError(f"schedule.steps must be a decreasing list, got {list(self.steps)}")
        if self.solver is not None and self.solver not in SOLVERS:
            raise ValueError(f"schedule.solver must be one of {list(SOLVERS)}, got {self.solver!r}")

    def sampler(self, stage: str) -> SamplingSchedule:
        """What an export of ``stage`` is sampled with."""
        if stage == "teacher_forcing":
            steps = TEACHER_SAMPLER.steps if tuple(self.steps) == FOUR_STEPS else tuple(self.steps)
            return SamplingSchedule(steps, self.shift, self.solver or TEACHER_SAMPLER.solver)
        return SamplingSchedule(tuple(self.steps), self.shift, self.solver or "renoise")


@dataclass
class ConsistencySection:
    """Stage 2: the fine grid the teacher's one-step ODE moves along (a multiple of len(steps))."""

    ode_steps: int = 48

    def __post_init__(self) -> None:
        if self.ode_steps < 2:
            raise ValueError(f"consistency.ode_steps must be >= 2, got {self.ode_steps}")


@dataclass
class DMDSection:
    """Stage 3: critic (fake score) and generator updates (Self-Forcing's DMD)."""

    critic_lr: float = 4e-7
    critic_updates: int = 5  # critic updates per generator update
    critic_init: Literal["teacher", "generator"] = "teacher"
    min_timestep: float = 20.0  # DMD noise levels are clamped to [min, max] (Self-Forcing: 0.02, 0.98)
    max_timestep: float = 980.0

    def __post_init__(self) -> None:
        if self.critic_updates < 1:
            raise ValueError(f"dmd.critic_updates must be >= 1, got {self.critic_updates}")
        if not 0 <= self.min_timestep < self.max_timestep <= 1000:
            raise ValueError(f"need 0 <= dmd.min_timestep < dmd.max_timestep <= 1000, got {self}")


@dataclass
class EMASection:
    """EMA of the trained model; ``decay: null`` = 0.99 for DMD, none for the other stages."""

    decay: float | None = None
    start: int = 1  # first step whose update feeds the EMA

    def __post_init__(self) -> None:
        if self.decay is not None and not 0.0 <= self.decay < 1.0:
            raise ValueError(f"ema.decay must be in [0, 1), got {self.decay}")


@dataclass
class CheckpointSection:
    every: int = 500  # steps between checkpoints (the last step is always saved)
    keep_last: int = 3
    export: bool = True  # also write the model as a videomla checkpoint (generate / rank read it)
    metadata: dict[str, Any] = field(default_factory=dict)  # extra metadata of the exported model

    def __post_init__(self) -> None:
        if self.every < 1 or self.keep_last < 1:
            raise ValueError(f"checkpoint.every and checkpoint.keep_last must be >= 1, got {self}")


@dataclass
class HeldoutSection:
    """A loss on a fixed bank of clips, timesteps and noise, logged every ``every`` steps (0: never).

    World data: clips ``num_clips .. num_clips + clips - 1`` of the world's stream, which training
    never draws. Latent folders: the clips of ``path`` (required for a held-out loss there).
    """

    every: int = 100
    clips: int = 256
    batch_size: int | None = None  # forwards of this many clips (None: data.batch_size)
    seed: int = 1234  # the bank's timesteps and noise
    path: str | None = None  # latents: a folder of held-out clips
    shift: float | None = None  # the bank's timestep shift (None: schedule.shift): fixed, runs at other shifts compare

    def __post_init__(self) -> None:
        if self.every < 0 or self.clips < 1 or (self.batch_size is not None and self.batch_size < 1):
            raise ValueError(f"heldout.every must be >= 0, heldout.clips and heldout.batch_size >= 1, got {self}")
        if self.shift is not None and not self.shift > 0:
            raise ValueError(f"heldout.shift must be positive, got {self.shift}")


@dataclass
class KernelsSection:
    """Training under :func:`videomla.attention.common.fast_kernels` (``backend: null``: the reference code).

    ``eager``: float32 RoPE tables (instead of float64); ``inductor``: also fused norm / RoPE /
    modulation kernels (torch.compile, compiled once per shape); ``cudnn_first``: cuDNN SDPA first.
    ``clip_mask``: how the chunk-causal mask is applied (dense boolean mask or per-chunk runs; any
    backend, the reference included: both are exact).
    """

    backend: Literal["eager", "inductor"] | None = None
    cudnn_first: bool = False
    clip_mask: Literal["auto", "dense", "blocks"] = "auto"  # videomla.attention.context.clip_mask


@dataclass
class SamplesSection:
    """Rollouts of the exported model every ``every`` steps and at the last one (``every: null``: off).

    Each prompt is streamed once per seed (fixed noise: a seed gives comparable videos across
    steps) for ``chunks`` chunks, decoded with the run's codec and written to
    ``RUN/samples/step_XXXXXXXX/<index>.<format>`` with ``samples.json``.
    """

    every: int | None = None
    prompts: list[str] | None = None  # None: the captions of ``count`` held-out clips
    count: int = 4  # prompts: null only
    seeds: list[int] = field(default_factory=lambda: [0])
    chunks: int = 4  # latent chunks per video (stream.frames_per_chunk latent frames each)
    format: Literal["mp4", "gif"] = "mp4"

    def __post_init__(self) -> None:
        if self.every is not None and self.every < 1:
            raise ValueError(f"samples.every must be >= 1 (null: no samples), got {self.every}")
        if self.prompts is not None and (not self.prompts or not all(p.strip() for p in self.prompts)):
            raise ValueError(f"samples.prompts must be non-empty prompts (null: held-out captions), got {self.prompts}")
        if self.count < 1 or self.chunks < 1:
            raise ValueError(f"samples.count and samples.chunks must be >= 1, got {self.count} and {self.chunks}")
        if not self.seeds or len(set(self.seeds)) < len(self.seeds) or not all(0 <= s < 2**63 for s in self.seeds):
            raise ValueError(f"samples.seeds must be distinct integers in [0, 2**63), got {self.seeds}")
        if self.every is not None:
            from ..video_io import check_writer_modules

            check_writer_modules(self.format)  # a missing PyAV / Pillow: the pip line, before any model is built

    def due(self, step: int, steps: int) -> bool:
        """Whether step ``step`` of a ``steps``-step run writes samples."""
        return self.every is not None and (step % self.every == 0 or step == steps)


WANDB_HINT = 'pip install "videomla[wandb]"'


@dataclass
class WandbSection:
    """Weights & Biases: metrics and sample videos of the run (``wandb`` must be installed)."""

    project: str
    entity: str | None = None
    mode: Literal["online", "offline"] = "online"  # offline: wandb sync later

    def __post_init__(self) -> None:
        try:
            import wandb  # noqa: F401
        except ImportError as err:
            raise ImportError(f"log.wandb needs wandb, which is not installed ({err}): {WANDB_HINT}") from None


@dataclass
class LogSection:
    every: int = 1
    tensorboard: bool = True
    wandb: WandbSection | None = None

    def __post_init__(self) -> None:
        if self.every < 1:
            raise ValueError(f"log.every must be >= 1, got {self.every}")


@dataclass
class TrainConfig:
    stage: Stage
    steps: int
    model: ModelSection
    seed: int = 0
    out_dir: str | None = None
    device: str = "auto"  # auto | cpu | cuda (torchrun: each process takes cuda:LOCAL_RANK)
    precision: Literal["bf16", "fp32"] = "bf16"
    activation_checkpointing: bool = False
    stream: StreamConfig = field(default_factory=StreamConfig)
    data: DataSection = field(default_factory=DataSection)
    optim: OptimSection = field(default_factory=OptimSection)
    teacher: TeacherSection = field(default_factory=TeacherSection)
    schedule: ScheduleSection = field(default_factory=ScheduleSection)
    loss: LossSection = field(default_factory=LossSection)
    consistency: ConsistencySection = field(default_factory=ConsistencySection)
    dmd: DMDSection = field(default_factory=DMDSection)
    ema: EMASection = field(default_factory=EMASection)
    checkpoint: CheckpointSection = field(default_factory=CheckpointSection)
    heldout: HeldoutSection = field(default_factory=HeldoutSection)
    kernels: KernelsSection = field(default_factory=KernelsSection)
    samples: SamplesSection = field(default_factory=SamplesSection)
    log: LogSection = field(default_factory=LogSection)

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if self.stage != "teacher_forcing" and not self.teacher.checkpoint:
            raise ValueError(f"stage {self.stage!r} distils from a frozen teacher: set teacher.checkpoint")
        if self.stream.window_frames is None:
            raise ValueError("stream.window_frames must be finite: training uses the streaming window it will run")
        if self.data.num_frames is not None and self.data.num_frames % self.stream.frames_per_chunk:
            raise ValueError(
                f"data.num_frames {self.data.num_frames} is not a multiple of "
                f"stream.frames_per_chunk {self.stream.frames_per_chunk}"
            )
        if self.stage != "teacher_forcing" and self.schedule.solver not in (None, "renoise"):
            raise ValueError(
                f"schedule.solver {self.schedule.solver!r}: stage {self.stage!r} trains for the re-noising "
                "sampler (its self-rollouts), so its export is sampled that way; leave schedule.solver unset"
            )
        if self.stage == "consistency" and self.consistency.ode_steps % len(self.schedule.steps):
            raise ValueError(
                f"consistency.ode_steps {self.consistency.ode_steps} must be a multiple of the "
                f"{len(self.schedule.steps)} sampling steps so they lie on the fine grid"
            )
        if self.device not in ("auto", "cpu") and not self.device.startswith("cuda"):
            raise ValueError(f"device must be auto, cpu or cuda[:N], got {self.device!r}")

    @property
    def lr(self) -> float:
        return self.optim.lr if self.optim.lr is not None else DEFAULT_LR[self.stage]

    @property
    def ema_decay(self) -> float | None:
        return self.ema.decay if self.ema.decay is not None else (0.99 if self.stage == "dmd" else None)

    def to_dict(self) -> dict[str, Any]:
        return _plain(dataclasses.asdict(self))


# -- reading -------------------------------------------------------------------------------------
def load_config(path: str | Path, overrides: list[str] | None = None) -> TrainConfig:
    """Read ``path`` (YAML), apply ``key.sub=value`` overrides, validate into a :class:`TrainConfig`."""
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"no training config at {file}")
    try:
        raw = yaml.safe_load(file.read_text()) or {}
    except yaml.YAMLError as err:
        raise ValueError(f"{file} is not valid YAML: {err}") from err
    if not isinstance(raw, dict):
        raise ValueError(f"{file} must hold a mapping of config keys, got {type(raw).__name__}")
    for item in overrides or []:
        apply_override(raw, item)
    return config_from_dict(raw)


def config_from_dict(raw: dict[str, Any]) -> TrainConfig:
    return _build(TrainConfig, raw, "")


def apply_override(raw: dict[str, Any], item: str) -> None:
    """``a.b.c=value`` (value parsed as YAML) into the nested dict ``raw``."""
    key, sep, text = item.partition("=")
    if not sep or not key:
        raise ValueError(f"--set takes key=value (e.g. optim.lr=1e-5), got {item!r}")
    parts = key.strip().split(".")
    node = raw
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ValueError(f"--set {key}: {part!r} is not a section")
        node = child
    node[parts[-1]] = yaml.safe_load(text) if text.strip() else None


def _plain(value: Any) -> Any:
    """Tuples -> lists so the dict is YAML / JSON friendly."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _build(cls: type, data: Any, where: str) -> Any:
    if not isinstance(data, dict):
        raise ValueError(f"config section {where or '<root>'} must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        names = ", ".join(f"{where}{k}" for k in unknown)
        raise ValueError(f"unknown config key(s) {names}; known in {where or 'the root'}: {sorted(fields)}")
    kwargs = {}
    for name, f in fields.items():
        if name in data:
            kwargs[name] = _convert(hints[name], data[name], f"{where}{name}")
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ValueError(f"config key {where}{name} is required")
    try:
        return cls(**kwargs)
    except TypeError as err:  # a frozen dataclass outside this module (StreamConfig) rejecting a value
        raise ValueError(f"config section {where or '<root>'}: {err}") from err


def _convert(hint: Any, value: Any, where: str) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        errors = []
        for option in options:
            try:
                return _convert(option, value, where)
            except ValueError as err:
                errors.append(str(err))
        raise ValueError(errors[0] if len(errors) == 1 else f"{where}: {value!r} fits none of {options}")
    if origin is Literal:
        if value not in args:
            raise ValueError(f"{where} must be one of {list(args)}, got {value!r}")
        return value
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, f"{where}.")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{where} must be a list, got {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ValueError(f"{where} must have {len(args)} items, got {list(value)}")
            return tuple(_convert(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
        items = [_convert(args[0], v, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ValueError(f"{where} must be a mapping, got {value!r}")
        return dict(value)
    if hint is Any:
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{where} must be true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{where} must be an integer, got {value!r}")
        return value
    if hint is float:
        # YAML reads 5e-6 (no dot) as a string: accept numeric strings for floats.
        if isinstance(value, bool):
            raise ValueError(f"{where} must be a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ValueError(f"{where} must be a number, got {value!r}") from None
    if hint is str:
        if not isinstance(value, str):
            raise ValueError(f"{where} must be a string, got {value!r}")
        return value
    raise TypeError(f"config type {hint} of {where} is not supported")  # a schema bug, not bad input
