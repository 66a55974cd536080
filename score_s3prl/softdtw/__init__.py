"""Batched, masked soft-DTW and soft-DTW divergence with CPU (numba) and CUDA (Triton) kernels.

Public API: :func:`soft_dtw`, :func:`soft_dtw_divergence`, :func:`soft_dtw_alignment`,
:func:`soft_dtw_from_cost`, :func:`pairwise_cost`, and the modules :class:`SoftDTW`,
:class:`SoftDTWDivergence`. See ``functional.py`` for definitions and conventions.
"""

from .functional import (
    BACKEND_ENV,
    BACKENDS,
    pairwise_cost,
    soft_dtw,
    soft_dtw_alignment,
    soft_dtw_divergence,
    soft_dtw_from_cost,
)
from .modules import SoftDTW, SoftDTWDivergence

__all__ = [
    "BACKENDS",
    "BACKEND_ENV",
    "SoftDTW",
    "SoftDTWDivergence",
    "pairwise_cost",
    "soft_dtw",
    "soft_dtw_alignment",
    "soft_dtw_divergence",
    "soft_dtw_from_cost",
]
