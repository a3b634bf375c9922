"""CPU thread count: enough for the model, never more than the machine can give.

PyTorch's default (one thread per core) makes a small model slower on a busy machine: its ops
are too small to split well, and with another CPU-bound process on the cores, OpenMP's
spinning threads wait on each other (measured on 2 shared cores: a 3 s clip of the default
model took 157 s wall with 2 threads against 11 s with 1). On an idle machine the same model is
faster with every core (20-s clip: 13.8 s with 2 threads, 17.0 s with 1; beside one CPU-bound
process 69.8 s with 2, 17.5 s with 1; 2026-12-02). A load-aware count from ``/proc/loadavg`` was
tried and read the machine as busy when it was idle, so the load is measured where it matters:

- an explicit ``--threads`` (or ``OMP_NUM_THREADS``) wins, fixed for the run;
- a model of :data:`SMALL_MODEL_PARAMS` parameters or more gets a thread per core;
- a smaller one starts on one thread, and a stream of it is tuned chunk by chunk
  (:class:`ThreadTuner`): it times chunks on one thread and on every core, keeps the faster, and
  re-times the other every :data:`PROBE_EVERY` chunks, so a neighbour that arrives or leaves
  mid-stream moves it. The video does not depend on the count (tested).
"""

from __future__ import annotations

import os

import torch

SMALL_MODEL_PARAMS = 50_000_000
PROBE_EVERY = 32  # chunks between re-timings of the count not in use


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def choose_threads(requested: int | None, model_params: int) -> int:
    """The intra-op thread count for a CPU run (see the module docstring for the rule)."""
    if requested is not None:
        if requested < 1:
            raise ValueError(f"--threads must be >= 1, got {requested}")
        return requested
    env = env_threads()
    if env is not None:
        return env
    return 1 if model_params < SMALL_MODEL_PARAMS else available_cores()


def env_threads() -> int | None:
    """``OMP_NUM_THREADS`` when it names a count, else None."""
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    return int(env) if env.isdigit() and int(env) >= 1 else None


def is_tunable(requested: int | None, model_params: int) -> bool:
    """Whether the count is the tuner's to choose: nothing asked for, a small model, several cores."""
    asked = requested is not None or env_threads() is not None
    return not asked and model_params < SMALL_MODEL_PARAMS and available_cores() > 1


class ThreadTuner:
    """Picks the faster of ``candidates`` thread counts from chunk timings, and keeps checking.

    Call :meth:`next` before a chunk (the count to run it with) and :meth:`record` after it.
    Chunk 0 (one-time costs) is not timed; chunks 1-4 time the first two counts as a, b, b, a
    (chunks grow dearer while the cache fills: neither count gets only the later ones); afterwards
    the fastest by its latest timings runs, and every ``probe_every`` chunks each other count runs
    once. A count's timing is smoothed over the chunks it runs in a row (half the new, half the
    old) and replaced by a probe's, so a machine that changed moves it at the next probe.
    """

    def __init__(self, candidates: tuple[int, ...], probe_every: int = PROBE_EVERY):
        if len(candidates) < 2 or any(c < 1 for c in candidates):
            raise ValueError(f"a tuner needs two or more positive thread counts, got {candidates}")
        if probe_every < max(5, len(candidates)):
            raise ValueError(f"probe_every must leave room for the warm-up and the probes (>= 5), got {probe_every}")
        self.candidates, self.probe_every = tuple(candidates), probe_every
        self.seconds: dict[int, float] = {}
        self.chunks = 0
        self.used: dict[int, int] = {}
        self._current = self._previous = candidates[0]

    def best(self) -> int:
        return min(self.seconds, key=self.seconds.get) if self.seconds else self.candidates[0]

    def next(self) -> int:
        k, c = self.chunks, self.candidates
        if k == 0:
            self._current = c[0]
        elif k <= 4:
            self._current = (c[0], c[1], c[1], c[0])[k - 1]
        elif k % self.probe_every < len(c) - 1:  # one chunk for each count not in use
            others = [t for t in c if t != self.best()]
            self._current = others[k % self.probe_every]
        else:
            self._current = self.best()
        self.used[self._current] = self.used.get(self._current, 0) + 1
        return self._current

    def record(self, seconds: float) -> None:
        if self.chunks > 0:
            old = self.seconds.get(self._current)
            in_a_row = old is not None and self._current == self._previous
            self.seconds[self._current] = 0.5 * (old + seconds) if in_a_row else seconds
        self._previous = self._current
        self.chunks += 1


def set_cpu_threads(requested: int | None, model: torch.nn.Module) -> int:
    threads = choose_threads(requested, sum(p.numel() for p in model.parameters()))
    torch.set_num_threads(threads)
    return threads
