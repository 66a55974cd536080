"""Soft-DTW dynamic programme on CUDA (Triton): one program per pair, one step per anti-diagonal.

A program holds the current anti-diagonal of R in registers as a vector over rows i (cell
(i, d - i)); the neighbour one row up comes from a register shift (``tl.gather``, warp
shuffles / shared memory), so no step goes through global memory. Each step stores the three
soft-min weights of its cells, coalesced, in the packed layout of ``cpu.py``: weights
(B, 3, N * M + 1), 12 bytes per cell in float32. The backward pass sweeps the diagonals in
reverse with three multiply-adds per cell and writes grad[b] * E into the (B, N, M) output.

Kernels are wrapped by ``triton.jit`` on first use, so a test can set ``TRITON_INTERPRET=1``
and run them on CPU tensors in Triton's interpreter.
"""

from __future__ import annotations

import functools

import torch

from ..errors import ScoreError

try:
    import triton
    import triton.language as tl
except ImportError:  # the CPU kernel and the reference need no Triton
    triton = None


def _forward(cost_ptr, x_len_ptr, y_len_ptr, gamma_ptr, w_ptr, out_ptr, stride_cb, stride_ci, stride_wb, stride_wp,
             BLOCK: tl.constexpr):  # fmt: skip
    b = tl.program_id(0).to(tl.int64)
    n = tl.load(x_len_ptr + b)
    m = tl.load(y_len_ptr + b)
    gamma = tl.load(gamma_ptr)
    inv_gamma = 1.0 / gamma
    rows = tl.arange(0, BLOCK).to(tl.int64)
    inf = float("inf")
    cost_b = cost_ptr + b * stride_cb + rows * stride_ci
    w_b = w_ptr + b * stride_wb
    r_prev = tl.full([BLOCK], inf, gamma.dtype)  # R on diagonal d - 1, by row
    diag = tl.where(rows == 0, 0.0, r_prev)  # R[i-1, j-1]: row 0 of cell (0, 0) sees R[-1, -1] = 0
    on = rows == 0
    c = tl.load(cost_b, mask=on, other=inf)
    offset = n * 0  # packed index of the diagonal's first cell
    d = n * 0
    while d < n + m - 1:
        # Prefetch the next diagonal's costs: the load latency then overlaps this step.
        on_next = (rows < n) & (d + 1 - rows >= 0) & (d + 1 - rows < m)
        c_next = tl.load(cost_b + d + 1 - rows, mask=on_next, other=inf)
        up = tl.gather(r_prev, tl.maximum(rows - 1, 0), 0)
        up = tl.where(rows == 0, inf, up)
        left = r_prev
        rmin = tl.minimum(diag, tl.minimum(up, left))
        reachable = rmin < inf
        # Shift by the minimum; unreachable cells (all +inf) stay +inf with zero weights, and
        # get total = 1 so that no lane computes 1/0 or log(0).
        base = tl.where(reachable, rmin, 0.0)
        e_d = tl.exp((base - diag) * inv_gamma)
        e_u = tl.exp((base - up) * inv_gamma)
        e_l = tl.exp((base - left) * inv_gamma)
        total = tl.where(reachable, e_d + e_u + e_l, 1.0)
        scale = tl.where(reachable, 1.0 / total, 0.0)
        lo = tl.maximum(d - m + 1, 0)
        w = w_b + offset + rows - lo
        tl.store(w, e_d * scale, mask=on)
        tl.store(w + stride_wp, e_u * scale, mask=on)
        tl.store(w + 2 * stride_wp, e_l * scale, mask=on)
        r_prev = tl.where(on & reachable, c + rmin - gamma * tl.log(total), inf)
        diag = up  # the up neighbours of this diagonal are the diagonal ones of the next
        offset += tl.minimum(n - 1, d) - lo + 1
        on = on_next
        c = c_next
        d += 1
    # The value is R[n-1, m-1], row n - 1 of the last diagonal: a one-lane store.
    tl.store(out_ptr + b + rows * 0, r_prev, mask=rows == n - 1)


def _backward(w_ptr, x_len_ptr, y_len_ptr, grad_ptr, out_ptr, stride_wb, stride_wp, stride_ob, stride_oi,
              BLOCK: tl.constexpr):  # fmt: skip
    b = tl.program_id(0).to(tl.int64)
    n = tl.load(x_len_ptr + b)
    m = tl.load(y_len_ptr + b)
    g = tl.load(grad_ptr + b)
    rows = tl.arange(0, BLOCK).to(tl.int64)
    w_b = w_ptr + b * stride_wb
    out_b = out_ptr + b * stride_ob + rows * stride_oi
    zero = tl.full([BLOCK], 0.0, g.dtype)
    # For diagonal d: below = E_{d+1} W_up_{d+1} + E_{d+2} W_diag_{d+2}, which shifted one row
    # up is the up + diagonal successor term, and left = E_{d+1} W_left_{d+1}.
    below = zero
    left = zero
    diag_term = zero  # E_{d+1} W_diag_{d+1}, joins `below` one step later
    # The last cell, (n-1, m-1), is alone on diagonal n + m - 2 at packed index n m - 1.
    d = n + m - 2
    offset = n * m - 1
    on = rows == n - 1
    w = w_b + offset + rows - (n - 1)
    w_d = tl.load(w, mask=on, other=0.0)
    w_u = tl.load(w + stride_wp, mask=on, other=0.0)
    w_l = tl.load(w + 2 * stride_wp, mask=on, other=0.0)
    while d >= 0:
        # Prefetch the weights of diagonal d - 1: the load latency then overlaps this step.
        lo_next = tl.maximum(d - m, 0)
        offset_next = offset - (tl.minimum(n - 1, d - 1) - lo_next + 1)
        on_next = (rows < n) & (d - 1 - rows >= 0) & (d - 1 - rows < m)
        w = w_b + offset_next + rows - lo_next
        w_d_next = tl.load(w, mask=on_next, other=0.0)
        w_u_next = tl.load(w + stride_wp, mask=on_next, other=0.0)
        w_l_next = tl.load(w + 2 * stride_wp, mask=on_next, other=0.0)
        shifted = tl.gather(below, tl.minimum(rows + 1, BLOCK - 1), 0)
        e = tl.where(rows + 1 < BLOCK, shifted, 0.0) + left
        e = tl.where(d == n + m - 2, 1.0, e)
        e = tl.where(on, e, 0.0)
        tl.store(out_b + d - rows, e * g, mask=on)
        below = e * w_u + diag_term
        left = e * w_l
        diag_term = e * w_d
        w_d, w_u, w_l = w_d_next, w_u_next, w_l_next
        offset = offset_next
        on = on_next
        d -= 1


@functools.cache
def _jitted(interpret: bool) -> tuple:
    # Keyed by the interpreter flag because triton.jit decides at wrapping time.
    return triton.jit(_forward), triton.jit(_backward)


def _kernels() -> tuple:
    return _jitted(triton.knobs.runtime.interpret)


def check_device(device: torch.device) -> None:
    """Raise unless the Triton kernels can run on ``device``."""
    if triton is None:
        raise ScoreError("soft-DTW: backend 'triton' needs the triton package, which is not installed")
    if device.type != "cuda" and not triton.knobs.runtime.interpret:
        raise ScoreError(f"soft-DTW: backend 'triton' needs CUDA tensors, got tensors on {device}")


def _launch(rows: int) -> dict:
    block = max(16, triton.next_power_of_2(rows))
    return dict(BLOCK=block, num_warps=min(32, max(1, block // 32)))


def forward(
    cost: torch.Tensor, x_lengths: torch.Tensor, y_lengths: torch.Tensor, gamma: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """As :func:`score_s3prl.softdtw.cpu.forward`, for CUDA tensors."""
    cost = cost.contiguous()
    batch, rows, cols = cost.shape
    values = torch.empty(batch, dtype=cost.dtype, device=cost.device)
    weights = torch.empty(batch, 3, rows * cols + 1, dtype=cost.dtype, device=cost.device)
    gamma_t = torch.tensor([gamma], dtype=cost.dtype, device=cost.device)
    _kernels()[0][(batch,)](
        cost, x_lengths, y_lengths, gamma_t, weights, values,
        cost.stride(0), cost.stride(1), weights.stride(0), weights.stride(1), **_launch(rows),
    )  # fmt: skip
    return values, weights


def backward(
    weights: torch.Tensor, x_lengths: torch.Tensor, y_lengths: torch.Tensor, grad: torch.Tensor, shape: tuple[int, int]
) -> torch.Tensor:
    """As :func:`score_s3prl.softdtw.cpu.backward`, for CUDA tensors."""
    batch = weights.shape[0]
    out = torch.zeros(batch, *shape, dtype=weights.dtype, device=weights.device)
    _kernels()[1][(batch,)](
        weights, x_lengths, y_lengths, grad.to(weights.dtype).contiguous(), out,
        weights.stride(0), weights.stride(1), out.stride(0), out.stride(1), **_launch(shape[0]),
    )  # fmt: skip
    return out
