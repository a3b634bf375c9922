"""The one streaming engine every path runs: generate, the Python API, the benchmark, the server."""

from .decode import ChunkDecodeQueue, DecodedChunk
from .engine import EngineOptions, LatentGeometry, NonFiniteError, StreamEngine
from .graphs import ChunkGraphs
from .recache import LatentHistory, recache, replay_runs

__all__ = [
    "ChunkDecodeQueue",
    "ChunkGraphs",
    "DecodedChunk",
    "EngineOptions",
    "LatentGeometry",
    "LatentHistory",
    "NonFiniteError",
    "StreamEngine",
    "recache",
    "replay_runs",
]
