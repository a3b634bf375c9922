"""Training clips as (latents, text context) batches, in a deterministic, resumable order.

Two sources share one interface (``len``, ``[i] -> Clip``):

* :class:`LatentFolder`: one ``.safetensors`` per clip with ``latents`` [C, F, H, W] (already
  normalised the way the DiT sees them, e.g. Wan VAE latents) and ``context`` [L, D] (text-encoder
  features, e.g. UMT5), the caption in the file's metadata. This is the real-scale path:
  encoding happens once, offline (docs/train.md shows how).
* :class:`WorldSource`: the procedural world (:mod:`videomla.data.world`), encoded on the fly with
  :class:`~videomla.codecs.PixelCodec` and :class:`~videomla.text.HashTextEncoder`.

:class:`DataOrder` turns a step into the global sample indices of that step (an epoch-wise
shuffle seeded by the run seed), so the data position is one integer: samples consumed.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

from ..config import ModelConfig, StreamConfig
from ..pipeline.spec import CodecSpec, GenerationSpec, TextSpec, VideoSpec
from ..schedule import SamplingSchedule
from .config import DataSection
from .rng import derive_seed


@dataclass
class Clip:
    latents: torch.Tensor  # [C, F, H, W]
    context: torch.Tensor  # [L, D]
    caption: str


@dataclass
class Batch:
    latents: torch.Tensor  # [B, C, F, H, W]
    context: torch.Tensor  # [B, L, D]
    captions: list[str]

    def to(self, device: torch.device, dtype: torch.dtype = torch.float32) -> Batch:
        return Batch(self.latents.to(device, dtype), self.context.to(device, dtype), self.captions)


class ClipSource(Protocol):
    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> Clip: ...


class LatentFolder:
    """A folder of ``*.safetensors`` clips; headers are checked up front, tensors read on demand."""

    def __init__(self, path: str | Path):
        from safetensors import safe_open

        self.root = Path(path)
        if not self.root.is_dir():
            raise FileNotFoundError(f"latent folder {self.root} does not exist")
        self.files = sorted(self.root.glob("*.safetensors"))
        if not self.files:
            raise FileNotFoundError(f"no *.safetensors clips in {self.root}")
        self.shapes: list[tuple[tuple[int, ...], tuple[int, ...]]] = []
        for file in self.files:
            with safe_open(file, "pt") as f:
                keys = set(f.keys())
                if not {"latents", "context"} <= keys:
                    raise ValueError(f"{file} must hold 'latents' [C,F,H,W] and 'context' [L,D]; it has {sorted(keys)}")
                lat, ctx = tuple(f.get_slice("latents").get_shape()), tuple(f.get_slice("context").get_shape())
            if len(lat) != 4 or len(ctx) != 2:
                raise ValueError(f"{file}: latents must be [C,F,H,W] and context [L,D], got {lat} and {ctx}")
            self.shapes.append((lat, ctx))

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> Clip:
        from safetensors import safe_open

        file = self.files[index]
        with safe_open(file, "pt") as f:
            meta = f.metadata() or {}
            return Clip(f.get_tensor("latents").float(), f.get_tensor("context").float(), meta.get("caption", ""))

    def check(self, cfg: ModelConfig, stream: StreamConfig, frames: int | None, text_len: int | None) -> None:
        """Fail on the first clip that cannot be trained on, naming the file and what is wrong."""
        for file, (lat, ctx) in zip(self.files, self.shapes):
            check_clip_shape(str(file), lat, ctx, cfg, stream, frames, text_len)
        if text_len is None and len({ctx[0] for _, ctx in self.shapes}) > 1:
            lengths = sorted({ctx[0] for _, ctx in self.shapes})
            raise ValueError(
                f"clips in {self.root} have text contexts of {lengths} tokens: set data.text_len "
                f"(the encoder's padded length, 512 for UMT5) so they are padded alike"
            )


def check_clip_shape(
    name: str,
    lat: tuple[int, ...],
    ctx: tuple[int, ...],
    cfg: ModelConfig,
    stream: StreamConfig,
    frames: int | None,
    text_len: int | None,
) -> None:
    c, f, h, w = lat
    if c != cfg.in_channels:
        raise ValueError(f"{name}: latents have {c} channels; the model takes {cfg.in_channels}")
    if ctx[1] != cfg.text_dim:
        raise ValueError(f"{name}: context is {ctx[1]}-wide; the model's text_dim is {cfg.text_dim}")
    if frames is not None and f < frames:
        raise ValueError(f"{name}: {f} latent frames, fewer than data.num_frames = {frames}")
    if frames is None and f % stream.frames_per_chunk:
        raise ValueError(
            f"{name}: {f} latent frames is not a whole number of {stream.frames_per_chunk}-frame chunks; "
            f"set data.num_frames to crop"
        )
    if text_len is not None and ctx[0] > text_len:
        raise ValueError(f"{name}: {ctx[0]} text tokens, more than data.text_len = {text_len}")
    _, ph, pw = cfg.patch_size
    if h % ph or w % pw:
        raise ValueError(f"{name}: latent size {h}x{w} is not divisible by the patch {cfg.patch_size[1:]}")


class WorldSource:
    """Procedural-world clips (:class:`videomla.data.world.WorldClips`) as the embedded models see them.

    Video frames map 1:1 to latent frames through ``PixelCodec(spatial_stride)``; captions go
    through :class:`~videomla.text.HashTextEncoder`. ``options`` (``data.world``): ``num_clips``,
    ``seed``, ``spatial_stride``, ``scale``, ``max_tokens``, ``text_context`` (the hash encoder's
    ``context``) and any :class:`WorldSpec` field.
    """

    KEYS = ("num_clips", "seed", "spatial_stride", "scale", "offset", "max_tokens", "text_context")

    def __init__(self, options: dict[str, Any], cfg: ModelConfig, frames: int, seed: int):
        from ..codecs import PixelCodec
        from ..data.world import WorldClips, WorldSpec
        from ..text import HashTextEncoder

        opts = dict(options)
        own = {k: opts.pop(k) for k in self.KEYS if k in opts}
        spec_fields = {f.name for f in dataclasses.fields(WorldSpec)}
        unknown = sorted(set(opts) - spec_fields)
        if unknown:
            raise ValueError(f"unknown data.world keys {unknown}; known: {sorted([*self.KEYS, *spec_fields])}")
        spec = WorldSpec(**{k: tuple(v) if isinstance(v, list) else v for k, v in opts.items()})
        self.clips = WorldClips(int(own.get("num_clips", 1024)), frames, int(own.get("seed", seed)), spec)
        self.codec = PixelCodec(
            int(own.get("spatial_stride", 4)), float(own.get("scale", 1.0)), float(own.get("offset", 0.0))
        )
        if self.codec.latent_channels != cfg.in_channels:
            raise ValueError(
                f"the pixel codec with stride {self.codec.spatial_stride} makes {self.codec.latent_channels}-channel "
                f"latents; the model takes {cfg.in_channels} (the 'world' preset takes 48: stride 4)"
            )
        self.text = HashTextEncoder(cfg.text_dim, int(own.get("max_tokens", 16)), own.get("text_context", 0))
        latent = spec.size // self.codec.spatial_stride
        if spec.size % self.codec.spatial_stride or latent % cfg.patch_size[1] or latent % cfg.patch_size[2]:
            raise ValueError(
                f"{spec.size}-pixel frames through stride {self.codec.spatial_stride} do not tile into "
                f"the model's {cfg.patch_size[1:]} patches"
            )
        self._contexts: dict[str, torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, index: int) -> Clip:
        video, caption = self.clips[index]
        return Clip(self.codec.encode(video[None])[0], self.text.encode(caption)[0], caption)

    def context_of(self, caption: str) -> torch.Tensor:
        """The caption's text features [L, D] (memoised: the hash encoder is a pure function)."""
        ctx = self._contexts.get(caption)
        if ctx is None:
            if len(self._contexts) > 200_000:
                self._contexts.clear()
            ctx = self._contexts[caption] = self.text.encode(caption)[0]
        return ctx

    def params(self, index: int):
        """Clip ``index`` of the world's stream; indices past ``len(self)`` are never trained on
        (the held-out bank uses them)."""
        from ..data.world import clip_params_at

        return clip_params_at(self.clips.seed, index, self.clips.spec)

    def device_batch(self, indices: list[int], device: torch.device, frames: int | None, text_len: int | None) -> Batch:
        """The clips ``indices`` as one batch rendered and encoded on ``device`` (a GPU): the same
        clips as ``collate([self[i] for i in indices], ...)``, for the host cost of their parameters."""
        from ..data.world import caption, render_batch_on, upload

        ps = [self.params(i) for i in indices]
        captions = [caption(p) for p in ps]
        video = render_batch_on(ps, frames or self.clips.num_frames, device)
        latents = self.codec.encode(video)
        length = text_len or self.text.max_tokens
        context = torch.stack([pad_context(self.context_of(c), length, c) for c in captions])
        return Batch(latents, upload(context, device), captions)

    def generation_spec(self, stream: StreamConfig, schedule: SamplingSchedule) -> GenerationSpec:
        """What ``videomla generate`` needs to decode and prompt a model trained on these clips."""
        spec = self.clips.spec
        return GenerationSpec(
            codec=CodecSpec(
                "pixel", spatial_stride=self.codec.spatial_stride, scale=self.codec.scale, offset=self.codec.offset
            ),
            text_encoder=TextSpec(
                "hash", text_dim=self.text.text_dim, max_tokens=self.text.max_tokens, context=self.text.context or None
            ),
            video=VideoSpec(height=spec.size, width=spec.size, fps=spec.fps),
            stream=stream,
            schedule=schedule,
        )


def build_source(section: DataSection, cfg: ModelConfig, stream: StreamConfig, seed: int) -> ClipSource:
    if section.kind == "latents":
        assert section.path is not None  # DataSection validated it
        source = LatentFolder(section.path)
        source.check(cfg, stream, section.num_frames, section.text_len)
        return source
    frames = section.num_frames or 3 * stream.frames_per_chunk
    return WorldSource(section.world, cfg, frames, seed)


def load_negative_context(path: str | None, cfg: ModelConfig) -> torch.Tensor | None:
    """The unconditional context [L, D] from a file, or None (zeros of the batch's length)."""
    if path is None:
        return None
    from safetensors.torch import load_file

    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"data.negative_context {file} does not exist")
    tensors = load_file(file)
    if "context" not in tensors or tensors["context"].dim() != 2 or tensors["context"].shape[1] != cfg.text_dim:
        raise ValueError(f"{file} must hold 'context' [L, {cfg.text_dim}]")
    return tensors["context"].float()


def pad_context(context: torch.Tensor, length: int, name: str) -> torch.Tensor:
    """Zero-pad [L, D] to ``length`` tokens (Wan pads UMT5 features with zeros, and attends to them)."""
    if context.shape[0] > length:
        raise ValueError(f"{name}: {context.shape[0]} text tokens, more than the {length} of the batch")
    return torch.nn.functional.pad(context, (0, 0, 0, length - context.shape[0]))


def collate(clips: list[Clip], frames: int | None, text_len: int | None) -> Batch:
    length = text_len or max(c.context.shape[0] for c in clips)
    latents = [c.latents if frames is None else c.latents[:, :frames] for c in clips]
    if len({lat.shape for lat in latents}) > 1:
        raise ValueError(f"clips of one batch differ in shape: {sorted({tuple(x.shape) for x in latents})}")
    contexts = [pad_context(c.context, length, c.caption or "a clip") for c in clips]
    return Batch(torch.stack(latents), torch.stack(contexts), [c.caption for c in clips])


class DataOrder:
    """Global sample indices per step: epochs of a seeded permutation, consumed ``batch`` at a time."""

    def __init__(self, size: int, batch: int, seed: int, shuffle: bool, samples_seen: int = 0):
        self.size = size
        self.batch = batch
        self.seed = seed
        self.shuffle = shuffle
        self.samples_seen = samples_seen
        self._epoch: tuple[int, list[int]] | None = None

    def _order(self, epoch: int) -> list[int]:
        if self._epoch is None or self._epoch[0] != epoch:
            if self.shuffle:
                g = torch.Generator().manual_seed(derive_seed(self.seed, "epoch", epoch))
                order = torch.randperm(self.size, generator=g).tolist()
            else:
                order = list(range(self.size))
            self._epoch = (epoch, order)
        return self._epoch[1]

    def next_indices(self) -> list[int]:
        """The next global batch (dataset indices) and advance the position."""
        out = []
        for pos in range(self.samples_seen, self.samples_seen + self.batch):
            epoch, i = divmod(pos, self.size)
            out.append(self._order(epoch)[i])
        self.samples_seen += self.batch
        return out

    def state_dict(self) -> dict[str, int]:
        return {"samples_seen": self.samples_seen}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.samples_seen = int(state["samples_seen"])


def local_slice(global_indices: list[int], rank: int, world: int) -> tuple[list[int], list[int]]:
    """(positions in the global batch, dataset indices) this process trains on."""
    if len(global_indices) % world:
        raise ValueError(f"data.batch_size {len(global_indices)} is not divisible by the {world} processes")
    per = len(global_indices) // world
    positions = list(range(rank * per, (rank + 1) * per))
    return positions, [global_indices[p] for p in positions]
