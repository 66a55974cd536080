"""Soft-DTW dynamic programme on the CPU (numba): parallel over pairs, SIMD along anti-diagonals.

Cells on one anti-diagonal ``d = i + j`` are independent, so each pair is swept diagonal by
diagonal and the cells of a diagonal form one vectorised loop. Pairs are shared out over
``torch.get_num_threads()`` Python threads running the GIL-free kernels: numba's own parallel
layer (OpenMP) would leave spinning threads that starve torch's matmuls around it.

Saved between forward and backward: the three soft-min weights of every cell, 3 x 4 = 12 bytes
per cell in float32 (24 in float64), in ``weights`` of shape (B, 3, N * M + 1). For pair ``b``
the cells of its own n x m grid are packed diagonal after diagonal (rows ascending within a
diagonal); planes 0, 1, 2 hold the weight of the diagonal (i-1, j-1), up (i-1, j) and left
(i, j-1) predecessor. The backward pass is then three multiply-adds per cell, with no
exponentials: recomputing the weights from R loses all precision in float32 when costs are large.

float32 uses polynomial exp/log so that LLVM vectorises them (libm calls do not vectorise);
float64 (for gradcheck) uses libm.
"""

from __future__ import annotations

import math
import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from functools import cache

import numpy as np
import torch
from numba import njit, types
from numba.extending import intrinsic, overload

# Fast-math without 'nnan'/'ninf': the kernels rely on +inf for unreachable cells.
_FASTMATH = {"nsz", "arcp", "contract", "afn", "reassoc"}
# error_model="numpy": no ZeroDivisionError branch, which would block vectorisation.
_JIT = dict(fastmath=_FASTMATH, error_model="numpy", nogil=True, cache=True)
_INLINE = dict(_JIT, inline="always")

# float32 exponentials below exp(-43) ~ 2e-19 are flushed to 0, and so are backward values
# below 1e-19: every product of a weight and a backward value then stays a normal float
# (denormal arithmetic is ~100x slower on x86). Both are far below float32 resolution.
_F32_EXP_FLOOR = -43.0
_F32_TINY = 1e-19


@intrinsic
def _int32_bits_as_float32(typingctx, bits):
    """Reinterpret an int32 bit pattern as float32 (builds 2**k for the exp polynomial)."""
    sig = types.float32(types.int32)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], context.get_value_type(types.float32))

    return sig, codegen


@njit(**_INLINE)
def _exp_nonpositive_f32(z):
    # Cephes-style expf: z = k ln2 + f, |f| <= ln2 / 2, degree-7 polynomial for exp(f).
    zc = max(z, np.float32(-87.0))
    k = np.floor(zc * np.float32(1.4426950408889634) + np.float32(0.5))
    f = zc - k * np.float32(0.693359375) - k * np.float32(-2.12194440e-4)
    p = np.float32(1.9875691500e-4)
    p = p * f + np.float32(1.3981999507e-3)
    p = p * f + np.float32(8.3334519073e-3)
    p = p * f + np.float32(4.1665795894e-2)
    p = p * f + np.float32(1.6666665459e-1)
    p = p * f + np.float32(5.0000001201e-1)
    p = p * f * f + f + np.float32(1.0)
    scale = _int32_bits_as_float32(np.int32((np.int32(k) + np.int32(127)) << np.int32(23)))
    return p * scale if z >= np.float32(_F32_EXP_FLOOR) else np.float32(0.0)


@njit(**_INLINE)
def _log_1_to_3_f32(s):
    # s = 1 + two exponentials of non-positive numbers, so 1 <= s <= 3. Halve s above 1.5,
    # then log(s) = 2 atanh(t), t = (s - 1) / (s + 1), |t| <= 0.2: the odd series to t^9
    # is accurate to ~4e-9.
    big = s > np.float32(1.5)
    s = s * np.float32(0.5) if big else s
    t = (s - np.float32(1.0)) / (s + np.float32(1.0))
    t2 = t * t
    p = np.float32(1.0 / 9.0)
    p = p * t2 + np.float32(1.0 / 7.0)
    p = p * t2 + np.float32(1.0 / 5.0)
    p = p * t2 + np.float32(1.0 / 3.0)
    p = p * t2 + np.float32(1.0)
    r = np.float32(2.0) * t * p
    return r + np.float32(0.6931471805599453) if big else r


def _exp_nonpositive(z):
    """exp(z) for z <= 0 (or -inf), in z's precision."""


def _log_1_to_3(s):
    """log(s) for 1 <= s <= 3, in s's precision."""


def _flush_tiny(e):
    """e, or 0 where float32 products with it would become denormal."""


def _typed(like, value):
    """``value`` as a scalar of ``like``'s float type (keeps float32 code in float32)."""


@overload(_exp_nonpositive, jit_options=_JIT)
def _exp_nonpositive_impl(z):
    if z == types.float32:
        return lambda z: _exp_nonpositive_f32(z)
    return lambda z: math.exp(z)


@overload(_log_1_to_3, jit_options=_JIT)
def _log_1_to_3_impl(s):
    if s == types.float32:
        return lambda s: _log_1_to_3_f32(s)
    return lambda s: math.log(s)


@overload(_flush_tiny, jit_options=_JIT)
def _flush_tiny_impl(e):
    if e == types.float32:
        return lambda e: e if e >= np.float32(_F32_TINY) else np.float32(0.0)
    return lambda e: e


@overload(_typed, jit_options=_JIT)
def _typed_impl(like, value):
    if like == types.float32:
        return lambda like, value: np.float32(value)
    return lambda like, value: np.float64(value)


@njit(**_JIT)
def _forward_diagonal(r_diag, r_up, r_left, cost, w_diag, w_up, w_left, r_out, count, gamma, inv_gamma):
    """One anti-diagonal: R = cost + softmin_gamma(diag, up, left) and the soft-min weights.

    Every array is a view starting at the diagonal's first cell, so indices are provably
    non-negative (numba's negative-index wraparound would otherwise force gathers).
    """
    inf = _typed(gamma, np.inf)
    zero = _typed(gamma, 0.0)
    one = _typed(gamma, 1.0)
    for k in range(count):
        a = r_diag[k]
        u = r_up[k]
        left = r_left[k]
        rmin = min(a, min(u, left))
        reachable = rmin < inf
        # Shift by the minimum (stable log-sum-exp); unreachable cells (all +inf) stay +inf
        # with zero weights instead of producing inf - inf.
        base = rmin if reachable else zero
        e_a = _exp_nonpositive((base - a) * inv_gamma)
        e_u = _exp_nonpositive((base - u) * inv_gamma)
        e_l = _exp_nonpositive((base - left) * inv_gamma)
        total = e_a + e_u + e_l
        scale = one / total if reachable else zero
        w_diag[k] = e_a * scale
        w_up[k] = e_u * scale
        w_left[k] = e_l * scale
        r_out[k] = cost[k] + (rmin - gamma * _log_1_to_3(total) if reachable else inf)


@njit(**_JIT)
def _backward_diagonal(e_up, w_up, e_left, w_left, e_diag, w_diag, e_out, count):
    """One anti-diagonal of E[i, j] = sum over successors s of E[s] * weight of (i, j) at s."""
    for k in range(count):
        e_out[k] = _flush_tiny(e_up[k] * w_up[k] + e_left[k] * w_left[k] + e_diag[k] * w_diag[k])


@njit(**_JIT)
def _forward_kernel(first, step, cost, x_lengths, y_lengths, gamma, weights, values):
    batch, _, width = cost.shape
    inv_gamma = _typed(gamma, 1.0) / gamma
    for b in range(first, batch, step):
        n = x_lengths[b]
        m = y_lengths[b]
        # R of the last three diagonals, indexed by row + 1; index 0 is row -1 (+inf).
        r0 = np.full(n + 2, np.inf, dtype=cost.dtype)
        r1 = np.full(n + 2, np.inf, dtype=cost.dtype)
        r2 = np.full(n + 2, np.inf, dtype=cost.dtype)
        r2[0] = 0.0  # R[-1, -1] = 0, the diagonal predecessor of cell (0, 0)
        diag_cost = np.empty(n, dtype=cost.dtype)
        flat = cost[b].reshape(cost.shape[1] * width)
        # One cell past the pair's packed weights is read (times a zero) by the backward pass.
        weights[b, :, n * m] = 0.0
        offset = 0
        for d in range(n + m - 1):
            lo = max(0, d - m + 1)
            count = min(n - 1, d) - lo + 1
            start = lo * width + d - lo
            for k in range(count):
                diag_cost[k] = flat[start + k * (width - 1)]
            _forward_diagonal(
                r2[lo:], r1[lo:], r1[lo + 1 :], diag_cost,
                weights[b, 0, offset:], weights[b, 1, offset:], weights[b, 2, offset:],
                r0[lo + 1 :], count, gamma, inv_gamma,
            )  # fmt: skip
            # Rows just outside this diagonal are off the grid: +inf for the next two sweeps.
            r0[lo] = np.inf
            r0[lo + count + 1] = np.inf
            offset += count
            r0, r1, r2 = r2, r0, r1
        values[b] = r1[n]


@njit(**_JIT)
def _backward_kernel(first, step, weights, x_lengths, y_lengths, grad, out):
    batch, rows, width = out.shape
    for b in range(first, batch, step):
        n = x_lengths[b]
        m = y_lengths[b]
        # E of the last three diagonals, indexed by row + 1, zero outside the grid.
        e0 = np.zeros(n + 2, dtype=out.dtype)
        e1 = np.zeros(n + 2, dtype=out.dtype)
        e2 = np.zeros(n + 2, dtype=out.dtype)
        flat = out[b].reshape(rows * width)
        g = grad[b]
        # Packed offset and first row of diagonals d + 1 and d + 2.
        offset1 = offset2 = n * m
        lo1 = lo2 = n
        for d in range(n + m - 2, -1, -1):
            lo = max(0, d - m + 1)
            count = min(n - 1, d) - lo + 1
            if d == n + m - 2:
                e0[n] = 1.0
            else:
                # Successors of (i, j): up (i+1, j) and left (i, j+1) on diagonal d+1,
                # diagonal (i+1, j+1) on d+2; each weight is stored at the successor.
                _backward_diagonal(
                    e1[lo + 2 :], weights[b, 1, offset1 + lo + 1 - lo1 :],
                    e1[lo + 1 :], weights[b, 2, offset1 + lo - lo1 :],
                    e2[lo + 2 :], weights[b, 0, offset2 + lo + 1 - lo2 :],
                    e0[lo + 1 :], count,
                )  # fmt: skip
            start = lo * width + d - lo
            for k in range(count):
                flat[start + k * (width - 1)] = e0[lo + 1 + k] * g
            e0[lo] = 0.0
            e0[lo + count + 1] = 0.0
            offset2, lo2 = offset1, lo1
            offset1, lo1 = offset1 - count, lo
            e0, e1, e2 = e2, e0, e1
        # Padding cells get exactly zero.
        for i in range(n):
            flat[i * width + m : (i + 1) * width] = 0.0
        flat[n * width :] = 0.0


def _numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().contiguous().numpy()


class _Workspace:
    """Reuses buffers (forward weights, backward alignments) that no tensor holds any more
    (autograd has run the backward or dropped the graph): a fresh multi-megabyte buffer costs
    page faults that take about as long as the forward kernel itself, and the backward
    kernel's strided writes into cold memory cost another 5 % of a training loss's time.
    Keeps the ``keep`` most recently created buffers."""

    def __init__(self, keep: int = 6) -> None:
        self._arrays: list[np.ndarray] = []
        self._keep = keep
        self._lock = threading.Lock()

    def take(self, shape: tuple[int, ...], dtype: np.dtype) -> torch.Tensor:
        need = math.prod(shape)
        with self._lock:
            for array in self._arrays:
                # Three references (the list, `array`, getrefcount's argument) mean that no
                # tensor views it: a tensor made by torch.from_numpy holds its array alive.
                if array.dtype == dtype and array.size >= need and sys.getrefcount(array) == 3:
                    break
            else:
                array = np.empty(need, dtype)
                self._arrays = [array, *self._arrays[: self._keep - 1]]
            return torch.from_numpy(array[:need].reshape(shape))


_WORKSPACE = _Workspace()


@cache
def _pool(pid: int) -> ThreadPoolExecutor:
    # Keyed by process id: a forked child (a DataLoader worker) inherits the pool's state but
    # not its threads, and needs a pool of its own.
    return ThreadPoolExecutor(thread_name_prefix="softdtw")


def _parallel(kernel, batch: int, *args) -> None:
    """Run ``kernel(first, step, *args)`` for first = 0..step-1, pairs first, first + step, ..."""
    step = max(1, min(torch.get_num_threads(), batch))
    futures = [_pool(os.getpid()).submit(kernel, first, step, *args) for first in range(1, step)]
    kernel(0, step, *args)
    for future in futures:
        future.result()


def forward(
    cost: torch.Tensor, x_lengths: torch.Tensor, y_lengths: torch.Tensor, gamma: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Soft-DTW values of a batch of cost matrices.

    Args:
        cost: (B, N, M) float32 or float64 CPU tensor; +inf marks forbidden cells.
        x_lengths, y_lengths: (B,) int64, 1 <= n_b <= N, 1 <= m_b <= M.
        gamma: smoothing, > 0.

    Returns:
        values (B,) = R[n_b - 1, m_b - 1], and the soft-min weights (B, 3, N * M + 1) that
        :func:`backward` needs.
    """
    batch, rows, cols = cost.shape
    values = torch.empty(batch, dtype=cost.dtype)
    scalar = np.float32 if cost.dtype == torch.float32 else np.float64
    weights = _WORKSPACE.take((batch, 3, rows * cols + 1), np.dtype(scalar))
    _parallel(
        _forward_kernel, batch,
        _numpy(cost), _numpy(x_lengths), _numpy(y_lengths), scalar(gamma), weights.numpy(), values.numpy(),
    )  # fmt: skip
    return values, weights


def backward(
    weights: torch.Tensor, x_lengths: torch.Tensor, y_lengths: torch.Tensor, grad: torch.Tensor, shape: tuple[int, int]
) -> torch.Tensor:
    """Gradient of ``sum_b grad[b] * value_b`` with respect to the (B, N, M) cost matrices.

    That is ``grad[b]`` times the expected alignment matrix of pair b; exactly zero on padding
    and on forbidden (+inf) cells.
    """
    out = _WORKSPACE.take((weights.shape[0], *shape), weights.numpy().dtype)
    _parallel(
        _backward_kernel, out.shape[0],
        weights.numpy(), _numpy(x_lengths), _numpy(y_lengths), _numpy(grad.to(weights.dtype)), out.numpy(),
    )  # fmt: skip
    return out
