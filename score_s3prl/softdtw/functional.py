"""Batched, masked soft-DTW and soft-DTW divergence (Cuturi & Blondel 2017; Blondel et al. 2021).

For x (B, N, D) and y (B, M, D) with per-pair lengths n_b, m_b, the cost matrix
cost[b, i, j] = c(x[b, i], y[b, j]) is built with batched matmuls (never B x N x M x D), and
soft-DTW is the smoothed minimum over all monotone alignment paths from (0, 0) to
(n_b - 1, m_b - 1) of the summed path cost:
R[i, j] = cost[i, j] + softmin_gamma(R[i-1, j-1], R[i-1, j], R[i, j-1]).
Its gradient with respect to the cost matrix is the expected alignment matrix E (B, N, M).

Memory: between forward and backward the kernels keep the three soft-min weights of every
cell, 12 bytes per cell in float32; the built-in costs keep nothing of size B x N x M (their
backward needs only x and y), so a pair of sequences costs 12 N M bytes until its backward.

The dynamic programme runs in a kernel chosen by the tensors' device: numba on the CPU
(``cpu.py``), Triton on CUDA (``triton_kernel.py``); ``backend="reference"`` is plain torch.
The environment variable ``SCORE_SOFTDTW_BACKEND`` overrides ``backend="auto"``.
Computation is float32 (float64 inputs stay float64); float16/bfloat16 inputs are upcast, so
values and gradients accumulate in float32, and the result is float32.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from types import ModuleType
from typing import Union

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from ..errors import ScoreError
from . import cpu_sqeuclidean
from .reference import soft_dtw_reference

CostFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Cost = Union[str, CostFn]
BACKENDS = ("auto", "cpu", "triton", "reference")
BACKEND_ENV = "SCORE_SOFTDTW_BACKEND"


def pairwise_cost(
    x: torch.Tensor,
    y: torch.Tensor,
    cost: Cost = "sqeuclidean",
    x_lengths: torch.Tensor | None = None,
    y_lengths: torch.Tensor | None = None,
) -> torch.Tensor:
    """Frame cost matrices (B, N, M) of x (B, N, D) and y (B, M, D).

    ``"sqeuclidean"``: ||x_i - y_j||^2 (no 1/2 factor); ``"cosine"``: 1 - cos(x_i, y_j);
    a callable is called as ``cost(x, y)`` and must return (B, N, M).
    x_lengths, y_lengths: optional (B,) valid frame counts. They change no valid cost, only
    the float32 rounding of ``"sqeuclidean"``, which is centred on the valid frames' mean.
    """
    batch = x.shape[0]
    x_lengths = _lengths(x_lengths, batch, x.shape[1], x.device, "x_lengths")
    y_lengths = _lengths(y_lengths, batch, y.shape[1], y.device, "y_lengths")
    return _pairwise_cost(x, y, cost, x_lengths, y_lengths)


def _pairwise_cost(
    x: torch.Tensor, y: torch.Tensor, cost: Cost, x_lengths: torch.Tensor, y_lengths: torch.Tensor
) -> torch.Tensor:
    """:func:`pairwise_cost` for lengths already checked (a check reads them back from the GPU)."""
    if callable(cost):
        out = cost(x, y)
        want = (x.shape[0], x.shape[1], y.shape[1])
        if not isinstance(out, torch.Tensor) or tuple(out.shape) != want:
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ScoreError(f"soft-DTW: the cost callable returned {got}, expected a tensor of shape {want}")
        return out
    if cost == "sqeuclidean":
        return _SquaredEuclidean.apply(x, y, x_lengths, y_lengths)
    if cost == "cosine":
        return 1 - torch.bmm(F.normalize(x, dim=-1), F.normalize(y, dim=-1).transpose(1, 2))
    raise ScoreError(f"soft-DTW: unknown cost {cost!r}; use 'sqeuclidean', 'cosine' or a callable")


class _SquaredEuclidean(torch.autograd.Function):
    """cost[b, i, j] = ||x[b, i] - y[b, j]||^2 from x (B, N, D), y (B, M, D) and lengths (B,).

    ||x - y||^2 is translation invariant: centring both on a common point c first keeps the
    expansion |x|^2 + |y|^2 - 2 x.y from cancelling catastrophically for features with a large
    shared offset (raw SSL features). c is the mean of the valid frames only (padding zeros
    would pull it towards the origin) and carries no gradient. With xc = x - c, yc = y - c:
        xa = [xc, |xc|^2, 1],  ya = [-2 yc, 1, |yc|^2],  cost = xa @ ya^T,
        G @ ya = [-2 G yc, rowsum(G), .],  G^T @ xa = [G^T xc, ., colsum(G)],
    and the gradients are 2 rowsum(G) xc - 2 G yc and 2 colsum(G) yc - 2 G^T xc, with no pass
    over a (B, N, M) tensor besides the matmuls and the forward's clamp. Only xa and ya are
    saved (B (N + M) (D + 2) values). On the CPU, a kernel builds xa and ya in one pass, and
    when G is sparse (soft-DTW's alignment at small gamma) the backward sums over each row's
    nonzero band instead of the matmuls (``cpu_sqeuclidean.py``).
    """

    @staticmethod
    def forward(ctx, x, y, x_lengths, y_lengths):
        if x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64) and y.dtype == x.dtype:
            xa, ya = cpu_sqeuclidean.augment(x, y, x_lengths, y_lengths)
        else:
            xa, ya = _augment(x, y, x_lengths, y_lengths)
        ctx.save_for_backward(xa, ya)
        # Rounding can leave tiny negative costs: lift them to 0.
        return torch.bmm(xa, ya.transpose(1, 2)).clamp_min_(0)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        xa, ya = ctx.saved_tensors
        needs_x, needs_y = ctx.needs_input_grad[:2]
        banded = cpu_sqeuclidean.sqeuclidean_backward(grad, xa, ya) if grad.device.type == "cpu" else None
        if banded is not None:  # both gradients come from one loop over the bands
            grad_x, grad_y = banded
            return (grad_x if needs_x else None), (grad_y if needs_y else None), None, None
        dim = xa.shape[2] - 2
        grad_x = grad_y = None
        if needs_x:
            g_ya = torch.bmm(grad, ya)
            grad_x = torch.addcmul(g_ya[..., :dim], g_ya[..., dim : dim + 1], xa[..., :dim], value=2)
        if needs_y:
            # alpha=-2 inside the matmul: -2 G^T xc and -2 colsum(G) with no extra pass.
            gt_xa = torch.baddbmm(grad.new_zeros(()), grad.transpose(1, 2), xa, beta=0, alpha=-2)
            grad_y = torch.addcmul(gt_xa[..., :dim], gt_xa[..., dim + 1 :], ya[..., :dim], value=0.5)
        return grad_x, grad_y, None, None


def _augment(
    x: torch.Tensor, y: torch.Tensor, x_lengths: torch.Tensor, y_lengths: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """xa (B, N, D + 2) and ya (B, M, D + 2) of :class:`_SquaredEuclidean`, in torch (any device)."""
    centre = _valid_mean(x, y, x_lengths, y_lengths)
    dim = x.shape[2]
    xa = x.new_empty(*x.shape[:2], dim + 2)
    ya = y.new_empty(*y.shape[:2], dim + 2)
    # (vector_norm is the fastest row reduction torch has on the CPU: 3x vecdot's speed.)
    xc = torch.sub(x, centre, out=xa[..., :dim])
    torch.linalg.vector_norm(xc, dim=-1, out=xa[..., dim]).square_()
    xa[..., dim + 1] = 1
    yc2 = torch.sub(centre * 2, y, alpha=2, out=ya[..., :dim])  # -2 yc
    torch.linalg.vector_norm(yc2, dim=-1, out=ya[..., dim + 1]).square_().mul_(0.25)
    ya[..., dim] = 1
    return xa, ya


def soft_dtw(
    x: torch.Tensor,
    y: torch.Tensor,
    x_lengths: torch.Tensor | None = None,
    y_lengths: torch.Tensor | None = None,
    gamma: float = 0.1,
    cost: Cost = "sqeuclidean",
    bandwidth: int | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """Soft-DTW values (B,) between x (B, N, D) and y (B, M, D).

    Args:
        x_lengths, y_lengths: (B,) integer frame counts (1..N, 1..M); None means full length.
            Frames past a length take no part: they get exactly zero gradient.
        gamma: smoothing, > 0; soft-DTW tends to DTW as gamma -> 0.
        cost: ``"sqeuclidean"``, ``"cosine"`` or a callable (see :func:`pairwise_cost`).
        bandwidth: Sakoe-Chiba band, only cells with |i - j| <= bandwidth; every pair needs
            |n_b - m_b| <= bandwidth.
        backend: ``"auto"`` (by device), ``"cpu"``, ``"triton"`` or ``"reference"``.
    """
    costs, x_lengths, y_lengths = _prepare(x, y, x_lengths, y_lengths, cost, bandwidth)
    return soft_dtw_from_cost(costs, x_lengths, y_lengths, gamma, backend=backend)


def soft_dtw_divergence(
    x: torch.Tensor,
    y: torch.Tensor,
    x_lengths: torch.Tensor | None = None,
    y_lengths: torch.Tensor | None = None,
    gamma: float = 0.1,
    cost: Cost = "sqeuclidean",
    bandwidth: int | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """Soft-DTW divergence (B,): sdtw(x, y) - (sdtw(x, x) + sdtw(y, y)) / 2.

    Non-negative for the built-in costs and zero for identical inputs; each self-term uses that
    sequence's own lengths. Arguments as in :func:`soft_dtw`.
    """
    terms = ((x, y, x_lengths, y_lengths), (x, x, x_lengths, x_lengths), (y, y, y_lengths, y_lengths))
    if _backend_name(backend, x.device) != "triton":
        xy, xx, yy = (soft_dtw(*term, gamma=gamma, cost=cost, bandwidth=bandwidth, backend=backend) for term in terms)
        return xy - (xx + yy) / 2
    # The GPU kernel runs one program per pair, so B pairs keep only B multiprocessors busy:
    # the three terms go in one launch of 3B pairs, padded to a common square size.
    prepared = [_prepare(*term, cost, bandwidth) for term in terms]
    size = max(x.shape[1], y.shape[1])
    costs = torch.cat([F.pad(c, (0, size - c.shape[2], 0, size - c.shape[1])) for c, _, _ in prepared])
    rows, cols = (torch.cat([p[k] for p in prepared]) for k in (1, 2))
    xy, xx, yy = soft_dtw_from_cost(costs, rows, cols, gamma, backend=backend).chunk(3)
    return xy - (xx + yy) / 2


def soft_dtw_alignment(
    x: torch.Tensor,
    y: torch.Tensor,
    x_lengths: torch.Tensor | None = None,
    y_lengths: torch.Tensor | None = None,
    gamma: float = 0.1,
    cost: Cost = "sqeuclidean",
    bandwidth: int | None = None,
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Soft-DTW values (B,) and expected alignment matrices (B, N, M), for inspection.

    alignment[b, i, j] = d sdtw / d cost[b, i, j], the probability-like weight of cell (i, j)
    under the Gibbs distribution over paths; zero on padding. Neither output carries gradient.
    """
    _check_gamma(gamma)
    with torch.no_grad():
        costs, x_lengths, y_lengths = _prepare(x, y, x_lengths, y_lengths, cost, bandwidth)
    kernel = _kernel(backend, costs.device)
    if kernel is None:
        with torch.enable_grad():
            costs.requires_grad_(True)
            values = soft_dtw_reference(costs, x_lengths, y_lengths, gamma)
            (alignment,) = torch.autograd.grad(values.sum(), costs)
        return values.detach(), alignment
    values, weights = kernel.forward(costs, x_lengths, y_lengths, gamma)
    ones = torch.ones_like(values)
    return values, kernel.backward(weights, x_lengths, y_lengths, ones, tuple(costs.shape[1:]))


def soft_dtw_from_cost(
    costs: torch.Tensor,
    x_lengths: torch.Tensor | None = None,
    y_lengths: torch.Tensor | None = None,
    gamma: float = 0.1,
    bandwidth: int | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """Soft-DTW values (B,) of precomputed cost matrices (B, N, M); +inf forbids a cell.

    Differentiable with respect to ``costs``; the gradient is the expected alignment.
    """
    if costs.dim() != 3:
        raise ScoreError(f"soft-DTW: cost matrices must be (B, N, M), got shape {tuple(costs.shape)}")
    batch, rows, cols = costs.shape
    x_lengths = _lengths(x_lengths, batch, rows, costs.device, "x_lengths")
    y_lengths = _lengths(y_lengths, batch, cols, costs.device, "y_lengths")
    _check_gamma(gamma)
    costs = _band(costs.to(_compute_dtype(costs.dtype)), x_lengths, y_lengths, bandwidth)
    kernel = _kernel(backend, costs.device)
    if kernel is None:
        return soft_dtw_reference(costs, x_lengths, y_lengths, gamma)
    return _SoftDTW.apply(costs, x_lengths, y_lengths, float(gamma), kernel)


class _SoftDTW(torch.autograd.Function):
    """Kernel forward keeps the soft-min weights; backward is the E recursion from them."""

    @staticmethod
    def forward(ctx, costs, x_lengths, y_lengths, gamma, kernel):
        values, weights = kernel.forward(costs.detach().contiguous(), x_lengths, y_lengths, gamma)
        ctx.save_for_backward(weights, x_lengths, y_lengths)
        ctx.kernel = kernel
        ctx.shape = tuple(costs.shape[1:])
        return values

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        weights, x_lengths, y_lengths = ctx.saved_tensors
        grad_costs = ctx.kernel.backward(weights, x_lengths, y_lengths, grad.contiguous(), ctx.shape)
        return grad_costs, None, None, None, None


def _prepare(
    x: torch.Tensor,
    y: torch.Tensor,
    x_lengths: torch.Tensor | None,
    y_lengths: torch.Tensor | None,
    cost: Cost,
    bandwidth: int | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Validated cost matrices (band applied) and int64 lengths on the inputs' device."""
    for name, t in (("x", x), ("y", y)):
        if not isinstance(t, torch.Tensor) or t.dim() != 3 or not t.is_floating_point():
            shape = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise ScoreError(f"soft-DTW: {name} must be a floating (B, T, D) tensor, got {shape}")
        if t.shape[1] == 0:
            raise ScoreError(f"soft-DTW: {name} has no frames (shape {tuple(t.shape)})")
    if x.shape[0] != y.shape[0] or x.shape[2] != y.shape[2] or x.device != y.device:
        raise ScoreError(
            f"soft-DTW: x {tuple(x.shape)} on {x.device} and y {tuple(y.shape)} on {y.device} "
            "need the same batch size, feature size and device"
        )
    batch = x.shape[0]
    x_lengths = _lengths(x_lengths, batch, x.shape[1], x.device, "x_lengths")
    y_lengths = _lengths(y_lengths, batch, y.shape[1], y.device, "y_lengths")
    dtype = _compute_dtype(x.dtype)
    # Autocast would run the matmuls in half precision: costs of raw features need float32.
    with torch.autocast(device_type=x.device.type, enabled=False):
        x = _zero_padding(x.to(dtype), x_lengths)
        y = _zero_padding(y.to(dtype), y_lengths)
        costs = _pairwise_cost(x, y, cost, x_lengths, y_lengths).to(dtype)
    return _band(costs, x_lengths, y_lengths, bandwidth), x_lengths, y_lengths


def _valid_mean(x: torch.Tensor, y: torch.Tensor, x_lengths: torch.Tensor, y_lengths: torch.Tensor) -> torch.Tensor:
    """Mean (B, 1, D) of the frames of x (B, N, D) and y (B, M, D) within their lengths."""
    total = _zero_padding(x, x_lengths).sum(1) + _zero_padding(y, y_lengths).sum(1)
    return (total / (x_lengths + y_lengths).unsqueeze(1).to(total.dtype)).unsqueeze(1)


def _zero_padding(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    # Padded frames become zeros so that any padding value (even NaN) gives finite costs,
    # and their gradient is exactly zero.
    if bool((lengths == x.shape[1]).all()):
        return x
    keep = torch.arange(x.shape[1], device=x.device) < lengths.unsqueeze(1)
    return torch.where(keep.unsqueeze(2), x, torch.zeros((), dtype=x.dtype, device=x.device))


def _band(
    costs: torch.Tensor, x_lengths: torch.Tensor, y_lengths: torch.Tensor, bandwidth: int | None
) -> torch.Tensor:
    """Forbid (+inf) the cells with |i - j| > bandwidth; reject bands no path fits in."""
    if bandwidth is None:
        return costs
    if isinstance(bandwidth, bool) or not isinstance(bandwidth, int) or bandwidth < 0:
        raise ScoreError(f"soft-DTW: bandwidth must be a non-negative integer or None, got {bandwidth!r}")
    gap = (x_lengths - y_lengths).abs()
    if bool((gap > bandwidth).any()):
        b = int(torch.argmax((gap > bandwidth).int()))
        raise ScoreError(
            f"soft-DTW: bandwidth {bandwidth} is infeasible for pair {b} of lengths "
            f"{int(x_lengths[b])} and {int(y_lengths[b])}: the band needs bandwidth >= |n - m| = {int(gap[b])}"
        )
    rows = torch.arange(costs.shape[1], device=costs.device).unsqueeze(1)
    cols = torch.arange(costs.shape[2], device=costs.device).unsqueeze(0)
    return costs.masked_fill((rows - cols).abs() > bandwidth, float("inf"))


def _lengths(lengths: torch.Tensor | None, batch: int, full: int, device: torch.device, name: str) -> torch.Tensor:
    if lengths is None:
        return torch.full((batch,), full, dtype=torch.int64, device=device)
    if not isinstance(lengths, torch.Tensor) or lengths.shape != (batch,) or lengths.is_floating_point():
        shape = tuple(lengths.shape) if isinstance(lengths, torch.Tensor) else type(lengths).__name__
        raise ScoreError(f"soft-DTW: {name} must be an integer tensor of shape ({batch},), got {shape}")
    lengths = lengths.to(device=device, dtype=torch.int64)
    if batch and (int(lengths.min()) < 1 or int(lengths.max()) > full):
        raise ScoreError(f"soft-DTW: {name} must lie in 1..{full}, got {lengths.tolist()}")
    return lengths


def _check_gamma(gamma: float) -> None:
    if not (isinstance(gamma, (int, float)) and 0 < gamma < float("inf")):
        raise ScoreError(f"soft-DTW: gamma must be a positive finite number, got {gamma!r}")


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _backend_name(backend: str, device: torch.device) -> str:
    """``backend`` with "auto" resolved: the environment variable, else by device."""
    if backend == "auto":
        backend = os.environ.get(BACKEND_ENV, "auto")
    if backend not in BACKENDS:
        raise ScoreError(f"soft-DTW: unknown backend {backend!r} (from argument or {BACKEND_ENV}); use one of {BACKENDS}")
    if backend == "auto":
        return "triton" if device.type == "cuda" else "cpu"
    return backend


def _kernel(backend: str, device: torch.device) -> ModuleType | None:
    """The kernel module for ``backend`` on ``device`` (None: the plain-torch reference)."""
    backend = _backend_name(backend, device)
    if backend == "reference":
        return None
    if backend == "cpu":
        if device.type != "cpu":
            raise ScoreError(f"soft-DTW: backend 'cpu' needs CPU tensors, got tensors on {device}")
        from . import cpu

        return cpu
    from . import triton_kernel

    triton_kernel.check_device(device)
    return triton_kernel
