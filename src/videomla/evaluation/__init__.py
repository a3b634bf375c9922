"""Ground-truth scores for videos of the procedural world (:mod:`videomla.data.world`), VBench-style.

The paper scores minute-long rollouts with VBench; its networks cannot be downloaded here, and
they would judge our 64x64 world poorly anyway. This evaluator knows how the world is made
(palette, backgrounds, shapes, sizes, elastic motion), so it measures six analogous qualities
directly, against the objects the prompt asks for. Each metric is in [0, 1] (1 = a real clip),
computed per window along the rollout (default 5 s, so decay over a long horizon is visible) and
overall.

**Overall** is the geometric mean of the six metrics per window (0 as soon as one metric is 0: a
frozen, empty, noise or wrong-colour clip fails outright), averaged over windows; ``mean`` (the
arithmetic mean, VBench's Overall) and ``pass_rate`` (the fraction of windows where every metric
is >= 0.5) are reported beside it. ``drift`` = first window minus last.

Modules: :mod:`.detection` (pixels -> objects), :mod:`.scoring` (objects -> scores),
:mod:`.degenerate` (the degenerate clips every score is checked against).
"""

from ..data.world import ObjectQuery
from .detection import Detections, detect, label_components
from .scoring import AGGREGATES, DISTRIBUTION, FACTORS, METRICS, Evaluation, evaluate, window_bounds

__all__ = [
    "AGGREGATES",
    "DISTRIBUTION",
    "FACTORS",
    "METRICS",
    "Detections",
    "Evaluation",
    "ObjectQuery",
    "detect",
    "evaluate",
    "label_components",
    "window_bounds",
]
