"""Sequence parallelism: one stream's tokens over 2 and 4 processes (gloo on CPU) equal the 1-process stream."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from videomla.config import StreamConfig, preset
from videomla.engine import LatentGeometry, StreamEngine
from videomla.parallel import TokenShard

from conftest import rel_err, tiny_model

GEOMETRY = LatentGeometry(4, 4, 8)  # patch 2x2: 2 x 4 = 8 tokens per frame, split 2 or 4 ways
CHUNKS = 6  # 18 latent frames through a 1 + 3 window: eviction on every chunk after the second


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stream(model, stream, text, seed, shard=None) -> torch.Tensor:
    engine = StreamEngine(model, stream, GEOMETRY, shard=shard, keep_history=True)
    gen = torch.Generator().manual_seed(seed)
    chunks = [engine.step(text, gen) for _ in range(CHUNKS // 2)]
    engine.recache(text.flip(1))  # a prompt switch with KV-recache goes through the same gathers
    chunks += [engine.step(text.flip(1), gen) for _ in range(CHUNKS - CHUNKS // 2)]
    return torch.cat(chunks, dim=2)


def _worker(rank: int, world: int, port: int, state: dict, mla: bool, rope: str, seed: int, out: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        cfg = preset("tiny").with_mla() if mla else preset("tiny")
        model = tiny_model(cfg)
        model.load_state_dict(state["model"])
        stream = StreamConfig(sink_frames=1, window_frames=3, rope_mode=rope)
        video = _stream(model, stream, state["text"], seed, TokenShard.from_process_group())
        out[rank] = video
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("world", [2, 4])
@pytest.mark.parametrize(("mla", "rope"), [(False, "absolute"), (False, "window-relative"), (True, "window-relative")])
def test_token_split_equals_one_process(seed, world, mla, rope):
    model = tiny_model(preset("tiny").with_mla() if mla else preset("tiny"))
    with torch.no_grad():
        text = model.embed_text(torch.randn(1, 5, model.config.text_dim))
    stream = StreamConfig(sink_frames=1, window_frames=3, rope_mode=rope)
    alone = _stream(model, stream, text, seed)
    manager = mp.Manager()
    out = manager.dict()
    state = {"model": model.state_dict(), "text": text}
    mp.spawn(_worker, args=(world, _free_port(), state, mla, rope, seed, out), nprocs=world, join=True)
    for rank in range(world):  # every process holds the whole stream
        assert rel_err(out[rank], alone) < 1e-5, rank


def test_token_count_must_split():
    with pytest.raises(ValueError, match="do not split over 3 processes"):
        TokenShard(0, 3).local_tokens(8)
