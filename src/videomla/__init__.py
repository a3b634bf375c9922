"""VideoMLA: minute-scale streaming video diffusion with a low-rank latent KV cache."""

from .cache import KVFootprint, StreamingCache
from .checkpoint import load_model, save_model
from .config import MLAConfig, ModelConfig, StreamConfig, preset
from .model import CausalWanModel
from .pipeline import GenerationSpec, Pipeline, generate
from .sampler import LatentGeometry, stream_latents

__version__ = "0.1.0"

__all__ = [
    "CausalWanModel",
    "GenerationSpec",
    "KVFootprint",
    "LatentGeometry",
    "MLAConfig",
    "ModelConfig",
    "Pipeline",
    "StreamConfig",
    "StreamingCache",
    "generate",
    "load_model",
    "preset",
    "save_model",
    "stream_latents",
]
