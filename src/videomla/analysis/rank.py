"""Effective rank of attention operators (paper §5, Figs. 1, 2 and 8), computed from weights.

The tau-energy effective rank of a matrix with singular values s_1 >= s_2 >= ... is

    r_tau = min{k : sum_{i<=k} s_i^2 / sum_i s_i^2 >= tau}

("energy" = squared singular values, the usual convention; paper notes §6.2). Every SVD here runs
in float64 (``torch.linalg.svdvals``): a 3072 x 1536 matrix takes about half a second on CPU, and
float32 would put round-off of ~1e-7 s_1 into the tail that r_0.99 is sensitive to.

Which operators (per self-attention layer):

* dense: ``kv`` = [W_K; W_V] (2d x d), exactly the paper's Fig. 1 operator, and ``q`` = W_Q.
  Wan's ``norm_k`` / ``norm_q`` gains are NOT folded in by default, so numbers compare with the
  paper; ``fold_dense_gains=True`` uses diag(g_k) W_K and diag(g_q) W_Q instead (the directions
  the cache actually stores; the per-token RMS divisor is a scalar and changes no direction).
* MLA: ``kv`` = [W_UK diag(g) W_DKV; W_UV diag(g) W_DKV] and ``q`` = [W_UQ; W_QR] diag(g_q) W_DQ,
  with the RMSNorm gains g of ``kv_norm`` / ``q_norm`` always folded in. They sit between the two
  factors, so the composed map x -> (k, v) applied to every token (up to the per-token RMS scalar
  and biases) is exactly this product; without g the product is not even a function of the layer:
  scaling g_j by a and column j of W_U by 1/a leaves the layer unchanged but not W_U W_DKV. A gain
  trained to zero kills a latent channel, which only the folded product sees.

Every row also carries the same statistics for a random matrix of the operator's shape (i.i.d.
Gaussian entries; for a factored operator, the product of two Gaussian factors of its factor
shapes): the rank a matrix of that shape has when nothing in it is structured. "Not low-rank" and
"fills its budget" mean something only next to it (a square Gaussian matrix has r_0.99 = 0.77 n,
by the Marchenko-Pastur law).

Biases are left out everywhere: they shift every token by the same vector and add at most one
direction, which says nothing about the operator's rank.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import cache
from statistics import median

import torch

from ..attention import DenseSelfAttention, MLASelfAttention
from ..config import ModelConfig

TAUS: tuple[float, ...] = (0.90, 0.95, 0.99)
SVD_DTYPE = torch.float64
DEFAULT_RANK = 192  # the paper's d_c: energy kept at this rank when the model has no MLA layer
_TIE = 1e-12  # E(k) within this of tau counts as reaching tau (float64 cumsum round-off)
BASELINE_SEED = 0  # the random-matrix baseline's own generator: the same draw for every shape, every run
_LAYER_KEY = re.compile(r"^blocks\.(\d+)\.self_attn\.(.+)$")


# -- spectra -----------------------------------------------------------------------------------
def singular_values(matrix: torch.Tensor) -> torch.Tensor:
    """Singular values, descending, in float64."""
    if matrix.ndim != 2:
        raise ValueError(f"expected a matrix, got shape {tuple(matrix.shape)}")
    return torch.linalg.svdvals(matrix.to(SVD_DTYPE))


def product_singular_values(left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """The top min(m, r, n) singular values of ``left @ right`` (m x r times r x n); the rest are 0.

    When the inner width r is the bottleneck (an MLA latent), left = Q_a R_a and right^T = Q_b R_b
    give left @ right = Q_a (R_a R_b^T) Q_b^T with orthonormal Q's, so the r x r core has the same
    singular values: a 192 x 192 SVD instead of 2688 x 1536.
    """
    if left.ndim != 2 or right.ndim != 2 or left.shape[1] != right.shape[0]:
        raise ValueError(f"cannot multiply shapes {tuple(left.shape)} and {tuple(right.shape)}")
    left, right = left.to(SVD_DTYPE), right.to(SVD_DTYPE)
    m, r = left.shape
    n = right.shape[1]
    if r >= min(m, n):
        return torch.linalg.svdvals(left @ right)
    r_a = torch.linalg.qr(left, mode="r").R
    r_b = torch.linalg.qr(right.T, mode="r").R
    return torch.linalg.svdvals(r_a @ r_b.T)


@cache
def random_matrix_ranks(rows: int, cols: int, inner: int | None = None, taus: tuple[float, ...] = TAUS) -> dict:
    """r_tau of an i.i.d. Gaussian ``rows x cols`` matrix (or of the product of Gaussian
    ``rows x inner`` and ``inner x cols`` factors): the unstructured baseline of that shape.

    Drawn from a private generator (``BASELINE_SEED``), so the caller's RNG is untouched and every
    layer of one shape gets the same numbers.
    """
    gen = torch.Generator().manual_seed(BASELINE_SEED)
    if inner is None:
        values = singular_values(torch.randn(rows, cols, generator=gen, dtype=SVD_DTYPE))
    else:
        left = torch.randn(rows, inner, generator=gen, dtype=SVD_DTYPE)
        values = product_singular_values(left, torch.randn(inner, cols, generator=gen, dtype=SVD_DTYPE))
    return {f"r_{tau:.2f}": effective_rank(values, tau) for tau in taus}


def energy_curve(s: torch.Tensor) -> torch.Tensor:
    """E(k) for k = 1..len(s): the fraction of sum s_i^2 held by the top k singular values."""
    power = s.to(SVD_DTYPE).pow(2)
    cumulative = power.cumsum(0)
    # The total is the cumsum's own last entry, not power.sum(): sum() adds pairwise and cumsum in
    # order, so the two differ in the last bits and E(len(s)) came out as 0.9999999999999998.
    # Dividing by the same number makes E(len(s)) exactly 1, and E never exceeds 1 (the cumsum of
    # non-negative values never decreases).
    total = cumulative[-1] if len(cumulative) else power.sum()
    if not total > 0:
        raise ValueError("an all-zero matrix has no spectral energy (effective rank undefined)")
    return cumulative / total


def effective_rank(s: torch.Tensor, tau: float) -> int:
    """r_tau = min{k : E(k) >= tau}, counting values within 1e-12 of tau as reached."""
    if not 0.0 < tau <= 1.0:
        raise ValueError(f"tau must be in (0, 1], got {tau}")
    curve = energy_curve(s)
    return int(torch.searchsorted(curve, torch.tensor([tau - _TIE], dtype=curve.dtype)).item()) + 1


def energy_at(s: torch.Tensor, k: int) -> float:
    """E(k): energy kept by the best rank-k approximation (Eckart-Young); 1 when k >= len(s)."""
    if k < 1:
        raise ValueError(f"rank must be >= 1, got {k}")
    curve = energy_curve(s)
    return float(curve[min(k, len(curve)) - 1])


@dataclass
class Spectrum:
    """The singular values of one operator of one layer, and where they came from."""

    layer: int
    source: str  # "weights" | "activations"
    kind: str  # "dense" | "mla"
    operator: str  # weights: "kv", "q"; activations: "kv" (dense), "c_kv", "k_r" (MLA)
    shape: tuple[int, int]
    rank_bound: int  # the structural maximum: min(shape), and at most the latent width if factored
    values: torch.Tensor = field(repr=False)  # descending, float64, at most rank_bound of them
    budget: int | None = None  # the latent width (d_c, d_q) of a factored MLA operator

    @property
    def group(self) -> str:
        return group_name(self.source, self.kind, self.operator)

    def row(self, k: int, taus: tuple[float, ...] = TAUS) -> dict:
        """The numbers reported for this layer (CSV row / JSON record)."""
        ranks = {f"r_{tau:.2f}": effective_rank(self.values, tau) for tau in taus}
        r99 = effective_rank(self.values, 0.99)
        random = random_matrix_ranks(*self.shape, self.budget, taus)
        return {
            "layer": self.layer,
            "source": self.source,
            "kind": self.kind,
            "operator": self.operator,
            "rows": self.shape[0],
            "cols": self.shape[1],
            "rank_bound": self.rank_bound,
            "budget": self.budget,
            **ranks,
            "k": k,
            "energy_at_k": energy_at(self.values, k),
            "r_0.99/bound": r99 / self.rank_bound,
            **{f"random {name}": value for name, value in random.items()},
        }


def spectrum(
    layer: int,
    source: str,
    kind: str,
    operator: str,
    matrix: torch.Tensor | tuple[torch.Tensor, torch.Tensor],
) -> Spectrum:
    """Spectrum of a matrix, or of a product given as (left, right) without forming it."""
    if isinstance(matrix, tuple):
        left, right = matrix
        shape = (left.shape[0], right.shape[1])
        bound = min(shape[0], left.shape[1], shape[1])
        values = product_singular_values(left, right)[:bound]
        budget: int | None = left.shape[1]
    else:
        shape = (matrix.shape[0], matrix.shape[1])
        bound = min(shape)
        values = singular_values(matrix)
        budget = None
    try:
        energy_curve(values)
    except ValueError:
        raise ValueError(f"layer {layer} {kind} {operator}: the operator is all zeros, its rank is undefined") from None
    return Spectrum(layer, source, kind, operator, shape, bound, values, budget)


# -- operators from self-attention weights ---------------------------------------------------------
def self_attention_layers(state_dict: Mapping[str, torch.Tensor]) -> list[tuple[int, dict[str, torch.Tensor]]]:
    """Group ``blocks.N.self_attn.*`` tensors by layer (names relative to ``self_attn``)."""
    layers: dict[int, dict[str, torch.Tensor]] = {}
    for name, tensor in state_dict.items():
        match = _LAYER_KEY.match(name)
        if match:
            layers.setdefault(int(match.group(1)), {})[match.group(2)] = tensor
    if not layers:
        raise ValueError("no 'blocks.N.self_attn.*' tensors found: not a Wan / VideoMLA state dict?")
    return sorted(layers.items())


def random_init_layers(cfg: ModelConfig) -> Iterator[tuple[int, dict[str, torch.Tensor]]]:
    """Self-attention weights of a freshly initialised ``cfg``, built one layer at a time.

    The modules are the model's own, so the init is exactly the distribution
    ``CausalWanModel(cfg)`` draws from (PyTorch's default ``nn.Linear`` init, unit norm gains),
    without ever holding the 1.3B model. Seed with ``torch.manual_seed`` first for reproducibility.
    """
    for layer in range(cfg.num_layers):
        if cfg.is_mla(layer):
            assert cfg.mla is not None
            attn: torch.nn.Module = MLASelfAttention(cfg.dim, cfg.num_heads, cfg.mla, cfg.eps, cfg.rope_theta)
        else:
            attn = DenseSelfAttention(cfg.dim, cfg.num_heads, cfg.eps, cfg.rope_theta)
        yield layer, attn.state_dict()


def attention_kind(tensors: Mapping[str, torch.Tensor]) -> str:
    if "kv_down.weight" in tensors:
        return "mla"
    if "k.weight" in tensors:
        return "dense"
    raise ValueError(f"self-attention tensors {sorted(tensors)} are neither dense (k, v) nor MLA (kv_down, ...)")


def _get(tensors: Mapping[str, torch.Tensor], name: str, layer: int) -> torch.Tensor:
    try:
        return tensors[name].to(SVD_DTYPE)
    except KeyError:
        raise KeyError(f"layer {layer}: missing self_attn.{name}") from None


def _gain(tensors: Mapping[str, torch.Tensor], norm: str, layer: int) -> torch.Tensor | None:
    """An RMSNorm gain, or None when the norm has no weight (``latent_norm=False`` -> Identity)."""
    name = f"{norm}.weight"
    return _get(tensors, name, layer) if name in tensors else None


def _fold(gain: torch.Tensor | None, weight: torch.Tensor) -> torch.Tensor:
    """diag(gain) @ weight."""
    return weight if gain is None else gain[:, None] * weight


def weight_operators(
    layer: int, tensors: Mapping[str, torch.Tensor], fold_dense_gains: bool = False
) -> dict[str, torch.Tensor | tuple[torch.Tensor, torch.Tensor]]:
    """The operators analysed for one layer: a matrix, or (left, right) of a factored product."""
    if attention_kind(tensors) == "dense":
        w_q, w_k, w_v = (_get(tensors, f"{n}.weight", layer) for n in "qkv")
        if fold_dense_gains:
            w_q = _fold(_get(tensors, "norm_q.weight", layer), w_q)
            w_k = _fold(_get(tensors, "norm_k.weight", layer), w_k)
        return {"kv": torch.cat([w_k, w_v]), "q": w_q}
    kv_up = torch.cat([_get(tensors, "k_up.weight", layer), _get(tensors, "v_up.weight", layer)])
    kv_down = _fold(_gain(tensors, "kv_norm", layer), _get(tensors, "kv_down.weight", layer))
    q_up = torch.cat([_get(tensors, "q_up.weight", layer), _get(tensors, "q_rope.weight", layer)])
    q_down = _fold(_gain(tensors, "q_norm", layer), _get(tensors, "q_down.weight", layer))
    return {"kv": (kv_up, kv_down), "q": (q_up, q_down)}


def weight_spectra(
    layers: Iterable[tuple[int, Mapping[str, torch.Tensor]]], fold_dense_gains: bool = False
) -> Iterator[Spectrum]:
    """Spectra of every layer's operators; ``layers`` may be a lazy generator (one layer in memory)."""
    for layer, tensors in layers:
        kind = attention_kind(tensors)
        for operator, matrix in weight_operators(layer, tensors, fold_dense_gains).items():
            yield spectrum(layer, "weights", kind, operator, matrix)


def default_rank(spectra: Iterable[Spectrum]) -> int:
    """The K at which energy is reported: the model's d_c (first MLA layer), else the paper's 192."""
    for s in spectra:
        if s.source == "weights" and s.kind == "mla" and s.operator == "kv" and s.budget:
            return s.budget
    return DEFAULT_RANK


# -- summaries ---------------------------------------------------------------------------------------
def group_name(source: str, kind: str, operator: str) -> str:
    """Layers in one group are comparable (the same operator of the same attention kind): 'weights/mla/kv'."""
    return f"{source}/{kind}/{operator}"


def group_rows(rows: list[dict]) -> dict[str, list[dict]]:
    """Rows by operator group, layers in order."""
    groups: dict[str, list[dict]] = {}
    for row in rows:
        groups.setdefault(group_name(row["source"], row["kind"], row["operator"]), []).append(row)
    return groups


def summarise(rows: list[dict], taus: tuple[float, ...] = TAUS) -> list[dict]:
    """Per operator group: layer count, shape, and median / min / max of the per-layer numbers."""
    out = []
    for group, items in group_rows(rows).items():
        r99 = [r["r_0.99"] for r in items]
        out.append(
            {
                "group": group,
                "layers": len(items),
                "shape": f"{items[0]['rows']}x{items[0]['cols']}",
                "rank_bound": items[0]["rank_bound"],
                **{f"median r_{tau:.2f}": median([r[f"r_{tau:.2f}"] for r in items]) for tau in taus},
                "min r_0.99": min(r99),
                "max r_0.99": max(r99),
                "k": items[0]["k"],
                "median energy_at_k": median([r["energy_at_k"] for r in items]),
                "median r_0.99/bound": median([r["r_0.99/bound"] for r in items]),
                "random r_0.99": items[0]["random r_0.99"],  # one shape per group: the same for every layer
            }
        )
    return out
