"""Dense -> MLA conversion: the parts docs/convert.md proves exact are exact, the rest is measured.

Reference matrices and channel layouts are built here independently (numpy SVD, hard-coded Wan
channel indices), never through the converter's own helpers. The full-rank exactness tests run
in float64: at full rank the latent basis C is ill-conditioned (cond ~1e3 for random tiny
weights), so fp32 factors reproduce the dense layer only to ~1e-4, which says nothing about the
algebra; everything else runs in fp32.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from test_streaming import stream_chunks
from videomla import cli
from videomla.attention import AttentionContext, DenseSelfAttention
from videomla.checkpoint import load_model, save_model
from videomla.config import MLAConfig, StreamConfig, mla_config, preset
from videomla.convert import convert_layer, convert_to_mla, parse_layers, rope_channels
from videomla.rope import Rotary3D

from conftest import rel_err, tiny_model

F64 = torch.float64
EXACT = 1e-9  # float64, linear paths
NORMED = 2e-6  # float64 except inside RMSNorm, which normalises in fp32 as Wan does (~3e-7 seen)
CAL = 300  # proxy calibration tokens per layer: 5 timesteps x 6 frames x 3 x 3
# tiny preset: head 32 = t 12 | h 10 | w 10 channels; default RoPE (2, 1, 1) pairs = these channels
TINY_ROPE = [0, 1, 2, 3, 12, 13, 22, 23]
TINY_NOPE = [c for c in range(32) if c not in TINY_ROPE]


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def fresh_tokens(*shape: int, dim: int = 64, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Self-attention-like inputs [*shape, dim]: LayerNorm'd Gaussians with a random scale and shift."""
    x = F.layer_norm(torch.randn(*shape, dim, dtype=dtype), (dim,))
    return x * (1 + 0.3 * torch.randn(dim, dtype=dtype)) + 0.3 * torch.randn(dim, dtype=dtype)


def rows(channels: list[int], heads: int = 2, head_dim: int = 32) -> list[int]:
    return [h * head_dim + c for h in range(heads) for c in channels]


def head_channels(t: torch.Tensor, channels: list[int]) -> torch.Tensor:
    return t[..., channels]


def composed(up: torch.Tensor, norm: torch.nn.Module, down: torch.Tensor) -> torch.Tensor:
    gain = norm.weight if hasattr(norm, "weight") else torch.ones(down.shape[0])
    return (up.double() * gain.double()) @ down.double()


# -- channels ----------------------------------------------------------------------------------------
def test_rope_channels_are_wans_highest_frequency_pairs():
    rope, nope = rope_channels(128, (6, 5, 5))  # Wan head 128 = t 44 | h 42 | w 42 channels
    assert rope.tolist() == [*range(0, 12), *range(44, 54), *range(86, 96)]
    assert nope.tolist() == [c for c in range(128) if c not in set(rope.tolist())]
    assert rope_channels(32, (2, 1, 1))[0].tolist() == TINY_ROPE
    # the same angles: the MLA key rotates exactly like the dense channels it keeps
    dense, mla = Rotary3D(32), Rotary3D(32, pairs=(2, 1, 1))
    frames = torch.tensor([0.0, 3.0, 7.0])
    cos_d, sin_d = dense.cos_sin(frames, 4, 5)
    cos_m, sin_m = mla.cos_sin(frames, 4, 5)
    pairs = [c // 2 for c in TINY_ROPE[::2]]
    assert torch.equal(cos_m, cos_d[:, pairs]) and torch.equal(sin_m, sin_d[:, pairs])


def test_cli_dims_give_the_papers_split():
    wan = preset("wan2.1-t2v-1.3b")
    assert mla_config(wan) == MLAConfig()
    cfg = mla_config(wan, kv_latent_dim=256, rope_head_dim=32)
    assert (cfg.rope_pairs, cfg.nope_head_dim, cfg.kv_latent_dim) == ((6, 5, 5), 96, 256)
    assert mla_config(wan, rope_head_dim=16).rope_pairs == (3, 3, 2)
    assert parse_layers("all", 3) == (0, 1, 2)
    assert parse_layers("0-2, 5,7", 8) == (0, 1, 2, 5, 7)


# -- full rank: what is exact ---------------------------------------------------------------------------
def test_full_rank_reproduces_queries_content_keys_and_operators(seed):
    model = tiny_model(dtype=F64)
    new, report = convert_to_mla(model, mla_config(model.config, 64, 64), generator=gen(seed), calibration_tokens=CAL)
    x = fresh_tokens(2, 40, dtype=F64)
    for i, rep in enumerate(report.layers):
        dense, mla = model.blocks[i].self_attn, new.blocks[i].self_attn
        with torch.no_grad():
            qd, kd, _ = dense.project(x)
            _, qn, qr = mla.project_query(x)
            c, _ = mla.project_latent(x)
            kn, _ = mla.expand_latent(c)
            # per token, Wan's across-heads RMSNorm included
            assert rel_err(qn, head_channels(qd, TINY_NOPE)) < NORMED
            assert rel_err(qr, head_channels(qd, TINY_ROPE)) < NORMED
            assert rel_err(kn, head_channels(kd, TINY_NOPE)) < NORMED
            assert abs(rep.scales["q"] - 1) < NORMED and abs(rep.scales["k_nope"] - 1) < NORMED
            # composed operators = the gain-folded dense ones (times the calibrated scalars)
            g_k, g_q = dense.norm_k.weight.double(), dense.norm_q.weight.double()
            want_k = rep.scales["k_nope"] * (g_k[:, None] * dense.k.weight.double())[rows(TINY_NOPE)]
            assert rel_err(composed(mla.k_up.weight, mla.kv_norm, mla.kv_down.weight), want_k) < EXACT
            want_v = rep.scales["v"] * dense.v.weight.double()
            assert rel_err(composed(mla.v_up.weight, mla.kv_norm, mla.kv_down.weight), want_v) < EXACT
            q_up = torch.cat([mla.q_up.weight, mla.q_rope.weight])
            want_q = rep.scales["q"] * (g_q[:, None] * dense.q.weight.double())[rows(TINY_NOPE) + rows(TINY_ROPE)]
            assert rel_err(composed(q_up, mla.q_norm, mla.q_down.weight), want_q) < EXACT
        assert rep.errors["q"] < NORMED and rep.errors["k_nope"] < NORMED
        # not exact, as docs/convert.md proves: V takes the latent's per-token 1/RMS, k_R is head-shared
        assert rep.errors["v"] > 1e-3 and rep.errors["k_rope"] > 1e-2


def test_full_rank_without_latent_norm_reproduces_values(seed):
    model = tiny_model(dtype=F64)
    mla_cfg = mla_config(model.config, 64, 64, latent_norm=False)
    new, report = convert_to_mla(model, mla_cfg, generator=gen(seed), calibration_tokens=CAL)
    x = fresh_tokens(2, 40, dtype=F64)
    for i, rep in enumerate(report.layers):
        dense, mla = model.blocks[i].self_attn, new.blocks[i].self_attn
        with torch.no_grad():
            qd, _, vd = dense.project(x)
            _, qn, _ = mla.project_query(x)
            kn, v = mla.expand_latent(mla.project_latent(x)[0])
            k_lin = (dense.norm_k.weight * dense.k(x) - dense.norm_k.weight * dense.k.bias).unflatten(-1, (2, 32))
        assert rel_err(v, vd) < EXACT  # biases included
        assert rep.errors["v"] < EXACT
        # without a latent norm q lacks only Wan's per-token 1/RMS: same direction for every token
        cos = F.cosine_similarity(qn.flatten(2), head_channels(qd, TINY_NOPE).flatten(2), dim=-1)
        assert (1 - cos).abs().max() < NORMED
        # and content keys are s_k g_k W_k x: the key bias (a constant shift, which cancels in the softmax) is dropped
        assert rel_err(kn, rep.scales["k_nope"] * head_channels(k_lin, TINY_NOPE)) < EXACT
        assert rep.errors["k_nope"] > 1e-3


def exact_case(seed: int, zero_rope_queries: bool, d_q: int, side: int, constant_key_norm: bool):
    """A dense layer, an MLA config and tokens; all four flags True/40/1/True = the exact configuration."""
    dense = DenseSelfAttention(64, 2).to(F64).eval()
    with torch.no_grad():
        dense.norm_q.weight.add_(0.1 * torch.randn(64))
        dense.norm_k.weight.add_(0.1 * torch.randn(64))
        if zero_rope_queries:  # the RoPE channels are the 6 t pairs = channels 0..11 of each head
            dense.q.weight[rows(list(range(12)))] = 0
            dense.q.bias[rows(list(range(12)))] = 0
    cfg = MLAConfig(64, d_q, 20, 12, (6, 0, 0))

    def tokens(batch: int) -> torch.Tensor:
        if not constant_key_norm:
            return fresh_tokens(batch, 6, side, side, dtype=F64)
        w, b = dense.k.weight.detach(), dense.k.bias.detach()
        e = F.normalize(torch.randn(batch, 6, side, side, 64, dtype=F64), dim=-1) * 8.0
        return torch.linalg.solve(w, (e - b).unsqueeze(-1)).squeeze(-1)  # ||W_k x + b_k|| = 8

    return dense, cfg, tokens


@pytest.mark.parametrize(
    ("zero_rope_queries", "d_q", "side", "constant_key_norm"),
    [(True, 40, 1, True), (False, 64, 1, True), (True, 40, 2, True), (True, 40, 1, False)],
    ids=["exact", "rope-queries", "content-rotates", "key-norm-varies"],
)
def test_the_one_exact_configuration(seed, zero_rope_queries, d_q, side, constant_key_norm):
    """Whole-layer exactness needs all three of docs/convert.md's conditions; dropping any one breaks it.

    Content channels never rotate (one position on their axes), no RoPE queries (the head-shared,
    un-normalised k_R is never read), one key RMS for all tokens (the latent's 1/RMS is a constant).
    """
    dense, cfg, tokens = exact_case(seed, zero_rope_queries, d_q, side, constant_key_norm)
    mla, _ = convert_layer(dense, cfg, tokens(3), generator=gen(seed))
    x = tokens(2).flatten(1, 3)
    ctx = AttentionContext.for_clip(6, side, side, StreamConfig(), x.device)
    with torch.no_grad():
        err = rel_err(mla(x, ctx), dense(x, ctx))
    if (zero_rope_queries, side, constant_key_norm) == (True, 1, True):
        assert err < NORMED
    else:
        assert err > 1e-2


# -- lower rank --------------------------------------------------------------------------------------
def energy(s: np.ndarray, k: int) -> float:
    return float((s[:k] ** 2).sum() / (s**2).sum())


def truncated(m: np.ndarray, k: int) -> np.ndarray:
    u, s, vt = np.linalg.svd(m, full_matrices=False)
    return (u[:, :k] * s[:k]) @ vt[:k]


def test_lower_rank_is_the_truncated_svd_of_the_reported_operators(seed):
    model = tiny_model()
    d_c, d_q = 16, 24
    new, report = convert_to_mla(model, mla_config(model.config, d_c, d_q), generator=gen(seed), calibration_tokens=CAL)
    for i, rep in enumerate(report.layers):
        dense, mla = model.blocks[i].self_attn, new.blocks[i].self_attn
        w = {n: getattr(dense, n).weight.detach().double().numpy() for n in "qkv"}
        g_k, g_q = dense.norm_k.weight.detach().double().numpy(), dense.norm_q.weight.detach().double().numpy()
        k_block = (g_k[:, None] * w["k"])[rows(TINY_NOPE)]
        a, b = np.linalg.norm(k_block), np.linalg.norm(w["v"])
        m_kv = np.concatenate([k_block / a, w["v"] / b])
        m_q = (g_q[:, None] * w["q"])[rows(TINY_NOPE) + rows(TINY_ROPE)]
        s_kv, s_q = np.linalg.svd(m_kv, compute_uv=False), np.linalg.svd(m_q, compute_uv=False)
        assert abs(rep.energy_kv - energy(s_kv, d_c)) < 1e-10
        assert abs(rep.energy_q - energy(s_q, d_q)) < 1e-10
        with torch.no_grad():
            k_op = composed(mla.k_up.weight, mla.kv_norm, mla.kv_down.weight).numpy() / (a * rep.scales["k_nope"])
            v_op = composed(mla.v_up.weight, mla.kv_norm, mla.kv_down.weight).numpy() / (b * rep.scales["v"])
            q_op = composed(torch.cat([mla.q_up.weight, mla.q_rope.weight]), mla.q_norm, mla.q_down.weight)
        ours_kv, ours_q = np.concatenate([k_op, v_op]), q_op.numpy() / rep.scales["q"]
        for ours, m, k in ((ours_kv, m_kv, d_c), (ours_q, m_q, d_q)):
            best = truncated(m, k)
            assert np.linalg.norm(ours - best) / np.linalg.norm(best) < 1e-5
            # the energy the layer keeps is what the report says (Eckart-Young)
            lost = np.linalg.norm(m - ours) ** 2 / np.linalg.norm(m) ** 2
            assert abs(1 - lost - energy(np.linalg.svd(m, compute_uv=False), k)) < 1e-5


def test_errors_fall_as_the_latent_grows(seed):
    model = tiny_model()
    reports = []
    for d_c in (8, 16, 32, 48):
        mla_cfg = mla_config(model.config, d_c, 32)
        reports.append(convert_to_mla(model, mla_cfg, generator=gen(seed), calibration_tokens=CAL)[1])
    for layer in range(2):
        per_dc = [r.layers[layer] for r in reports]
        energies = [r.energy_kv for r in per_dc]
        assert energies == sorted(energies) and len(set(energies)) == len(energies)
        for key in ("k_nope", "v", "out"):
            errs = [r.errors[key] for r in per_dc]
            assert errs == sorted(errs, reverse=True) and len(set(errs)) == len(errs), (key, errs)


# -- random init, partial conversion --------------------------------------------------------------------
def test_random_init_runs_and_reports(seed):
    model = tiny_model()
    mla_cfg = mla_config(model.config)
    new, report = convert_to_mla(model, mla_cfg, init="random", generator=gen(seed), calibration_tokens=CAL)
    again, _ = convert_to_mla(model, mla_cfg, init="random", generator=gen(seed), calibration_tokens=CAL)
    _, svd_report = convert_to_mla(model, mla_cfg, generator=gen(seed), calibration_tokens=CAL)
    for i, rep in enumerate(report.layers):
        mla = new.blocks[i].self_attn
        assert rep.init == "random" and rep.scales is None
        assert abs(rep.energy_kv - svd_report.layers[i].energy_kv) < 1e-12  # the same dense operator
        assert all(np.isfinite(v) and v > 0.5 for v in rep.errors.values())  # random is far from dense
        assert all(v < 0.9 for v in svd_report.layers[i].errors.values())  # and SVD is closer
        std = mla.kv_down.weight.std().item() * 64**0.5  # N(0, 1/fan_in)
        assert 0.8 < std < 1.2
        assert not mla.kv_down.bias.any() and not mla.v_up.bias.any()
        assert torch.equal(mla.o.weight, model.blocks[i].self_attn.o.weight)
        assert torch.equal(mla.kv_down.weight, again.blocks[i].self_attn.kv_down.weight)  # seeded


def test_converting_layer_0_only_gives_a_mixed_model_that_streams(seed):
    model = tiny_model()
    new, report = convert_to_mla(model, layers=parse_layers("0-0", 2), generator=gen(seed), calibration_tokens=CAL)
    assert new.config.mla_layers == (0,) and len(new.mla_layers()) == 1 and [r.layer for r in report.layers] == [0]
    old_state, new_state = model.state_dict(), new.state_dict()
    for key, value in old_state.items():
        if not key.startswith("blocks.0.self_attn.") or key.startswith("blocks.0.self_attn.o."):
            assert torch.equal(new_state[key], value), key
            assert new_state[key].data_ptr() != value.data_ptr(), key  # copied, not shared
    stream = StreamConfig(frames_per_chunk=3, sink_frames=1, window_frames=3)
    x, t, context = torch.randn(2, 4, 9, 4, 6), torch.rand(2, 9) * 1000, torch.randn(2, 5, 32)
    with torch.no_grad():
        full = new(x, t, context, stream=stream)
        chunked, _ = stream_chunks(new, x, t, context, stream)
    assert rel_err(chunked, full) < 1e-5


def test_api_bad_inputs(seed):
    model = tiny_model()
    with pytest.raises(ValueError, match="unknown init 'foo'"):
        convert_to_mla(model, init="foo")
    with pytest.raises(ValueError, match="no activations for layers \\[1\\]"):
        convert_to_mla(model, calibration={0: fresh_tokens(1, 3, 2, 2)})
    with pytest.raises(ValueError, match="must be self-attention inputs"):
        convert_to_mla(model, layers=[0], calibration={0: torch.randn(10, 64)})
    with pytest.raises(ValueError, match=r"outside 0\.\.1"):
        convert_to_mla(model, layers=[2])
    half, _ = convert_to_mla(model, layers=[0], calibration_tokens=CAL)
    with pytest.raises(ValueError, match="already MLA"):
        convert_to_mla(half, layers=[0])
    with pytest.raises(ValueError, match="one MLAConfig"):
        convert_to_mla(half, mla_config(model.config, kv_latent_dim=16), layers=[1])


def test_given_calibration_is_used(seed):
    model = tiny_model()
    calibration = {0: fresh_tokens(2, 3, 2, 2)}
    _, report = convert_to_mla(model, layers=[0], calibration=calibration)
    assert report.calibration["source"] == "given" and report.layers[0].tokens == 24


# -- CLI -----------------------------------------------------------------------------------------------
@pytest.fixture
def convert_cli(monkeypatch):
    """``videomla`` with only this command registered (other subcommands are not under test here)."""
    monkeypatch.setattr(cli, "COMMANDS", ("convert",))
    return lambda *args: cli.main(["convert", *map(str, args)])


def test_cli_end_to_end(seed, tmp_path, capsys, convert_cli):
    model = tiny_model()
    save_model(model, tmp_path / "dense")
    args = ["--dc", 16, "--layers", "0-0", "--seed", 3, "--calibration-tokens", CAL]
    assert convert_cli(tmp_path / "dense", tmp_path / "mla", *args, "--report", tmp_path / "r.json") == 0
    out = capsys.readouterr().out
    assert "E_kv(d_c)" in out and "err out" in out
    loaded = load_model(tmp_path / "mla")
    assert loaded.config.mla_layers == (0,) and loaded.config.mla.kv_latent_dim == 16
    expected, report = convert_to_mla(
        model, mla_config(model.config, kv_latent_dim=16), (0,), generator=gen(3), calibration_tokens=CAL
    )
    for key, value in expected.state_dict().items():
        assert torch.allclose(loaded.state_dict()[key], value, atol=1e-6), key
    data = json.loads((tmp_path / "r.json").read_text())
    assert [r["layer"] for r in data["layers"]] == [0]
    assert data["layers"][0]["energy_kv"] == pytest.approx(report.layers[0].energy_kv, abs=1e-12)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--dc", "0"], "d_c (--dc, kv_latent_dim) must be in 1..64"),
        (["--dq", "65"], "d_q (--dq, q_latent_dim) must be in 1..64"),
        (["--layers", "0-5"], "layer 5 is outside 0..1"),
        (["--layers", "x"], "cannot read 'x'"),
        (["--rope-dim", "32"], "NoPE head dim = head dim 32 - RoPE dim 32 = 0"),
        (["--rope-dim", "7"], "positive even number"),
        (["--calibration-tokens", "0"], "calibration tokens (--calibration-tokens) must be >= 1"),
    ],
)
def test_cli_bad_inputs(seed, tmp_path, capsys, convert_cli, args, message):
    save_model(tiny_model(), tmp_path / "dense")
    assert convert_cli(tmp_path / "dense", tmp_path / "mla", *args) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "mla").exists()


def test_cli_unknown_init_and_missing_source(tmp_path, capsys, convert_cli):
    with pytest.raises(SystemExit) as exit_info:
        convert_cli(tmp_path / "dense", tmp_path / "mla", "--init", "foo")
    assert exit_info.value.code == 2 and "invalid choice: 'foo'" in capsys.readouterr().err
    assert convert_cli(tmp_path / "missing", tmp_path / "mla") == 2
    assert "no checkpoint at" in capsys.readouterr().err
