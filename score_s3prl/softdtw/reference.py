"""Plain-torch soft-DTW: the definition, differentiated by autograd. Slow; tests check the
kernels against it, and it runs on any device as ``backend="reference"``.

R[-1, -1] = 0, R[i, -1] = R[-1, j] = +inf, and for 0 <= i < n, 0 <= j < m
R[i, j] = cost[i, j] + softmin_gamma(R[i-1, j-1], R[i-1, j], R[i, j-1]),
softmin_gamma(r) = -gamma * log(sum_k exp(-r_k / gamma)); the value is R[n-1, m-1].
"""

from __future__ import annotations

import torch


def softmin(r: torch.Tensor, gamma: float) -> torch.Tensor:
    """Soft minimum over the last dimension; +inf where every entry is +inf, with finite gradients."""
    # The shift is detached: softmin(r - c) + c = softmin(r) for any c, so it carries no gradient.
    low = r.amin(dim=-1, keepdim=True).detach()
    reachable = torch.isfinite(low)
    low = torch.where(reachable, low, torch.zeros_like(low))
    total = torch.exp((low - r) / gamma).sum(dim=-1, keepdim=True)
    # log(0) would be -inf with a NaN gradient: feed 1 instead where the result is replaced anyway.
    value = low - gamma * torch.log(torch.where(reachable, total, torch.ones_like(total)))
    return torch.where(reachable, value, torch.full_like(value, float("inf"))).squeeze(-1)


def soft_dtw_reference(
    cost: torch.Tensor, x_lengths: torch.Tensor, y_lengths: torch.Tensor, gamma: float
) -> torch.Tensor:
    """Soft-DTW values (B,) of cost matrices (B, N, M) for pairs of lengths n_b <= N, m_b <= M.

    Sweeps anti-diagonals, vectorised over the batch and the rows; +inf costs forbid cells.
    """
    batch, rows, cols = cost.shape
    device, dtype = cost.device, cost.dtype
    inf = torch.full((batch, 1), float("inf"), device=device, dtype=dtype)
    row = torch.arange(rows, device=device)
    # R on diagonals d-1 and d-2, indexed by row + 1 (index 0 is row -1).
    r1 = inf.expand(batch, rows + 1)
    r2 = torch.cat([torch.zeros_like(inf), inf.expand(batch, rows)], dim=1)  # R[-1, -1] = 0
    n = x_lengths.to(device).view(batch, 1)
    m = y_lengths.to(device).view(batch, 1)
    last_rows = []
    for d in range(rows + cols - 1):
        col = d - row
        # Cells outside a pair's own grid are +inf, whatever its padding holds.
        inside = (col >= 0) & (row < n) & (col < m)
        c = cost[:, row, col.clamp(0, cols - 1)]
        best = softmin(torch.stack([r2[:, :-1], r1[:, :-1], r1[:, 1:]], dim=-1), gamma)
        r0 = torch.where(inside, c + best, inf)
        r1, r2 = torch.cat([inf, r0], dim=1), r1
        last_rows.append(r0.gather(1, n - 1).squeeze(1))
    return torch.stack(last_rows, dim=1).gather(1, n + m - 2).squeeze(1)
