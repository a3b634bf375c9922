"""Real-scale streaming benchmarks (``videomla bench``): speed, memory, FLOPs, concurrency."""

from .flops import ForwardShape, forward_flops
from .report import markdown, targets, validate
from .runner import BenchSetup, run_bench
from .variants import DEFAULT_VARIANTS, VARIANTS, Variant, parse_variants

__all__ = [
    "DEFAULT_VARIANTS",
    "VARIANTS",
    "BenchSetup",
    "ForwardShape",
    "Variant",
    "forward_flops",
    "markdown",
    "parse_variants",
    "run_bench",
    "targets",
    "validate",
]
