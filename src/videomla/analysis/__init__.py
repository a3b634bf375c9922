"""Analyses of trained models: effective rank of attention weights and of cached activations (paper §5).

Plots live in :mod:`videomla.analysis.plots` and need the optional matplotlib.
"""

from .rank import (
    TAUS,
    Spectrum,
    effective_rank,
    energy_at,
    energy_curve,
    product_singular_values,
    singular_values,
    weight_operators,
    weight_spectra,
)

__all__ = [
    "TAUS",
    "Spectrum",
    "effective_rank",
    "energy_at",
    "energy_curve",
    "product_singular_values",
    "singular_values",
    "weight_operators",
    "weight_spectra",
]
