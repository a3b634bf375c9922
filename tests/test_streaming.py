"""Chunk-by-chunk cached inference equals one masked forward over the whole clip."""

from __future__ import annotations

import pytest
import torch

from videomla.config import StreamConfig, preset
from videomla.window import FrameWindow, clip_layout

from conftest import rel_err, tiny_model

WINDOWS = [  # (sink, window): paper's 1+6, la6_sink1's 1+2, no sink, window < chunk, sink > chunk
    (1, 6),
    (1, 2),
    (0, 3),
    (2, 1),
    (4, 2),
]


def stream_chunks(model, x, t, context, stream, decoy: bool = True, **cache_kw):
    """Run ``x`` chunk by chunk; each chunk first gets a non-writing pass on other input (a denoising step).

    ``cache_kw``: what the stream's cache fixes (``mla_path``, ``latent_dtype``).
    """
    b, _, f, h, w = x.shape
    cache = model.new_cache(stream, b, h, w, **cache_kw)
    text = model.embed_text(context)
    c = stream.frames_per_chunk
    outs = []
    for s in range(0, f, c):
        if decoy:
            model.forward_chunk(torch.randn_like(x[:, :, s : s + c]), t[:, s : s + c], text, cache)
        outs.append(model.forward_chunk(x[:, :, s : s + c], t[:, s : s + c], text, cache, write=True))
    return torch.cat(outs, dim=2), cache


@pytest.mark.parametrize("attention", ["dense", "mla", "mixed"])
@pytest.mark.parametrize("rope_mode", ["absolute", "window-relative"])
@pytest.mark.parametrize(("sink", "window"), WINDOWS)
def test_cached_chunks_equal_masked_forward(seed, attention, rope_mode, sink, window):
    cfg = preset("tiny")
    if attention == "mla":
        cfg = cfg.with_mla()
    elif attention == "mixed":
        cfg = cfg.with_mla(layers=(1,))
    model = tiny_model(cfg)
    stream = StreamConfig(frames_per_chunk=3, sink_frames=sink, window_frames=window, rope_mode=rope_mode)
    frames = 15  # 5 chunks: more than any window above holds, so eviction happens
    x = torch.randn(2, 4, frames, 4, 6)
    t = torch.rand(2, frames) * 1000
    context = torch.randn(2, 5, 32)
    with torch.no_grad():
        full = model(x, t, context, stream=stream)
        chunked, cache = stream_chunks(model, x, t, context, stream)
    assert rel_err(chunked, full) < 1e-5
    kept = cache.window.slot_frame
    assert sorted(kept) == list(range(min(sink, frames))) + list(range(frames - window, frames))


@pytest.mark.parametrize("attention", ["dense", "mla"])
@pytest.mark.parametrize("rope_mode", ["absolute", "window-relative"])
@pytest.mark.parametrize(("sink", "window"), WINDOWS)
@pytest.mark.parametrize("teacher_forcing", [False, True])
def test_block_mask_equals_dense_mask(seed, attention, rope_mode, sink, window, teacher_forcing):
    """The training forward's block mask (each chunk against its own keys) equals one dense
    boolean mask through SDPA: outputs and gradients, for clips and teacher forcing."""
    cfg = preset("tiny").with_mla() if attention == "mla" else preset("tiny")
    model = tiny_model(cfg)
    stream = StreamConfig(frames_per_chunk=3, sink_frames=sink, window_frames=window, rope_mode=rope_mode)
    frames = 2 * 12 if teacher_forcing else 13  # 13: a last, partial chunk
    x = torch.randn(2, 4, frames, 4, 6)
    t = torch.rand(2, frames) * 1000
    context = torch.randn(2, 5, 32)
    outs, grads = [], []
    for dense_mask in (True, False):
        model.zero_grad()
        out = model(x, t, context, stream=stream, teacher_forcing=teacher_forcing, dense_mask=dense_mask)
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        outs.append(out.detach())
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    assert rel_err(outs[1], outs[0]) < 1e-5
    assert rel_err(grads[1], grads[0]) < 1e-5


def test_block_mask_runs_cover_the_dense_mask():
    """The runs of a teacher-forcing layout reproduce its token mask exactly, one run per chunk
    and copy, and keys that are not contiguous are gathered."""
    from videomla.attention.common import BlockMask
    from videomla.window import teacher_forcing_layout

    stream = StreamConfig(frames_per_chunk=3, sink_frames=1, window_frames=6, rope_mode="window-relative")
    layout = teacher_forcing_layout(21, stream)
    blocks = BlockMask.from_frames(layout.mask, 5)
    assert torch.equal(blocks.dense(), layout.token_mask(5))
    assert len(blocks.runs) == 14
    assert any(not isinstance(keys, slice) for _, _, keys in blocks.runs)
    with pytest.raises(ValueError, match="sees no key frame"):
        BlockMask.from_frames(torch.zeros(3, 3, dtype=torch.bool), 2)


def test_clip_mask_kind_is_chosen_by_size_or_by_the_caller(monkeypatch):
    from videomla.attention import context
    from videomla.attention.common import BlockMask

    stream = StreamConfig(frames_per_chunk=3, sink_frames=1, window_frames=6)

    def mask(**kw):
        return context.AttentionContext.for_clip(12, 4, 6, stream, torch.device("cpu"), **kw).mask

    assert isinstance(mask(), torch.Tensor)  # small: the dense mask
    for (h, w), dense in (((8, 8), True), ((16, 16), False)):  # the world teacher's coarse / fine grid
        ctx = context.AttentionContext.for_clip(42, h, w, stream, torch.device("cpu"), teacher_forcing=True)
        assert isinstance(ctx.mask, torch.Tensor) == dense, (h, w)
    monkeypatch.setattr(context, "BLOCK_MASK_BYTES", (12 * 24) ** 2 - 1)
    assert isinstance(mask(), BlockMask)  # past the size: blocks
    with context.clip_mask("dense"):
        assert isinstance(mask(), torch.Tensor)
    monkeypatch.setattr(context, "BLOCK_MASK_BYTES", 1 << 40)
    with context.clip_mask("blocks"):
        assert isinstance(mask(), BlockMask)
    assert isinstance(mask(dense_mask=False), BlockMask) and isinstance(mask(dense_mask=True), torch.Tensor)
    with pytest.raises(ValueError, match="clip mask must be one of"), context.clip_mask("sparse"):
        pass


def test_window_relative_differs_from_absolute_after_eviction(seed):
    """The two RoPE modes are different models once frames are evicted (a test that can fail)."""
    model = tiny_model()
    x, t, context = torch.randn(1, 4, 12, 4, 6), torch.rand(1, 12) * 1000, torch.randn(1, 5, 32)
    outs = {}
    for mode in ("absolute", "window-relative"):
        with torch.no_grad():
            outs[mode] = model(x, t, context, stream=StreamConfig(sink_frames=1, window_frames=3, rope_mode=mode))
    same_before_eviction = rel_err(outs["absolute"][:, :, :6], outs["window-relative"][:, :, :6])
    assert same_before_eviction < 1e-6
    assert rel_err(outs["absolute"][:, :, 9:], outs["window-relative"][:, :, 9:]) > 1e-4


def test_chunk_mask_blocks_the_future(seed):
    """Changing a later chunk never changes an earlier chunk's output."""
    model = tiny_model()
    stream = StreamConfig(sink_frames=1, window_frames=3)
    x, t, context = torch.randn(1, 4, 9, 4, 6), torch.rand(1, 9) * 1000, torch.randn(1, 5, 32)
    y = x.clone()
    y[:, :, 6:] = torch.randn_like(y[:, :, 6:])
    with torch.no_grad():
        a, b = model(x, t, context, stream=stream), model(y, t, context, stream=stream)
    assert torch.equal(a[:, :, :6], b[:, :, :6])
    assert not torch.allclose(a[:, :, 6:], b[:, :, 6:])


def test_cache_memory_is_constant(seed):
    """Buffers keep their size and storage however many chunks stream through."""
    model = tiny_model(preset("tiny").with_mla(layers=(0,)))
    stream = StreamConfig(sink_frames=1, window_frames=4)
    cache = model.new_cache(stream, 1, 4, 6)
    text = model.embed_text(torch.randn(1, 5, 32))
    ptrs = [b.data_ptr() for layer in cache.layers for b in layer.buffers.values()]
    nbytes = cache.nbytes
    with torch.no_grad():
        for _ in range(12):
            model.forward_chunk(torch.randn(1, 4, 3, 4, 6), torch.zeros(1), text, cache, write=True)
    assert cache.nbytes == nbytes
    assert [b.data_ptr() for layer in cache.layers for b in layer.buffers.values()] == ptrs
    assert cache.window.next_frame == 36


def test_local_attn_size_reading():
    """Peers count sink + window + current chunk: la6_sink1 caches 1 sink + 2 recent frames."""
    stream = StreamConfig.from_local_attn_size(6, sink_frames=1, frames_per_chunk=3)
    assert (stream.sink_frames, stream.window_frames, stream.attended_frames) == (1, 2, 6)
    paper = StreamConfig(sink_frames=1, window_frames=6)
    assert paper.attended_frames == 10
    with pytest.raises(ValueError, match="cannot hold"):
        StreamConfig.from_local_attn_size(3, sink_frames=1, frames_per_chunk=3)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"sink_frames": -1}, "sink_frames"),
        ({"window_frames": -2}, "window_frames"),
        ({"frames_per_chunk": 0}, "frames_per_chunk"),
        ({"rope_mode": "relative"}, "rope_mode"),
    ],
)
def test_bad_stream_configs(kwargs, message):
    with pytest.raises(ValueError, match=message):
        StreamConfig(**kwargs)


def test_unbounded_window_cannot_stream_but_can_train():
    stream = StreamConfig(sink_frames=0, window_frames=None)
    with pytest.raises(ValueError, match="finite window_frames"):
        FrameWindow(stream)
    layout = clip_layout(9, stream)
    assert torch.equal(layout.mask, torch.ones(9, 9, dtype=torch.bool).tril(0) | _chunk_blocks(9, 3))


def _chunk_blocks(frames: int, chunk: int) -> torch.Tensor:
    idx = torch.arange(frames) // chunk
    return idx[:, None] == idx[None, :]


def test_chunk_size_mismatch_is_an_error(seed):
    model = tiny_model()
    cache = model.new_cache(StreamConfig(), 1, 4, 6)
    text = model.embed_text(torch.randn(1, 5, 32))
    with pytest.raises(ValueError, match="tokens per frame"):
        model.forward_chunk(torch.randn(1, 4, 3, 8, 6), torch.zeros(1), text, cache)
    with pytest.raises(ValueError, match=r"a chunk has 1\.\.3 frames"):
        model.forward_chunk(torch.randn(1, 4, 6, 4, 6), torch.zeros(1), text, cache)
