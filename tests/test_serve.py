"""`videomla serve` end to end: the real server on a loopback port, driven by HTTP and WebSocket clients."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import socket
import threading
import time
import urllib.error
import urllib.request

import pytest

pytest.importorskip("starlette")
uvicorn = pytest.importorskip("uvicorn")
ws_client = pytest.importorskip("websockets.sync.client")

from videomla.checkpoint import save_model  # noqa: E402
from videomla.config import preset  # noqa: E402
from videomla.pipeline import Pipeline  # noqa: E402
from videomla.serve import HEADER, FrameQueue, Scheduler  # noqa: E402
from videomla.serve.app import create_app  # noqa: E402

from conftest import tiny_model  # noqa: E402

META = {
    "codec": {"type": "pixel", "spatial_stride": 2, "scale": 1.0, "offset": 0.0},
    "text_encoder": {"type": "hash", "text_dim": 32, "max_tokens": 16},
    "video": {"height": 16, "width": 16, "fps": 8},
    "stream": {"frames_per_chunk": 2, "sink_frames": 1, "window_frames": 2, "rope_mode": "window-relative"},
    "schedule": {"steps": [1000, 500], "shift": 5.0},
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, pipe, **kw):
        self.scheduler = Scheduler(pipe, pacing=False, **kw)
        self.scheduler.start()
        self.port = free_port()
        config = uvicorn.Config(create_app(self.scheduler), host="127.0.0.1", port=self.port, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.time() + 20
        while not self.server.started:
            assert time.time() < deadline, "server did not start"
            time.sleep(0.02)
        self.base = f"http://127.0.0.1:{self.port}"

    def call(self, method: str, path: str, body=None, raw: bytes | None = None):
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        req = urllib.request.Request(self.base + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})  # fmt: skip
        try:
            with urllib.request.urlopen(req, timeout=20) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read())

    def ws(self, stream_id: str):
        return ws_client.connect(f"ws://127.0.0.1:{self.port}/api/streams/{stream_id}/ws", open_timeout=10)

    def wait_idle(self, timeout: float = 20) -> dict:
        deadline = time.time() + timeout
        while True:
            _, status = self.call("GET", "/api/status")
            if status["streams"] == 0 and status["cache_bytes"] == 0 and status["scratch_bytes"] == 0:
                return status
            assert time.time() < deadline, f"streams never freed: {status}"
            time.sleep(0.05)

    def stop(self):
        self.server.should_exit = True
        self.thread.join(20)
        self.scheduler.shutdown()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    model = tiny_model(dataclasses.replace(preset("tiny"), in_channels=12, out_channels=12).with_mla())
    path = save_model(model, tmp_path_factory.mktemp("serve") / "m", META)
    pipe = Pipeline.from_checkpoint(path, device="cpu", threads=1)
    s = Server(pipe, max_streams=3)
    yield s
    s.stop()
    assert not s.thread.is_alive() and not s.scheduler.thread.is_alive()


def frames_of(conn, n: int, timeout: float = 20):
    out, deadline = [], time.time() + timeout
    while len(out) < n:
        msg = conn.recv(timeout=max(0.1, deadline - time.time()))
        if isinstance(msg, bytes):
            out.append((*HEADER.unpack(msg[: HEADER.size]), msg[HEADER.size :]))
        elif json.loads(msg)["type"] == "end":
            break
    return out


def test_frames_arrive_and_a_finite_stream_ends(server):
    code, opened = server.call("POST", "/api/streams", {"prompt": "a red square", "seconds": 1.0, "seed": 3})
    assert code == 201, opened
    with server.ws(opened["id"]) as conn:
        assert json.loads(conn.recv(timeout=10))["type"] == "open"
        got = frames_of(conn, 100)
        assert [g[0] for g in got] == list(range(8))  # 1 s at 8 fps, in order
        assert [g[1] for g in got] == [0, 0, 1, 1, 2, 2, 3, 3]
        assert all(g[3][:2] == b"\xff\xd8" for g in got)  # JPEG
    server.wait_idle()


def test_prompt_switch_takes_effect_at_the_chunk_it_names(server):
    _, opened = server.call("POST", "/api/streams", {"prompt": "a red square", "seconds": None, "seed": 1})
    with server.ws(opened["id"]) as conn:
        frames_of(conn, 3)
        code, sw = server.call(
            "POST", f"/api/streams/{opened['id']}/prompt", {"prompt": "blue circle", "recache": True}
        )
        assert code == 200 and sw["prompt_version"] == 1
        got = frames_of(conn, 12)
        assert all((chunk >= sw["at_chunk"]) == (v == 1) for _, chunk, v, _ in got), (sw, [g[1:3] for g in got])
        assert any(v == 1 for _, _, v, _ in got)
        _, state = server.call("GET", f"/api/streams/{opened['id']}")
        assert state["switches"] == [{"at_chunk": sw["at_chunk"], "prompt_version": 1, "recache": True}]
    server.wait_idle()  # the client left: the stream closed itself


def test_too_many_streams_answer_503_and_disconnects_free_their_slot(server):
    ids = [server.call("POST", "/api/streams", {"prompt": f"s {i}"})[1]["id"] for i in range(3)]
    code, full = server.call("POST", "/api/streams", {"prompt": "one more"})
    assert code == 503 and "3 streams are open and 3 fit" in full["error"]
    with contextlib.ExitStack() as stack:
        conns = [stack.enter_context(server.ws(i)) for i in ids]
        for c in conns:
            frames_of(c, 2)
        _, status = server.call("GET", "/api/status")
        assert status["streams"] == 3 and status["cache_bytes"] > 0
        # admission counts what the streams hold (cache + history) plus their scratch rows
        assert 0 < status["cache_bytes"] + status["scratch_bytes"] <= 3 * status["bytes_per_stream"]
        for c in conns:  # abrupt disconnects mid-stream (chunks in flight)
            c.socket.close()
    server.wait_idle()
    code, opened = server.call("POST", "/api/streams", {"prompt": "fits again", "seconds": 0.25})
    assert code == 201
    assert server.call("DELETE", f"/api/streams/{opened['id']}")[0] == 200
    server.wait_idle()


@pytest.mark.parametrize(
    "body, raw, status, words",
    [
        (None, b"{not json", 400, "malformed JSON"),
        (None, b"[1, 2]", 400, "JSON object"),
        ({"prompt": ""}, None, 400, "empty"),
        ({"prompt": "   "}, None, 400, "empty"),
        ({"prompt": 42}, None, 400, "must be text"),
        ({"prompt": ["a"]}, None, 400, "must be text"),
        ({"prompt": "x" * 5000}, None, 400, "at most 1000"),
        ({"prompt": " ".join(["w"] * 40)}, None, 400, "at most 16"),
        ({"prompt": "a", "seconds": -1}, None, 400, "positive"),
        ({"prompt": "a", "seconds": "10"}, None, 400, "seconds"),
        ({"prompt": "a", "seed": "x"}, None, 400, "seed"),
        ({"prompt": "a", "stream": "nope"}, None, 400, "unknown stream preset"),
        ({"prompt": "a", "bogus": 1}, None, 400, "unknown field"),
        ({}, None, 400, "prompt is required"),
        (None, b"{" + b" " * 70000 + b"}", 413, "at most"),
    ],
)
def test_bad_input_gets_a_clear_error(server, body, raw, status, words):
    code, answer = server.call("POST", "/api/streams", body, raw)
    assert code == status and words in answer["error"], answer
    assert server.call("GET", "/api/status")[1]["streams"] == 0


def test_unknown_ids(server):
    assert server.call("GET", "/api/streams/nope")[0] == 404
    assert server.call("DELETE", "/api/streams/nope")[0] == 404
    assert server.call("POST", "/api/streams/nope/prompt", {"prompt": "a"})[0] == 404
    with server.ws("nope") as conn:
        assert json.loads(conn.recv(timeout=10))["type"] == "error"
    _, opened = server.call("POST", "/api/streams", {"prompt": "a"})
    code, answer = server.call("POST", f"/api/streams/{opened['id']}/prompt", {"prompt": "b", "recache": "yes"})
    assert code == 400 and "recache" in answer["error"]
    server.call("DELETE", f"/api/streams/{opened['id']}")
    server.wait_idle()


def test_slow_client_drops_frames_not_memory(server):
    """A watcher that reads nothing (its socket stalled) holds at most queue_frames frames; the rest drop."""
    _, opened = server.call("POST", "/api/streams", {"prompt": "fast", "seconds": None})
    stalled = FrameQueue(4)
    stream = server.scheduler.attach(opened["id"], stalled)
    deadline = time.time() + 30
    while stalled.dropped < 3:
        assert time.time() < deadline, "no frame was ever dropped"
        time.sleep(0.02)
    assert len(stalled.items) == 4 and stream.frames >= 7
    kept = [HEADER.unpack(p[: HEADER.size])[0] for _, p in list(stalled.items)]
    assert kept == list(range(kept[0], kept[0] + 4)) and kept[0] >= 3  # the newest frames are kept
    server.scheduler.detach(stream, stalled)
    server.wait_idle()


def test_default_model_serves_frames(tmp_path):
    pipe = Pipeline.from_checkpoint(None, device="cpu", threads=1)
    s = Server(pipe, max_streams=2, budget_bytes=None)
    try:
        code, opened = s.call("POST", "/api/streams", {"prompt": "a large yellow triangle", "seconds": 0.5})
        assert code == 201
        with s.ws(opened["id"]) as conn:
            got = frames_of(conn, 4)
        assert len(got) == 4
        from io import BytesIO

        from PIL import Image

        assert Image.open(BytesIO(got[0][3])).size == (64, 64)
        s.wait_idle()
    finally:
        s.stop()


def test_shutdown_closes_every_stream(tmp_path):
    model = tiny_model(dataclasses.replace(preset("tiny"), in_channels=12, out_channels=12))
    pipe = Pipeline.from_checkpoint(save_model(model, tmp_path / "m", META), device="cpu", threads=1)
    s = Server(pipe, max_streams=2, attach_timeout=0.5)
    try:
        _, watched = s.call("POST", "/api/streams", {"prompt": "a", "seconds": None})
        _, never = s.call("POST", "/api/streams", {"prompt": "b", "seconds": None})
        with s.ws(watched["id"]) as conn:
            frames_of(conn, 2)
            time.sleep(0.8)  # the stream nobody attached to is closed after attach_timeout
            assert s.call("GET", f"/api/streams/{never['id']}")[0] == 404
            s.scheduler.shutdown()
            end = None
            deadline = time.time() + 10
            while end is None and time.time() < deadline:
                msg = conn.recv(timeout=10)
                if isinstance(msg, str):
                    end = json.loads(msg)
        assert end == {**end, "type": "end", "reason": "the server is shutting down"}
        assert not s.scheduler.thread.is_alive() and s.scheduler.runner.scratch_bytes == 0
        assert not s.scheduler.deliverer.is_alive()  # the delivery thread stops behind the worker
        assert s.call("POST", "/api/streams", {"prompt": "c"})[0] == 503
    finally:
        s.stop()


def test_a_non_finite_chunk_ends_its_stream_with_the_reason_and_the_server_goes_on(tmp_path, monkeypatch):
    model = tiny_model(dataclasses.replace(preset("tiny"), in_channels=12, out_channels=12))
    pipe = Pipeline.from_checkpoint(save_model(model, tmp_path / "m", META), device="cpu", threads=1)
    s = Server(pipe, max_streams=2)
    real_step = s.scheduler.runner.step
    poisoned = {"on": True}

    def step(engines, texts, generators):
        rows = real_step(engines, texts, generators)
        return [row.fill_(float("nan")) for row in rows] if poisoned["on"] else rows

    monkeypatch.setattr(s.scheduler.runner, "step", step)
    try:
        _, opened = s.call("POST", "/api/streams", {"prompt": "a red square", "seconds": None})
        with s.ws(opened["id"]) as conn:
            end, deadline = None, time.time() + 20
            while end is None and time.time() < deadline:
                msg = conn.recv(timeout=20)
                if isinstance(msg, str) and json.loads(msg)["type"] == "end":
                    end = json.loads(msg)
                assert not isinstance(msg, bytes), "a non-finite chunk must not be delivered"
        assert end is not None and "generation failed" in end["reason"] and "NaN/Inf" in end["reason"], end
        assert "NaN/Inf" in s.call("GET", "/api/status")[1]["error"]
        s.wait_idle()
        poisoned["on"] = False
        _, again = s.call("POST", "/api/streams", {"prompt": "a blue circle", "seconds": 0.5})
        with s.ws(again["id"]) as conn:
            assert len(frames_of(conn, 100)) == 4  # the next stream streams as usual
    finally:
        s.stop()
