"""The paper's rank figures (Figs. 1, 2 and 8) for any checkpoint. matplotlib is imported lazily.

One panel per operator group (e.g. ``weights/mla/kv``); curves over layers are summarised as the
pointwise median with a min-max envelope, as the paper draws them.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from ..io_utils import atomic_file
from .rank import TAUS, Spectrum, energy_curve, group_rows

_FLOOR = 1e-16


class PlotsUnavailable(RuntimeError):
    """matplotlib is not installed (it is the optional ``plots`` extra)."""


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError:
        raise PlotsUnavailable("matplotlib is not installed (pip install 'videomla[plots]')") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> None:
    """Write atomically: a reader never sees half a PNG."""
    with atomic_file(path) as f:  # nothing half-written is left on failure, and the umask applies
        fig.savefig(f, dpi=110, bbox_inches="tight", format="png")


def _panels(plt: Any, count: int, title: str) -> tuple[Any, list[Any]]:
    cols = min(3, count)
    rows = math.ceil(count / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 4.1 * rows), squeeze=False, layout="constrained")
    flat = list(axes.flat)
    for ax in flat[count:]:
        ax.set_visible(False)
    fig.suptitle(title)
    return fig, flat[:count]


def _by_group(spectra: list[Spectrum]) -> dict[str, list[Spectrum]]:
    groups: dict[str, list[Spectrum]] = {}
    for s in spectra:
        groups.setdefault(s.group, []).append(s)
    return groups


def _envelope(curves: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(k, median, min, max) over layers, cut to the shortest curve (median of an even count: the mean of the two)."""
    n = min(len(c) for c in curves)
    stack = torch.stack([c[:n] for c in curves])
    return torch.arange(1, n + 1), stack.quantile(0.5, dim=0), stack.min(0).values, stack.max(0).values


def _band(ax: Any, curves: list[torch.Tensor], color: str, label: str) -> None:
    k, med, lo, hi = _envelope(curves)
    ax.fill_between(
        k.numpy(), lo.numpy(), hi.numpy(), color=color, alpha=0.25, linewidth=0, label="min-max over layers"
    )
    ax.plot(k.numpy(), med.numpy(), color=color, label=label)


def _mark_k(ax: Any, k: int, bound: int) -> None:
    if k <= bound:
        ax.axvline(k, color="black", linestyle="--", linewidth=1, label=f"k = {k}")


def plot_spectra(spectra: list[Spectrum], k: int, path: Path, title: str) -> None:
    """Normalised singular values s_k / s_1 on a log axis (Figs. 1a, 2a)."""
    plt = _pyplot()
    groups = _by_group(spectra)
    fig, axes = _panels(plt, len(groups), title)
    for ax, (group, items) in zip(axes, groups.items()):
        # Exact zeros (dead latent channels) would vanish from a log axis: show them at float64 round-off.
        curves = [(s.values / s.values[0]).clamp_min(_FLOOR) for s in items]
        _band(ax, curves, "tab:blue", f"median over {len(items)} layers")
        _mark_k(ax, k, items[0].rank_bound)
        ax.set_yscale("log")
        ax.set(title=f"{group} ({items[0].shape[0]}x{items[0].shape[1]})", xlabel="index k", ylabel="s_k / s_1")
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(fontsize=8, loc="lower left")
    _save(fig, path)
    plt.close(fig)


def plot_energy(spectra: list[Spectrum], k: int, path: Path, title: str) -> None:
    """Cumulative energy E(k) with the energy kept at rank k marked (Fig. 1b)."""
    plt = _pyplot()
    groups = _by_group(spectra)
    fig, axes = _panels(plt, len(groups), title)
    for ax, (group, items) in zip(axes, groups.items()):
        curves = [energy_curve(s.values) for s in items]
        _band(ax, curves, "tab:orange", f"median over {len(items)} layers")
        for i, tau in enumerate(TAUS):
            label = "tau = " + " / ".join(f"{t:.2f}" for t in TAUS) if i == 0 else None
            ax.axhline(tau, color="grey", linestyle=":", linewidth=0.8, label=label)
        if k <= items[0].rank_bound:
            kept = _envelope(curves)[1][k - 1].item()
            _mark_k(ax, k, items[0].rank_bound)
            ax.plot([k], [kept], "o", color="black", label=f"median E({k}) = {kept:.3f}")
        ax.set_ylim(0, 1.02)
        ax.set(title=group, xlabel="rank k", ylabel="E(k) = energy kept by top-k")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    _save(fig, path)
    plt.close(fig)


def plot_layer_ranks(rows: list[dict], path: Path, title: str) -> None:
    """Per-layer r_0.90 / r_0.95 / r_0.99 bars with the structural bound (Figs. 1c, 2b)."""
    plt = _pyplot()
    groups = group_rows(rows)
    fig, axes = _panels(plt, len(groups), title)
    width = 0.8 / len(TAUS)
    for ax, (group, items) in zip(axes, groups.items()):
        layers = [r["layer"] for r in items]
        for i, tau in enumerate(TAUS):
            xs = [pos + (i - (len(TAUS) - 1) / 2) * width for pos in range(len(layers))]
            ax.bar(xs, [r[f"r_{tau:.2f}"] for r in items], width, label=f"r_{tau:.2f}")
        ax.axhline(items[0]["rank_bound"], color="black", linestyle="--", linewidth=1, label="max rank")
        step = max(1, len(layers) // 15)
        ax.set_xticks(range(0, len(layers), step), [str(n) for n in layers[::step]])
        ax.set(title=group, xlabel="layer", ylabel="effective rank")
        ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=4, frameon=False)
    _save(fig, path)
    plt.close(fig)


def plot_over_training(points: list[dict], path: Path, xlabel: str, ticks: list[str] | None) -> None:
    """Median r_0.99 per checkpoint for each operator group (Fig. 8).

    ``points``: one per (checkpoint, group) with keys x, group, median, min, max, bound and random
    (r_0.99 of a Gaussian matrix of the operator's shape, dotted).
    """
    plt = _pyplot()
    fig, (ax_frac, ax_abs) = plt.subplots(1, 2, figsize=(11, 4.2), layout="constrained")
    fig.suptitle("effective rank over checkpoints (median over layers, band = min-max)")
    groups: dict[str, list[dict]] = {}
    for p in points:
        groups.setdefault(p["group"], []).append(p)
    for group, items in groups.items():
        xs = [p["x"] for p in items]
        style = "o-" if group.startswith("weights") else "s--"  # activations may coincide with weights
        (line,) = ax_abs.plot(xs, [p["median"] for p in items], style, label=group)
        ax_abs.fill_between(xs, [p["min"] for p in items], [p["max"] for p in items], color=line.get_color(), alpha=0.2)
        ax_frac.plot(xs, [p["median"] / p["bound"] for p in items], style, color=line.get_color(), label=group)
        ax_abs.axhline(items[-1]["bound"], color=line.get_color(), linestyle="--", linewidth=0.8)
        ax_abs.axhline(items[-1]["random"], color=line.get_color(), linestyle=":", linewidth=1.2)
        ax_frac.axhline(items[-1]["random"] / items[-1]["bound"], color=line.get_color(), linestyle=":", linewidth=1.2)
    ax_abs.set(xlabel=xlabel, ylabel="r_0.99 (dashed: max rank, dotted: random)", title="median r_0.99")
    ax_frac.set(xlabel=xlabel, ylabel="r_0.99 / max rank (dotted: random)", title="fraction of the rank budget used")
    ax_frac.set_ylim(0, 1.05)
    for ax in (ax_abs, ax_frac):
        if ticks is not None:
            ax.set_xticks(range(len(ticks)), ticks, rotation=30, ha="right")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    _save(fig, path)
    plt.close(fig)
