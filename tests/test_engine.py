"""The streaming engine: fast path vs reference, batching, fork, recache, bounded state, peers' windows."""

from __future__ import annotations

import dataclasses
import gc
import json
import math

import numpy as np
import pytest
import torch

from videomla.benchmark.runner import Bench
from videomla.checkpoint import load_model, resolve_checkpoint, save_model
from videomla.cli import main
from videomla.config import STREAM_PRESETS, StreamConfig, preset
from videomla.engine import EngineOptions, LatentGeometry, NonFiniteError, StreamEngine
from videomla.engine.engine import cpu_matmul_precision
from videomla.engine.threads import SMALL_MODEL_PARAMS, ThreadTuner, choose_threads
from videomla.pipeline import GenerationRequest, GenerationSpec, Pipeline, chunks_for_frames, resolve_spec
from videomla.schedule import SamplingSchedule

from conftest import rel_err, tiny_mla_checkpoint, tiny_model

GEOMETRY = LatentGeometry(4, 4, 6)
WINDOW = StreamConfig(sink_frames=1, window_frames=3)
META = {
    "codec": {"type": "pixel", "spatial_stride": 2, "scale": 1.0, "offset": 0.0},
    "text_encoder": {"type": "hash", "text_dim": 32, "max_tokens": 16},
    "video": {"height": 24, "width": 32, "fps": 8},
}


def texts(model, n: int = 1) -> torch.Tensor:
    with torch.no_grad():
        return model.embed_text(torch.randn(n, 5, model.config.text_dim))


def run(engine: StreamEngine, text: torch.Tensor, chunks: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.cat([engine.step(text, gen) for _ in range(chunks)], dim=2)


@pytest.mark.parametrize("mla", [False, True])
def test_fast_path_equals_the_reference_path(seed, mla):
    """The fused-kernel path (compiled with a CPU-capable backend) streams the reference's video."""
    cfg = preset("tiny").with_mla(layers=(1,)) if mla else preset("tiny")
    model, text = tiny_model(cfg), None
    text = texts(model)
    ref = run(StreamEngine(model, WINDOW, GEOMETRY), text, 6, seed)
    fast = StreamEngine(model, WINDOW, GEOMETRY, options=EngineOptions(compile=True, compile_backend="aot_eager"))
    assert fast.options.compile and not fast.options.cuda_graphs
    assert rel_err(run(fast, text, 6, seed), ref) < 1e-5


@pytest.fixture
def fresh_probe():
    """The bf16 probe with its cached answer cleared before and after the test."""
    from videomla.engine import engine as engine_module

    engine_module.bf16_matmul_keeps_fp32_accuracy.cache_clear()
    yield engine_module.bf16_matmul_keeps_fp32_accuracy
    engine_module.bf16_matmul_keeps_fp32_accuracy.cache_clear()


def test_bf16_matmul_probe_tells_split_from_plain_bf16(monkeypatch, fresh_probe):
    """The probe passes a kernel at float32 accuracy and refuses one that rounds to bf16 (AMX CPUs),
    whatever precision the process already had set."""
    linear = torch.nn.functional.linear

    def rounding(a, b, bias=None):  # what a plain-bf16 kernel computes for float32 inputs
        if a.dtype == torch.float32 and torch.backends.mkldnn.matmul.fp32_precision == "bf16":
            return linear(a.bfloat16(), b.bfloat16()).float()
        return linear(a, b, bias)

    monkeypatch.setattr(torch.nn.functional, "linear", rounding)
    with cpu_matmul_precision("bf16"):  # a caller already in bf16 must not make the reference bf16 too
        assert not fresh_probe()
    fresh_probe.cache_clear()
    exact = lambda a, b, bias=None: linear(a.double(), b.double()).to(a.dtype)  # noqa: E731
    monkeypatch.setattr(torch.nn.functional, "linear", exact)
    assert fresh_probe()


@pytest.mark.parametrize("exact", [False, True])
def test_engine_takes_the_bf16_path_only_where_the_probe_allows(monkeypatch, exact):
    from videomla.engine import engine as engine_module

    monkeypatch.setattr(engine_module, "bf16_matmul_keeps_fp32_accuracy", lambda: exact)
    seen = []
    model = tiny_model()
    original = model.forward_chunk

    def recording(*args, **kwargs):
        seen.append(torch.backends.mkldnn.matmul.fp32_precision)
        return original(*args, **kwargs)

    monkeypatch.setattr(model, "forward_chunk", recording)
    StreamEngine(model, WINDOW, GEOMETRY).step(texts(model))
    assert seen and set(seen) == {"bf16" if exact else torch.backends.mkldnn.matmul.fp32_precision}
    assert engine_module.cpu_fast_matmul_active(EngineOptions(), torch.device("cpu"), torch.float32) is exact


def test_cpu_fast_matmul_stays_at_float32_accuracy_and_restores_the_setting(seed):
    """The CPU default (oneDNN's bf16-split float32 matmuls where the probe finds them exact, IEEE
    elsewhere) streams what IEEE float32 streams, to float32 accuracy (plain bf16 would be ~1e-2
    off), and leaves the process's setting as it was."""
    model = tiny_model()
    text = texts(model)
    exact = StreamEngine(model, WINDOW, GEOMETRY, options=EngineOptions(cpu_fast_matmul=False))
    fast = StreamEngine(model, WINDOW, GEOMETRY)
    before = torch.backends.mkldnn.matmul.fp32_precision
    a, b = run(exact, text, 6, seed), run(fast, text, 6, seed)
    assert torch.backends.mkldnn.matmul.fp32_precision == before
    assert rel_err(b, a) < 1e-4
    with torch.no_grad():
        bf16 = model.to(torch.bfloat16)
        plain = run(StreamEngine(bf16, WINDOW, GEOMETRY), text.bfloat16(), 6, seed).float()
        model.float()
    assert rel_err(plain, a) > 10 * rel_err(b, a)  # the check can tell bf16 from float32


def test_batched_streams_equal_each_stream_alone(seed):
    """What a server batching streams relies on: per-stream text and noise, one forward for all."""
    model = tiny_model(preset("tiny").with_mla())
    text = texts(model, 3)
    seeds = [seed, seed + 1, seed + 2]
    batched = StreamEngine(model, WINDOW, GEOMETRY, batch=3)
    gens = [torch.Generator().manual_seed(s) for s in seeds]
    together = torch.cat([batched.step(text, gens) for _ in range(5)], dim=2)
    for i, s in enumerate(seeds):
        alone = run(StreamEngine(model, WINDOW, GEOMETRY), text[i : i + 1], 5, s)
        assert rel_err(together[i : i + 1], alone) < 1e-5


def test_fork_continues_identically_and_independently(seed):
    model = tiny_model()
    text, other = texts(model), texts(model)
    engine = StreamEngine(model, WINDOW, GEOMETRY, keep_history=True)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(4):
        engine.step(text, gen)
    fork = engine.fork()
    assert all(
        a.data_ptr() != b.data_ptr()
        for la, lb in zip(engine.cache.layers, fork.cache.layers)
        for a, b in zip(la.buffers.values(), lb.buffers.values())
    )
    state = gen.get_state()
    a = engine.step(text, gen)
    gen.set_state(state)
    b = fork.step(text, gen)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    fork.step(other, gen)  # the fork moves on under another prompt; the original is untouched
    assert fork.next_frame == engine.next_frame + 3 and engine.chunks == 5


def test_recache_keep_sink_rebuilds_only_the_window(seed):
    model = tiny_model()
    a, b = texts(model), texts(model)
    engine = StreamEngine(model, WINDOW, GEOMETRY, keep_history=True)
    run(engine, a, 4, seed)
    tpf = engine.cache.tokens_per_frame
    before = [dict((k, v.clone()) for k, v in layer.buffers.items()) for layer in engine.cache.layers]
    engine.recache(b, keep_sink=True)
    # layer 0's self-attention runs before any cross-attention, so only later layers see the text
    for i, (layer, old) in enumerate(zip(engine.cache.layers, before)):
        for name, buf in layer.buffers.items():
            assert torch.equal(buf[:, :tpf], old[name][:, :tpf])  # the sink slot is kept as is
            window_same = torch.equal(buf[:, tpf : 4 * tpf], old[name][:, tpf : 4 * tpf])
            assert window_same == (i == 0), (i, name)  # the window is rebuilt under the new text
    full = engine.fork()
    full.recache(b)  # without keep_sink the sink is rebuilt too
    assert not torch.equal(full.cache.layers[1].buffers["k"][:, :tpf], before[1]["k"][:, :tpf])
    with pytest.raises(ValueError, match="keep_history"):
        StreamEngine(model, WINDOW, GEOMETRY).recache(b)


def test_a_cache_the_machine_cannot_hold_is_refused_before_allocating():
    model = tiny_model()
    with pytest.raises(ValueError, match=r"needs [\d,.]+ GiB, but cpu has [\d,.]+ GiB available"):
        StreamEngine(model, StreamConfig(sink_frames=1, window_frames=10**12), GEOMETRY)


def test_nonfinite_chunk_names_chunk_and_layer(seed):
    model = tiny_model()
    with torch.no_grad():
        model.blocks[1].ffn[0].weight.fill_(float("nan"))
    engine = StreamEngine(model, WINDOW, GEOMETRY)
    x0 = engine.step(texts(model))
    with pytest.raises(NonFiniteError, match=r"chunk 0 came out NaN/Inf; block 1 is the first"):
        engine.check_finite(torch.isfinite(x0).all(), 0)


def tensor_bytes() -> int:
    gc.collect()
    return sum(o.numel() * o.element_size() for o in gc.get_objects() if isinstance(o, torch.Tensor))


@pytest.mark.parametrize("recache", [False, True])
def test_what_the_pipeline_holds_does_not_grow(tmp_path, seed, recache):
    """Every live tensor counted (not only the cache buffers): chunk 10 and chunk 100 hold the same."""
    model = tiny_model(dataclasses.replace(preset("tiny"), in_channels=12, out_channels=12))
    pipe = Pipeline.from_checkpoint(save_model(model, tmp_path / "m", META), device="cpu")
    seen = {}
    prompts = [("a", 0.0), ("b", 50 * 3 / 8)]
    for chunk in pipe.stream(prompts, 100 * 3 / 8, seed=seed, recache=recache, output="none"):
        if chunk.index + 1 in (10, 100):
            seen[chunk.index + 1] = (tensor_bytes(), pipe.engine.held_bytes())
    assert pipe.summary.chunks == 100 and pipe.summary.recaches == int(recache)
    assert seen[10] == seen[100]


def test_peer_checkpoint_streams_with_its_peers_window(tmp_path, seed):
    """A Self-Forcing .pt without metadata runs Self-Forcing's window (0 sink, 18 cached, absolute)."""
    model = tiny_model()
    torch.save({"generator_ema": model.state_dict()}, tmp_path / "self_forcing.pt")
    (tmp_path / "vae").mkdir()
    path, spec = resolve_spec(tmp_path / "self_forcing.pt", text_encoder="hash")
    assert spec.stream == STREAM_PRESETS["self-forcing"] and "self-forcing" in spec.stream_source
    request = GenerationRequest.build(spec, "a", 10, seed=seed, output="latent")
    assert request.stream == StreamConfig(sink_frames=0, window_frames=18, rope_mode="absolute")
    # streamed with that request vs the same weights with the window given by hand
    loaded = load_model(path, preset="tiny")  # dim 64: shapes alone do not tell the heads
    chunks = 9  # 27 latent frames: past the 21-frame window, so eviction happens
    by_spec = StreamEngine(loaded, request.stream, GEOMETRY)
    by_hand = StreamEngine(model, StreamConfig(sink_frames=0, window_frames=18, rope_mode="absolute"), GEOMETRY)
    text = texts(model)
    torch.testing.assert_close(run(by_spec, text, chunks, seed), run(by_hand, text, chunks, seed))
    named = GenerationRequest.build(spec, "a", 10, stream="longlive", window=3)
    assert (named.stream.sink_frames, named.stream.window_frames, named.stream.rope_mode) == (3, 3, "absolute")
    assert "longlive" in named.stream_source and "window_frames=3" in named.stream_source


def test_every_peer_preset_reproduces_its_window():
    attended = {name: s.attended_frames for name, s in STREAM_PRESETS.items()}
    assert attended == {"self-forcing": 21, "longlive": 12, "reward-forcing": 9, "videomla": 10}
    assert STREAM_PRESETS["longlive"].sink_frames == 3 and STREAM_PRESETS["videomla"].sink_frames == 1


def test_schedule_round_trips_through_export_and_generate(tmp_path, seed):
    model = tiny_model(dataclasses.replace(preset("tiny"), in_channels=12, out_channels=12))
    schedule = SamplingSchedule((1000, 500), 3.0)
    spec = GenerationSpec.from_dict({**META, "schedule": schedule.to_dict()})
    path = save_model(model, tmp_path / "m", spec.to_dict())
    _, read = resolve_spec(path)
    assert read.schedule == schedule
    pipe = Pipeline.from_checkpoint(path, device="cpu")
    calls = []
    real = pipe.model.forward_chunk
    pipe.model.forward_chunk = lambda x, t, *a, **k: calls.append(float(t[0])) or real(x, t, *a, **k)
    list(pipe.stream("a", 0.375, seed=seed))  # one chunk: 2 denoising passes + the clean write
    assert calls == [1000.0, pytest.approx(750.0), 0.0]  # 500 warped by shift 3 = 750
    calls.clear()
    list(pipe.stream("a", 0.375, seed=seed, steps=(1000, 750, 500, 250), shift=5.0))  # --steps/--shift win
    assert len(calls) == 5 and pipe.summary.run["schedule"] == {
        "steps": [1000, 750, 500, 250],
        "shift": 5.0,
        "solver": "renoise",
    }
    list(pipe.stream("a", 0.375, seed=seed, solver="euler"))  # --solver wins too, keeping the steps
    assert pipe.summary.run["schedule"] == {"steps": [1000, 500], "shift": 3.0, "solver": "euler"}
    with pytest.raises(ValueError, match="strictly decreasing"):
        SamplingSchedule((500, 1000))
    with pytest.raises(ValueError, match="unknown solver 'heun'"):
        SamplingSchedule(solver="heun")
    for bad in ("1", 1.5, -1, True):  # a hash encoder's context: a whole number of words, named when wrong
        with pytest.raises(ValueError, match="context"):
            GenerationSpec.from_dict({**META, "text_encoder": {**META["text_encoder"], "context": bad}})
    old_metadata = {k: v for k, v in schedule.to_dict().items() if k != "solver"}  # written before solvers
    assert GenerationSpec.from_dict({**META, "schedule": old_metadata}).schedule.solver == "renoise"


def test_every_checkpoint_layout_resolves_the_same(tmp_path):
    model = tiny_model()
    export = save_model(model, tmp_path / "run" / "checkpoints" / "step_00000010" / "model")
    (export.parent / "trainer.json").write_text("{}")
    save_model(tiny_model(), tmp_path / "run" / "checkpoints" / "step_00000002" / "model")
    (tmp_path / "run" / "checkpoints" / "step_00000002" / "trainer.json").write_text("{}")
    (tmp_path / "root").mkdir()
    from videomla.checkpoint import export_diffusers

    export_diffusers(model, tmp_path / "root" / "transformer")
    (tmp_path / "pt").mkdir()
    torch.save(model.state_dict(), tmp_path / "pt" / "model.pt")
    assert resolve_checkpoint(tmp_path / "run") == export
    assert resolve_checkpoint(export.parent) == export
    assert resolve_checkpoint(tmp_path / "root") == tmp_path / "root" / "transformer"
    assert resolve_checkpoint(tmp_path / "pt") == tmp_path / "pt" / "model.pt"
    want = model.state_dict()
    for layout in ("run", "run/checkpoints/step_00000010", "root", "pt"):
        got = load_model(tmp_path / layout, preset="tiny").state_dict()
        assert all(torch.equal(got[k], want[k]) for k in want), layout
    assert main(["info", "--checkpoint", str(tmp_path / "root")]) == 0  # every command shares the resolver
    assert main(["info", "--checkpoint", str(tmp_path / "run")]) == 0


def test_chunk_count_is_closed_form_for_any_length():
    spec = GenerationSpec.from_dict({"format": "wan2.1"})
    stream = STREAM_PRESETS["videomla"]
    for frames in (1, 9, 10, 81, 82, 1000):
        linear = next(k for k in range(1, 10**4) if spec.codec.frames_for(3 * k) >= frames)
        assert chunks_for_frames(spec, stream, frames) == linear
    huge = GenerationRequest.build(spec, "a", 1e9)  # a billion seconds: no linear search
    assert huge.num_chunks == math.ceil(((huge.total_frames - 1) / 4 + 1) / 3)


def test_summary_json_fields(tmp_path, capsys, seed):
    model = tiny_model(dataclasses.replace(preset("tiny"), in_channels=12, out_channels=12).with_mla())
    ckpt = save_model(model, tmp_path / "m", META)
    out, summary = tmp_path / "v.gif", tmp_path / "s.json"
    args = ["generate", "--checkpoint", str(ckpt), "--prompt", "a", "--seconds", "3", "--out", str(out)]
    assert main([*args, "--summary", str(summary), "--seed", str(seed), "--quiet", "--stream", "longlive"]) == 0
    data = json.loads(summary.read_text())
    for key in ("frames", "video_seconds", "wall_seconds", "fps", "fps_without_decode", "fps_steady"):
        assert isinstance(data[key], float | int) and data[key] > 0, key
    assert data["frames"] == 24 and data["time_to_first_chunk_seconds"] > 0 and data["seed"] == seed
    assert data["run"]["stream"] == dataclasses.asdict(STREAM_PRESETS["longlive"])
    assert "longlive" in data["run"]["stream_text"] and data["run"]["schedule"]["steps"] == [1000, 750, 500, 250]
    assert data["peak_cache_bytes"] > 0 and data["cache_window_bytes"] < data["dense_window_bytes"]
    assert data["cache_reduction"] == pytest.approx(1 - data["cache_window_bytes"] / data["dense_window_bytes"])


def test_core_install_refuses_mp4_before_loading(tmp_path, capsys, monkeypatch):
    """Without PyAV the mp4 writer is refused with the pip line, before the model loads, leaving no file."""
    import sys

    monkeypatch.setitem(sys.modules, "av", None)  # what an install without the video extra looks like
    loaded = []
    monkeypatch.setattr("videomla.pipeline.pipeline.load_model", lambda *a, **k: loaded.append(a))
    code = main(["generate", "--prompt", "a", "--seconds", "1", "--out", str(tmp_path / "v.mp4")])
    err = capsys.readouterr().err
    assert code != 0 and 'pip install "videomla[video]"' in err and "Traceback" not in err
    assert not loaded and list(tmp_path.iterdir()) == []


def test_bench_arithmetic_with_injected_timings():
    run = {
        "transformer_ms": [100.0, 50.0, 50.0, 40.0, 40.0],
        "vae_ms": [30.0, 20.0, 20.0, 20.0, 20.0],
        "ready_s": [0.2, 0.3, 0.4, 0.5, 0.6],
        "video_frames": [9, 12, 12, 12, 12],
        "finite": True,
    }
    out = Bench.summarise(run, flops_per_chunk=10**12, clip_chunks=2, fill=2, peak_tflops=100.0)
    assert out["steady_chunk_ms"] == 40.0 and out["fps_transformer"] == pytest.approx(300.0)
    assert out["clip_fps_transformer"] == pytest.approx(21 / 0.15)
    assert out["ttfc_ms"] == 100.0 and out["ttfc_with_vae_ms"] == pytest.approx(200.0)
    assert out["fps_with_vae"] == pytest.approx(12 / 0.1)  # wall gaps between ready chunks: 100 ms
    assert out["clip_fps_with_vae"] == pytest.approx(21 / 0.3)
    assert out["achieved_tflops"] == pytest.approx(25.0) and out["fraction_of_matmul_peak"] == pytest.approx(0.25)
    assert out["flop_floor_ms"] == pytest.approx(10.0) and out["flop_floor_fps"] == pytest.approx(1200.0)


def test_thread_rule(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert choose_threads(None, SMALL_MODEL_PARAMS - 1) == 1
    assert choose_threads(3, 10) == 3
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert choose_threads(None, 10) == 2
    with pytest.raises(ValueError, match="--threads"):
        choose_threads(0, 10)


def test_thread_tuner_keeps_the_faster_count_and_follows_a_change():
    tuner = ThreadTuner((1, 2), probe_every=8)
    ran = []
    for chunk in range(48):
        busy = 20 <= chunk < 36  # a neighbour: 2 threads spin against it; idle, 2 threads are faster
        cost = {1: 1.0, 2: 4.0 if busy else 0.6}
        t = tuner.next()
        ran.append(t)
        tuner.record(cost[t] * (5.0 if chunk == 0 else 1.0))  # chunk 0's one-time costs are not counted
    assert ran[:5] == [1, 1, 2, 2, 1]  # warm-up, then both counts timed twice (a, b, b, a)
    assert ran[5:8] == [2, 2, 2] and ran[8] == 1 and ran[9:16] == [2] * 7  # the faster; a probe at 8
    assert ran[20] == 2 and ran[21:24] == [1, 1, 1]  # the neighbour arrives at 20: moved at once
    assert ran[24] == 2 and ran[25:32] == [1] * 7 and ran[32] == 2  # probed, still slow: stays on 1
    assert ran[36:40] == [1] * 4 and ran[40] == 2 and ran[41:] == [2] * 7  # it left at 36: back at the probe
    assert tuner.used == {1: ran.count(1), 2: ran.count(2)}
    with pytest.raises(ValueError, match="two or more"):
        ThreadTuner((1,))
    with pytest.raises(ValueError, match="probe_every"):
        ThreadTuner((1, 2), probe_every=1)


def test_a_tuned_stream_makes_the_same_video_and_leaves_the_thread_count(monkeypatch, seed):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr("videomla.pipeline.pipeline.available_cores", lambda: 2)
    monkeypatch.setattr("videomla.engine.threads.available_cores", lambda: 2)
    before = torch.get_num_threads()
    try:
        tuned = Pipeline.from_checkpoint(None, device="cpu")
        assert tuned.tune_threads == (1, 2)
        fixed = Pipeline.from_checkpoint(None, device="cpu", threads=1)
        assert fixed.tune_threads is None
        prompt, seen = "a large red circle", []
        frames = []
        for chunk in tuned.stream(prompt, 3, seed=seed):
            seen.append(torch.get_num_threads())  # the caller's count between chunks
            frames.append(chunk.frames)
        assert seen == [1] * len(seen) and torch.get_num_threads() == 1
        reference = np.concatenate([c.frames for c in fixed.stream(prompt, 3, seed=seed)])
        assert np.array_equal(np.concatenate(frames), reference)  # uint8 frames: the count does not change them
        used = tuned.summary.run["thread_chunks"]  # 8 chunks: 3 + 2 in the warm-up, the other 3 by timing
        assert sum(used.values()) == 8 and used[str(tuned.summary.run["threads"])] == max(used.values())
        assert "thread_chunks" not in fixed.summary.run
    finally:
        torch.set_num_threads(before)


def test_steady_fps_is_read_over_the_latest_chunks():
    from videomla.pipeline import RunSummary

    s = RunSummary()
    for frames, wall, step in [(9, 5.0, 4.0)] + [(12, 0.5, 0.25)] * 3 + [(12, 1.5, 0.75)] * 2:
        s.add_chunk(frames, wall, step)
        s.chunks += 1
    # the first (cold, 9-frame) chunk is left out: medians of the 5 others
    assert s.fps_steady == pytest.approx(12 / 0.5) and s.fps_steady_without_decode == pytest.approx(12 / 0.25)


# -- what the stream fixes at construction: MLA path, latent dtype; the fast-kernel switch's scope --
def test_engine_options_fix_the_mla_path_and_latent_dtype(seed):
    """EngineOptions is the one place: the engine's cache carries the path and the fp8 latents, and
    each path streams the same video as the naive reference."""
    model = tiny_model(preset("tiny").with_mla(layers=(1,)))
    stream, geometry = StreamConfig(sink_frames=1, window_frames=3), LatentGeometry(4, 6, 8)
    text = model.embed_text(torch.randn(1, 5, model.config.text_dim))
    outs = {}
    for path in ("naive", "materialised", "absorbed"):
        engine = StreamEngine(model, stream, geometry, options=EngineOptions(False, False, mla_path=path))
        assert engine.cache.mla_path == path
        gen = torch.Generator().manual_seed(seed)
        outs[path] = torch.cat([engine.step(text, gen) for _ in range(3)], dim=2)
    assert rel_err(outs["materialised"], outs["naive"]) < 1e-5
    assert rel_err(outs["absorbed"], outs["naive"]) < 1e-5
    fp8 = StreamEngine(model, stream, geometry, options=EngineOptions(False, False, kv_fp8=True))
    dtypes = [layer.buffers[next(iter(layer.spec))].dtype for layer in fp8.cache.layers]
    assert dtypes == [torch.float32, torch.float8_e4m3fn]  # the dense block keeps its K/V dtype
    assert fp8.footprint().total_bytes < engine.footprint().total_bytes


def test_bad_mla_choices_are_refused():
    with pytest.raises(ValueError, match="mla_path must be one of"):
        EngineOptions(mla_path="fast")
    dense = tiny_model(preset("tiny"))
    with pytest.raises(ValueError, match="applies to MLA layers"):
        dense.new_cache(StreamConfig(), 1, 6, 8, latent_dtype=torch.float8_e4m3fn)
    mla = tiny_model(preset("tiny").with_mla())
    with pytest.raises(ValueError, match="fp8 latent cache stores"):
        mla.new_cache(StreamConfig(), 1, 6, 8, latent_dtype=torch.float8_e5m2)


def test_fast_kernels_are_scoped_to_their_thread():
    """A block under fast_kernels() in one thread leaves another thread on the reference code."""
    import threading

    from videomla.attention.common import fast_enabled, fast_kernels

    seen: dict[str, bool] = {}
    inside, release = threading.Event(), threading.Event()

    def fast_worker():
        with fast_kernels("eager"):
            seen["worker, inside"] = fast_enabled()
            inside.set()
            release.wait(10)

    worker = threading.Thread(target=fast_worker)
    worker.start()
    inside.wait(10)
    seen["main, meanwhile"] = fast_enabled()
    release.set()
    worker.join()
    assert seen == {"worker, inside": True, "main, meanwhile": False}
    with fast_kernels("eager"):
        assert fast_enabled()
    assert not fast_enabled()


def test_keyword_fp8_keeps_the_options_mla_path(tmp_path):
    """from_checkpoint(options=EngineOptions(mla_path=...), kv_fp8=True): both choices survive the merge."""
    ckpt = tiny_mla_checkpoint(tmp_path / "m")
    pipe = Pipeline.from_checkpoint(ckpt, device="cpu", options=EngineOptions(mla_path="absorbed"), kv_fp8=True)
    assert (pipe.options.mla_path, pipe.options.kv_fp8) == ("absorbed", True)


def test_checkpoint_recompute_runs_the_forwards_kernels_in_any_thread(seed):
    """Activation checkpointing recomputes on autograd's thread (CUDA): it must see the forward's
    fast-kernel state, or the recomputed tensors differ (float32 vs float64 RoPE tables)."""
    import threading

    from videomla.attention.common import fast_kernels
    from videomla.training.models import enable_activation_checkpointing

    model = tiny_model(preset("tiny").with_mla(layers=(1,)))
    enable_activation_checkpointing(model)
    x, t, text = torch.randn(1, 4, 6, 4, 6), torch.full((1,), 500.0), torch.randn(1, 5, model.config.text_dim)
    with fast_kernels("eager"):
        loss = model(x, t, text, StreamConfig(sink_frames=1, window_frames=3)).square().mean()
    errors: list[BaseException] = []

    def backward():
        try:
            loss.backward()
        except BaseException as err:  # reported to the main thread
            errors.append(err)

    worker = threading.Thread(target=backward)
    worker.start()
    worker.join()
    assert not errors, errors
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
