"""Cohort batching (what `videomla serve` runs): streams that joined at different chunks, advanced in
shared batched steps, equal each stream run alone; prompt switches with and without recache."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from videomla.config import StreamConfig, preset
from videomla.engine import LatentGeometry, StreamEngine
from videomla.engine.cohort import CohortRunner, group_cohorts, layout_key

from conftest import rel_err, tiny_mla_checkpoint, tiny_model

GEOMETRY = LatentGeometry(4, 4, 6)
WINDOW = StreamConfig(sink_frames=1, window_frames=3, frames_per_chunk=1)
WINDOW3 = StreamConfig(sink_frames=1, window_frames=6, frames_per_chunk=3)


def texts(model, n: int) -> list[torch.Tensor]:
    with torch.no_grad():
        return [model.embed_text(torch.randn(1, 5, model.config.text_dim)) for _ in range(n)]


def alone(model, stream, text_of_chunk, chunks: int, seed: int, recache_at=(), keep_sink=False) -> torch.Tensor:
    """The reference: one stream on its own engine; ``text_of_chunk(k)`` conditions chunk k."""
    engine = StreamEngine(model, stream, GEOMETRY, keep_history=True)
    gen = torch.Generator().manual_seed(seed)
    out = []
    for k in range(chunks):
        if k in recache_at:
            engine.recache(text_of_chunk(k), keep_sink)
        out.append(engine.step(text_of_chunk(k), gen))
    return torch.cat(out, dim=2)


ABSOLUTE = dataclasses.replace(WINDOW, rope_mode="absolute")


@pytest.mark.parametrize("stream", [WINDOW, WINDOW3, ABSOLUTE], ids=["relative", "chunk3", "absolute"])
def test_streams_joining_at_different_chunks_equal_each_stream_alone(seed, stream):
    model = tiny_model(preset("tiny").with_mla(layers=(1,)))
    joins = [0, 0, 2, 3, 7]  # the tick at which each stream opens
    length = [9, 5, 8, 6, 3]  # chunks each stream makes, then leaves
    text = texts(model, len(joins))
    runner = CohortRunner(model)
    engines: dict[int, StreamEngine] = {}
    gens: dict[int, torch.Generator] = {}
    made: dict[int, list[torch.Tensor]] = {i: [] for i in range(len(joins))}
    cohorts_per_tick = []
    for tick in range(12):
        for i, j in enumerate(joins):
            if j == tick:
                engines[i] = StreamEngine(model, stream, GEOMETRY, keep_history=True)
                gens[i] = torch.Generator().manual_seed(seed + i)
        live = [i for i in engines if len(made[i]) < length[i]]
        if not live:
            continue
        cohorts = group_cohorts([engines[i] for i in live])
        cohorts_per_tick.append(len(cohorts))
        for members in cohorts:
            ids = [live[m] for m in members]
            rows = runner.step([engines[i] for i in ids], [text[i] for i in ids], [gens[i] for i in ids])
            for i, row in zip(ids, rows):
                made[i].append(row)
    assert max(cohorts_per_tick) > 1, "the schedule never put streams at different layouts: a weak test"
    for i in range(len(joins)):
        ref = alone(model, stream, lambda _k, i=i: text[i], length[i], seed + i)
        assert rel_err(torch.cat(made[i], dim=2), ref) < 1e-5, f"stream {i}"
    if stream.rope_mode == "window-relative":
        # past the fill phase every stream has one layout: one batched step for all of them
        a, b = (StreamEngine(model, stream, GEOMETRY) for _ in range(2))
        ga, gb = torch.Generator().manual_seed(0), torch.Generator().manual_seed(1)
        for _ in range(7):
            a.step(text[0], ga)
        for _ in range(11):
            b.step(text[1], gb)
        assert a.next_frame != b.next_frame
        assert layout_key(a) == layout_key(b)


@pytest.mark.parametrize("recache, keep_sink", [(False, False), (True, False), (True, True)])
def test_prompt_switch_in_a_cohort_equals_the_switch_alone(seed, recache, keep_sink):
    """Stream 1 switches prompt at its chunk 4 (optionally rebuilding its cache alone first) while
    it shares batched steps with stream 0, which does not switch."""
    model = tiny_model(preset("tiny").with_mla())
    a, b, c = texts(model, 3)
    runner = CohortRunner(model)
    engines = [StreamEngine(model, WINDOW3, GEOMETRY, keep_history=True) for _ in range(2)]
    gens = [torch.Generator().manual_seed(seed + i) for i in range(2)]
    switch = 4
    made: list[list[torch.Tensor]] = [[], []]
    for k in range(7):
        text1 = b if k < switch else c
        if recache and k == switch:
            engines[1].recache(c, keep_sink)
        assert len(group_cohorts(engines)) == 1
        rows = runner.step(engines, [a, text1], gens)
        for i in range(2):
            made[i].append(rows[i])
    ref0 = alone(model, WINDOW3, lambda _k: a, 7, seed)
    ref1 = alone(model, WINDOW3, lambda k: b if k < switch else c, 7, seed + 1, (switch,) if recache else (), keep_sink)
    assert rel_err(torch.cat(made[0], dim=2), ref0) < 1e-5
    assert rel_err(torch.cat(made[1], dim=2), ref1) < 1e-5
    # the switch changed what stream 1 makes from chunk `switch` on, and only from there
    unswitched = alone(model, WINDOW3, lambda _k: b, 7, seed + 1)
    n = WINDOW3.frames_per_chunk
    got = torch.cat(made[1], dim=2)
    assert rel_err(got[:, :, : switch * n], unswitched[:, :, : switch * n]) < 1e-5
    assert rel_err(got[:, :, switch * n :], unswitched[:, :, switch * n :]) > 1e-3


def test_scratch_is_reused_and_released(seed):
    model = tiny_model()
    (t,) = texts(model, 1)
    runner = CohortRunner(model)
    engines = [StreamEngine(model, WINDOW, GEOMETRY) for _ in range(3)]
    gens = [torch.Generator().manual_seed(seed + i) for i in range(3)]
    runner.step(engines, [t] * 3, gens)
    before = runner.scratch_bytes
    ptr = next(iter(next(iter(runner._scratch.values())).cache.layers[0].buffers.values())).data_ptr()
    runner.step(engines[:2], [t] * 2, gens[:2])  # a smaller cohort runs in a view: no allocation
    runner.step(engines[:2], [t] * 2, gens[:2])  # (engines 0-1 are now ahead of 2: their own layout)
    after = next(iter(next(iter(runner._scratch.values())).cache.layers[0].buffers.values())).data_ptr()
    assert runner.scratch_bytes == before and after == ptr
    assert before == 3 * engines[0].cache.nbytes
    runner.release()
    assert runner.scratch_bytes == 0
    with pytest.raises(ValueError, match="different cache layouts"):
        runner.step(engines, [t] * 3, gens)
    # a refused step changed nothing
    assert [e.next_frame for e in engines] == [3, 3, 1]


def test_engines_that_cache_or_read_differently_never_share_a_cohort():
    """fp8 latents (with scales) and another MLA path are other cache layouts: their own cohorts."""
    from videomla.engine import EngineOptions

    model = tiny_model(preset("tiny").with_mla(layers=(1,)))
    kinds = [EngineOptions(False, False), EngineOptions(False, False, kv_fp8=True),
             EngineOptions(False, False, mla_path="absorbed"), EngineOptions(False, False)]  # fmt: skip
    engines = [StreamEngine(model, WINDOW, GEOMETRY, options=o) for o in kinds]
    assert sorted(map(sorted, group_cohorts(engines))) == [[0, 3], [1], [2]]


def test_the_serve_budget_counts_fp8_latents(tmp_path):
    from videomla.engine import EngineOptions
    from videomla.pipeline import GenerationRequest, Pipeline
    from videomla.serve.scheduler import Scheduler

    ckpt = tiny_mla_checkpoint(tmp_path / "m")
    sizes = []
    for fp8 in (False, True):
        pipe = Pipeline.from_checkpoint(ckpt, device="cpu", options=EngineOptions(False, False, kv_fp8=fp8))
        request = GenerationRequest.build(pipe.spec, "a red ball", 1.0)
        sizes.append(Scheduler(pipe, pacing=False).stream_bytes(request))
    assert sizes[1] < sizes[0]
