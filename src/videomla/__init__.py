"""VideoMLA: minute-scale streaming video diffusion with a low-rank latent KV cache."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# Public names -> the module defining them. Imported on first use (PEP 562), so `import videomla.cli`
# does not import torch: the command line can then handle Ctrl-C / SIGTERM during start-up.
_LAZY = {
    "KVFootprint": "cache",
    "StreamingCache": "cache",
    "load_model": "checkpoint",
    "save_model": "checkpoint",
    "MLAConfig": "config",
    "ModelConfig": "config",
    "StreamConfig": "config",
    "preset": "config",
    "CausalWanModel": "model",
    "EngineOptions": "engine",
    "LatentGeometry": "engine",
    "StreamEngine": "engine",
    "GenerationRequest": "pipeline",
    "GenerationSpec": "pipeline",
    "Pipeline": "pipeline",
    "generate": "pipeline",
    "stream_latents": "sampler",
    "SamplingSchedule": "schedule",
}

if TYPE_CHECKING:  # for type checkers and IDEs: the same names, eagerly
    from .cache import KVFootprint, StreamingCache
    from .checkpoint import load_model, save_model
    from .config import MLAConfig, ModelConfig, StreamConfig, preset
    from .engine import EngineOptions, LatentGeometry, StreamEngine
    from .model import CausalWanModel
    from .pipeline import GenerationRequest, GenerationSpec, Pipeline, generate
    from .sampler import stream_latents
    from .schedule import SamplingSchedule


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'videomla' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "CausalWanModel",
    "EngineOptions",
    "GenerationRequest",
    "GenerationSpec",
    "KVFootprint",
    "LatentGeometry",
    "MLAConfig",
    "ModelConfig",
    "Pipeline",
    "SamplingSchedule",
    "StreamConfig",
    "StreamEngine",
    "StreamingCache",
    "generate",
    "load_model",
    "preset",
    "save_model",
    "stream_latents",
]
