"""Checkpoint I/O: read Wan2.1, Self-Forcing, diffusers and VideoMLA checkpoints, write ours atomically.

Every reader returns a state dict under *our* parameter names (the original Wan2.1 ones), so
one validator checks them all against a :class:`~videomla.config.ModelConfig` and names what
is missing, extra or mis-shaped instead of failing deep inside ``load_state_dict``.

Formats (detected from the path):

* ``videomla``: a folder with ``model.safetensors`` (or its shards and ``model.safetensors.index.json``)
  + ``config.json`` (``{"format": "videomla", "model": ModelConfig.to_dict(), ...extra metadata}``);
* ``diffusers``: a ``WanTransformer3DModel`` folder (``config.json`` + ``diffusion_pytorch_model*.safetensors``);
* ``wan2.1``: the original release, a folder or file ``diffusion_pytorch_model*.safetensors``
  (sharded with its ``.index.json``), or any ``.safetensors`` file;
* ``torch``: a ``.pt``/``.pth`` file read with ``torch.load(weights_only=True)``: Self-Forcing's
  ``{"generator", "generator_ema", ...}`` dict or a plain state dict.

Wrapper prefixes (``model.``, ComfyUI's ``model.diffusion_model.``, FSDP's ``_fsdp_wrapped_module.``)
are stripped and diffusers names are translated wherever they appear.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import os
import re
import stat
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, Literal, get_args

import torch
from tqdm.auto import tqdm

from .config import MLAConfig, ModelConfig, _split_pairs, rope_axis_dims
from .config import preset as named_preset
from .model import CausalWanModel

Which = Literal["auto", "ema", "generator"]
WHICH: tuple[str, ...] = get_args(Which)  # the one list of Self-Forcing weight choices
StateDict = dict[str, torch.Tensor]

FORMAT_VERSION = 1
MODEL_FILE = "model.safetensors"
MODEL_INDEX = MODEL_FILE + ".index.json"  # a sharded videomla model: model-0000k-of-0000n.safetensors
_MODEL_SHARD = re.compile(r"^model-\d{5}-of-\d{5}\.safetensors$")
CONFIG_FILE = "config.json"
DIFFUSERS_FILE = "diffusion_pytorch_model.safetensors"
DIFFUSERS_INDEX = DIFFUSERS_FILE + ".index.json"
RESERVED_METADATA = ("format", "format_version", "model")
ACCEPTED = (
    "a videomla folder (config.json with format 'videomla' + model.safetensors, or its shards with "
    "model.safetensors.index.json); "
    "a diffusers WanTransformer3DModel folder (config.json + diffusion_pytorch_model*.safetensors); "
    "an original Wan2.1 folder or file (diffusion_pytorch_model*.safetensors, sharded with "
    "diffusion_pytorch_model.safetensors.index.json) or any .safetensors file; "
    "a Self-Forcing or plain PyTorch state dict .pt/.pth file"
)
# Wan2.1 widths whose head count is known (1.3B, 14B): shapes alone cannot tell heads from head size.
KNOWN_HEADS = {1536: 12, 5120: 40}
_LIST_LIMIT = 10


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not fit the model; the message says why."""


# -- key names ----------------------------------------------------------------------------------
# (ours, diffusers) module paths; a key is renamed when it equals a path or starts with "path.".
_TOP_NAMES = (
    ("text_embedding.0", "condition_embedder.text_embedder.linear_1"),
    ("text_embedding.2", "condition_embedder.text_embedder.linear_2"),
    ("time_embedding.0", "condition_embedder.time_embedder.linear_1"),
    ("time_embedding.2", "condition_embedder.time_embedder.linear_2"),
    ("time_projection.1", "condition_embedder.time_proj"),
    ("head.head", "proj_out"),
    ("head.modulation", "scale_shift_table"),
)
_BLOCK_NAMES = (
    *((f"self_attn.{a}", f"attn1.{b}") for a, b in (("q", "to_q"), ("k", "to_k"), ("v", "to_v"), ("o", "to_out.0"))),
    ("self_attn.norm_q", "attn1.norm_q"),
    ("self_attn.norm_k", "attn1.norm_k"),
    *((f"cross_attn.{a}", f"attn2.{b}") for a, b in (("q", "to_q"), ("k", "to_k"), ("v", "to_v"), ("o", "to_out.0"))),
    ("cross_attn.norm_q", "attn2.norm_q"),
    ("cross_attn.norm_k", "attn2.norm_k"),
    ("norm3", "norm2"),  # the affine cross-attention LayerNorm: norm3 in Wan, norm2 in diffusers
    ("ffn.0", "ffn.net.0.proj"),
    ("ffn.2", "ffn.net.2"),
    ("modulation", "scale_shift_table"),
)
_BLOCK_KEY = re.compile(r"(blocks\.\d+\.)(.*)")


def _rename(key: str, pairs: tuple[tuple[str, str], ...], src: int) -> str:
    for pair in pairs:
        old = pair[src]
        if key == old or key.startswith(old + "."):
            return pair[1 - src] + key[len(old) :]
    return key


def _translate(key: str, src: int) -> str:
    m = _BLOCK_KEY.fullmatch(key)
    if m:
        return m[1] + _rename(m[2], _BLOCK_NAMES, src)
    return _rename(key, _TOP_NAMES, src)


def to_diffusers_key(key: str) -> str:
    """Our (original Wan2.1) parameter name -> diffusers ``WanTransformer3DModel`` name."""
    return _translate(key, 0)


def from_diffusers_key(key: str) -> str:
    """diffusers ``WanTransformer3DModel`` parameter name -> ours; unknown names pass unchanged."""
    return _translate(key, 1)


def _has_diffusers_names(keys: list[str]) -> bool:
    return any(k.startswith(("condition_embedder.", "proj_out.")) or ".attn1." in k or ".attn2." in k for k in keys)


def _strip_wrappers(key: str) -> str:
    """Remove FSDP wrapper segments and Self-Forcing's ``model.`` / ComfyUI's ``model.diffusion_model.``."""
    key = key.replace("_fsdp_wrapped_module.", "")
    for prefix in ("model.diffusion_model.", "model."):
        if key.startswith(prefix):
            return key[len(prefix) :]
    return key


def normalize_keys(state: Mapping[str, torch.Tensor], where: str) -> tuple[StateDict, bool]:
    """Our names for a state dict in any supported naming; returns (state, was_diffusers)."""
    stripped: StateDict = {}
    for key, value in state.items():
        new = _strip_wrappers(key)
        if new in stripped:
            raise CheckpointError(f"{where}: two tensors map to the parameter {new!r} after removing wrapper prefixes")
        stripped[new] = value
    diffusers = _has_diffusers_names(list(stripped))
    if diffusers:
        stripped = {from_diffusers_key(k): v for k, v in stripped.items()}
    return stripped, diffusers


# -- configs carried by foreign checkpoints ------------------------------------------------------
def config_from_diffusers(data: Mapping[str, Any]) -> ModelConfig:
    """Our config for a diffusers ``WanTransformer3DModel`` config.json (text-to-video only)."""
    unsupported = {
        "image_dim": None,
        "added_kv_proj_dim": None,
        "pos_embed_seq_len": None,
        "cross_attn_norm": True,
        "qk_norm": "rms_norm_across_heads",
    }
    for name, want in unsupported.items():
        if data.get(name, want) != want:
            raise CheckpointError(
                f"diffusers config has {name}={data[name]!r}; VideoMLA supports only Wan2.1 text-to-video "
                f"({name}={want!r})"
            )
    heads, head_dim = int(data.get("num_attention_heads", 40)), int(data.get("attention_head_dim", 128))
    in_channels = int(data.get("in_channels", 16))
    return ModelConfig(
        dim=heads * head_dim,
        num_heads=heads,
        num_layers=int(data.get("num_layers", 40)),
        ffn_dim=int(data.get("ffn_dim", 13824)),
        in_channels=in_channels,
        out_channels=int(data.get("out_channels") or in_channels),
        text_dim=int(data.get("text_dim", 4096)),
        freq_dim=int(data.get("freq_dim", 256)),
        patch_size=tuple(data.get("patch_size", (1, 2, 2))),
        eps=float(data.get("eps", 1e-6)),
    )


def config_to_diffusers(cfg: ModelConfig) -> dict[str, Any]:
    """The diffusers ``WanTransformer3DModel`` config.json of a dense model."""
    if cfg.mla_layers:
        raise CheckpointError(
            f"diffusers' WanTransformer3DModel has no MLA attention; layers {list(cfg.mla_layers)} are MLA"
        )
    if cfg.rope_theta != 10000.0:
        raise CheckpointError(f"diffusers' Wan RoPE uses theta 10000; this model uses {cfg.rope_theta}")
    try:
        from importlib.metadata import PackageNotFoundError, version

        diffusers_version = version("diffusers")
    except PackageNotFoundError:
        diffusers_version = "0.35.0"
    return {
        "_class_name": "WanTransformer3DModel",
        "_diffusers_version": diffusers_version,
        "patch_size": list(cfg.patch_size),
        "num_attention_heads": cfg.num_heads,
        "attention_head_dim": cfg.head_dim,
        "in_channels": cfg.in_channels,
        "out_channels": cfg.out_channels,
        "text_dim": cfg.text_dim,
        "freq_dim": cfg.freq_dim,
        "ffn_dim": cfg.ffn_dim,
        "num_layers": cfg.num_layers,
        "cross_attn_norm": True,
        "qk_norm": "rms_norm_across_heads",
        "eps": cfg.eps,
        "image_dim": None,
        "added_kv_proj_dim": None,
        "rope_max_seq_len": 1024,
        "pos_embed_seq_len": None,
    }


# -- config from tensor shapes -------------------------------------------------------------------
def _shape(state: Mapping[str, torch.Tensor], key: str, why: str) -> tuple[int, ...]:
    if key not in state:
        raise CheckpointError(
            f"cannot infer the model config ({why}): key {key!r} is missing; pass --preset (preset=) or config="
        )
    return tuple(state[key].shape)


def detect_mla(state: Mapping[str, torch.Tensor]) -> tuple[MLAConfig | None, tuple[int, ...], int | None]:
    """(MLA dims, MLA layers, heads) read from ``blocks.N.self_attn.kv_down`` & co; (None, (), None) if dense.

    RoPE pairs are not visible in shapes: they are assumed split over (t, h, w) the way
    :func:`~videomla.config.mla_config` does, which gives the paper's (6, 5, 5) for 32 channels.
    """
    layers = sorted(
        int(m[1]) for k in state if (m := re.fullmatch(r"blocks\.(\d+)\.self_attn\.kv_down\.weight", k)) is not None
    )
    found: dict[tuple, list[int]] = {}
    for i in layers:
        p = f"blocks.{i}.self_attn."
        why = f"MLA layer {i}"
        d_q = _shape(state, p + "q_down.weight", why)[0]
        d_c = _shape(state, p + "kv_down.weight", why)[0]
        rope = _shape(state, p + "k_rope.weight", why)[0]
        heads = _shape(state, p + "q_rope.weight", why)[0] // rope
        nope = _shape(state, p + "q_up.weight", why)[0] // heads
        dims = (d_c, d_q, nope, rope, p + "kv_norm.weight" in state, heads)
        found.setdefault(dims, []).append(i)
    if not found:
        return None, (), None
    if len(found) > 1:
        desc = "; ".join(f"layers {v}: d_c {d[0]}, d_q {d[1]}, nope {d[2]}, rope {d[3]}" for d, v in found.items())
        raise CheckpointError(f"MLA layers have different dims ({desc}); a model has one MLAConfig")
    (d_c, d_q, nope, rope, norm, heads) = next(iter(found))
    axes = rope_axis_dims(nope + rope)
    pairs = _split_pairs(rope // 2, (axes[0] // 2, axes[1] // 2, axes[2] // 2))
    mla = MLAConfig(
        kv_latent_dim=d_c, q_latent_dim=d_q, nope_head_dim=nope, rope_head_dim=rope, rope_pairs=pairs, latent_norm=norm
    )
    return mla, tuple(layers), heads


def infer_config(state: Mapping[str, torch.Tensor], num_heads: int | None = None, eps: float = 1e-6) -> ModelConfig:
    """A config from tensor shapes alone; the head count must be known (MLA keys, a known width, or given)."""
    dim, in_channels, *patch = _shape(state, "patch_embedding.weight", "width")
    text_dim = _shape(state, "text_embedding.0.weight", "text width")[1]
    freq_dim = _shape(state, "time_embedding.0.weight", "timestep features")[1]
    ffn_dim = _shape(state, "blocks.0.ffn.0.weight", "FFN width")[0]
    head_out = _shape(state, "head.head.weight", "output channels")[0]
    layers = {int(m[1]) for k in state if (m := re.match(r"blocks\.(\d+)\.", k)) is not None}
    mla, mla_layers, mla_heads = detect_mla(state)
    heads = num_heads or mla_heads or KNOWN_HEADS.get(dim)
    if heads is None:
        raise CheckpointError(
            f"cannot tell the number of attention heads of a dim-{dim} model from tensor shapes "
            f"(known: {KNOWN_HEADS}); pass --preset (preset=) or config="
        )
    return ModelConfig(
        dim=dim,
        num_heads=heads,
        num_layers=max(layers) + 1,
        ffn_dim=ffn_dim,
        in_channels=in_channels,
        out_channels=head_out // (patch[0] * patch[1] * patch[2]),
        text_dim=text_dim,
        freq_dim=freq_dim,
        patch_size=tuple(patch),
        eps=eps,
        mla=mla,
        mla_layers=mla_layers,
    )


def describe_config(cfg: ModelConfig) -> str:
    text = f"dim {cfg.dim}, {cfg.num_heads} heads x {cfg.head_dim}, {cfg.num_layers} layers, ffn {cfg.ffn_dim}"
    return text + (f", MLA in layers {list(cfg.mla_layers)}" if cfg.mla_layers else ", dense attention")


def resolve_config(
    state: Mapping[str, torch.Tensor],
    stored: ModelConfig | None,
    preset: str | None = None,
    config: ModelConfig | None = None,
) -> tuple[ModelConfig, str]:
    """The model config and a phrase naming where it came from (for error messages).

    Order: the checkpoint's own config (checked against ``config``/``preset`` when given), then
    ``config`` (taken as is), then ``preset`` plus the MLA layers its keys show, then tensor shapes.
    """
    if preset is not None and config is not None:
        raise ValueError("pass either preset or config, not both")
    if stored is not None:
        given, label = (config, "the given config") if config is not None else (None, "")
        if preset is not None:  # presets are dense: compare the shared architecture only
            given = dataclasses.replace(named_preset(preset), mla=stored.mla, mla_layers=stored.mla_layers)
            label = f"preset {preset!r}"
        if given is not None and given != stored:
            diff = [
                f"{f.name} {getattr(stored, f.name)} (checkpoint) vs {getattr(given, f.name)}"
                for f in dataclasses.fields(ModelConfig)
                if getattr(stored, f.name) != getattr(given, f.name)
            ]
            raise CheckpointError(f"the checkpoint's own config differs from {label}: {'; '.join(diff)}")
        return stored, "the config stored in the checkpoint"
    if config is not None:
        return config, "the given config"
    if preset is not None:
        cfg = named_preset(preset)
        mla, layers, _ = detect_mla(state)
        if mla is not None and not cfg.mla_layers:
            return dataclasses.replace(cfg, mla=mla, mla_layers=layers), f"preset {preset!r} + MLA found in its keys"
        return cfg, f"preset {preset!r}"
    return infer_config(state), "the config inferred from tensor shapes"


# -- validation ----------------------------------------------------------------------------------
def _listing(label: str, items: list[str]) -> str:
    shown = ", ".join(items[:_LIST_LIMIT])
    more = f", ... and {len(items) - _LIST_LIMIT} more" if len(items) > _LIST_LIMIT else ""
    return f"\n  {len(items)} {label}: {shown}{more}"


def expected_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        model = CausalWanModel(cfg)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def check_tensors(state: Mapping[str, torch.Tensor], path: str | Path) -> None:
    """Refuse non-floating tensors and NaN/Inf values, naming the first offending tensors.

    One reduction per tensor (``isfinite().all()``); counts are taken only for the bad ones. A
    checkpoint with NaN weights would otherwise generate flat one-colour frames with exit 0.
    """
    wrong_dtype = [
        f"{k} ({str(v.dtype).removeprefix('torch.')})" for k, v in state.items() if not v.is_floating_point()
    ]
    if wrong_dtype:
        raise CheckpointError(
            f"checkpoint {path} holds non-floating tensors; model weights must be float (fp32, bf16, fp16):"
            + _listing("tensors", wrong_dtype)
        )
    bad = []
    for key, value in state.items():
        if value.device.type == "meta" or value.numel() == 0:
            continue
        if not bool(torch.isfinite(value).all()):
            nan = int(torch.isnan(value).sum())
            inf = int(torch.isinf(value).sum())
            what = ", ".join(part for part in (f"{nan} NaN" if nan else "", f"{inf} Inf" if inf else "") if part)
            bad.append(f"{key} ({what} of {value.numel()})")
    if bad:
        raise CheckpointError(
            f"checkpoint {path} holds non-finite values (NaN/Inf); it would generate garbage. "
            f"Was it saved from a diverged run?" + _listing("tensors with NaN/Inf", bad)
        )


def check_state_dict(state: Mapping[str, torch.Tensor], cfg: ModelConfig, against: str, path: str | Path) -> None:
    """Raise :class:`CheckpointError` naming missing, unexpected and mis-shaped keys, then bad values.

    Values are checked by :func:`check_tensors` (non-floating dtypes, NaN/Inf).
    """
    want = expected_shapes(cfg)
    missing = [k for k in want if k not in state]
    unexpected = [k for k in state if k not in want]
    misshaped = [
        f"{k} expected {want[k]} found {tuple(state[k].shape)}"
        for k in want
        if k in state and tuple(state[k].shape) != want[k]
    ]
    if missing or unexpected or misshaped:
        msg = f"checkpoint {path} does not fit {against} ({describe_config(cfg)}):"
        for label, items in (
            ("missing keys", missing),
            ("unexpected keys", unexpected),
            ("mis-shaped keys", misshaped),
        ):
            if items:
                msg += _listing(label, items)
        raise CheckpointError(msg)
    check_tensors(state, path)


# -- reading files -------------------------------------------------------------------------------
@contextlib.contextmanager
def _reading(file: Path, how: str) -> Iterator[None]:
    """Turn any failure to parse ``file`` into a one-line CheckpointError naming it."""
    try:
        yield
    except (FileNotFoundError, PermissionError, CheckpointError):
        raise
    except Exception as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"cannot read {file} ({how}): {reason}; is it truncated or corrupt?") from err


def _read_json(file: Path) -> dict[str, Any]:
    with _reading(file, "JSON"):
        data = json.loads(file.read_text())
    if not isinstance(data, dict):
        raise CheckpointError(f"{file} holds a JSON {type(data).__name__}, expected an object")
    return data


def _read_safetensors(files: list[Path]) -> StateDict:
    from safetensors.torch import load_file

    state: StateDict = {}
    for file in tqdm(files, desc="loading shards", unit="file", disable=len(files) < 2):
        with _reading(file, "safetensors"):
            part = load_file(file)
        clash = sorted(set(part) & set(state))
        if clash:
            raise CheckpointError(f"{file} repeats tensors of another shard: {clash[:_LIST_LIMIT]}")
        state.update(part)
    return state


def _read_sharded(index: Path) -> StateDict:
    weight_map = _read_json(index).get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise CheckpointError(f"{index} has no 'weight_map' naming the shard of each tensor")
    files = [index.parent / name for name in sorted(set(weight_map.values()))]
    absent = [str(f) for f in files if not f.is_file()]
    if absent:
        raise CheckpointError(f"shards listed in {index} are missing: {absent}")
    state = _read_safetensors(files)
    lost = sorted(k for k in weight_map if k not in state)
    if lost:
        raise CheckpointError(f"{index} lists {len(lost)} tensors its shards do not hold: {lost[:_LIST_LIMIT]}")
    return state


def _read_torch(file: Path, which: Which) -> tuple[StateDict, str]:
    """A Self-Forcing dict (``generator`` / ``generator_ema``) or a plain state dict; returns (state, which one)."""
    with _reading(file, "torch.load(weights_only=True)"):
        obj = torch.load(file, map_location="cpu", weights_only=True)
    if not isinstance(obj, dict):
        raise CheckpointError(f"{file} holds a {type(obj).__name__}, expected a dict of tensors")
    sets = [k for k in ("generator_ema", "generator") if isinstance(obj.get(k), dict)]
    if sets:
        chosen = {"auto": sets[0], "ema": "generator_ema", "generator": "generator"}[which]
        if chosen not in sets:
            raise CheckpointError(
                f"{file} has no {chosen!r} weights (it holds {sets}); choose one with --which (which=)"
            )
        state = obj[chosen]
    elif which != "auto":
        raise CheckpointError(
            f"{file} is a plain state dict without generator / generator_ema; which={which!r} needs one"
        )
    else:
        chosen, state = "state_dict", obj
    bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(
            f"{file}: {chosen} holds non-tensor entries {bad[:_LIST_LIMIT]} "
            f"(top-level keys {sorted(obj)[:_LIST_LIMIT]}); expected a name -> tensor dict"
        )
    return state, chosen


@dataclasses.dataclass
class _Source:
    """What a path holds, found without reading any tensor."""

    format: str  # videomla | diffusers | wan2.1 | torch
    files: list[Path]  # safetensors files, or the one .pt file
    index: Path | None = None
    config: dict[str, Any] | None = None  # the folder's config.json


def _unknown(path: Path, reason: str) -> CheckpointError:
    return CheckpointError(f"cannot tell the checkpoint format of {path}: {reason}. Accepted: {ACCEPTED}")


def _wan_files(folder: Path) -> tuple[list[Path], Path | None]:
    index = folder / DIFFUSERS_INDEX
    if index.is_file():
        return [], index
    return sorted(folder.glob("diffusion_pytorch_model*.safetensors")), None


# -- what a checkpoint path may be ---------------------------------------------------------------
DEFAULT_CHECKPOINT = Path(__file__).resolve().parent / "weights" / "default"
_TRAIN_STEP = re.compile(r"^step_(\d{8})$")  # a training run's step folders (training/checkpointing.py)


def resolve_checkpoint(path: str | Path | None) -> Path:
    """The one meaning of a checkpoint path, shared by every command and :func:`load_model`.

    ``None``: the embedded default model. A training run folder (holding ``checkpoints/``): its
    newest step's exported model. A step folder (``trainer.json``): its ``model/``. A diffusers
    pipeline root (``transformer/`` inside): that transformer. A folder holding exactly one
    ``.pt``/``.pth`` file and nothing else loadable: that file. Anything else is returned as is
    and the format detector decides.
    """
    if path is None:
        if not (DEFAULT_CHECKPOINT / MODEL_FILE).is_file():
            raise FileNotFoundError(
                f"no default model is installed (expected {DEFAULT_CHECKPOINT}/{MODEL_FILE} + {CONFIG_FILE}); "
                f"pass a checkpoint (--checkpoint PATH)"
            )
        return DEFAULT_CHECKPOINT
    p = Path(path)
    if not p.is_dir():
        return p
    if (p / "checkpoints").is_dir():
        steps = sorted((int(m.group(1)), d) for d in (p / "checkpoints").iterdir() if (m := _TRAIN_STEP.match(d.name)))
        if not steps:
            raise FileNotFoundError(f"training run {p} has no checkpoint yet (nothing in {p / 'checkpoints'})")
        p = steps[-1][1]
    if (p / "trainer.json").is_file():
        if not (p / "model").is_dir():
            raise FileNotFoundError(f"{p} is a training checkpoint without an exported model/ (checkpoint.export)")
        return p / "model"
    if not (p / CONFIG_FILE).is_file() and (p / "transformer" / CONFIG_FILE).is_file():
        return p / "transformer"
    if not (p / CONFIG_FILE).is_file() and not any(p.glob("*.safetensors")):
        pts = sorted(f for f in p.iterdir() if f.suffix in (".pt", ".pth") and f.is_file())
        if len(pts) == 1:
            return pts[0]
    return p


def _check_path(path: Path) -> None:
    """Symbolic link loops, unreadable paths and odd file types, as one named error each."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        if path.is_symlink():
            target = os.readlink(path)
            raise FileNotFoundError(f"no checkpoint at {path}: a symbolic link to nothing ({target})") from None
        raise FileNotFoundError(f"no checkpoint at {path}") from None
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise CheckpointError(f"checkpoint path {path} is a symbolic link loop") from None
        raise CheckpointError(f"cannot open checkpoint {path}: {err.strerror or err}") from None
    if not (stat.S_ISREG(info.st_mode) or stat.S_ISDIR(info.st_mode)):
        raise CheckpointError(f"checkpoint path {path} is not a regular file or folder")
    if not os.access(path, os.R_OK | (os.X_OK if stat.S_ISDIR(info.st_mode) else 0)):
        raise PermissionError(f"cannot read checkpoint {path}: permission denied")


def _not_a_checkpoint(file: Path, reason: str) -> CheckpointError:
    return CheckpointError(f"{file} is not a checkpoint: {reason}")


def sniff_safetensors(file: Path) -> None:
    """Check a .safetensors file's header and size without reading tensors; a named error if it is not one.

    Layout: an 8-byte little-endian header length N, N bytes of JSON, then the tensor bytes the
    header's ``data_offsets`` point into.
    """
    size = file.stat().st_size
    if size == 0:
        raise _not_a_checkpoint(file, "it is empty (0 bytes)")
    with _reading(file, "safetensors header"), open(file, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise _not_a_checkpoint(file, f"{size} bytes is too short for a safetensors header")
        n = int.from_bytes(head, "little")
        if n < 2 or n > min(size - 8, 100_000_000):
            raise _not_a_checkpoint(file, "it does not start with a safetensors header (random or foreign bytes?)")
        raw = f.read(n)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, ValueError):
        raise _not_a_checkpoint(file, "its safetensors header is not valid JSON (random or foreign bytes?)") from None
    if not isinstance(header, dict):
        raise _not_a_checkpoint(file, "its safetensors header is not a JSON object")
    ends = [
        v["data_offsets"][1]
        for k, v in header.items()
        if k != "__metadata__" and isinstance(v, dict) and isinstance(v.get("data_offsets"), list)
    ]
    if len(ends) != len(header) - ("__metadata__" in header):
        raise _not_a_checkpoint(file, "its safetensors header lists entries without data_offsets")
    if not ends:
        raise _not_a_checkpoint(file, "it holds no tensors (a header only)")
    need = 8 + n + max(ends)
    if size < need:
        raise CheckpointError(
            f"{file} is truncated: its header describes {need:,} bytes, the file holds {size:,}; "
            f"copy or download it again"
        )


def sniff_torch(file: Path) -> None:
    """Check a .pt/.pth file looks like ``torch.save`` output (a complete zip, or a legacy pickle)."""
    import zipfile

    size = file.stat().st_size
    if size == 0:
        raise _not_a_checkpoint(file, "it is empty (0 bytes)")
    with _reading(file, "torch file header"), open(file, "rb") as f:
        magic = f.read(4)
    if magic == b"PK\x03\x04":
        if not zipfile.is_zipfile(file):
            raise CheckpointError(f"{file} is truncated: its zip directory (the end of a torch.save file) is missing")
        return
    if magic[:1] == b"\x80" and magic[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return  # a legacy (pre-1.6) torch.save pickle; torch.load(weights_only=True) reads it safely
    raise _not_a_checkpoint(file, "it is neither a torch.save zip nor a pickle (random or foreign bytes?)")


def _detect(path: str | Path | None) -> _Source:
    if path is not None:
        _check_path(Path(path))
    path = resolve_checkpoint(path)
    _check_path(path)
    if path.is_file():
        name = path.name
        if name.endswith(".index.json"):
            return _Source("wan2.1", [], index=path)
        if path.suffix == ".safetensors":
            sniff_safetensors(path)
            return _Source("wan2.1", [path])
        if path.suffix in (".pt", ".pth"):
            sniff_torch(path)
            return _Source("torch", [path])
        raise _unknown(path, f"a {path.suffix or 'suffix-less'} file")
    config = _read_json(path / CONFIG_FILE) if (path / CONFIG_FILE).is_file() else None
    files, index = _wan_files(path)
    if config is not None and config.get("format") == "videomla":
        if (path / MODEL_FILE).is_file():
            sniff_safetensors(path / MODEL_FILE)
            return _Source("videomla", [path / MODEL_FILE], config=config)
        if (path / MODEL_INDEX).is_file():
            return _Source("videomla", [], index=path / MODEL_INDEX, config=config)
        raise CheckpointError(f"videomla checkpoint {path} has config.json but neither {MODEL_FILE} nor {MODEL_INDEX}")
    if (
        config is not None
        and "_class_name" in config
        and config["_class_name"] not in ("WanTransformer3DModel", "WanModel")
    ):
        raise CheckpointError(f"{path / CONFIG_FILE} describes a {config['_class_name']}, not a Wan2.1 transformer")
    if files or index:
        for file in files:
            sniff_safetensors(file)
        fmt = "diffusers" if config and config.get("_class_name") == "WanTransformer3DModel" else "wan2.1"
        return _Source(fmt, files, index=index, config=config)
    if (path / MODEL_FILE).is_file():
        sniff_safetensors(path / MODEL_FILE)
        return _Source("videomla", [path / MODEL_FILE])
    listing = sorted(p.name for p in path.iterdir())[:_LIST_LIMIT]
    raise _unknown(path, f"the folder holds no checkpoint files (found {listing or 'nothing'})")


def _stored_config(source: _Source, state: Mapping[str, torch.Tensor]) -> ModelConfig | None:
    """The config a checkpoint carries: ours, a diffusers config.json, or Wan's (heads and eps)."""
    cfg = source.config
    if cfg is None:
        return None
    if source.format == "videomla":
        try:
            return ModelConfig.from_dict(cfg["model"])
        except (KeyError, TypeError, ValueError) as err:
            folder = (source.index or source.files[0]).parent
            raise CheckpointError(f"{folder / CONFIG_FILE}: invalid model config: {err}") from err
    if cfg.get("_class_name") == "WanTransformer3DModel":
        return config_from_diffusers(cfg)
    if cfg.get("_class_name") == "WanModel":  # the original release: heads and eps, the rest from shapes
        if cfg.get("model_type", "t2v") != "t2v":
            raise CheckpointError(f"Wan model_type {cfg['model_type']!r}: VideoMLA supports text-to-video (t2v) only")
        return infer_config(state, num_heads=cfg.get("num_heads"), eps=float(cfg.get("eps", 1e-6)))
    return None


def _metadata(source: _Source) -> dict[str, Any]:
    if source.format == "videomla" and source.config is not None:
        return {k: v for k, v in source.config.items() if k != "model"}
    return {"format": source.format}


def load_metadata(path: str | Path) -> dict[str, Any]:
    """Metadata saved with :func:`save_model` plus ``format``; foreign formats give only ``format``.

    Reads config.json only, never the tensors.
    """
    return _metadata(_detect(path))


def read_checkpoint(path: str | Path, which: Which = "auto") -> tuple[StateDict, ModelConfig | None, dict[str, Any]]:
    """(state dict under our names, the config the checkpoint carries or None, metadata).

    ``which`` picks Self-Forcing's ``generator_ema`` or ``generator`` (auto: EMA when present);
    metadata then holds ``state``, the one read.
    """
    if which not in WHICH:
        raise ValueError(f"which must be 'auto', 'ema' or 'generator', got {which!r}")
    source = _detect(path)
    metadata = _metadata(source)
    if source.format == "torch":
        raw, metadata["state"] = _read_torch(source.files[0], which)
    else:
        if which != "auto":
            raise CheckpointError(
                f"which={which!r} chooses between Self-Forcing's generator and generator_ema weights; "
                f"{path} is a {source.format} checkpoint with one set"
            )
        raw = _read_sharded(source.index) if source.index else _read_safetensors(source.files)
    state, _ = normalize_keys(raw, str(path))
    return state, _stored_config(source, state), metadata


# -- component folders (Wan VAE, UMT5 text encoder) -----------------------------------------------
_WEIGHT_GLOBS = ("*.safetensors", "*.bin", "*.pt", "*.pth")


def _component_path(folder: Path, what: str, expected: str) -> None:
    try:
        _check_path(folder)
    except FileNotFoundError:
        raise FileNotFoundError(f"no {what} at {folder}: expected {expected}") from None
    if not folder.is_dir():
        raise CheckpointError(f"{what} path {folder} is a file; expected {expected}")


def _component_config(folder: Path, what: str, expected: str) -> dict[str, Any]:
    config = folder / CONFIG_FILE
    if not config.is_file():
        raise FileNotFoundError(f"no {what} at {folder}: expected {expected}")
    return _read_json(config)


def _component_weights(folder: Path, what: str) -> None:
    files = [f for pattern in _WEIGHT_GLOBS for f in folder.glob(pattern) if f.is_file()]
    if not files:
        raise FileNotFoundError(f"{what} folder {folder} has a config.json but no weights (*.safetensors or *.bin)")
    for file in files:
        if file.suffix == ".safetensors":
            sniff_safetensors(file)
        elif file.stat().st_size == 0:
            raise _not_a_checkpoint(file, "it is empty (0 bytes)")


def check_vae_folder(path: str | Path) -> Path:
    """The Wan2.1 VAE folder to load from ``path`` (itself or its ``vae/``), checked before diffusers sees it.

    Refuses, with the path and what is expected: a missing path, a symbolic link loop, a folder
    without ``config.json``, a config that is not JSON or not an ``AutoencoderKLWan``, a folder
    without weights, and empty, random or truncated ``.safetensors`` weights.
    """
    expected = (
        "a diffusers AutoencoderKLWan folder (config.json + diffusion_pytorch_model.safetensors), "
        "e.g. Wan2.1-T2V-1.3B-Diffusers/vae"
    )
    folder = Path(path)
    _component_path(folder, "Wan VAE", expected)
    if (folder / "vae" / CONFIG_FILE).is_file():
        folder = folder / "vae"
    config = _component_config(folder, "Wan VAE", expected)
    name = config.get("_class_name")
    if name != "AutoencoderKLWan":
        raise CheckpointError(
            f"{folder / CONFIG_FILE} describes {name or 'no diffusers class'}, not an AutoencoderKLWan"
        )
    _component_weights(folder, "Wan VAE")
    return folder


def check_text_encoder_folder(path: str | Path) -> tuple[Path, Path]:
    """(encoder folder, tokenizer folder) of a UMT5 text encoder at ``path``, checked before transformers sees it.

    ``path`` is a Wan2.1 diffusers root (``text_encoder/`` + ``tokenizer/``) or one folder holding
    the encoder's config.json + weights and the tokenizer files.
    """
    expected = (
        "a folder with text_encoder/ and tokenizer/ (a Wan2.1 diffusers root) or one with the encoder's "
        "config.json + *.safetensors and the tokenizer files (tokenizer.json or spiece.model)"
    )
    root = Path(path)
    _component_path(root, "UMT5 text encoder", expected)
    if (root / "text_encoder").is_dir() and (root / "tokenizer").is_dir():
        enc_dir, tok_dir = root / "text_encoder", root / "tokenizer"
    else:
        enc_dir = tok_dir = root
    config = _component_config(enc_dir, "UMT5 text encoder", expected)
    kinds = config.get("architectures") or [config.get("model_type")]
    if config.get("model_type") not in ("umt5", "t5", "mt5"):
        raise CheckpointError(f"{enc_dir / CONFIG_FILE} describes {kinds}, not a UMT5 encoder (model_type 'umt5')")
    _component_weights(enc_dir, "UMT5 text encoder")
    tokenizer_files = ("tokenizer.json", "spiece.model", "tokenizer.model")
    if not any((tok_dir / name).is_file() for name in tokenizer_files):
        raise FileNotFoundError(f"no tokenizer in {tok_dir}: expected one of {list(tokenizer_files)}")
    return enc_dir, tok_dir


# -- loading a model -----------------------------------------------------------------------------
def _load_dtype(state: Mapping[str, torch.Tensor]) -> torch.dtype:
    """The checkpoint's float dtype when uniform and computable, else fp32 (lossless for mixed ones)."""
    dtypes = {v.dtype for v in state.values() if v.is_floating_point()}
    if len(dtypes) == 1 and next(iter(dtypes)) in (torch.float32, torch.bfloat16, torch.float16, torch.float64):
        return dtypes.pop()
    return torch.float32


def model_from_state(
    state: Mapping[str, torch.Tensor],
    cfg: ModelConfig,
    against: str = "the given config",
    path: str | Path = "<state dict>",
    device: torch.device | str = "cpu",
    dtype: torch.dtype | None = None,
) -> CausalWanModel:
    """Validate ``state`` against ``cfg`` and build the model around it without a random init."""
    check_state_dict(state, cfg, against, path)
    with torch.device("meta"):  # skip the (for 1.3B: ~20 s) random init; the weights are assigned
        model = CausalWanModel(cfg)
    model.load_state_dict(state, strict=True, assign=True)
    return model.to(device=device, dtype=dtype or _load_dtype(state)).eval()


def load_model(
    path: str | Path,
    preset: str | None = None,
    config: ModelConfig | None = None,
    which: Which = "auto",
    device: torch.device | str = "cpu",
    dtype: torch.dtype | None = None,
) -> CausalWanModel:
    """A :class:`CausalWanModel` from any supported checkpoint (see the module docstring).

    The config comes from the checkpoint when it carries one, else ``config``, else ``preset``
    (plus MLA layers found in the keys), else tensor shapes. ``dtype=None`` keeps the
    checkpoint's dtype (fp32 when it mixes dtypes).
    """
    state, stored, _ = read_checkpoint(path, which)
    cfg, against = resolve_config(state, stored, preset, config)
    return model_from_state(state, cfg, against, path, device, dtype)


# -- writing -------------------------------------------------------------------------------------
@contextlib.contextmanager
def _atomic_folder(target: Path, owned: set[str]) -> Iterator[Path]:
    """Yield a temp folder beside ``target``; on success it replaces ``target`` by renames.

    A crash before the swap leaves the old checkpoint untouched. ``target`` may only be replaced
    when it holds nothing but the files this writer owns, so no foreign file is ever deleted.
    The folder and its files get the umask's normal modes (see :func:`videomla.io_utils.atomic_folder`).
    """
    from .io_utils import atomic_folder

    target = Path(target)
    if target.exists():
        if not target.is_dir():
            raise CheckpointError(f"{target} exists and is not a folder")
        foreign = sorted(p.name for p in target.iterdir() if p.name not in owned)
        if foreign:
            raise CheckpointError(f"refusing to replace {target}: it holds files a checkpoint does not own: {foreign}")
    with atomic_folder(target) as tmp:
        yield tmp


def _cpu_state(state: Mapping[str, torch.Tensor], rename: Callable[[str], str] | None = None) -> StateDict:
    """Contiguous CPU tensors (safetensors needs them), dtypes kept, optionally renamed."""
    return {(rename(k) if rename else k): v.detach().to("cpu").contiguous() for k, v in state.items()}


def _write_json(file: Path, data: dict[str, Any]) -> None:
    file.write_text(json.dumps(data, indent=2) + "\n")


def _shards(state: StateDict, max_bytes: int) -> list[StateDict]:
    """Consecutive groups of tensors of at most ``max_bytes`` each (a larger tensor gets its own)."""
    groups: list[StateDict] = [{}]
    size = 0
    for key, tensor in state.items():
        if groups[-1] and size + tensor.nbytes > max_bytes:
            groups.append({})
            size = 0
        groups[-1][key] = tensor
        size += tensor.nbytes
    return groups


def save_model(
    model: CausalWanModel,
    out_dir: str | Path,
    metadata: dict[str, Any] | None = None,
    max_shard_bytes: int | None = None,
) -> Path:
    """Write ``out_dir`` = model.safetensors + config.json (format videomla, the model config, ``metadata``).

    ``metadata`` is any JSON-serialisable dict (e.g. ``{"codec": {...}, "text_encoder": {...}}``),
    read back by :func:`load_metadata`. ``max_shard_bytes``: a model whose tensors take more is split
    Hugging Face style into ``model-0000k-of-0000n.safetensors`` + ``model.safetensors.index.json``
    (for file-size limits: repositories, transfer caps). Atomic: an existing checkpoint is replaced
    only once the new one is completely written.
    """
    from safetensors.torch import save_file

    metadata = dict(metadata or {})
    taken = sorted(set(metadata) & set(RESERVED_METADATA))
    if taken:
        raise ValueError(f"metadata keys {taken} are reserved ({list(RESERVED_METADATA)})")
    config = {"format": "videomla", "format_version": FORMAT_VERSION, "model": model.config.to_dict(), **metadata}
    try:
        json.dumps(config)
    except (TypeError, ValueError) as err:
        raise ValueError(f"checkpoint metadata must be JSON-serialisable: {err}") from err
    if max_shard_bytes is not None and max_shard_bytes < 1:
        raise ValueError(f"max_shard_bytes must be >= 1, got {max_shard_bytes}")
    out = Path(out_dir)
    state = _cpu_state(model.state_dict())
    groups = _shards(state, max_shard_bytes) if max_shard_bytes else [state]
    owned = {MODEL_FILE, MODEL_INDEX, CONFIG_FILE}
    if out.is_dir():  # the shards of an earlier save are this writer's too
        owned |= {p.name for p in out.iterdir() if _MODEL_SHARD.match(p.name)}
    with _atomic_folder(out, owned) as tmp:
        if len(groups) == 1:
            save_file(state, tmp / MODEL_FILE, metadata={"format": "pt"})
        else:
            weight_map = {}
            for k, group in enumerate(groups, 1):
                name = f"model-{k:05d}-of-{len(groups):05d}.safetensors"
                save_file(group, tmp / name, metadata={"format": "pt"})
                weight_map.update(dict.fromkeys(group, name))
            total = sum(t.nbytes for t in state.values())
            _write_json(tmp / MODEL_INDEX, {"metadata": {"total_size": total}, "weight_map": weight_map})
        _write_json(tmp / CONFIG_FILE, config)
    return out


def export_diffusers(model: CausalWanModel, out_dir: str | Path) -> Path:
    """Write a dense model as a diffusers ``WanTransformer3DModel`` folder (loadable by ``from_pretrained``)."""
    from safetensors.torch import save_file

    config = config_to_diffusers(model.config)
    out = Path(out_dir)
    with _atomic_folder(out, {DIFFUSERS_FILE, CONFIG_FILE}) as tmp:
        save_file(_cpu_state(model.state_dict(), to_diffusers_key), tmp / DIFFUSERS_FILE, metadata={"format": "pt"})
        _write_json(tmp / CONFIG_FILE, config)
    return out


__all__ = [
    "CheckpointError",
    "check_state_dict",
    "check_tensors",
    "check_text_encoder_folder",
    "check_vae_folder",
    "config_from_diffusers",
    "config_to_diffusers",
    "detect_mla",
    "export_diffusers",
    "from_diffusers_key",
    "infer_config",
    "load_metadata",
    "load_model",
    "model_from_state",
    "normalize_keys",
    "read_checkpoint",
    "resolve_config",
    "save_model",
    "to_diffusers_key",
]
