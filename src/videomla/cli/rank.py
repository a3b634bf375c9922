"""``videomla rank``: effective rank of self-attention operators (paper §5) for checkpoints or a random init.

Per layer: r_tau (tau = 0.90, 0.95, 0.99) and the energy kept at rank K of the stacked dense
[W_K; W_V] and W_Q, or of the composed MLA operators (RMSNorm gains folded in); with
``--activations`` the same for the tensors the KV cache holds on random inputs. Writes
ranks.csv, ranks.json, spectra.safetensors and PNG plots to --out; several checkpoints add a
rank-over-training plot.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import re
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from ..analysis import plots
from ..analysis.activations import activation_spectra, capture_cached, check_capture_args
from ..analysis.rank import (
    SVD_DTYPE,
    TAUS,
    Spectrum,
    default_rank,
    random_init_layers,
    self_attention_layers,
    summarise,
    weight_spectra,
)
from ..config import PRESETS, ModelConfig, preset
from ..io_utils import atomic_file, atomic_write_text
from ..model import CausalWanModel
from .common import add_stream_args, add_which_arg, check_device, check_output_folder, seed_arg, stream_from_args

Layers = Iterable[tuple[int, Mapping[str, torch.Tensor]]]
_STEP_WORDS = re.compile(
    r"(?<![A-Za-z])(?:global_step|step|iteration|iter|it|ckpt|checkpoint)[_\-=]?(\d+)", re.IGNORECASE
)
_TRAILING_DIGITS = re.compile(r"(?:^|[_\-])(\d+)$")  # 'model_9500', not 'sink1' or 'wan2'
_SUFFIXES = re.compile(r"(\.index\.json|\.safetensors|\.pth?|\.bin|\.ckpt)+$")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "rank", help="effective rank of attention weights / cached activations (paper §5)", description=__doc__
    )
    p.add_argument(
        "checkpoints", nargs="*", metavar="CHECKPOINT", help="checkpoint files or folders, any format videomla reads"
    )
    p.add_argument("--out", type=Path, required=True, help="output folder (created if missing)")
    p.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        help="without checkpoints: analyse a random init of this preset; with: their config if they carry none",
    )
    p.add_argument("--attention", choices=("dense", "mla"), help="random-init preset: attention kind (default dense)")
    add_which_arg(p)
    p.add_argument("--seed", type=seed_arg, default=0, help="seed of random inits and random inputs (default 0)")
    p.add_argument("--rank", type=int, help="K for 'energy at rank K' (default: the model's d_c, else 192)")
    p.add_argument("--labels", nargs="+", help="display labels, one per checkpoint (or one for the preset)")
    p.add_argument(
        "--fold-dense-gains",
        action="store_true",
        help="use diag(g_k) W_K and diag(g_q) W_Q for dense layers (default: raw weights, as the paper)",
    )
    p.add_argument("--per-layer", action="store_true", help="print every layer, not just the summary")
    p.add_argument("--no-plots", action="store_true", help="write CSV/JSON only")
    g = p.add_argument_group("activations (--activations)")
    g.add_argument("--activations", action="store_true", help="also analyse what the KV cache holds on random inputs")
    g.add_argument("--chunks", type=int, default=3, help="chunks in the clip (default 3)")
    g.add_argument("--batch", type=int, default=2, help="random videos per forward (default 2)")
    g.add_argument(
        "--latent-size",
        type=int,
        nargs=2,
        default=(16, 16),
        metavar=("H", "W"),
        help="latent height and width (default 16 16)",
    )
    g.add_argument("--text-tokens", type=int, default=16, help="random text tokens (default 16)")
    g.add_argument("--timestep", type=float, default=0.0, help="timestep of every frame (default 0, the cache pass)")
    g.add_argument("--device", default="cpu", help="device of the forward (default cpu)")
    add_stream_args(p)
    p.set_defaults(func=run)


# -- what to analyse ---------------------------------------------------------------------------------
@dataclass
class Target:
    """One model to analyse: a checkpoint path, or (path None) a random init of ``config``."""

    label: str
    path: Path | None
    step: int | None
    config: ModelConfig | None = None


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


def targets(args: argparse.Namespace) -> list[Target]:
    """Checkpoints (``--preset`` then names their config when they carry none), or a random-init preset."""
    if args.checkpoints:
        if args.attention is not None:
            raise ValueError("--attention picks the random-init preset's attention; checkpoints carry their own")
        paths = [Path(p) for p in args.checkpoints]
        missing = [str(p) for p in paths if not p.exists()]
        if missing:
            raise FileNotFoundError(f"no checkpoint at {', '.join(missing)}")
        out = [Target(label, p, parse_step(p)) for p, label in zip(paths, _labels(paths))]
    elif args.preset:
        cfg = preset(args.preset)
        if args.attention == "mla":
            cfg = cfg.with_mla()
        out = [Target(f"{args.preset}-{args.attention or 'dense'}-init", None, None, cfg)]
    else:
        raise ValueError("give CHECKPOINT paths, or --preset NAME to analyse a random init")
    if args.labels is not None:
        if len(args.labels) != len(out):
            raise ValueError(f"--labels gives {len(args.labels)} labels for {len(out)} models")
        if len(set(args.labels)) != len(args.labels):
            raise ValueError("--labels must be distinct")
        for t, label in zip(out, args.labels):
            t.label = label
    return out


def _sources(target: Target, args: argparse.Namespace) -> tuple[Layers, int, CausalWanModel | None]:
    """(self-attention layers, layer count, the model when activations are asked for)."""
    if target.path is None:
        cfg = target.config
        assert cfg is not None
        torch.manual_seed(args.seed)
        if not args.activations:  # never hold the whole model: draw one layer at a time
            return random_init_layers(cfg), cfg.num_layers, None
        model = CausalWanModel(cfg)  # weights and activations then come from the same draw
        layers = self_attention_layers(model.state_dict())
        return layers, len(layers), model
    from ..checkpoint import check_tensors, model_from_state, read_checkpoint, resolve_config

    state, stored, _ = read_checkpoint(target.path, args.which)
    check_tensors(state, target.path)  # NaN/Inf weights have no spectrum
    layers = self_attention_layers(state)
    if not args.activations:
        return layers, len(layers), None
    cfg, against = resolve_config(state, stored, args.preset)
    return layers, len(layers), model_from_state(state, cfg, against, target.path, dtype=torch.float32)


# -- analysis ----------------------------------------------------------------------------------------
def analyse(target: Target, args: argparse.Namespace) -> list[Spectrum]:
    layers, count, model = _sources(target, args)
    bar = tqdm(layers, total=count, desc=f"{target.label}: weight SVDs", unit="layer")
    spectra = list(weight_spectra(bar, args.fold_dense_gains))
    if model is not None:
        model = model.to(args.device).eval()
        generator = torch.Generator().manual_seed(args.seed)
        height, width = args.latent_size
        captured = capture_cached(
            model,
            stream_from_args(args),
            chunks=args.chunks,
            latent_height=height,
            latent_width=width,
            text_tokens=args.text_tokens,
            timestep=args.timestep,
            batch=args.batch,
            generator=generator,
        )
        del model
        total = sum(len(t) for _, t in captured.values())
        spectra += list(
            tqdm(activation_spectra(captured), total=total, desc=f"{target.label}: activation SVDs", unit="tensor")
        )
        tensors = next(iter(captured.values()))[1]
        widest = max(m.shape[1] for m in tensors.values())
        n_tokens = next(iter(tensors.values())).shape[0]
        if n_tokens < widest:
            print(
                f"note: {target.label}: {n_tokens} tokens < width {widest}: activation ranks are capped at "
                f"{n_tokens} (raise --batch / --latent-size / --chunks)",
                file=sys.stderr,
            )
    return spectra


# -- outputs -----------------------------------------------------------------------------------------
def _write_atomic(path: Path, text: str) -> None:
    atomic_write_text(path, text)


def _safe(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", label)


CSV_FIELDS = ("label", "step", "path", "layer", "source", "kind", "operator", "rows", "cols", "rank_bound", "budget")


def write_csv(results: list[dict], path: Path) -> None:
    buf = io.StringIO()
    first = results[0]["layers"][0]
    fields = list(CSV_FIELDS) + [k for k in first if k not in CSV_FIELDS]
    writer = csv.DictWriter(buf, fields, lineterminator="\n")
    writer.writeheader()
    for res in results:
        for row in res["layers"]:
            writer.writerow({"label": res["label"], "step": res["step"], "path": res["path"], **row})
    _write_atomic(path, buf.getvalue())


def write_spectra(results: list[tuple[dict, list[Spectrum]]], path: Path) -> None:
    from safetensors.torch import save

    tensors = {
        f"{res['label']}/{s.group}/{s.layer}": s.values.contiguous() for res, spectra in results for s in spectra
    }
    with atomic_file(path) as f:  # save() returns the bytes: one atomic write, nothing left on failure
        f.write(save(tensors, metadata={"content": "singular values, descending, float64"}))


def table(rows: list[dict], columns: list[tuple[str, str, str]]) -> str:
    """A plain aligned text table of ``rows``: (key, header, format spec) per column."""
    cells = [[h for _, h, _ in columns]]
    cells += [["-" if r[k] is None else format(r[k], spec) for k, _, spec in columns] for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(columns))]
    return "\n".join(
        "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(line, widths))) for line in cells
    )


def print_summary(results: list[dict], per_layer: bool) -> None:
    rows = [{"label": res["label"], **s} for res in results for s in res["summary"]]
    k_values = {res["k"] for res in results}
    energy = f"E({k_values.pop()})" if len(k_values) == 1 else "E(K)"
    cols = [("label", "model", ""), ("group", "operator", ""), ("layers", "layers", "d"), ("shape", "shape", "")]
    cols += [("rank_bound", "max", "d")] + [(f"median r_{t:.2f}", f"r_{t:.2f}", "g") for t in TAUS]
    cols += [("min r_0.99", "min r_0.99", "d"), ("max r_0.99", "max r_0.99", "d")]
    cols += [("median energy_at_k", energy, ".3f"), ("median r_0.99/bound", "r_0.99/max", ".3f")]
    print("median over layers; r_tau = smallest k keeping tau of sum s_i^2; max = structural rank bound")
    print(table(rows, cols))
    if per_layer:
        layer_rows = [{"label": res["label"], **r} for res in results for r in res["layers"]]
        cols = [("label", "model", ""), ("layer", "layer", "d"), ("source", "source", ""), ("kind", "kind", "")]
        cols += [("operator", "op", "")] + [(f"r_{t:.2f}", f"r_{t:.2f}", "d") for t in TAUS]
        cols += [("energy_at_k", "E(K)", ".3f"), ("r_0.99/bound", "r/max", ".3f")]
        print(table(layer_rows, cols))


def write_plots(results: list[tuple[dict, list[Spectrum]]], out: Path) -> list[Path]:
    written = []
    names = [_safe(res["label"]) for res, _ in results]
    if len(set(names)) < len(names):  # labels differing only in special characters
        names = [f"{i}-{name}" for i, name in enumerate(names)]
    for (res, spectra), name in zip(results, names):
        k = res["k"]
        for kind, draw in (("spectra", plots.plot_spectra), ("energy", plots.plot_energy)):
            path = out / f"{kind}-{name}.png"
            title = f"{res['label']}: {'normalised singular values' if kind == 'spectra' else 'cumulative energy'}"
            draw(spectra, k, path, title)
            written.append(path)
        path = out / f"layer-ranks-{name}.png"
        plots.plot_layer_ranks(res["layers"], path, f"{res['label']}: effective rank per layer")
        written.append(path)
    if len(results) > 1:
        steps = [res["step"] for res, _ in results]
        use_steps = None not in steps and len(set(steps)) == len(steps)
        points = [
            {
                "x": res["step"] if use_steps else i,
                "group": s["group"],
                "median": s["median r_0.99"],
                "min": s["min r_0.99"],
                "max": s["max r_0.99"],
                "bound": s["rank_bound"],
            }
            for i, (res, _) in enumerate(results)
            for s in res["summary"]
        ]
        path = out / "rank-over-training.png"
        xlabel = "training step (from file names)" if use_steps else "checkpoint"
        plots.plot_over_training(points, path, xlabel, None if use_steps else [res["label"] for res, _ in results])
        written.append(path)
    return written


def run(args: argparse.Namespace) -> int:
    if args.rank is not None and args.rank < 1:
        raise ValueError(f"--rank must be >= 1, got {args.rank}")
    if args.activations:  # fail before minutes of SVDs, not after
        check_capture_args(args.chunks, args.batch, args.text_tokens)
        stream_from_args(args)
        args.device = check_device(args.device)
        if min(args.latent_size) < 1:
            raise ValueError(f"--latent-size must be positive, got {list(args.latent_size)}")
    check_output_folder(args.out, "--out")
    todo = targets(args)
    results: list[tuple[dict, list[Spectrum]]] = []
    for target in todo:
        spectra = analyse(target, args)
        k = args.rank or default_rank(spectra)
        rows = [s.row(k) for s in spectra]
        path = None if target.path is None else str(target.path)
        res = {"label": target.label, "path": path, "step": target.step, "k": k, "layers": rows}
        res["summary"] = summarise(rows)
        results.append((res, spectra))
    records = [res for res, _ in results]
    args.out.mkdir(parents=True, exist_ok=True)  # only now: a refused run leaves no empty folder
    meta = {
        "svd_dtype": str(SVD_DTYPE).removeprefix("torch."),
        "taus": list(TAUS),
        "energy": "squared singular values",
        "fold_dense_gains": args.fold_dense_gains,
        "activations": None,
    }
    if args.activations:
        stream = stream_from_args(args)
        meta["activations"] = {
            "inputs": "standard normal latents and text features",
            "chunks": args.chunks,
            "batch": args.batch,
            "latent_size": list(args.latent_size),
            "text_tokens": args.text_tokens,
            "timestep": args.timestep,
            "seed": args.seed,
            "stream": {
                "frames_per_chunk": stream.frames_per_chunk,
                "sink": stream.sink_frames,
                "window": stream.window_frames,
            },
        }
    _write_atomic(args.out / "ranks.json", json.dumps({**meta, "checkpoints": records}, indent=1) + "\n")
    write_csv(records, args.out / "ranks.csv")
    write_spectra(results, args.out / "spectra.safetensors")
    print_summary(records, args.per_layer)
    if args.no_plots:
        return 0
    try:
        written = write_plots(results, args.out)
    except plots.PlotsUnavailable as err:
        print(f"videomla rank: no plots: {err}; ranks.csv / ranks.json are written", file=sys.stderr)
        return 0
    print(f"wrote ranks.csv, ranks.json, spectra.safetensors and {len(written)} plots to {args.out}")
    return 0
