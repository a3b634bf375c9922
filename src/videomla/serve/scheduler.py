"""The scheduler of `videomla serve`: live streams of one model, batched by cohort, on one worker thread.

Each stream owns a one-stream :class:`~videomla.engine.StreamEngine` (its cache slot, KV-recache
history), its embedded prompt and its noise generator. Every round the worker takes the streams
that are ready (watched, not too far ahead of real time), applies pending prompt switches (a
recache runs for that stream alone), groups them by cache layout
(:func:`~videomla.engine.cohort.group_cohorts`) and runs one batched step per cohort
(:class:`~videomla.engine.cohort.CohortRunner`); each stream's chunk is then decoded and its frames
JPEG-encoded on a second thread, in order, while the worker runs the next step (a bounded hand-off,
so the worker waits rather than queue without limit), and handed to each watcher's bounded queue (a
slow client loses its oldest frames, never server memory). Admission control counts bytes: each
stream costs its cache + history + its row of the scratch batch, and beyond the budget (or
``max_streams``) :meth:`Scheduler.open` raises :class:`ServerFull`.
"""

from __future__ import annotations

import io
import queue
import secrets
import struct
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from ..engine import StreamEngine
from ..engine.cohort import CohortRunner, group_cohorts
from ..pipeline import GenerationRequest, Pipeline
from ..video_io import to_uint8

MAX_PROMPT_CHARS = 1000
HEADER = struct.Struct("<III")  # frame index, chunk index, prompt version; then the JPEG bytes


class ServerFull(RuntimeError):
    """No room for another stream (stream count or KV-memory budget)."""


class FrameQueue:
    """A watcher's bounded queue: ``put`` drops the oldest frame when full (counted in ``dropped``)."""

    def __init__(self, size: int, wake: Callable[[], None] | None = None):
        self.items: deque = deque(maxlen=size)
        self.dropped = 0
        self.wake = wake
        self.closed = False

    def put(self, item) -> None:
        if len(self.items) == self.items.maxlen:
            self.dropped += 1
        self.items.append(item)
        if self.wake is not None:
            self.wake()


@dataclass
class LiveStream:
    id: str
    request: GenerationRequest
    engine: StreamEngine
    generator: torch.Generator
    text: torch.Tensor
    prompt: str
    decoder: object
    opened_at: float = field(default_factory=time.perf_counter)
    version: int = 0
    pending: tuple | None = None  # (text, prompt, recache, keep_sink, version)
    started: int = 0  # chunks whose step has begun
    done: int = 0  # chunks delivered
    frames: int = 0
    first_frame_s: float | None = None
    first_frame_at: float | None = None
    watchers: list[FrameQueue] = field(default_factory=list)
    ever_watched: bool = False
    closed: bool = False
    reason: str = ""
    switches: list[dict] = field(default_factory=list)

    def describe(self) -> dict:
        return {
            "id": self.id, "prompt": self.prompt, "prompt_version": self.version, "chunks": self.done,
            "frames": self.frames, "seconds": self.request.seconds, "seed": self.request.seed,
            "stream": self.request.stream_source, "first_frame_s": self.first_frame_s,
            "watchers": len(self.watchers), "dropped": sum(q.dropped for q in self.watchers),
            "switches": self.switches, "closed": self.closed,
        }  # fmt: skip


class Scheduler:
    """Streams, admission control and the worker thread (start with :meth:`start`)."""

    def __init__(
        self,
        pipe: Pipeline,
        *,
        max_streams: int = 16,
        budget_bytes: int | None = None,
        max_batch: int | None = None,
        pacing: bool = True,
        lead_seconds: float = 1.0,
        attach_timeout: float = 30.0,
        queue_frames: int = 16,
        jpeg_quality: int = 85,
    ):
        self.pipe, self.max_streams, self.max_batch = pipe, max_streams, max_batch
        self.pacing, self.lead_seconds, self.attach_timeout = pacing, lead_seconds, attach_timeout
        self.queue_frames, self.jpeg_quality = queue_frames, jpeg_quality
        self.budget_bytes = budget_bytes
        self.runner = CohortRunner(pipe.model, pipe.options)
        self.streams: dict[str, LiveStream] = {}
        self.lock = threading.Condition()
        self.stopping = False
        self.thread: threading.Thread | None = None
        # decoded chunks wait here for the delivery thread: (stream, chunk, prompt version, latents);
        # a few cohorts' worth, so decode and encoding overlap the next step but never pile up
        self.handoff: queue.Queue = queue.Queue(maxsize=2 * max_streams)
        self.deliverer: threading.Thread | None = None
        self.frames_total = 0
        self.recent: deque = deque()  # (time, frames) over the last few seconds, for the FPS line
        self.last_cohorts: list[int] = []
        self.error: str | None = None

    # -- memory accounting ------------------------------------------------------------------------
    def stream_bytes(self, request: GenerationRequest) -> int:
        """What one stream holds: its cache (persistent + staging slots), history, its scratch row."""
        model, g = self.pipe.model, self.pipe.geometry
        dtype = self.pipe.cache_dtype or self.pipe.dtype
        specs = model.cache_specs(dtype, self.pipe.options.latent_dtype)
        per_token = sum(s.bytes_per_token for spec in specs for s in spec.values())
        t = model.tokens_per_frame(g.height, g.width)
        cache = per_token * t * (request.stream.cached_frames + request.stream.frames_per_chunk)
        history = request.stream.cached_frames * g.channels * g.height * g.width * self.pipe.dtype.itemsize
        return 2 * cache + history

    def fits(self, request: GenerationRequest) -> int:
        """How many streams like ``request`` the server takes in all."""
        if self.budget_bytes is None:
            return self.max_streams
        return min(self.max_streams, self.budget_bytes // self.stream_bytes(request))

    def held_bytes(self) -> int:
        with self.lock:
            return sum(s.engine.held_bytes() for s in self.streams.values()) + self.runner.scratch_bytes

    # -- the API the web app calls (event-loop thread) -------------------------------------------
    def build_request(self, prompt, seconds, seed, preset) -> GenerationRequest:
        check_prompt(prompt)
        if seconds is not None and (isinstance(seconds, bool) or not isinstance(seconds, (int, float))):
            raise ValueError(f"seconds must be a number or null (unbounded), got {seconds!r}")
        if seconds is not None and seconds > 24 * 3600:
            raise ValueError(f"seconds must be at most 86400 (a day; null streams forever), got {seconds}")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise ValueError(f"seed must be an integer or null, got {seed!r}")
        if preset is not None and not isinstance(preset, str):
            raise ValueError(f"stream must be a preset name or null, got {preset!r}")
        request = self.pipe.request([(prompt, 0.0)], seconds, stream=preset, seed=seed, recache=True, output="none")
        self.embed(prompt)  # the text encoder's own limits (e.g. words) fail here, before admission
        return request

    def embed(self, prompt: str) -> torch.Tensor:
        check_prompt(prompt)
        features = self.pipe.text_encoder.encode([prompt])
        with torch.no_grad():
            return self.pipe.model.embed_text(features.to(self.pipe.device, self.pipe.dtype))

    def open(self, request: GenerationRequest) -> LiveStream:
        with self.lock:
            if self.stopping:
                raise ServerFull("the server is shutting down")
            n, fit = len(self.streams), self.fits(request)
            if n >= fit:
                per = self.stream_bytes(request)
                budget = "no memory budget" if self.budget_bytes is None else f"{self.budget_bytes / 2**20:.1f} MiB"
                raise ServerFull(
                    f"server full: {n} streams are open and {fit} fit (--max-streams {self.max_streams}; "
                    f"KV budget {budget} at {per / 2**20:.2f} MiB per stream of {request.stream_source}); "
                    "close a stream or retry later"
                )
            engine = StreamEngine(
                self.pipe.model, request.stream, self.pipe.geometry, schedule=request.schedule,
                cache_dtype=self.pipe.cache_dtype, options=self.pipe.options, keep_history=True,
            )  # fmt: skip
            prompt = request.prompts[0][0]
            stream = LiveStream(
                id=secrets.token_hex(8), request=request, engine=engine,
                generator=torch.Generator(self.pipe.device).manual_seed(request.seed),
                text=self.embed(prompt), prompt=prompt, decoder=self.pipe.codec.stream_decoder(),
            )  # fmt: skip
            self.streams[stream.id] = stream
            self.lock.notify_all()
            return stream

    def get(self, stream_id: str) -> LiveStream:
        stream = self.streams.get(stream_id)
        if stream is None or stream.closed:
            raise KeyError(f"no open stream {stream_id!r}")
        return stream

    def switch(self, stream_id: str, prompt: str, recache: bool, keep_sink: bool) -> dict:
        """Queue a prompt switch; it takes effect at the first chunk not yet started (returned)."""
        if keep_sink and not recache:
            raise ValueError("keep_sink only changes what a recache rebuilds: use it with recache")
        text = self.embed(prompt)
        with self.lock:
            stream = self.get(stream_id)
            version = stream.version + 1 if stream.pending is None else stream.pending[4] + 1
            stream.pending = (text, prompt, bool(recache), bool(keep_sink), version)
            at = stream.started
            self.lock.notify_all()
        return {"id": stream_id, "prompt": prompt, "prompt_version": version, "at_chunk": at, "recache": recache}

    def close(self, stream_id: str, reason: str = "closed") -> None:
        with self.lock:
            stream = self.get(stream_id)
            self._close(stream, reason)

    def attach(self, stream_id: str, queue: FrameQueue) -> LiveStream:
        with self.lock:
            stream = self.get(stream_id)
            stream.watchers.append(queue)
            stream.ever_watched = True
            self.lock.notify_all()
            return stream

    def detach(self, stream: LiveStream, queue: FrameQueue) -> None:
        """A watcher left; the last one leaving closes the stream (its slot is free again)."""
        with self.lock:
            if queue in stream.watchers:
                stream.watchers.remove(queue)
            if not stream.watchers and not stream.closed:
                self._close(stream, "the client disconnected")

    def status(self) -> dict:
        with self.lock:
            now = time.perf_counter()
            while self.recent and now - self.recent[0][0] > 5.0:
                self.recent.popleft()
            span = now - self.recent[0][0] if len(self.recent) > 1 else 0.0
            frames = sum(f for _, f in list(self.recent)[1:])
            request = self.pipe.request([("x", 0.0)], 1.0)
            return {
                "streams": sum(not s.closed for s in self.streams.values()),
                "max_streams": self.max_streams,
                "fit": self.fits(request),
                "bytes_per_stream": self.stream_bytes(request),
                "cache_bytes": sum(s.engine.held_bytes() for s in self.streams.values()),
                "scratch_bytes": self.runner.scratch_bytes,
                "budget_bytes": self.budget_bytes,
                "fps": frames / span if span > 0 else 0.0,
                "frames": self.frames_total,
                "cohorts": self.last_cohorts,
                "video": {"height": self.pipe.spec.video.height, "width": self.pipe.spec.video.width,
                          "fps": self.pipe.spec.video.fps},
                "threads": torch.get_num_threads(),
                "error": self.error,
            }  # fmt: skip

    # -- worker --------------------------------------------------------------------------------
    def start(self) -> None:
        self.thread = threading.Thread(target=self._loop, name="videomla-serve-worker", daemon=True)
        self.deliverer = threading.Thread(target=self._delivery_loop, name="videomla-serve-delivery", daemon=True)
        self.thread.start()
        self.deliverer.start()

    def shutdown(self, timeout: float = 30.0) -> None:
        """Close every stream (watchers get an end message) and stop the worker after its chunk."""
        with self.lock:
            self.stopping = True
            for stream in list(self.streams.values()):
                self._close(stream, "the server is shutting down")
            self.lock.notify_all()
        if self.thread is not None:
            self.thread.join(timeout)
        if self.deliverer is not None:
            self.handoff.put(None)  # after the worker's last chunk: the delivery thread stops behind it
            self.deliverer.join(timeout)
        self.runner.release()

    def _close(self, stream: LiveStream, reason: str) -> None:  # holds the lock
        if stream.closed:
            return
        stream.closed, stream.reason = True, reason
        for q in stream.watchers:
            q.put(("end", {"type": "end", "reason": reason, "chunks": stream.done, "frames": stream.frames}))
        self.lock.notify_all()

    def _ready(self, s: LiveStream, now: float) -> bool:
        if s.closed or not s.watchers:
            return False
        if s.request.num_chunks is not None and s.started >= s.request.num_chunks:
            return False
        if not self.pacing or s.first_frame_at is None:
            return True
        return s.frames / self.pipe.spec.video.fps - (now - s.first_frame_at) < self.lead_seconds

    def _loop(self) -> None:
        while True:
            with self.lock:
                now = time.perf_counter()
                for s in list(self.streams.values()):
                    if not s.ever_watched and not s.closed and now - s.opened_at > self.attach_timeout:
                        self._close(s, f"no client attached within {self.attach_timeout:.0f} s")
                    if s.closed:
                        del self.streams[s.id]  # its engine (cache, history) goes with it
                if not self.streams:
                    self.runner.release()  # memory back to baseline
                if self.stopping:
                    return
                ready = [s for s in self.streams.values() if self._ready(s, now)]
                if not ready:
                    self.lock.wait(0.05)
                    continue
                plan = []
                for s in ready:
                    switch = s.pending
                    if switch is not None:
                        s.text, s.prompt, s.version = switch[0], switch[1], switch[4]
                        s.switches.append({"at_chunk": s.started, "prompt_version": switch[4], "recache": switch[2]})
                        s.pending = None
                    plan.append((s, switch, s.started, s.version))
                    s.started += 1
            try:
                self._run(plan)
            except Exception as err:  # a failing chunk ends the streams in it, never the server
                with self.lock:
                    self.error = f"{type(err).__name__}: {err}"
                    for s, *_ in plan:
                        self._close(s, f"generation failed: {self.error}")

    def _run(self, plan: list) -> None:
        for s, switch, _, _ in plan:
            if switch is not None and switch[2] and s.started > 1:
                s.engine.recache(s.text, switch[3])
        engines = [p[0].engine for p in plan]
        cohorts = group_cohorts(engines, self.max_batch)
        self.last_cohorts = [len(c) for c in cohorts]
        for members in cohorts:
            items = [plan[m] for m in members]
            rows = self.runner.step([it[0].engine for it in items], [it[0].text for it in items],
                                    [it[0].generator for it in items])  # fmt: skip
            for (s, _, chunk, version), x0 in zip(items, rows):
                self.handoff.put((s, chunk, version, x0.clone()))  # clone: the next step reuses its buffers

    def _delivery_loop(self) -> None:
        while (item := self.handoff.get()) is not None:
            s, chunk, version, x0 = item
            try:
                self._deliver(s, chunk, version, x0)
            except Exception as err:  # a failing chunk ends its stream, never the server
                with self.lock:
                    self.error = f"{type(err).__name__}: {err}"
                    self._close(s, f"generation failed: {self.error}")

    def _deliver(self, s: LiveStream, chunk: int, version: int, x0: torch.Tensor) -> None:
        if s.closed:
            return  # closed while its chunk waited: nothing to decode for anyone
        s.engine.check_finite(torch.isfinite(x0).all(), chunk)
        with torch.no_grad():
            frames = to_uint8(s.decoder.decode(x0)).cpu().numpy()
        total = s.request.total_frames
        if total is not None:
            frames = frames[: max(0, total - s.frames)]
        from PIL import Image

        payloads = []
        for i, frame in enumerate(frames):
            buf = io.BytesIO()
            Image.fromarray(frame).save(buf, format="JPEG", quality=self.jpeg_quality)
            payloads.append(HEADER.pack(s.frames + i, chunk, version) + buf.getvalue())
        now = time.perf_counter()
        with self.lock:
            if s.first_frame_s is None:
                s.first_frame_s, s.first_frame_at = now - s.opened_at, now
            s.frames += len(payloads)
            s.done = chunk + 1
            self.frames_total += len(payloads)
            self.recent.append((now, len(payloads)))
            if not s.closed:
                for q in s.watchers:
                    for p in payloads:
                        q.put(("frame", p))
                if s.request.num_chunks is not None and s.done >= s.request.num_chunks:
                    self._close(s, "finished")


def check_prompt(prompt) -> None:
    if not isinstance(prompt, str):
        raise ValueError(f"prompt must be text, got {type(prompt).__name__}")
    if not prompt.strip():
        raise ValueError("prompt is empty")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise ValueError(f"prompt has {len(prompt)} characters; at most {MAX_PROMPT_CHARS}")
