"""The web app of `videomla serve` (Starlette): JSON API, a WebSocket of JPEG frames, the page.

GET    /                        the page (prompt box, live canvas, switch, stop, status line)
GET    /api/status              streams, how many fit, cache bytes, aggregate FPS
POST   /api/streams             {"prompt", "seconds" (null: unbounded), "seed", "stream"} -> 201 {id, ws}
GET    /api/streams/{id}        one stream's state
POST   /api/streams/{id}/prompt {"prompt", "recache", "keep_sink"} -> {at_chunk, prompt_version}
DELETE /api/streams/{id}        close it
WS     /api/streams/{id}/ws     binary messages: 12-byte header (frame, chunk, prompt version,
                                uint32 little-endian) + JPEG; text messages: JSON events
                                ({"type": "end", "reason": ...}); closing it closes the stream
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from importlib import resources

from .scheduler import FrameQueue, Scheduler, ServerFull

MAX_BODY = 64 * 1024
OPEN_KEYS = {"prompt", "seconds", "seed", "stream"}
SWITCH_KEYS = {"prompt", "recache", "keep_sink"}


def create_app(scheduler: Scheduler):
    try:
        from starlette.applications import Starlette
        from starlette.responses import HTMLResponse, JSONResponse
        from starlette.routing import Route, WebSocketRoute
        from starlette.websockets import WebSocketDisconnect
    except ImportError as err:
        raise ImportError(f"videomla serve needs its extra: pip install 'videomla[serve]' ({err})") from err

    def error(status: int, message: str, **headers) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status, headers=headers or None)

    async def body(request, allowed: set[str]) -> dict:
        raw = await request.body()
        if len(raw) > MAX_BODY:
            raise _HTTPError(413, f"request body of {len(raw)} bytes; at most {MAX_BODY}")
        try:
            data = json.loads(raw or b"{}")
        except (ValueError, UnicodeDecodeError) as err:
            raise _HTTPError(400, f"malformed JSON: {err}") from None
        if not isinstance(data, dict):
            raise _HTTPError(400, f"the body must be a JSON object, got {type(data).__name__}")
        unknown = sorted(set(data) - allowed)
        if unknown:
            raise _HTTPError(400, f"unknown field(s) {unknown}; allowed: {sorted(allowed)}")
        return data

    def guarded(handler):
        async def run(request):
            try:
                return await handler(request)
            except _HTTPError as err:
                return error(err.status, err.message)
            except ServerFull as err:
                return error(503, str(err), **{"Retry-After": "5"})
            except KeyError as err:
                return error(404, err.args[0] if err.args else "not found")
            except ValueError as err:
                return error(400, str(err))

        return run

    async def page(_request):
        return HTMLResponse(resources.files(__package__).joinpath("page.html").read_text())

    async def status(_request):
        return JSONResponse(scheduler.status())

    async def open_stream(request):
        data = await body(request, OPEN_KEYS)
        if "prompt" not in data:
            raise _HTTPError(400, "prompt is required")
        req = await asyncio.to_thread(
            scheduler.build_request, data["prompt"], data.get("seconds"), data.get("seed"), data.get("stream")
        )
        stream = scheduler.open(req)
        return JSONResponse({**stream.describe(), "ws": f"/api/streams/{stream.id}/ws"}, status_code=201)

    async def show(request):
        return JSONResponse(scheduler.get(request.path_params["id"]).describe())

    async def switch(request):
        data = await body(request, SWITCH_KEYS)
        if "prompt" not in data:
            raise _HTTPError(400, "prompt is required")
        flags = {k: data.get(k, False) for k in ("recache", "keep_sink")}
        for k, v in flags.items():
            if not isinstance(v, bool):
                raise _HTTPError(400, f"{k} must be true or false, got {v!r}")
        scheduler.get(request.path_params["id"])  # 404 before any work
        return JSONResponse(scheduler.switch(request.path_params["id"], data["prompt"], **flags))

    async def close(request):
        scheduler.close(request.path_params["id"], "closed by the client")
        return JSONResponse({"id": request.path_params["id"], "closed": True})

    async def watch(ws):
        loop = asyncio.get_running_loop()
        wake = asyncio.Event()
        queue = FrameQueue(scheduler.queue_frames, lambda: loop.call_soon_threadsafe(wake.set))
        try:
            stream = scheduler.attach(ws.path_params["id"], queue)
        except KeyError as err:
            await ws.accept()
            await ws.send_json({"type": "error", "error": err.args[0]})
            await ws.close(code=4404)
            return
        await ws.accept()
        await ws.send_json({"type": "open", **stream.describe()})

        async def send():
            while True:
                await wake.wait()
                wake.clear()
                while queue.items:
                    kind, item = queue.items.popleft()
                    if kind == "frame":
                        await ws.send_bytes(item)
                    else:
                        await ws.send_json(item)
                        return

        async def receive():
            while True:
                message = await ws.receive()
                if message["type"] == "websocket.disconnect":
                    return

        sender, receiver = asyncio.create_task(send()), asyncio.create_task(receive())
        try:
            await asyncio.wait({sender, receiver}, return_when=asyncio.FIRST_COMPLETED)
        except (WebSocketDisconnect, RuntimeError, OSError):
            pass
        finally:
            for task in (sender, receiver):
                task.cancel()
            await asyncio.gather(sender, receiver, return_exceptions=True)
            scheduler.detach(stream, queue)
            if sender.done() and not sender.cancelled() and sender.exception() is None:
                with contextlib.suppress(RuntimeError, OSError, WebSocketDisconnect):
                    await ws.close(code=1000)

    routes = [
        Route("/", page),
        Route("/api/status", status),
        Route("/api/streams", guarded(open_stream), methods=["POST"]),
        Route("/api/streams/{id}", guarded(show), methods=["GET"]),
        Route("/api/streams/{id}", guarded(close), methods=["DELETE"]),
        Route("/api/streams/{id}/prompt", guarded(switch), methods=["POST"]),
        WebSocketRoute("/api/streams/{id}/ws", watch),
    ]

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        yield
        await asyncio.to_thread(scheduler.shutdown)

    return Starlette(routes=routes, lifespan=lifespan)


class _HTTPError(Exception):
    def __init__(self, status: int, message: str):
        self.status, self.message = status, message
