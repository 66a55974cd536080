"""``nn.Module`` wrappers of the soft-DTW functions (no parameters: they hold the settings)."""

from __future__ import annotations

import torch
from torch import nn

from .functional import Cost, soft_dtw, soft_dtw_alignment, soft_dtw_divergence


class _SoftDTWBase(nn.Module):
    _function = staticmethod(soft_dtw)

    def __init__(
        self, gamma: float = 0.1, cost: Cost = "sqeuclidean", bandwidth: int | None = None, backend: str = "auto"
    ) -> None:
        super().__init__()
        self.gamma = gamma
        self.cost = cost
        self.bandwidth = bandwidth
        self.backend = backend

    def forward(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        x_lengths: torch.Tensor | None = None,
        y_lengths: torch.Tensor | None = None,
        return_alignment: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Values (B,) for x (B, N, D), y (B, M, D); with ``return_alignment`` also the expected
        x-y alignment (B, N, M), detached, for inspection."""
        options = dict(gamma=self.gamma, cost=self.cost, bandwidth=self.bandwidth, backend=self.backend)
        values = self._function(x, y, x_lengths, y_lengths, **options)
        if return_alignment:
            return values, soft_dtw_alignment(x, y, x_lengths, y_lengths, **options)[1]
        return values

    def extra_repr(self) -> str:
        cost = getattr(self.cost, "__name__", self.cost)
        return f"gamma={self.gamma}, cost={cost!r}, bandwidth={self.bandwidth}, backend={self.backend!r}"


class SoftDTW(_SoftDTWBase):
    """Soft-DTW between x (B, N, D) and y (B, M, D); see :func:`~.functional.soft_dtw`."""


class SoftDTWDivergence(_SoftDTWBase):
    """Soft-DTW divergence between x (B, N, D) and y (B, M, D); see :func:`~.functional.soft_dtw_divergence`."""

    _function = staticmethod(soft_dtw_divergence)
