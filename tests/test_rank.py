"""Effective-rank analysis: closed-form spectra, the composed MLA operator, random inits, the CLI."""

from __future__ import annotations

import csv
import dataclasses
import json
import math

import pytest
import torch

from videomla.analysis import ActivationInputs, rank_study, targets
from videomla.analysis.activations import activation_spectra, capture_cached
from videomla.analysis.rank import (
    effective_rank,
    energy_at,
    energy_curve,
    product_singular_values,
    random_init_layers,
    random_matrix_ranks,
    self_attention_layers,
    singular_values,
    summarise,
    weight_operators,
    weight_spectra,
)
from videomla.attention import DenseSelfAttention, MLASelfAttention
from videomla.config import StreamConfig, mla_config, preset

from conftest import rel_err, tiny_model


def with_spectrum(values: list[float], rows: int, cols: int) -> torch.Tensor:
    """U diag(values) V^T with random orthonormal U, V: a matrix whose singular values we know."""
    r = len(values)
    u = torch.linalg.qr(torch.randn(rows, r, dtype=torch.float64)).Q
    v = torch.linalg.qr(torch.randn(cols, r, dtype=torch.float64)).Q
    return u @ torch.diag(torch.tensor(values, dtype=torch.float64)) @ v.T


# -- definitions against closed forms ------------------------------------------------------------------
def test_exact_low_rank_by_hand(seed: int) -> None:
    # s = 7..1: energies 49, 36, 25, 16, 9, 4, 1 (total 140); cumulative 49, 85, 110, 126, 135, 139, 140.
    m = with_spectrum([7.0, 6, 5, 4, 3, 2, 1], 50, 40)
    s = singular_values(m)
    assert s.dtype == torch.float64 and len(s) == 40
    assert effective_rank(s, 0.90) == 4  # 126/140 = 0.9 exactly: a tie counts as reached
    assert effective_rank(s, 0.95) == 5  # 135/140 = 0.964
    assert effective_rank(s, 0.99) == 6  # 139/140 = 0.993
    assert effective_rank(s, 1.0) == 7  # never beyond the true rank despite round-off in s_8..s_40
    assert energy_at(s, 3) == pytest.approx(110 / 140, abs=1e-12)
    assert energy_at(s, 7) == pytest.approx(1.0, abs=1e-12)
    assert energy_at(s, 1000) == 1.0
    # Ten equal values: E(9) = 0.9 in exact arithmetic, 0.8999999999999999 after float64 sums.
    assert effective_rank(torch.full((10,), 0.1**0.5, dtype=torch.float64), 0.90) == 9


def test_full_energy_is_exactly_one() -> None:
    # power.sum() adds pairwise and power.cumsum() in order: for these values the two differ in the
    # last bit, which made E(len(s)) = 0.9999999999999998 and failed the test above for ~1 seed in 10.
    power = torch.rand(40, generator=torch.Generator().manual_seed(1), dtype=torch.float64) ** 8
    assert power.sum() != power.cumsum(0)[-1]  # the premise: the two totals really differ here
    s = power.sqrt().sort(descending=True).values
    curve = energy_curve(s)
    assert curve[-1] == 1.0 and energy_at(s, len(s)) == 1.0 and energy_at(s, 1000) == 1.0
    assert torch.all(curve <= 1.0) and torch.all(curve[1:] >= curve[:-1])


@pytest.mark.parametrize("ratio", [0.9, 0.97])
def test_geometric_decay_closed_form(seed: int, ratio: float) -> None:
    # s_i = q^(i-1): E(k) = (1 - q^(2k)) / (1 - q^(2n)), so r_tau = ceil(log(1 - tau (1 - q^(2n))) / log q^2).
    n = 64
    s = singular_values(with_spectrum([ratio**i for i in range(n)], 96, n))
    rho = ratio**2
    for tau in (0.90, 0.95, 0.99):
        assert effective_rank(s, tau) == math.ceil(math.log(1 - tau * (1 - rho**n)) / math.log(rho))
    for k in (1, 5, 20, 64):
        assert energy_at(s, k) == pytest.approx((1 - rho**k) / (1 - rho**n), abs=1e-12)
    curve = energy_curve(s)
    assert torch.all(curve[1:] >= curve[:-1]) and curve[-1] == pytest.approx(1.0)


def test_bad_inputs() -> None:
    s = torch.tensor([2.0, 1.0])
    with pytest.raises(ValueError, match="tau"):
        effective_rank(s, 0.0)
    with pytest.raises(ValueError, match="rank must be"):
        energy_at(s, 0)
    with pytest.raises(ValueError, match="all-zero"):
        energy_curve(torch.zeros(3))
    with pytest.raises(ValueError, match="matrix"):
        singular_values(torch.ones(3))
    with pytest.raises(ValueError, match=r"blocks\.N\.self_attn"):
        self_attention_layers({"head.head.weight": torch.ones(2, 2)})
    zeroed = DenseSelfAttention(16, 2).state_dict()
    zeroed["k.weight"].zero_()
    zeroed["v.weight"].zero_()
    with pytest.raises(ValueError, match="layer 0 dense kv: the operator is all zeros"):
        list(weight_spectra([(0, zeroed)]))


# -- the factored fast path against the slow reference ---------------------------------------------------
@pytest.mark.parametrize(("m", "r", "n"), [(120, 12, 80), (30, 12, 200), (40, 50, 30), (64, 64, 64)])
def test_product_singular_values_match_full_svd(seed: int, m: int, r: int, n: int) -> None:
    left = torch.randn(m, r, dtype=torch.float64) * torch.logspace(0, -3, r, dtype=torch.float64)
    right = torch.randn(r, n, dtype=torch.float64)
    fast = product_singular_values(left, right)
    slow = torch.linalg.svdvals(left @ right)[: min(m, r, n)]
    assert fast.shape == slow.shape
    assert rel_err(fast, slow) < 1e-10


def test_composed_mla_operator_is_what_the_layer_computes(seed: int) -> None:
    """[W_UK; W_UV] diag(g) W_DKV x, scaled by the RMS of W_DKV x, is the layer's [k_nope; v] (biases off)."""
    cfg = mla_config(preset("tiny"))
    attn = MLASelfAttention(64, 2, cfg).double()
    with torch.no_grad():
        for name, p in attn.named_parameters():
            if name.endswith("bias"):
                p.zero_()
            elif "norm" in name:
                p.copy_(torch.rand_like(p) * 2)  # gains far from 1, so folding them matters
    ops = weight_operators(0, attn.state_dict())
    x = torch.randn(1, 10, 64, dtype=torch.float64)
    with torch.no_grad():
        c, _ = attn.project_latent(x)
        k, v = attn.expand_latent(c)
        _, q_nope, q_rope = attn.project_query(x)
    rms = attn.kv_down(x).pow(2).mean(-1, keepdim=True).add(attn.kv_norm.eps).sqrt()
    left, right = ops["kv"]
    # RMSNorm normalises in float32 (as Wan does), hence 1e-6 rather than float64 round-off.
    assert rel_err(torch.cat([k.flatten(2), v.flatten(2)], -1) * rms, x @ (left @ right).T) < 1e-6
    rms_q = attn.q_down(x).pow(2).mean(-1, keepdim=True).add(attn.q_norm.eps).sqrt()
    left, right = ops["q"]
    assert rel_err(torch.cat([q_nope.flatten(2), q_rope.flatten(2)], -1) * rms_q, x @ (left @ right).T) < 1e-6


def test_dense_gain_folding(seed: int) -> None:
    attn = DenseSelfAttention(32, 2).double()
    with torch.no_grad():
        attn.norm_k.weight.copy_(torch.rand(32) * 2)
        attn.norm_q.weight.copy_(torch.rand(32) * 2)
    sd = attn.state_dict()
    raw = weight_operators(0, sd)
    folded = weight_operators(0, sd, fold_dense_gains=True)
    assert torch.equal(raw["kv"], torch.cat([sd["k.weight"], sd["v.weight"]]))  # the paper's [W_K; W_V]
    assert torch.equal(raw["q"], sd["q.weight"])
    # folded: the direction of the cached k = norm_k(W_K x) (bias aside) is diag(g_k) W_K x.
    x = torch.randn(5, 32, dtype=torch.float64)
    with torch.no_grad():
        k = attn.norm_k(x @ sd["k.weight"].T)
        q = attn.norm_q(x @ sd["q.weight"].T)
    assert rel_err(_unit(k), _unit(x @ folded["kv"][:32].T)) < 1e-6  # RMSNorm runs in float32
    assert rel_err(_unit(q), _unit(x @ folded["q"].T)) < 1e-6
    assert rel_err(_unit(q), _unit(x @ raw["q"].T)) > 1e-2  # the unfolded operator is not what is cached


def _unit(t: torch.Tensor) -> torch.Tensor:
    return t / t.norm(dim=-1, keepdim=True)


# -- random inits --------------------------------------------------------------------------------------
def test_random_mla_fills_its_latent_budget(seed: int) -> None:
    """A random-init MLA kv operator of width d_c = 16 has r_0.99 in [13, 16].

    The upper bound is structural (rank <= d_c). The lower bound: W_DKV is 16 x 64 and [W_UK; W_UV]
    is 112 x 16, both i.i.d. at init (unit RMSNorm gains). Marchenko-Pastur puts the squared
    singular values of W_DKV within [(1 - 1/2)^2, (1 + 1/2)^2] x mean (aspect 1/4), a spread of
    kappa^2 = 1/9, and those of [W_UK; W_UV] above (1 - sqrt(16/112))^2 = 0.387 x mean. Since
    s_i(AB) >= s_i(A) s_min(B) and sum s_i(AB)^2 <= s_max(B)^2 sum s_i(A)^2, the bottom j
    directions of the product hold at least j x 0.387 / 16 / 9 = 0.27% x j of the energy: j = 4
    already holds more than 1%, so r_0.99 >= 16 - 4 + 1 = 13. (Seen: 15 or 16 over 600 draws; the
    paper reports ~0.98 d_c.) Dense [W_K; W_V] (128 x 64, aspect 1/2, lower edge 0.086 x mean):
    the bottom 8 directions hold >= 8 x 0.086 / 64 > 1%, so r_0.99 >= 57 of 64 (seen: 59 or 60).
    """
    base = preset("tiny")
    cfg = base.with_mla(dataclasses.replace(mla_config(base), kv_latent_dim=16))
    spectra = {(s.layer, s.operator): s for s in weight_spectra(random_init_layers(cfg))}
    for layer in range(cfg.num_layers):
        kv = spectra[(layer, "kv")]
        assert kv.shape == (2 * 24 + 64, 64) and kv.rank_bound == 16 and kv.budget == 16
        assert len(kv.values) == 16  # the 48 structural zeros are not part of the spectrum
        assert 13 <= effective_rank(kv.values, 0.99) <= 16
        assert kv.row(16)["energy_at_k"] == pytest.approx(1.0)
    for s in weight_spectra(random_init_layers(base)):
        assert s.rank_bound == 64
        if s.operator == "kv":
            assert 57 <= effective_rank(s.values, 0.99) <= 64


def marchenko_pastur_rank(rows: int, cols: int, tau: float) -> float:
    """r_tau of a large i.i.d. ``rows x cols`` matrix (cols <= rows) from the Marchenko-Pastur law.

    The squared singular values over rows have density sqrt((b - x)(x - a)) / (2 pi c x) on [a, b],
    c = cols / rows, a, b = (1 -+ sqrt c)^2: r_tau / cols is the mass above the threshold where the
    energy above it is tau (a Riemann sum on a fine grid).
    """
    c = cols / rows
    a, b = (1 - math.sqrt(c)) ** 2, (1 + math.sqrt(c)) ** 2
    x = torch.linspace(a, b, 400_001, dtype=torch.float64)[1:-1]
    density = ((b - x) * (x - a)).sqrt() / (2 * math.pi * c * x)
    mass = density.flip(0).cumsum(0).flip(0)
    energy = (x * density).flip(0).cumsum(0).flip(0)
    top = int((energy / energy[0] >= tau).nonzero().max())
    return float(mass[top] / mass[0]) * cols


@pytest.mark.parametrize("rows, cols", [(512, 512), (512, 256), (3072, 1536)])
def test_random_matrix_baseline_follows_marchenko_pastur(rows: int, cols: int) -> None:
    """The Gaussian baseline's r_tau is the Marchenko-Pastur value within 1% of the width (finite-size
    fluctuation of one draw at these sizes: ~0.1%); it is deterministic and leaves the caller's RNG alone."""
    state = torch.random.get_rng_state()
    ranks = random_matrix_ranks(rows, cols)
    assert torch.equal(torch.random.get_rng_state(), state)
    for tau in (0.90, 0.99):
        assert abs(ranks[f"r_{tau:.2f}"] - marchenko_pastur_rank(rows, cols, tau)) <= 0.01 * cols
    random_matrix_ranks.cache_clear()
    assert random_matrix_ranks(rows, cols) == ranks


def test_random_matrix_baseline_of_a_factored_operator() -> None:
    """A product of Gaussian factors through a width-r bottleneck has at most r directions, and its
    spectrum is the bottleneck's (r_0.99 of 448 x 32 x 256 is 32 = r: a random MLA operator fills its
    budget too); rows carry the baseline of their own shape."""
    ranks = random_matrix_ranks(448, 256, 32)
    assert ranks["r_0.99"] == 32 and ranks["r_0.90"] < 32
    torch.manual_seed(0)
    kv = next(s for s in weight_spectra(random_init_layers(preset("tiny"))) if s.operator == "kv")
    assert kv.row(8)["random r_0.99"] == random_matrix_ranks(*kv.shape)["r_0.99"]


# -- activations ---------------------------------------------------------------------------------------
def test_captured_activations_are_what_the_cache_stores(seed: int) -> None:
    """Hooked tensors equal the layer's own projections, and the streaming cache contents."""
    cfg = preset("tiny").with_mla(layers=(1,))
    model = tiny_model(cfg)
    stream = StreamConfig(frames_per_chunk=1, sink_frames=0, window_frames=2)
    g = torch.Generator().manual_seed(seed)
    captured = capture_cached(model, stream, chunks=2, latent_height=4, latent_width=4, batch=2, generator=g)
    assert captured[0][0] == "dense" and captured[1][0] == "mla"
    assert captured[0][1]["kv"].shape == (2 * 2 * 4, 2 * 64)  # batch x frames x tokens, [k; v]
    assert set(captured[1][1]) == {"c_kv", "k_r"} and captured[1][1]["c_kv"].shape[1] == cfg.mla.kv_latent_dim

    # Stream the same inputs chunk by chunk, keeping every chunk: the cache must hold the same tensors.
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, cfg.in_channels, 2, 4, 4, generator=g)
    text = model.embed_text(torch.randn(2, 16, cfg.text_dim, generator=g))
    cache = model.new_cache(stream, 2, 4, 4)
    with torch.no_grad():
        for f in range(2):
            model.forward_chunk(x[:, :, f : f + 1], torch.zeros(2), text, cache, write=True)
    view = [layer.view(cache.active_tokens(0)) for layer in cache.layers]
    dense = torch.cat([view[0]["k"].flatten(2), view[0]["v"].flatten(2)], -1).flatten(0, 1).double()
    assert rel_err(dense, captured[0][1]["kv"]) < 1e-5
    assert rel_err(view[1]["c"].flatten(0, 1).double(), captured[1][1]["c_kv"]) < 1e-5
    spectra = list(activation_spectra(captured))
    assert [(s.layer, s.operator) for s in spectra] == [(0, "kv"), (1, "c_kv"), (1, "k_r")]
    assert all(s.source == "activations" and s.rank_bound == min(s.shape) for s in spectra)


# -- the Python API -------------------------------------------------------------------------------------
def _by_key(rows: list[dict]) -> dict[tuple[int, str, str], dict]:
    return {(r["layer"], r["source"], r["operator"]): r for r in rows}


def test_rank_study_of_checkpoints(seed: int, tmp_path) -> None:
    """Records of two checkpoints: weights and activations, folded dense gains, notes, the files."""
    from videomla.checkpoint import save_model

    cfg = preset("tiny").with_mla(layers=(1,))
    d_c = cfg.mla.kv_latent_dim
    model = tiny_model(cfg)
    save_model(model, tmp_path / "run" / "step_100")
    with torch.no_grad():  # "training" switched off half of layer 1's latent channels
        model.blocks[1].self_attn.kv_norm.weight[: d_c // 2] = 0
    save_model(model, tmp_path / "run" / "step_250")
    stream = StreamConfig(frames_per_chunk=1, sink_frames=0, window_frames=2)
    inputs = ActivationInputs(stream, chunks=2, latent_size=(4, 4))
    models = targets([tmp_path / "run" / "step_100", tmp_path / "run" / "step_250"])
    study = rank_study(models, fold_dense_gains=True, activations=inputs, seed=seed)

    first, second = study.models
    assert [(m.label, m.step, m.k) for m in study.models] == [("step_100", 100, d_c), ("step_250", 250, d_c)]
    assert first.path == str(tmp_path / "run" / "step_100")
    assert first.layers == [s.row(d_c) for s in first.spectra] and first.summary == summarise(first.layers)
    a, b = _by_key(first.layers), _by_key(second.layers)
    assert set(a) == {
        *((layer, "weights", op) for layer in (0, 1) for op in ("kv", "q")),
        (0, "activations", "kv"),
        (1, "activations", "c_kv"),
        (1, "activations", "k_r"),
    }
    assert b[(1, "weights", "kv")]["r_0.99"] <= d_c // 2 < a[(1, "weights", "kv")]["r_0.99"]
    assert b[(0, "weights", "kv")] == a[(0, "weights", "kv")]  # layer 0 did not change
    # fold_dense_gains: layer 0's q operator is diag(g_q) W_Q (tiny_model's gains are not 1)
    gain, w_q = (model.state_dict()[f"blocks.0.self_attn.{n}.weight"].double() for n in ("norm_q", "q"))
    (q,) = [s for s in first.spectra if (s.layer, s.source, s.operator) == (0, "weights", "q")]
    assert rel_err(q.values, singular_values(gain[:, None] * w_q)) < 1e-12
    assert rel_err(q.values, singular_values(w_q)) > 1e-3
    # 2 videos x 2 frames x 4 tokens = 16 tokens, fewer than the 128 numbers of a dense [k; v]: said, and capped
    assert a[(0, "activations", "kv")]["rows"] == 16 and a[(0, "activations", "kv")]["rank_bound"] == 16
    assert len(study.notes) == 2 and all("16 tokens < width 128" in note for note in study.notes)
    # the same inputs (one seed) for both models: layer 0's activations agree too; another seed draws others
    assert b[(0, "activations", "kv")] == a[(0, "activations", "kv")]
    (reseeded,) = rank_study(models[:1], fold_dense_gains=True, activations=inputs, seed=seed + 1).models
    c = _by_key(reseeded.layers)
    assert (
        c[(0, "weights", "kv")] == a[(0, "weights", "kv")]
        and c[(0, "activations", "kv")] != a[(0, "activations", "kv")]
    )

    study.write(tmp_path / "out")
    written = json.loads((tmp_path / "out" / "ranks.json").read_text())
    assert written == json.loads(json.dumps(study.to_dict()))
    assert written["fold_dense_gains"] is True and written["activations"]["seed"] == seed
    assert written["activations"]["latent_size"] == [4, 4] and written["activations"]["stream"]["window"] == 2
    assert [c["label"] for c in written["checkpoints"]] == ["step_100", "step_250"]
    with open(tmp_path / "out" / "ranks.csv", newline="") as f:
        assert len(list(csv.DictReader(f))) == len(first.layers) + len(second.layers)
    table = study.summary_table(per_layer=True)
    assert f"E({d_c})" in table and "activations/mla/c_kv" in table and table.count("step_250") > 7


def test_rank_study_of_a_random_init_is_seeded_and_leaves_the_callers_rng(seed: int) -> None:
    cfg = preset("tiny").with_mla()
    before = torch.get_rng_state()
    one = rank_study(targets(preset="tiny", attention="mla"), seed=seed)
    assert torch.equal(torch.get_rng_state(), before)
    (m,) = one.models
    assert (m.label, m.path, m.step, m.k) == ("tiny-mla-init", None, None, cfg.mla.kv_latent_dim)
    torch.manual_seed(seed)  # the study's init is exactly this draw
    direct = list(weight_spectra(random_init_layers(cfg)))
    assert m.layers == [s.row(m.k) for s in direct]
    (again,) = rank_study(targets(preset="tiny", attention="mla", labels=["x"]), seed=seed).models
    (other,) = rank_study(targets(preset="tiny", attention="mla"), seed=seed + 1).models
    assert again.label == "x" and again.layers == m.layers and other.layers != m.layers
    (dense,) = rank_study(targets(preset="tiny"), rank=7, seed=seed).models
    assert dense.label == "tiny-dense-init" and dense.k == 7 and {r["kind"] for r in dense.layers} == {"dense"}
    assert all(r["energy_at_k"] < 1 for r in dense.layers)  # K = 7 of 64


def test_rank_study_refuses_bad_arguments_before_any_work(tmp_path, monkeypatch) -> None:
    import videomla.analysis.study as study

    def no_work(*args, **kwargs):
        raise AssertionError("the study started before its arguments were checked")

    monkeypatch.setattr(study, "_analyse", no_work)
    random_init = targets(preset="tiny")
    with pytest.raises(ValueError, match="--rank must be >= 1, got 0"):
        rank_study(random_init, rank=0)
    with pytest.raises(ValueError, match="'nonsense' is not a device name"):
        rank_study(random_init, activations=ActivationInputs(), device="nonsense")
    with pytest.raises(ValueError, match=r"--latent-size must be positive, got \[0, 4\]"):
        ActivationInputs(latent_size=(0, 4))
    with pytest.raises(ValueError, match="batch must be >= 1"):
        ActivationInputs(batch=0)
    with pytest.raises(ValueError, match="--labels gives 2 labels for 1 models"):
        targets(preset="tiny", labels=["a", "b"])
    with pytest.raises(ValueError, match="--attention picks"):
        targets([tmp_path], attention="mla")
    with pytest.raises(FileNotFoundError, match="no checkpoint at"):
        targets([tmp_path / "none"])
    with pytest.raises(ValueError, match="give CHECKPOINT paths"):
        targets([])
    for run in ("run_a", "run_b"):  # the same file name in two folders: labels take the folder
        (tmp_path / run).mkdir()
        (tmp_path / run / "model.pt").touch()
    paths = [tmp_path / "run_a" / "model.pt", tmp_path / "run_b" / "model.pt"]
    with pytest.raises(ValueError, match="--labels must be distinct"):
        targets(paths, labels=["a", "a"])
    models = targets(paths, preset="tiny")
    assert [(t.label, t.step, t.preset) for t in models] == [
        ("run_a/model", None, "tiny"),
        ("run_b/model", None, "tiny"),
    ]


# -- the command -----------------------------------------------------------------------------------------
def test_parse_step() -> None:
    from pathlib import Path

    from videomla.analysis import parse_step

    assert parse_step(Path("runs/a/step_500")) == 500
    assert parse_step(Path("runs/checkpoint-001200.safetensors")) == 1200
    assert parse_step(Path("model_9500.pt")) == 9500
    assert parse_step(Path("runs/iter300/model.safetensors")) == 300  # from the parent folder
    assert parse_step(Path("wan2.1-t2v-1.3b")) is None
    assert parse_step(Path("videomla_la6_sink1.pt")) is None


def _png_size(path) -> tuple[int, int]:
    """Width and height from a PNG header, after checking the signature; matplotlib then decodes it."""
    import matplotlib.image

    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.std() > 0  # decodes, and is not blank
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def test_cli_two_checkpoints(seed: int, tmp_path, capsys) -> None:
    from videomla.checkpoint import save_model
    from videomla.cli import main

    cfg = preset("tiny").with_mla()
    d_c = cfg.mla.kv_latent_dim
    model = tiny_model(cfg)
    save_model(model, tmp_path / "run" / "step_100")
    with torch.no_grad():  # later "training" switched off half of layer 0's latent channels
        model.blocks[0].self_attn.kv_norm.weight[: d_c // 2] = 0
    save_model(model, tmp_path / "run" / "step_250")
    out = tmp_path / "out"
    argv = ["rank", str(tmp_path / "run" / "step_100"), str(tmp_path / "run" / "step_250"), "--out", str(out)]
    assert main([*argv, "--activations", "--latent-size", "8", "8", "--chunks", "2"]) == 0
    printed = capsys.readouterr().out
    assert "weights/mla/kv" in printed and "activations/mla/c_kv" in printed

    report = json.loads((out / "ranks.json").read_text())
    assert report["svd_dtype"] == "float64" and report["taus"] == [0.9, 0.95, 0.99]
    assert [c["step"] for c in report["checkpoints"]] == [100, 250]
    assert [c["k"] for c in report["checkpoints"]] == [d_c, d_c]
    first, second = ({(r["layer"], r["source"], r["operator"]): r for r in c["layers"]} for c in report["checkpoints"])
    assert first[(0, "weights", "kv")]["r_0.99"] > d_c // 2  # a random init fills its budget ...
    assert second[(0, "weights", "kv")]["r_0.99"] <= d_c // 2  # ... zeroed gains remove directions
    assert second[(1, "weights", "kv")] == first[(1, "weights", "kv")]
    assert first[(0, "weights", "kv")]["r_0.99/bound"] == first[(0, "weights", "kv")]["r_0.99"] / d_c
    assert {key[1:] for key in first} == {
        ("weights", "kv"),
        ("weights", "q"),
        ("activations", "c_kv"),
        ("activations", "k_r"),
    }

    with open(out / "ranks.csv", newline="") as f:
        csv_rows = list(csv.DictReader(f))
    json_rows = [(c, r) for c in report["checkpoints"] for r in c["layers"]]
    assert len(csv_rows) == len(json_rows) == 2 * 2 * 4
    for row, (ckpt, rec) in zip(csv_rows, json_rows):
        assert row["label"] == ckpt["label"] and int(row["step"]) == ckpt["step"]
        for key, value in rec.items():
            if value is None:
                assert row[key] == ""
            elif isinstance(value, float):
                assert float(row[key]) == value
            else:
                assert type(value)(row[key]) == value, key

    from safetensors.torch import load_file

    spectra = load_file(out / "spectra.safetensors")
    assert len(spectra) == len(json_rows)
    s = spectra["step_250/weights/mla/kv/0"]
    assert s.dtype == torch.float64 and effective_rank(s, 0.99) == second[(0, "weights", "kv")]["r_0.99"]

    pngs = sorted(p.name for p in out.glob("*.png"))
    assert pngs == sorted(
        [f"{kind}-{label}.png" for kind in ("spectra", "energy", "layer-ranks") for label in ("step_100", "step_250")]
        + ["rank-over-training.png"]
    )
    for name in pngs:
        width, height = _png_size(out / name)
        assert width > 300 and height > 200


def test_cli_without_matplotlib_still_writes_tables(seed: int, tmp_path, capsys, monkeypatch) -> None:
    import sys

    from videomla.cli import main

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` now fails
    assert main(["rank", "--preset", "tiny", "--attention", "mla", "--out", str(tmp_path)]) == 0
    assert "matplotlib is not installed" in capsys.readouterr().err
    assert (tmp_path / "ranks.csv").is_file() and (tmp_path / "ranks.json").is_file()
    assert not list(tmp_path.glob("*.png"))


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "give CHECKPOINT paths, or --preset"),
        (["--preset", "tiny", "--labels", "a", "b"], "--labels gives 2 labels for 1 models"),
        (["--preset", "tiny", "--rank", "0"], "--rank must be >= 1"),
        (["does/not/exist"], "no checkpoint at does/not/exist"),
        (["--preset", "tiny", "--activations", "--chunks", "0"], "chunks must be >= 1"),
        (["--preset", "tiny", "--activations", "--window", "-1"], "window_frames must be >= 0"),
    ],
)
def test_cli_bad_input(tmp_path, capsys, argv: list[str], message: str) -> None:
    from videomla.cli import main

    assert main(["rank", *argv, "--out", str(tmp_path / "o")]) == 2
    assert message in capsys.readouterr().err


def test_cli_checkpoints_without_steps_use_their_order(seed: int, tmp_path) -> None:
    from videomla.checkpoint import save_model
    from videomla.cli import main

    for name in ("base", "tuned"):
        save_model(tiny_model(), tmp_path / name)
    out = tmp_path / "out"
    argv = ["rank", str(tmp_path / "base"), str(tmp_path / "tuned"), "--labels", "A", "B", "--out", str(out)]
    assert main([*argv, "--fold-dense-gains", "--rank", "16"]) == 0
    report = json.loads((out / "ranks.json").read_text())
    assert [(c["label"], c["step"], c["k"]) for c in report["checkpoints"]] == [("A", None, 16), ("B", None, 16)]
    assert report["fold_dense_gains"] is True
    rows = report["checkpoints"][0]["layers"]
    assert {(r["kind"], r["operator"], r["rank_bound"], r["budget"]) for r in rows} == {
        ("dense", "kv", 64, None),
        ("dense", "q", 64, None),
    }
    _png_size(out / "rank-over-training.png")
