"""Analyses of trained models: effective rank of attention weights and of cached activations (paper §5).

:mod:`~videomla.analysis.study` is the whole study ``videomla rank`` runs, as a Python API.
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
from .study import ActivationInputs, ModelRanks, RankStudy, Target, parse_step, rank_study, targets

__all__ = [
    "TAUS",
    "ActivationInputs",
    "ModelRanks",
    "RankStudy",
    "Spectrum",
    "Target",
    "effective_rank",
    "energy_at",
    "energy_curve",
    "parse_step",
    "product_singular_values",
    "rank_study",
    "singular_values",
    "targets",
    "weight_operators",
    "weight_spectra",
]
