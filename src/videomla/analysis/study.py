"""The rank study of ``videomla rank`` as a Python API: models in, records and files out.

:func:`targets` names the models (checkpoints, or a random init of a preset); :func:`rank_study`
computes the spectra of every self-attention operator (and, with :class:`ActivationInputs`, of
what the KV cache holds) and returns a :class:`RankStudy` of per-model records, which writes
ranks.json, ranks.csv, spectra.safetensors and the plots. The command only parses its flags into
these calls, so errors name the options as the command spells them (``--rank`` is ``rank=``).

    from videomla.analysis import rank_study, targets

    study = rank_study(targets(["runs/a/step_500", "runs/a/step_900"]), rank=192)
    study.models[1].summary  # per operator group: median / min / max r_tau, energy at rank 192
    study.write("ranks/")    # ranks.json, ranks.csv, spectra.safetensors
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from ..checkpoint import Which, check_tensors, model_from_state, read_checkpoint, resolve_config
from ..config import ModelConfig, StreamConfig
from ..config import preset as preset_config
from ..io_utils import atomic_file, atomic_write_text
from ..model import CausalWanModel
from ..tables import Column, records_table
from . import plots
from .activations import activation_spectra, capture_cached, check_capture_args
from .rank import (
    SVD_DTYPE,
    TAUS,
    Spectrum,
    default_rank,
    random_init_layers,
    self_attention_layers,
    summarise,
    weight_spectra,
)

Layers = Iterable[tuple[int, Mapping[str, torch.Tensor]]]
_STEP_WORDS = re.compile(
    r"(?<![A-Za-z])(?:global_step|step|iteration|iter|it|ckpt|checkpoint)[_\-=]?(\d+)", re.IGNORECASE
)
_TRAILING_DIGITS = re.compile(r"(?:^|[_\-])(\d+)$")  # 'model_9500', not 'sink1' or 'wan2'
_SUFFIXES = re.compile(r"(\.index\.json|\.safetensors|\.pth?|\.bin|\.ckpt)+$")
CSV_FIELDS = ("label", "step", "path", "layer", "source", "kind", "operator", "rows", "cols", "rank_bound", "budget")


# -- what to analyse ---------------------------------------------------------------------------------
@dataclass
class Target:
    """One model to analyse: a checkpoint ``path``, or (path None) a random init of ``config``.

    ``preset``: a checkpoint's architecture when it carries no config (needed to build the model
    for the activation analysis).
    """

    label: str
    path: Path | None
    step: int | None
    config: ModelConfig | None = None
    preset: str | None = None


def _name(path: Path) -> str:
    """A checkpoint's name without checkpoint suffixes ('.safetensors', '.index.json', '.pt' ...)."""
    return _SUFFIXES.sub("", path.name)


def parse_step(path: Path) -> int | None:
    """A training step from a checkpoint's name, else its parent folder's ('step500', 'ckpt-001200', 'model_950')."""
    for name in (_name(path), path.parent.name):
        for pattern in (_STEP_WORDS, _TRAILING_DIGITS):
            found = pattern.findall(name)
            if found:
                return int(found[-1])
    return None


def _labels(paths: list[Path]) -> list[str]:
    """Checkpoint names, or parent/name where names collide (run_a/model.pt, run_b/model.pt)."""
    names = [_name(p) for p in paths]
    if len(set(names)) == len(names):
        return names
    labels = [f"{p.parent.name}/{n}" for p, n in zip(paths, names)]
    if len(set(labels)) != len(labels):
        raise ValueError("checkpoints have the same names; give --labels")
    return labels


def targets(
    checkpoints: Sequence[str | Path] = (),
    *,
    preset: str | None = None,
    attention: str | None = None,
    labels: Sequence[str] | None = None,
) -> list[Target]:
    """Checkpoints (``preset`` then names their config when they carry none), or a random init of ``preset``.

    ``attention`` ("dense" or "mla") picks the random init's attention; ``labels`` replace the
    names shown and written (default: checkpoint names, parent/name where they collide).
    """
    if checkpoints:
        if attention is not None:
            raise ValueError("--attention picks the random-init preset's attention; checkpoints carry their own")
        paths = [Path(p) for p in checkpoints]
        missing = [str(p) for p in paths if not p.exists()]
        if missing:
            raise FileNotFoundError(f"no checkpoint at {', '.join(missing)}")
        out = [Target(label, p, parse_step(p), preset=preset) for p, label in zip(paths, _labels(paths))]
    elif preset:
        cfg = preset_config(preset)
        if attention == "mla":
            cfg = cfg.with_mla()
        out = [Target(f"{preset}-{attention or 'dense'}-init", None, None, cfg)]
    else:
        raise ValueError("give CHECKPOINT paths, or --preset NAME to analyse a random init")
    if labels is not None:
        if len(labels) != len(out):
            raise ValueError(f"--labels gives {len(labels)} labels for {len(out)} models")
        if len(set(labels)) != len(labels):
            raise ValueError("--labels must be distinct")
        for t, label in zip(out, labels):
            t.label = label
    return out


# -- the study ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ActivationInputs:
    """The random inputs whose cached tensors are analysed (``--activations``; see :func:`capture_cached`).

    Checked when made, so a bad value fails before minutes of SVDs, not after.
    """

    stream: StreamConfig = field(default_factory=StreamConfig)
    chunks: int = 3
    batch: int = 2
    latent_size: tuple[int, int] = (16, 16)
    text_tokens: int = 16
    timestep: float = 0.0

    def __post_init__(self) -> None:
        check_capture_args(self.chunks, self.batch, self.text_tokens)
        if min(self.latent_size) < 1:
            raise ValueError(f"--latent-size must be positive, got {list(self.latent_size)}")

    def describe(self, seed: int) -> dict[str, Any]:
        """The ``activations`` entry of ranks.json."""
        return {
            "inputs": "standard normal latents and text features",
            "chunks": self.chunks,
            "batch": self.batch,
            "latent_size": list(self.latent_size),
            "text_tokens": self.text_tokens,
            "timestep": self.timestep,
            "seed": seed,
            "stream": {
                "frames_per_chunk": self.stream.frames_per_chunk,
                "sink": self.stream.sink_frames,
                "window": self.stream.window_frames,
            },
        }


@dataclass
class ModelRanks:
    """One model's numbers: a row per layer and operator, a summary per operator group, the spectra."""

    label: str
    path: str | None
    step: int | None
    k: int  # the rank at which the energy kept is reported
    layers: list[dict]
    summary: list[dict]
    spectra: list[Spectrum] = field(repr=False)
    notes: list[str] = field(default_factory=list)  # caveats on the numbers (too few tokens for a full rank)

    def record(self) -> dict[str, Any]:
        """This model's entry under ``checkpoints`` in ranks.json."""
        return {
            "label": self.label,
            "path": self.path,
            "step": self.step,
            "k": self.k,
            "layers": self.layers,
            "summary": self.summary,
        }


@dataclass
class RankStudy:
    """What :func:`rank_study` returns: one :class:`ModelRanks` per target and the settings used."""

    models: list[ModelRanks]
    fold_dense_gains: bool
    activations: ActivationInputs | None
    seed: int

    @property
    def notes(self) -> list[str]:
        return [note for m in self.models for note in m.notes]

    def to_dict(self) -> dict[str, Any]:
        """ranks.json: the settings, then every model's record."""
        return {
            "svd_dtype": str(SVD_DTYPE).removeprefix("torch."),
            "taus": list(TAUS),
            "energy": "squared singular values",
            "fold_dense_gains": self.fold_dense_gains,
            "activations": None if self.activations is None else self.activations.describe(self.seed),
            "checkpoints": [m.record() for m in self.models],
        }

    def write(self, out: str | Path) -> None:
        """ranks.json, ranks.csv and spectra.safetensors in ``out`` (created), each written atomically."""
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "ranks.json", json.dumps(self.to_dict(), indent=1) + "\n")
        atomic_write_text(out / "ranks.csv", self.csv())
        self.write_spectra(out / "spectra.safetensors")

    def csv(self) -> str:
        """One row per model, layer and operator: CSV_FIELDS, then the numbers of :meth:`Spectrum.row`."""
        buf = io.StringIO()
        first = self.models[0].layers[0]
        fields = list(CSV_FIELDS) + [k for k in first if k not in CSV_FIELDS]
        writer = csv.DictWriter(buf, fields, lineterminator="\n")
        writer.writeheader()
        for m in self.models:
            for row in m.layers:
                writer.writerow({"label": m.label, "step": m.step, "path": m.path, **row})
        return buf.getvalue()

    def write_spectra(self, path: Path) -> None:
        """Every singular value, float64, keyed ``label/source/kind/operator/layer``."""
        from safetensors.torch import save

        tensors = {f"{m.label}/{s.group}/{s.layer}": s.values.contiguous() for m in self.models for s in m.spectra}
        with atomic_file(path) as f:  # save() returns the bytes: one atomic write, nothing left on failure
            f.write(save(tensors, metadata={"content": "singular values, descending, float64"}))

    def summary_table(self, per_layer: bool = False) -> str:
        """The terminal table: per model and operator group, medians over layers (``per_layer``: every layer too)."""
        rows = [{"label": m.label, **s} for m in self.models for s in m.summary]
        k_values = {m.k for m in self.models}
        energy = f"E({k_values.pop()})" if len(k_values) == 1 else "E(K)"
        cols: list[Column] = [("label", "model", ""), ("group", "operator", ""), ("layers", "layers", "d")]
        cols += [("shape", "shape", ""), ("rank_bound", "max", "d")]
        cols += [(f"median r_{t:.2f}", f"r_{t:.2f}", "g") for t in TAUS]
        cols += [("min r_0.99", "min r_0.99", "d"), ("max r_0.99", "max r_0.99", "d")]
        cols += [("median energy_at_k", energy, ".3f"), ("median r_0.99/bound", "r_0.99/max", ".3f")]
        cols += [("random r_0.99", "random r_0.99", "d")]
        text = [
            "median over layers; r_tau = smallest k keeping tau of sum s_i^2; max = structural rank bound;",
            "random = r_0.99 of an i.i.d. Gaussian matrix (factored: a product of Gaussian factors) of the same shape",
            records_table(rows, cols),
        ]
        if per_layer:
            layer_rows = [{"label": m.label, **r} for m in self.models for r in m.layers]
            cols = [("label", "model", ""), ("layer", "layer", "d"), ("source", "source", ""), ("kind", "kind", "")]
            cols += [("operator", "op", "")] + [(f"r_{t:.2f}", f"r_{t:.2f}", "d") for t in TAUS]
            cols += [("energy_at_k", "E(K)", ".3f"), ("r_0.99/bound", "r/max", ".3f")]
            text.append(records_table(layer_rows, cols))
        return "\n".join(text)

    def write_plots(self, out: str | Path) -> list[Path]:
        """Spectra, energy and per-layer rank PNGs per model; with several models, rank over training.

        Raises :class:`~videomla.analysis.plots.PlotsUnavailable` without matplotlib.
        """
        out = Path(out)
        written = []
        names = [re.sub(r"[^A-Za-z0-9._-]+", "_", m.label) for m in self.models]
        if len(set(names)) < len(names):  # labels differing only in special characters
            names = [f"{i}-{name}" for i, name in enumerate(names)]
        for m, name in zip(self.models, names):
            for kind, draw in (("spectra", plots.plot_spectra), ("energy", plots.plot_energy)):
                path = out / f"{kind}-{name}.png"
                title = f"{m.label}: {'normalised singular values' if kind == 'spectra' else 'cumulative energy'}"
                draw(m.spectra, m.k, path, title)
                written.append(path)
            path = out / f"layer-ranks-{name}.png"
            plots.plot_layer_ranks(m.layers, path, f"{m.label}: effective rank per layer")
            written.append(path)
        if len(self.models) > 1:
            steps = [m.step for m in self.models]
            use_steps = None not in steps and len(set(steps)) == len(steps)
            points = [
                {
                    "x": m.step if use_steps else i,
                    "group": s["group"],
                    "median": s["median r_0.99"],
                    "min": s["min r_0.99"],
                    "max": s["max r_0.99"],
                    "bound": s["rank_bound"],
                    "random": s["random r_0.99"],
                }
                for i, m in enumerate(self.models)
                for s in m.summary
            ]
            path = out / "rank-over-training.png"
            xlabel = "training step (from file names)" if use_steps else "checkpoint"
            plots.plot_over_training(points, path, xlabel, None if use_steps else [m.label for m in self.models])
            written.append(path)
        return written


def rank_study(
    models: Sequence[Target],
    *,
    rank: int | None = None,
    fold_dense_gains: bool = False,
    activations: ActivationInputs | None = None,
    device: str | torch.device = "cpu",
    which: Which = "auto",
    seed: int = 0,
    progress: bool = False,
) -> RankStudy:
    """Spectra and effective ranks of every model in ``models`` (from :func:`targets`).

    ``rank``: K of "energy kept at rank K" (default: the model's d_c, else 192).
    ``fold_dense_gains``: dense W_K, W_Q with their RMSNorm gains folded in (default: raw, as the paper).
    ``activations``: also the cached tensors on these random inputs, forwarded on ``device``.
    ``which``: Self-Forcing checkpoints' EMA or raw generator weights. ``seed``: random inits and
    inputs (the caller's global RNG state is left as it was). ``progress``: tqdm bars on stderr.
    """
    if rank is not None and rank < 1:
        raise ValueError(f"--rank must be >= 1, got {rank}")
    if activations is not None:
        from ..pipeline import resolve_device  # the one device check; imported here to keep analysis light

        device = resolve_device(device)
    results = []
    for target in models:
        with torch.random.fork_rng(devices=[]):
            spectra, notes = _analyse(target, fold_dense_gains, activations, device, which, seed, progress)
        k = rank or default_rank(spectra)
        rows = [s.row(k) for s in spectra]
        path = None if target.path is None else str(target.path)
        results.append(ModelRanks(target.label, path, target.step, k, rows, summarise(rows), spectra, notes))
    return RankStudy(results, fold_dense_gains, activations, seed)


def _sources(target: Target, activations: bool, which: Which, seed: int) -> tuple[Layers, int, CausalWanModel | None]:
    """(self-attention layers, layer count, the model when activations are asked for)."""
    if target.path is None:
        cfg = target.config
        assert cfg is not None
        torch.manual_seed(seed)
        if not activations:  # never hold the whole model: draw one layer at a time
            return random_init_layers(cfg), cfg.num_layers, None
        model = CausalWanModel(cfg)  # weights and activations then come from the same draw
        layers = self_attention_layers(model.state_dict())
        return layers, len(layers), model
    state, stored, _ = read_checkpoint(target.path, which)
    check_tensors(state, target.path)  # NaN/Inf weights have no spectrum
    layers = self_attention_layers(state)
    if not activations:
        return layers, len(layers), None
    cfg, against = resolve_config(state, stored, target.preset)
    return layers, len(layers), model_from_state(state, cfg, against, target.path, dtype=torch.float32)


def _analyse(
    target: Target,
    fold_dense_gains: bool,
    activations: ActivationInputs | None,
    device: str | torch.device,
    which: Which,
    seed: int,
    progress: bool,
) -> tuple[list[Spectrum], list[str]]:
    """One model's spectra (weights, then activations) and notes on them."""
    layers, count, model = _sources(target, activations is not None, which, seed)
    bar = tqdm(layers, total=count, desc=f"{target.label}: weight SVDs", unit="layer", disable=not progress)
    spectra = list(weight_spectra(bar, fold_dense_gains))
    if model is None or activations is None:
        return spectra, []
    model = model.to(device).eval()
    height, width = activations.latent_size
    captured = capture_cached(
        model,
        activations.stream,
        chunks=activations.chunks,
        latent_height=height,
        latent_width=width,
        text_tokens=activations.text_tokens,
        timestep=activations.timestep,
        batch=activations.batch,
        generator=torch.Generator().manual_seed(seed),
    )
    del model
    total = sum(len(t) for _, t in captured.values())
    desc = f"{target.label}: activation SVDs"
    spectra += list(tqdm(activation_spectra(captured), total=total, desc=desc, unit="tensor", disable=not progress))
    tensors = next(iter(captured.values()))[1]
    widest = max(m.shape[1] for m in tensors.values())
    n_tokens = next(iter(tensors.values())).shape[0]
    if n_tokens >= widest:
        return spectra, []
    note = (
        f"note: {target.label}: {n_tokens} tokens < width {widest}: activation ranks are capped at "
        f"{n_tokens} (raise --batch / --latent-size / --chunks)"
    )
    return spectra, [note]
