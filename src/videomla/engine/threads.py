"""CPU thread count: enough for the model, never more than the machine can give.

PyTorch's default (one thread per core) makes a small model slower on a busy machine: its ops
are too small to split well, and with another CPU-bound process on the cores, OpenMP's
spinning threads wait on each other (measured on 2 shared cores: a 3 s clip of the default
model took 157 s wall with 2 threads against 11 s with 1). So: an explicit ``--threads`` (or
``OMP_NUM_THREADS``) wins; otherwise a model under :data:`SMALL_MODEL_PARAMS` parameters gets
one thread, a larger one a thread per core this process may use. Measured on 2 cores (README main
command, 60 s of video, 2026-12-01): idle 47.3 s with 1 thread (36.8 s with ``--threads 2``);
beside one CPU-bound process 50.1 s with 1 thread. A load-aware count from ``/proc/loadavg`` was
tried and read the machine as busy when it was idle, so the rule stays fixed.
"""

from __future__ import annotations

import os

import torch

SMALL_MODEL_PARAMS = 50_000_000


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
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    if env.isdigit() and int(env) >= 1:
        return int(env)
    return 1 if model_params < SMALL_MODEL_PARAMS else available_cores()


def set_cpu_threads(requested: int | None, model: torch.nn.Module) -> int:
    threads = choose_threads(requested, sum(p.numel() for p in model.parameters()))
    torch.set_num_threads(threads)
    return threads
