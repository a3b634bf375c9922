"""Dense Wan self-attention -> VideoMLA: an SVD initialisation (and the paper's random baseline).

The paper only says "SVD-style decomposition of the pretrained Wan dense attention matrices".
The recipe here (derivations and what is exact in docs/convert.md), per converted layer, all in
float64 from the dense weights W_q, W_k, W_v (+ biases) and the q/k RMSNorm gains g_q, g_k:

1. **Channels.** The MLA RoPE channels of a head are Wan's highest-frequency pairs of each axis
   ((6, 5, 5) of the (22, 21, 21) at head 128: the same frequencies, the same positions), the
   remaining head channels become content (NoPE) channels and lose their rotation.
2. **Operators.** Query: M_q = diag(g_q) W_q restricted to [NoPE rows; RoPE rows] (all rows).
   Key/value: M_kv = [a diag(g_k) W_k(NoPE rows); b W_v] with a, b = 1 / Frobenius norm of the
   block, so the joint SVD minimises the *relative* K error plus the relative V error and neither
   dominates the shared latent. Truncated SVD M ~ U_r S_r V_r^T at r = d_q and r = d_c: the
   composed operator of the new layer is exactly this best rank-r approximation (Eckart-Young).
3. **Latent coordinates.** The SVD fixes the latent's subspace, not its basis: any invertible T
   gives down = T S_r V_r^T, up = U_r T^-1. The dense layer divides q and k by the RMS of the
   full-width pre-norm activation u = W x + b (W = W_q or W_k); the MLA layer divides by the RMS
   of its latent. We pick the basis in which the latent is an isometric image of u:
   down = C V_r^T, down bias = C^-1 V_r^T W^T b, up = U_r S_r C^-1 with C = (V_r^T W^T W V_r)^(1/2),
   i.e. c = Z^T (W P_r x + b) for the orthonormal Z = W V_r C^-1 (P_r: projection on span V_r).
   At full rank (r = width) ||c|| = ||u|| for every token, so the latent RMSNorm reproduces
   Wan's across-heads q/k RMSNorm exactly; at lower rank it tracks it.
4. **RoPE key.** Head-shared k_R = mean over heads of diag(g_k) W_k(RoPE rows) x (+ bias), each
   pair weighted by the heads' query energy in it (a head that barely queries a pair need not be
   matched there). It has no norm (as in the paper): step 5 scales it.
5. **Calibration.** One least-squares scalar per output on sample self-attention inputs, folded
   into the up-projections (latent gains stay 1, so the cached latent has unit RMS): s_q for
   q_up/q_rope, s_k for k_up, s_R for k_rope (it stands in for the missing 1/RMS), s_v plus the
   V bias for v_up (sum_j p_j = 1, so a V bias passes through attention exactly). Inputs: the
   layer's real adaLN-modulated LayerNorm of Gaussian tokens at the sampler's timesteps (the
   proxy) or activations the caller captured.

``init="random"``: every new projection N(0, 1/fan_in), biases 0, gains 1. Both inits copy the
output projection W_O (the paper keeps it) and every other module unchanged.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .analysis.rank import energy_at
from .attention import AttentionContext, DenseSelfAttention, MLASelfAttention
from .checkpoint import model_from_state
from .config import MLAConfig, ModelConfig, StreamConfig, check_latent_widths, mla_config, rope_axis_dims
from .model import CausalWanModel, modulate
from .schedule import warp_steps

Init = Literal["svd", "random"]
INITS: tuple[str, ...] = ("svd", "random")
F64 = torch.float64
CAL_FRAMES = 6  # two 3-frame chunks: the report's attention output sees a chunk-causal mask
CAL_STREAM = StreamConfig()  # 3-frame chunks, 1 sink + 6 window frames (the paper's)
DEFAULT_CALIBRATION_TOKENS = 1920  # 5 timesteps x 6 frames x 8 x 8
_SINGULAR = 1e-20  # eigenvalue of C^2 below this x the largest: the latent loses a direction


# -- configuration -------------------------------------------------------------------------------
def parse_layers(spec: str, num_layers: int) -> tuple[int, ...]:
    """'all' | '0-14' | '0,3,5' | '0-3,7' -> sorted layer indices, each checked against the model."""
    if spec.strip() == "all":
        return tuple(range(num_layers))
    layers: set[int] = set()
    for part in spec.split(","):
        part = part.strip()
        try:
            lo, _, hi = part.partition("-")
            first, last = int(lo), int(hi or lo)
        except ValueError:
            raise ValueError(f"--layers: cannot read {part!r}; use 'all', '0-14' or '0,3,5'") from None
        if first > last:
            raise ValueError(f"--layers: range {part!r} runs backwards")
        bad = [i for i in (first, last) if not 0 <= i < num_layers]
        if bad:
            raise ValueError(f"--layers: layer {bad[0]} is outside 0..{num_layers - 1} (the model has {num_layers})")
        layers.update(range(first, last + 1))
    return tuple(sorted(layers))


def rope_channels(head_dim: int, pairs: tuple[int, int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(RoPE, NoPE) channel indices of a dense head, RoPE in MLA order: [t pairs | h pairs | w pairs].

    A Wan head is [t pairs | h pairs | w pairs], pair i of an axis = 2 consecutive channels, pair 0
    the highest frequency; MLA's k_R keeps the first ``pairs`` of each axis (see :mod:`videomla.rope`).
    """
    starts, offset = [], 0
    for d in rope_axis_dims(head_dim):
        starts.append(offset)
        offset += d
    rope = [s + c for s, p in zip(starts, pairs) for c in range(2 * p)]
    taken = set(rope)
    return torch.tensor(rope), torch.tensor([c for c in range(head_dim) if c not in taken])


# -- report --------------------------------------------------------------------------------------
@dataclass
class LayerReport:
    """What one converted layer kept and how far it is from the dense layer on sample tokens.

    ``energy_*``: E(r) = sum_{i<=r} s_i^2 / sum s_i^2 of the operator the SVD factors (M_kv at d_c,
    M_q at d_q). ``errors``: ||mla - dense|| / ||dense|| for q ([NoPE | RoPE] channels, unrotated),
    k_nope, k_rope (the shared key against every head's), v and the attention output ``out``
    (chunk-causal mask, RoPE on); computed in float64 with the weights as saved.
    """

    layer: int
    init: str
    d_c: int
    d_q: int
    energy_kv: float
    energy_q: float
    tokens: int
    errors: dict[str, float]
    scales: dict[str, float] | None = None  # the calibrated scalars (svd init)
    conditioning: dict[str, float] | None = None  # cond(C) of the kv and q latent bases (svd init)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class ConversionReport:
    """The MLA dims, how the sample tokens were made, and one :class:`LayerReport` per converted layer."""

    init: str
    mla: dict[str, Any]
    calibration: dict[str, Any]
    layers: list[LayerReport] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "init": self.init,
            "mla": self.mla,
            "calibration": self.calibration,
            "layers": [r.to_dict() for r in self.layers],
        }


# -- one layer -------------------------------------------------------------------------------------
@dataclass
class _Rows:
    """Row indices of the full-width q/k projections: per-head NoPE and RoPE channels, head-major."""

    nope: torch.Tensor  # per-head channel indices
    rope: torch.Tensor
    all_nope: torch.Tensor  # [H * dn] rows of W
    all_rope: torch.Tensor  # [H * dr]

    @classmethod
    def of(cls, heads: int, head_dim: int, cfg: MLAConfig) -> _Rows:
        rope, nope = rope_channels(head_dim, cfg.rope_pairs)
        base = torch.arange(heads)[:, None] * head_dim
        return cls(nope, rope, (base + nope).flatten(), (base + rope).flatten())


def kv_operator(dense: DenseSelfAttention, rows: _Rows) -> tuple[torch.Tensor, float, float]:
    """(M_kv = [a G_k W_k(NoPE); b W_v], a, b) with each block scaled to unit Frobenius norm."""
    w_k, g_k, w_v = dense.k.weight.to(F64), dense.norm_k.weight.to(F64), dense.v.weight.to(F64)
    k_block = g_k[rows.all_nope, None] * w_k[rows.all_nope]
    a, b = 1.0 / _norm(k_block, "g_k W_k (content rows)"), 1.0 / _norm(w_v, "W_v")
    return torch.cat([a * k_block, b * w_v]), a, b


def q_operator(dense: DenseSelfAttention, rows: _Rows) -> torch.Tensor:
    """M_q = G_q W_q with rows [NoPE (head-major); RoPE (head-major)]."""
    order = torch.cat([rows.all_nope, rows.all_rope])
    return dense.norm_q.weight.to(F64)[order, None] * dense.q.weight.to(F64)[order]


def _norm(m: torch.Tensor, what: str) -> float:
    value = float(m.detach().norm())
    if not value > 0:
        raise ValueError(f"{what} is all zeros: nothing to factor")
    return value


def factor(
    m: torch.Tensor, w: torch.Tensor, b: torch.Tensor, rank: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, float]:
    """(down weight, down bias, up, singular values of m, cond(C)): up @ down = best rank-``rank`` approximation of m.

    The latent c = down x + bias is an isometric image of u = w x + b at full rank (see the module
    docstring), so an RMSNorm of c reproduces one of u. cond(C) bounds how much rounding the
    stored factors amplifies in their product (about cond(C) x the dtype's epsilon).
    """
    u, s, vh = torch.linalg.svd(m, full_matrices=False)
    u_r, s_r, v_r = u[:, :rank], s[:rank], vh[:rank].T
    wv = w @ v_r
    evals, evecs = torch.linalg.eigh(wv.T @ wv)
    if not evals.min() > _SINGULAR * evals.max():
        raise ValueError(
            f"the dense projection maps a retained direction to ~0 (rank-deficient at rank {rank}): "
            "use a smaller latent"
        )
    root = evals.sqrt()
    c, c_inv = (evecs * root) @ evecs.T, (evecs / root) @ evecs.T
    return c @ v_r.T, c_inv @ (wv.T @ b), (u_r * s_r) @ c_inv, s, float(root.max() / root.min())


def _svd_init(dense: DenseSelfAttention, mla: MLASelfAttention, rows: _Rows) -> tuple[float, float, dict[str, float]]:
    """Write the factored weights (scales 1) into ``mla``; returns E_kv(d_c), E_q(d_q) and cond(C) of both."""
    cfg, h, dn = mla.cfg, mla.num_heads, mla.cfg.nope_head_dim
    m_kv, a, b = kv_operator(dense, rows)
    down, bias, up, s_kv, cond_kv = factor(m_kv, dense.k.weight.to(F64), dense.k.bias.to(F64), cfg.kv_latent_dim)
    mla.kv_down.weight.copy_(down)
    # Without a latent norm a content-key bias is a constant key shift, which cancels in the softmax:
    # drop it rather than make W_UV reproduce (and v_up's bias cancel) a W_v W_k^-1 b_k term.
    mla.kv_down.bias.copy_(bias if cfg.latent_norm else torch.zeros_like(bias))
    mla.k_up.weight.copy_(up[: h * dn] / a)
    mla.v_up.weight.copy_(up[h * dn :] / b)
    mla.v_up.bias.zero_()
    m_q = q_operator(dense, rows)
    down, bias, up, s_q, cond_q = factor(m_q, dense.q.weight.to(F64), dense.q.bias.to(F64), cfg.q_latent_dim)
    mla.q_down.weight.copy_(down)
    mla.q_down.bias.copy_(bias)
    mla.q_up.weight.copy_(up[: h * dn])
    mla.q_rope.weight.copy_(up[h * dn :])
    return energy_at(s_kv, cfg.kv_latent_dim), energy_at(s_q, cfg.q_latent_dim), {"kv": cond_kv, "q": cond_q}


def _random_init(mla: MLASelfAttention, generator: torch.Generator | None) -> None:
    """N(0, 1/fan_in) weights for every new projection, zero biases, unit gains (W_O is copied)."""
    for name in ("q_down", "q_up", "q_rope", "kv_down", "k_up", "v_up", "k_rope"):
        lin = getattr(mla, name)
        w = torch.randn(lin.weight.shape, generator=generator, dtype=F64)
        lin.weight.copy_(w / math.sqrt(lin.in_features))
        if lin.bias is not None:
            lin.bias.zero_()


def _lstsq_scale(a: torch.Tensor, b: torch.Tensor) -> float:
    """argmin_s ||s a - b||; 1 when a is all zeros (nothing to scale)."""
    den = float((a * a).sum())
    return float((a * b).sum()) / den if den > 0 else 1.0


@dataclass
class _Outputs:
    """Per-token projections of both layers on the same tokens, unrotated, in matching channel order."""

    q: tuple[torch.Tensor, torch.Tensor]  # (mla, dense) [B, N, H, D] as [NoPE | RoPE]
    k_nope: tuple[torch.Tensor, torch.Tensor]
    k_rope: tuple[torch.Tensor, torch.Tensor]  # mla [B, N, dr] (shared), dense [B, N, H, dr]
    v: tuple[torch.Tensor, torch.Tensor]

    @classmethod
    def of(cls, dense: DenseSelfAttention, mla: MLASelfAttention, x: torch.Tensor, rows: _Rows) -> _Outputs:
        qd, kd, vd = dense.project(x)
        _, qn, qr = mla.project_query(x)
        c, kr = mla.project_latent(x)
        kn, v = mla.expand_latent(c)
        q_dense = torch.cat([qd[..., rows.nope], qd[..., rows.rope]], dim=-1)
        return cls((torch.cat([qn, qr], dim=-1), q_dense), (kn, kd[..., rows.nope]), (kr, kd[..., rows.rope]), (v, vd))


def _rope_key(dense: DenseSelfAttention, mla: MLASelfAttention, x: torch.Tensor, rows: _Rows) -> torch.Tensor:
    """Set k_R to the head mean of the dense RoPE keys weighted per pair by each head's query energy.

    Returns the weights [H, dr] (summing to 1 over heads). Scores see k_R only through
    q_h . k_R, so a head whose RoPE queries are small need not be matched: with isotropic queries
    within a pair (what averaging over relative rotations leaves) this weighted mean minimises
    E sum_h |q_h . (k_h - k_R)|^2. A pair no head queries falls back to the plain mean.
    """
    h, dr = mla.num_heads, mla.cfg.rope_head_dim
    q = dense.project(x)[0][..., rows.rope]  # [B, N, H, dr]
    energy = q.pow(2).flatten(0, 1).mean(0).unflatten(-1, (-1, 2)).sum(-1).repeat_interleave(2, dim=-1)
    total = energy.sum(0, keepdim=True)
    weights = torch.where(total > 0, energy / total.clamp_min(1e-300), torch.full_like(energy, 1.0 / h))
    g_k = dense.norm_k.weight.to(F64)[rows.all_rope].view(h, dr)
    w_k = dense.k.weight.to(F64)[rows.all_rope].view(h, dr, -1)
    mla.k_rope.weight.copy_(((weights * g_k)[..., None] * w_k).sum(0))
    mla.k_rope.bias.copy_((weights * g_k * dense.k.bias.to(F64)[rows.all_rope].view(h, dr)).sum(0))
    return weights


def _calibrate(dense: DenseSelfAttention, mla: MLASelfAttention, x: torch.Tensor, rows: _Rows) -> dict[str, float]:
    """Set k_R (:func:`_rope_key`), fit the scalars of step 5 and the V bias on ``x``, fold them into ``mla``."""
    weights = _rope_key(dense, mla, x, rows)
    out = _Outputs.of(dense, mla, x, rows)
    s_q = _lstsq_scale(*out.q)
    s_k = _lstsq_scale(*out.k_nope)
    s_r = _lstsq_scale(out.k_rope[0], (weights * out.k_rope[1]).sum(2))  # against the weighted target
    v, vd = (t.flatten(0, 1) for t in out.v)  # [tokens, H, D]
    v_mean, vd_mean = v.mean(0), vd.mean(0)
    s_v = _lstsq_scale(v - v_mean, vd - vd_mean)
    mla.q_up.weight.mul_(s_q)
    mla.q_rope.weight.mul_(s_q)
    mla.k_up.weight.mul_(s_k)
    mla.k_rope.weight.mul_(s_r)
    mla.k_rope.bias.mul_(s_r)
    mla.v_up.weight.mul_(s_v)
    mla.v_up.bias.copy_((vd_mean - s_v * v_mean).flatten())
    return {"q": s_q, "k_nope": s_k, "k_rope": s_r, "v": s_v}


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


def layer_errors(dense: DenseSelfAttention, mla: MLASelfAttention, tokens: torch.Tensor) -> dict[str, float]:
    """Relative errors of q, k_nope, k_rope, v and the attention output on tokens [B, F, H, W, dim] (float64)."""
    dense, mla = copy.deepcopy(dense).to(F64), copy.deepcopy(mla).to(F64)
    rows = _Rows.of(mla.num_heads, mla.head_dim, mla.cfg)
    b, f, hh, ww, d = tokens.shape
    x = tokens.to(device=dense.q.weight.device, dtype=F64).reshape(b, f * hh * ww, d)
    out = _Outputs.of(dense, mla, x, rows)
    ctx = AttentionContext.for_clip(f, hh, ww, CAL_STREAM, x.device)
    kr, kd = out.k_rope
    return {
        "q": _rel(*out.q),
        "k_nope": _rel(*out.k_nope),
        "k_rope": _rel(kr[:, :, None].expand_as(kd), kd),
        "v": _rel(*out.v),
        "out": _rel(mla(x, ctx), dense(x, ctx)),
    }


def _check_tokens(tokens: torch.Tensor, dim: int, layer: int) -> None:
    if tokens.ndim != 5 or tokens.shape[-1] != dim or tokens.shape[:4].numel() == 0:
        raise ValueError(
            f"calibration for layer {layer} must be self-attention inputs [B, F, H, W, {dim}], "
            f"got shape {tuple(tokens.shape)}"
        )


@torch.no_grad()
def convert_layer(
    dense: DenseSelfAttention,
    mla_cfg: MLAConfig,
    tokens: torch.Tensor,
    init: Init = "svd",
    generator: torch.Generator | None = None,
    layer: int = 0,
    theta: float = 10000.0,
) -> tuple[MLASelfAttention, LayerReport]:
    """An MLA layer (``dense``'s dtype and device) initialised from ``dense``, and its report.

    ``tokens`` [B, F, H, W, dim]: self-attention inputs on a frame grid, for the calibration (svd)
    and the reported errors (both inits).
    """
    if init not in INITS:
        raise ValueError(f"unknown init {init!r}; choose from {list(INITS)}")
    dim, heads = dense.q.in_features, dense.num_heads
    _check_tokens(tokens, dim, layer)
    check_latent_widths(mla_cfg, dim)
    dense64 = copy.deepcopy(dense).to(F64)
    device = dense.q.weight.device
    mla = MLASelfAttention(dim, heads, mla_cfg, dense.norm_q.eps, theta).to(device=device, dtype=F64)
    for ours, theirs in zip(mla.rotary.freqs, dense.rotary.freqs):
        if not torch.equal(ours, theirs[: len(ours)]):
            raise ValueError(f"layer {layer}: RoPE theta {theta} does not give the dense layer's frequencies")
    rows = _Rows.of(heads, mla.head_dim, mla_cfg)
    mla.o.load_state_dict(dense64.o.state_dict())
    x = tokens.to(device=device, dtype=F64).flatten(1, 3)
    if init == "svd":
        energy_kv, energy_q, conditioning = _svd_init(dense64, mla, rows)
        scales: dict[str, float] | None = _calibrate(dense64, mla, x, rows)
    else:
        _random_init(mla, generator)
        energy_kv = energy_at(torch.linalg.svdvals(kv_operator(dense64, rows)[0]), mla_cfg.kv_latent_dim)
        energy_q = energy_at(torch.linalg.svdvals(q_operator(dense64, rows)), mla_cfg.q_latent_dim)
        scales = conditioning = None
    mla = mla.to(dtype=dense.q.weight.dtype).eval()
    report = LayerReport(
        layer=layer,
        init=init,
        d_c=mla_cfg.kv_latent_dim,
        d_q=mla_cfg.q_latent_dim,
        energy_kv=energy_kv,
        energy_q=energy_q,
        tokens=x.shape[0] * x.shape[1],
        errors=layer_errors(dense, mla, tokens),
        scales=scales,
        conditioning=conditioning,
    )
    return mla, report


# -- calibration inputs ----------------------------------------------------------------------------
def calibration_timesteps() -> torch.Tensor:
    """The 4-step sampler's timesteps (warped by shift 5) and t = 0, the pass that writes the cache."""
    return torch.cat([warp_steps(), torch.zeros(1, dtype=F64)])


def calibration_side(tokens: int) -> int:
    """Side of the square frame grid giving about ``tokens`` tokens over the timesteps x 6 frames."""
    if tokens < 1:
        raise ValueError(f"calibration tokens (--calibration-tokens) must be >= 1, got {tokens}")
    return max(1, round(math.sqrt(tokens / (len(calibration_timesteps()) * CAL_FRAMES))))


@torch.no_grad()
def proxy_activations(
    model: CausalWanModel, layer: int, side: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """[T, 6, side, side, dim] float64: LayerNorm(Gaussian) with ``layer``'s own adaLN shift/scale.

    One clip per calibration timestep. norm1's output is exactly LayerNorm(residual) * (1 + scale)
    + shift: the modulation is real, the Gaussian stands in for the residual stream we do not have.
    """
    t = calibration_timesteps().to(model.time_embedding[0].weight.device)
    b = len(t)
    _, e = model._embed_time(t, b, CAL_FRAMES)
    block = model.blocks[layer]
    shift, scale = (block.modulation[:, None] + e).unbind(2)[:2]
    z = torch.randn(b, CAL_FRAMES, side * side, model.config.dim, generator=generator, dtype=F64)
    z = F.layer_norm(z.to(shift.device), z.shape[-1:], eps=block.norm1.eps)  # norm1: no affine
    x = modulate(z, shift.to(F64), scale.to(F64))
    return x.unflatten(2, (side, side))


# -- whole model -----------------------------------------------------------------------------------
def _check_layers(cfg: ModelConfig, layers: Sequence[int] | None, mla_cfg: MLAConfig) -> tuple[int, ...]:
    chosen = tuple(range(cfg.num_layers)) if layers is None else tuple(sorted(set(layers)))
    if not chosen:
        raise ValueError("no layers to convert")
    bad = [i for i in chosen if not 0 <= i < cfg.num_layers]
    if bad:
        raise ValueError(f"layer {bad[0]} is outside 0..{cfg.num_layers - 1} (the model has {cfg.num_layers} layers)")
    already = [i for i in chosen if cfg.is_mla(i)]
    if already:
        raise ValueError(f"layers {already} are already MLA; convert dense layers only")
    if cfg.mla_layers and cfg.mla != mla_cfg:
        raise ValueError(f"the model's MLA layers use {cfg.mla}; a model has one MLAConfig, got {mla_cfg}")
    return chosen


@torch.no_grad()
def convert_to_mla(
    model: CausalWanModel,
    mla_cfg: MLAConfig | None = None,
    layers: Sequence[int] | None = None,
    init: Init = "svd",
    calibration: Mapping[int, torch.Tensor] | None = None,
    generator: torch.Generator | None = None,
    *,
    calibration_tokens: int = DEFAULT_CALIBRATION_TOKENS,
    progress: bool = False,
) -> tuple[CausalWanModel, ConversionReport]:
    """A copy of ``model`` with MLA self-attention in ``layers`` (default all), and the report.

    ``mla_cfg``: default :func:`~videomla.config.mla_config` (the model's own, else the paper's ratios).
    ``calibration``: {layer: self-attention inputs [B, F, H, W, dim]} captured from real runs;
    default the proxy of :func:`proxy_activations` (about ``calibration_tokens`` tokens per layer).
    ``generator`` seeds the proxy tokens and the random init. Every other tensor is cloned unchanged.
    """
    if init not in INITS:
        raise ValueError(f"unknown init {init!r}; choose from {list(INITS)}")
    cfg = model.config
    mla_cfg = mla_cfg or mla_config(cfg)
    chosen = _check_layers(cfg, layers, mla_cfg)
    new_cfg = dataclasses.replace(cfg, mla=mla_cfg, mla_layers=tuple(sorted(set(cfg.mla_layers) | set(chosen))))
    check_latent_widths(mla_cfg, cfg.dim)
    if calibration is None:
        side = calibration_side(calibration_tokens)
        described: dict[str, Any] = {
            "source": "proxy: LayerNorm(Gaussian) with each layer's adaLN shift/scale",
            "timesteps": [round(float(t), 3) for t in calibration_timesteps()],
            "grid": [len(calibration_timesteps()), CAL_FRAMES, side, side],
        }
    else:
        missing = [i for i in chosen if i not in calibration]
        if missing:
            raise ValueError(f"calibration has no activations for layers {missing}")
        described = {"source": "given"}
    described["mask"] = (
        f"chunk-causal: {CAL_STREAM.frames_per_chunk}-frame chunks, "
        f"{CAL_STREAM.sink_frames} sink + {CAL_STREAM.window_frames} window frames"
    )
    prefixes = tuple(f"blocks.{i}.self_attn." for i in chosen)
    state = {k: v.detach().clone() for k, v in model.state_dict().items() if not k.startswith(prefixes)}
    report = ConversionReport(init=init, mla=dataclasses.asdict(mla_cfg), calibration=described)
    for i in tqdm(chosen, desc=f"converting to MLA ({init})", unit="layer", disable=not progress):
        tokens = calibration[i] if calibration is not None else proxy_activations(model, i, side, generator)
        attn = model.blocks[i].self_attn
        mla, layer_report = convert_layer(attn, mla_cfg, tokens, init, generator, layer=i, theta=cfg.rope_theta)
        state.update({f"blocks.{i}.self_attn.{k}": v for k, v in mla.state_dict().items()})
        report.layers.append(layer_report)
    device = next(model.parameters()).device
    return model_from_state(state, new_cfg, "the converted config", "<converted model>", device), report


__all__ = [
    "DEFAULT_CALIBRATION_TOKENS",
    "INITS",
    "ConversionReport",
    "LayerReport",
    "calibration_side",
    "calibration_timesteps",
    "convert_layer",
    "convert_to_mla",
    "factor",
    "kv_operator",
    "layer_errors",
    "parse_layers",
    "proxy_activations",
    "q_operator",
    "rope_channels",
]
