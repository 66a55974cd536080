"""The squared-Euclidean cost on the CPU: its matmul inputs in one pass, and its backward
summed over the nonzero band of each row of a sparse incoming gradient.

The gradient that soft-DTW sends to its cost matrix is the expected alignment, and at small
gamma nearly all of it is exactly zero: the float32 kernels flush weights below about 1e-19,
so each row keeps a band of a few dozen nonzero cells around the best path (for B=8 pairs of
500 x 450 random frames at gamma 0.1, 94 % zeros and a mean band of 27 cells per row). The two
backward matmuls of the dense path spend almost all their work on those zeros. Here each row
is summed over its band only, [first nonzero, last nonzero], which gives the same result up
to float rounding for any gradient (zeros outside the band contribute exactly nothing).

With c the centre, xa = [x - c, |x - c|^2, 1] and ya = [-2 (y - c), 1, |y - c|^2] as
``functional._SquaredEuclidean`` saves them, and G the incoming (B, N, M) gradient:
    grad_x[i] = 2 (sum_j G[i, j]) (x_i - c) - 2 sum_j G[i, j] (y_j - c)
    grad_y[j] = 2 (sum_i G[i, j]) (y_j - c) - 2 sum_i G[i, j] (x_i - c)
Rows are taken four at a time so that each y_j row and grad_y row is loaded and stored once
per four rows: the loop is bound by stores to the accumulators, not by arithmetic.
"""

from __future__ import annotations

import numpy as np
import torch
from numba import njit

from .cpu import _JIT, _numpy, _parallel, _typed

# Above this fraction of cells inside the bands, use the matmuls. On the 2-core CPU at B=8,
# N=500, M=450, D=256 the band path's backward is about 4.8 ms faster at gamma 0.1 (fraction
# 0.06) and still 0.5 ms faster at gamma 1 (fraction 0.27); it breaks even near 0.3.
MAX_BAND_FRACTION = 0.25
_ROWS_PER_BLOCK = 4
_SCAN_CHUNK = 16


@njit(**_JIT)
def _augment_kernel(first, step, x, y, x_lengths, y_lengths, xa, ya):
    """xa[b] = [x[b] - c, |x[b] - c|^2, 1] and ya[b] = [-2 (y[b] - c), 1, |y[b] - c|^2], with c
    the mean of the valid frames of x[b] and y[b]. A pair's frames (about 1 MB at D = 256) are
    summed, then reread from cache: one pass over memory instead of torch's six."""
    batch, rows, dim = x.shape
    cols = y.shape[1]
    zero = _typed(x[0, 0, 0], 0.0)
    one = _typed(zero, 1.0)
    two = _typed(zero, 2.0)
    centre = np.empty(dim, dtype=x.dtype)
    for b in range(first, batch, step):
        centre[:] = zero
        for i in range(x_lengths[b]):
            for d in range(dim):
                centre[d] += x[b, i, d]
        for j in range(y_lengths[b]):
            for d in range(dim):
                centre[d] += y[b, j, d]
        scale = one / _typed(zero, x_lengths[b] + y_lengths[b])
        for d in range(dim):
            centre[d] *= scale
        for i in range(rows):
            out = xa[b, i]
            total = zero
            for d in range(dim):
                v = x[b, i, d] - centre[d]
                out[d] = v
                total += v * v
            out[dim] = total
            out[dim + 1] = one
        for j in range(cols):
            out = ya[b, j]
            total = zero
            for d in range(dim):
                v = y[b, j, d] - centre[d]
                out[d] = -two * v
                total += v * v
            out[dim] = one
            out[dim + 1] = total


@njit(**_JIT)
def _band_kernel(first, step, grad, bands):
    """bands[b, i] = (first nonzero column, last nonzero column + 1) of grad[b, i]; (M, 0) if none."""
    batch, rows, cols = grad.shape
    zero = _typed(grad[0, 0, 0], 0.0)
    for b in range(first, batch, step):
        for i in range(rows):
            row = grad[b, i]
            lo = 0
            # Whole chunks first: the summed magnitudes vectorise, and NaN counts as nonzero.
            while lo + _SCAN_CHUNK <= cols:
                total = zero
                for k in range(_SCAN_CHUNK):
                    total += abs(row[lo + k])
                if total != zero:
                    break
                lo += _SCAN_CHUNK
            while lo < cols and row[lo] == zero:
                lo += 1
            hi = cols
            while hi - _SCAN_CHUNK >= lo:
                total = zero
                for k in range(_SCAN_CHUNK):
                    total += abs(row[hi - _SCAN_CHUNK + k])
                if total != zero:
                    break
                hi -= _SCAN_CHUNK
            while hi > lo and row[hi - 1] == zero:
                hi -= 1
            # An empty row gets (cols, 0), so that it never widens a block's union of bands.
            bands[b, i, 0] = lo if hi > lo else cols
            bands[b, i, 1] = hi if hi > lo else 0


@njit(**_JIT)
def _gradient_kernel(first, step, grad, bands, xa, ya, grad_x, grad_y, column_sums):
    """grad_x (B, ceil(N / 4) * 4, D) and grad_y (B, M, D) from the bands of grad (B, N, M)."""
    batch, rows, cols = grad.shape
    dim = xa.shape[2] - 2
    zero = _typed(grad[0, 0, 0], 0.0)
    two = _typed(zero, 2.0)
    for b in range(first, batch, step):
        g, xc, yc2, gx, gy, col = grad[b], xa[b], ya[b], grad_x[b], grad_y[b], column_sums[b]
        gy[:] = zero
        col[:] = zero
        for i0 in range(0, rows, _ROWS_PER_BLOCK):
            # Rows past the last (when N is not a multiple of 4) have zero weight: they read the
            # last row's data and write only to grad_x's own padding rows.
            i1, i2, i3 = min(i0 + 1, rows - 1), min(i0 + 2, rows - 1), min(i0 + 3, rows - 1)
            lo = min(min(bands[b, i0, 0], bands[b, i1, 0]), min(bands[b, i2, 0], bands[b, i3, 0]))
            hi = max(max(bands[b, i0, 1], bands[b, i1, 1]), max(bands[b, i2, 1], bands[b, i3, 1]))
            x0, x1, x2, x3 = xc[i0], xc[i1], xc[i2], xc[i3]
            a0, a1, a2, a3 = gx[i0], gx[i0 + 1], gx[i0 + 2], gx[i0 + 3]
            for d in range(dim):
                a0[d] = a1[d] = a2[d] = a3[d] = zero
            s0 = s1 = s2 = s3 = zero
            for j in range(lo, hi):
                e0 = g[i0, j]
                e1 = g[i1, j] if i0 + 1 < rows else zero
                e2 = g[i2, j] if i0 + 2 < rows else zero
                e3 = g[i3, j] if i0 + 3 < rows else zero
                s0 += e0
                s1 += e1
                s2 += e2
                s3 += e3
                col[j] += (e0 + e1) + (e2 + e3)
                y2, gyj = yc2[j], gy[j]
                for d in range(dim):
                    # a_r accumulates -2 sum_j G[i, j] (y_j - c); gy_j sums G[i, j] (x_i - c).
                    a0[d] += e0 * y2[d]
                    a1[d] += e1 * y2[d]
                    a2[d] += e2 * y2[d]
                    a3[d] += e3 * y2[d]
                    gyj[d] += (e0 * x0[d] + e1 * x1[d]) + (e2 * x2[d] + e3 * x3[d])
            for d in range(dim):
                a0[d] += two * s0 * x0[d]
                a1[d] += two * s1 * x1[d]
                a2[d] += two * s2 * x2[d]
                a3[d] += two * s3 * x3[d]
        for j in range(cols):
            for d in range(dim):
                gy[j, d] = -two * gy[j, d] - col[j] * yc2[j, d]


def augment(
    x: torch.Tensor, y: torch.Tensor, x_lengths: torch.Tensor, y_lengths: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Centred inputs with their norm columns, xa (B, N, D + 2) and ya (B, M, D + 2), such that
    ``xa @ ya^T`` is the (B, N, M) squared-Euclidean cost (see the module docstring).

    Args:
        x, y: (B, N, D) and (B, M, D) float32 or float64 CPU tensors.
        x_lengths, y_lengths: (B,) int64 valid frame counts; the centre is their frames' mean.
    """
    xa = x.new_empty(*x.shape[:2], x.shape[2] + 2)
    ya = y.new_empty(*y.shape[:2], y.shape[2] + 2)
    _parallel(
        _augment_kernel, x.shape[0],
        _numpy(x), _numpy(y), _numpy(x_lengths), _numpy(y_lengths), xa.numpy(), ya.numpy(),
    )  # fmt: skip
    return xa, ya


def nonzero_bands(grad: np.ndarray) -> np.ndarray:
    """(B, N, 2) int64: for each row of grad (B, N, M), its first nonzero column and its last
    nonzero column + 1; (M, 0) for a row of zeros. NaN counts as nonzero."""
    bands = np.empty((*grad.shape[:2], 2), np.int64)
    _parallel(_band_kernel, grad.shape[0], grad, bands)
    return bands


def sqeuclidean_backward(
    grad: torch.Tensor, xa: torch.Tensor, ya: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Gradients (grad_x (B, N, D), grad_y (B, M, D)) of sum(grad * cost), or None when the
    nonzero bands of ``grad`` cover more than :data:`MAX_BAND_FRACTION` of it (use the matmuls).

    Args:
        grad: (B, N, M) float32 or float64 CPU tensor, the gradient of the cost matrices.
        xa, ya: (B, N, D + 2) and (B, M, D + 2) contiguous, as ``_SquaredEuclidean`` saves them.
    """
    batch, rows, cols = grad.shape
    if batch == 0 or grad.dtype not in (torch.float32, torch.float64):
        return None
    g = _numpy(grad)
    bands = nonzero_bands(g)
    if np.maximum(bands[..., 1] - bands[..., 0], 0).sum() > MAX_BAND_FRACTION * grad.numel():
        return None
    dim = xa.shape[2] - 2
    padded_rows = -(-rows // _ROWS_PER_BLOCK) * _ROWS_PER_BLOCK
    grad_x = torch.empty(batch, padded_rows, dim, dtype=grad.dtype)
    grad_y = torch.empty(batch, cols, dim, dtype=grad.dtype)
    column_sums = np.empty((batch, cols), g.dtype)
    _parallel(
        _gradient_kernel, batch,
        g, bands, xa.numpy(), ya.numpy(), grad_x.numpy(), grad_y.numpy(), column_sums,
    )  # fmt: skip
    return grad_x[:, :rows], grad_y
