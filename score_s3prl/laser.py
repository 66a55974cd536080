"""LASER's loss (Meghanani & Hain, Interspeech 2024, arXiv 2406.09153) as pure functions.

LASER drops SCORE's teacher: both views go through the trainable model and the shared head,
and the loss is

    L = D(f1, f2) + alpha * (R(f1) + R(f2))

with D the soft-DTW divergence (squared Euclidean frame cost, *not* divided by length: the
official ``expert.py`` adds the plain ``SoftDTW(normalize=True)`` value) and R the temporal
regulariser. For one sequence f of n frames, with d_ij = ||f_i - f_j||, w_ij = (i - j)^2 + 1
and y_ij = 1 if |i - j| > sigma else 0:

    R(f) = (1 / n^2) * sum_{i, j} [ y_ij * w_ij * max(0, m - d_ij) + (1 - y_ij) * d_ij / w_ij ]

The sum runs over all n x n ordered pairs, the diagonal included, as the official ``laser.py``
computes it from ``torch.cdist`` (its diagonal terms are d_ii / 1 = 0 for sigma >= 0). Here a
padded batch is handled with masks and the distances come from one batched matmul
(``|a|^2 + |b|^2 - 2 a.b``, the form ``torch.cdist`` itself uses past 25 frames), so memory is
O(B n^2), never O(B n^2 D).

The derivative of d at d = 0 (the diagonal, and any two identical frames) is taken as 0, the
subgradient ``torch.cdist`` documents for p = 2.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["pairwise_distances", "temporal_regulariser", "laser_terms", "laser_loss"]


def pairwise_distances(x: torch.Tensor) -> torch.Tensor:
    """Euclidean distances between all frame pairs of each sequence.

    Args:
        x: (B, N, D) frames.
    Returns:
        (B, N, N) with d[b, i, j] = ||x[b, i] - x[b, j]||, exactly 0 on the diagonal, and a zero
        gradient wherever the distance is 0.
    """
    norms = x.pow(2).sum(-1)  # (B, N)
    squared = norms[:, :, None] + norms[:, None, :] - 2 * torch.matmul(x, x.transpose(1, 2))
    n = x.shape[1]
    eye = torch.eye(n, dtype=torch.bool, device=x.device)
    # Rounding can make the expanded form slightly negative (or non-zero on the diagonal).
    squared = squared.clamp(min=0).masked_fill(eye, 0.0)
    positive = squared > 0
    # sqrt'(0) is infinite: feed 1 where the value is replaced by 0, so the gradient is 0 there.
    return torch.where(positive, torch.sqrt(torch.where(positive, squared, torch.ones_like(squared))), 0.0)


def temporal_regulariser(
    x: torch.Tensor,
    lengths: torch.Tensor | None = None,
    sigma: int = 0,
    margin: float = 1.1,
) -> torch.Tensor:
    """LASER's temporal regulariser R per sequence of a padded batch.

    Args:
        x: (B, N, D) frames; rows past a sequence's length are ignored (they must be finite).
        lengths: (B,) valid frames n_b >= 1 (None: all N).
        sigma: pairs with |i - j| <= sigma are pulled together (d / w), others pushed apart up
            to ``margin`` (w * max(0, margin - d)).
        margin: m in the formula.
    Returns:
        (B,) R(x_b), each sum divided by n_b^2.
    """
    batch, n, _ = x.shape
    if lengths is None:
        lengths = torch.full((batch,), n, dtype=torch.long, device=x.device)
    lengths = lengths.to(x.device)
    idx = torch.arange(n, device=x.device)
    gap = (idx[:, None] - idx[None, :]).to(x.dtype)
    w = gap.pow(2) + 1  # (N, N)
    far = gap.abs() > sigma  # y_ij
    d = pairwise_distances(x)  # (B, N, N)
    terms = torch.where(far, w * F.relu(margin - d), d / w)
    valid = idx[None, :] < lengths[:, None]  # (B, N)
    terms = torch.where(valid[:, :, None] & valid[:, None, :], terms, 0.0)
    return terms.sum(dim=(1, 2)) / lengths.to(x.dtype).pow(2)


def laser_terms(
    x: torch.Tensor,
    x_lengths: torch.Tensor,
    y: torch.Tensor,
    y_lengths: torch.Tensor,
    gamma: float = 0.1,
    sigma: int = 0,
    margin: float = 1.1,
    bandwidth: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """LASER's two loss terms per pair, unweighted: the soft-DTW divergence D(x, y) and R(x) + R(y).

    Args: as :func:`laser_loss` (without ``alpha``).
    Returns:
        (divergence, regulariser): (B,) each, the regulariser in the divergence's dtype.
    """
    from .softdtw import soft_dtw_divergence

    divergence = soft_dtw_divergence(x, y, x_lengths, y_lengths, gamma=gamma, cost="sqeuclidean",
                                     bandwidth=bandwidth)
    regulariser = temporal_regulariser(x, x_lengths, sigma, margin) + temporal_regulariser(y, y_lengths, sigma, margin)
    return divergence, regulariser.to(divergence.dtype)


def laser_loss(
    x: torch.Tensor,
    x_lengths: torch.Tensor,
    y: torch.Tensor,
    y_lengths: torch.Tensor,
    gamma: float = 0.1,
    alpha: float = 0.4,
    sigma: int = 0,
    margin: float = 1.1,
    bandwidth: int | None = None,
) -> torch.Tensor:
    """LASER's loss per pair: soft-DTW divergence + alpha * (R(x) + R(y)).

    Args:
        x: (B, N, D), y: (B, M, D) projected, L2-normalised frames of the two views.
        x_lengths, y_lengths: (B,) valid frames.
        gamma: soft-DTW smoothing; alpha, sigma, margin: the regulariser's weight and settings.
        bandwidth: optional Sakoe-Chiba band in frames (not in the official code).
    Returns:
        (B,) losses (no division by length, as in the official code).
    """
    divergence, regulariser = laser_terms(x, x_lengths, y, y_lengths, gamma, sigma, margin, bandwidth)
    return divergence + alpha * regulariser
