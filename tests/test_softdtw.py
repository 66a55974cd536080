"""Soft-DTW: kernels against path enumeration, the plain-torch reference and tslearn; padding,
band, gradients, extreme settings, half precision, errors.

The Triton kernels run in Triton's interpreter on CPU tensors (TRITON_INTERPRET=1).
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from score_s3prl.errors import ScoreError
from score_s3prl.softdtw import (
    BACKEND_ENV,
    SoftDTW,
    SoftDTWDivergence,
    pairwise_cost,
    soft_dtw,
    soft_dtw_alignment,
    soft_dtw_divergence,
    soft_dtw_from_cost,
)
from score_s3prl.softdtw import functional

KERNELS = ["cpu", "triton"]
ALL_BACKENDS = ["cpu", "triton", "reference"]


@pytest.fixture(autouse=True)
def _triton_interpreter(request, monkeypatch):
    """Run the backend="triton" cases in Triton's interpreter, on CPU tensors."""
    callspec = getattr(request.node, "callspec", None)
    if callspec is not None and callspec.params.get("backend") == "triton":
        pytest.importorskip("triton")
        monkeypatch.setenv("TRITON_INTERPRET", "1")


def _pairs(batch, n_max, m_max, dim, lengths_x, lengths_y, seed, dtype=torch.float64, pad_value=float("nan")):
    """Random x (B, N, D), y (B, M, D) whose padding holds ``pad_value``."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, n_max, dim, generator=gen, dtype=dtype)
    y = torch.randn(batch, m_max, dim, generator=gen, dtype=dtype)
    for b, (n, m) in enumerate(zip(lengths_x, lengths_y)):
        x[b, n:] = pad_value
        y[b, m:] = pad_value
    return x, y, torch.tensor(lengths_x), torch.tensor(lengths_y)


def _enumerate_paths(cost: np.ndarray, gamma: float, bandwidth: int | None = None) -> float:
    """-gamma log sum over every monotone path (steps down, right, diagonal) of exp(-cost / gamma)."""
    n, m = cost.shape
    totals = []

    def walk(i, j, total):
        if bandwidth is not None and abs(i - j) > bandwidth:
            return
        total += cost[i, j]
        if (i, j) == (n - 1, m - 1):
            totals.append(total)
            return
        for di, dj in ((1, 0), (0, 1), (1, 1)):
            if i + di < n and j + dj < m:
                walk(i + di, j + dj, total)

    walk(0, 0, 0.0)
    t = -np.asarray(totals) / gamma
    return float(-gamma * (t.max() + np.log(np.exp(t - t.max()).sum())))


def _sq_cost(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    return ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1).numpy()


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("gamma", [0.1, 1.0])
def test_equals_soft_minimum_over_all_paths_with_padding(backend, gamma):
    lx, ly = [4, 2, 1, 3], [3, 4, 2, 1]
    x, y, xl, yl = _pairs(4, 4, 4, 2, lx, ly, seed=1)
    got = soft_dtw(x, y, xl, yl, gamma=gamma, backend=backend)
    for b in range(4):
        want = _enumerate_paths(_sq_cost(x[b, : lx[b]], y[b, : ly[b]]), gamma)
        assert got[b].item() == pytest.approx(want, rel=1e-10, abs=1e-10)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_band_equals_enumeration_over_paths_inside_it(backend):
    x, y, xl, yl = _pairs(2, 5, 4, 2, [5, 4], [4, 3], seed=2)
    got = soft_dtw(x, y, xl, yl, gamma=0.3, bandwidth=1, backend=backend)
    for b, (n, m) in enumerate(zip([5, 4], [4, 3])):
        want = _enumerate_paths(_sq_cost(x[b, :n], y[b, :m]), 0.3, bandwidth=1)
        assert got[b].item() == pytest.approx(want, rel=1e-10)
    # A band wider than the sequences changes nothing.
    assert torch.allclose(
        soft_dtw(x, y, xl, yl, gamma=0.3, bandwidth=5, backend=backend),
        soft_dtw(x, y, xl, yl, gamma=0.3, backend=backend),
        rtol=1e-12,
    )


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_padded_batch_equals_each_pair_alone(backend):
    lx, ly = [9, 5, 7], [6, 8, 3]
    x, y, xl, yl = _pairs(3, 9, 8, 3, lx, ly, seed=3, dtype=torch.float32)
    x.requires_grad_(True)
    y.requires_grad_(True)
    values = soft_dtw(x, y, xl, yl, gamma=0.1, backend=backend)
    values.sum().backward()
    for b, (n, m) in enumerate(zip(lx, ly)):
        xb = x[b : b + 1, :n].detach().clone().requires_grad_(True)
        yb = y[b : b + 1, :m].detach().clone().requires_grad_(True)
        alone = soft_dtw(xb, yb, gamma=0.1, backend=backend)
        alone.sum().backward()
        assert values[b].item() == pytest.approx(alone.item(), rel=1e-5)
        assert torch.allclose(x.grad[b, :n], xb.grad[0], rtol=1e-4, atol=1e-5)
        assert torch.allclose(y.grad[b, :m], yb.grad[0], rtol=1e-4, atol=1e-5)
        # Padded frames hold NaN and still get exactly zero gradient.
        assert torch.equal(x.grad[b, n:], torch.zeros_like(x.grad[b, n:]))
        assert torch.equal(y.grad[b, m:], torch.zeros_like(y.grad[b, m:]))


@pytest.mark.parametrize("cost", ["sqeuclidean", "cosine"])
@pytest.mark.parametrize("bandwidth", [None, 2])
@pytest.mark.parametrize("function", [soft_dtw, soft_dtw_divergence])
def test_gradcheck_float64_with_padding(cost, bandwidth, function):
    x, y, xl, yl = _pairs(3, 6, 5, 3, [6, 4, 3], [5, 5, 2], seed=4, pad_value=0.5)
    x.requires_grad_(True)
    y.requires_grad_(True)

    def f(a, b):
        return function(a, b, xl, yl, gamma=0.2, cost=cost, bandwidth=bandwidth, backend="cpu")

    assert torch.autograd.gradcheck(f, (x, y), eps=1e-6, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("backend", KERNELS)
def test_kernels_match_reference_values_and_gradients(backend):
    lx, ly = [12, 7, 10, 1], [9, 11, 6, 3]
    for dtype, tol in ((torch.float64, 1e-10), (torch.float32, 2e-5)):
        for bandwidth in (None, 4):
            x, y, xl, yl = _pairs(4, 12, 11, 4, lx, ly, seed=5, dtype=dtype, pad_value=0.0)
            results = []
            for name in (backend, "reference"):
                a = x.clone().requires_grad_(True)
                b = y.clone().requires_grad_(True)
                v = soft_dtw(a, b, xl, yl, gamma=0.5, bandwidth=bandwidth, backend=name)
                (v * torch.arange(1, 5, dtype=dtype)).sum().backward()
                results.append((v.detach(), a.grad, b.grad))
            for got, want in zip(*results):
                assert torch.allclose(got, want, rtol=tol, atol=tol)


@pytest.mark.parametrize("cost", ["sqeuclidean", "cosine"])
def test_divergence_is_nonnegative_and_zero_for_identical_inputs(cost):
    x, y, xl, yl = _pairs(6, 15, 12, 5, [15, 9, 4, 12, 1, 7], [12, 12, 10, 3, 6, 1], seed=6, pad_value=3.0)
    for gamma in (0.01, 0.1, 1.0, 10.0):
        div = soft_dtw_divergence(x, y, xl, yl, gamma=gamma, cost=cost)
        assert bool((div >= -1e-9 * div.abs().max()).all()), div
        assert bool((div > 0).any())
        assert torch.equal(soft_dtw_divergence(x, x, xl, xl, gamma=gamma, cost=cost), torch.zeros(6, dtype=x.dtype))
    x32 = x.float()
    assert torch.equal(soft_dtw_divergence(x32, x32, xl, xl), torch.zeros(6))


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("gamma", [0.05, 1.0])
def test_agrees_with_tslearn(dtype, gamma):
    tslearn = pytest.importorskip("tslearn.metrics")
    lx, ly = [31, 20, 25], [24, 30, 8]
    x, y, xl, yl = _pairs(3, 31, 30, 3, lx, ly, seed=7, dtype=torch.float64, pad_value=0.0)
    got = soft_dtw(x.to(dtype), y.to(dtype), xl, yl, gamma=gamma)
    for b, (n, m) in enumerate(zip(lx, ly)):
        want = tslearn.soft_dtw(x[b, :n].numpy(), y[b, :m].numpy(), gamma=gamma)
        assert got[b].item() == pytest.approx(want, rel=1e-5)


@pytest.mark.parametrize("backend", KERNELS)
@pytest.mark.parametrize("gamma", [0.001, 0.01, 0.1, 1.0, 10.0])
def test_finite_for_extreme_gamma_and_large_costs(backend, gamma):
    x, y, xl, yl = _pairs(2, 14, 11, 2, [14, 9], [11, 11], seed=8, dtype=torch.float32, pad_value=0.0)
    x = (x * 35).requires_grad_(True)  # squared distances up to ~1e4
    y = y.requires_grad_(True)
    costs = pairwise_cost(x.detach(), y.detach())
    assert 2e3 < costs.max() < 2e4
    values = soft_dtw(x, y, xl, yl, gamma=gamma, backend=backend)
    values.sum().backward()
    assert bool(torch.isfinite(values).all())
    assert bool(torch.isfinite(x.grad).all()) and bool(torch.isfinite(y.grad).all())
    want = soft_dtw(x.detach().double(), y.detach().double(), xl, yl, gamma=gamma, backend="reference")
    assert torch.allclose(values.double(), want, rtol=1e-5)


def test_float32_gradients_match_float64_on_raw_768d_features():
    gen = torch.Generator().manual_seed(9)
    batch, n, m, dim = 3, 90, 80, 768
    # Raw SSL features: a large shared offset plus a smooth trajectory; y is a time-warped,
    # noisy copy of x.
    offset = 1.5 * torch.randn(1, 1, dim, generator=gen)
    x = offset + torch.randn(batch, n, dim, generator=gen).cumsum(1) / 4
    warp = (torch.arange(m) * (n - 1) / (m - 1)).round().long()
    y = x[:, warp] + 0.3 * torch.randn(batch, m, dim, generator=gen)
    grads = {}
    for dtype in (torch.float64, torch.float32):
        a = x.to(dtype).requires_grad_(True)
        b = y.to(dtype).requires_grad_(True)
        soft_dtw_divergence(a, b, gamma=0.1).sum().backward()
        grads[dtype] = (a.grad.double(), b.grad.double())
    for g32, g64 in zip(grads[torch.float32], grads[torch.float64]):
        assert (g32 - g64).norm() / g64.norm() < 1e-3


@pytest.mark.slow
@pytest.mark.parametrize("backend", KERNELS)
def test_sequences_longer_than_1024_frames(backend):
    tslearn = pytest.importorskip("tslearn.metrics")
    # The interpreter is slow: there the long side is the rows, which set the kernel's width.
    n, m = (1100, 1030) if backend == "cpu" else (1030, 3)
    x, y, _, _ = _pairs(1, n, m, 2, [n], [m], seed=10)
    costs = pairwise_cost(x, y).requires_grad_(True)
    value = soft_dtw_from_cost(costs, gamma=1.0, backend=backend)
    assert value.item() == pytest.approx(tslearn.soft_dtw(x[0].numpy(), y[0].numpy(), gamma=1.0), rel=1e-10)
    (grad,) = torch.autograd.grad(value.sum(), costs)
    assert grad[0, 0, 0].item() == pytest.approx(1.0) and grad[0, -1, -1].item() == pytest.approx(1.0)
    if backend != "cpu":  # the CPU kernel's gradient is checked below
        cpu_value = soft_dtw_from_cost(costs, gamma=1.0, backend="cpu")
        assert torch.allclose(grad, torch.autograd.grad(cpu_value.sum(), costs)[0], atol=1e-12)
        return
    # Central differences of the value on cells where the alignment is uncertain, and off it.
    mixed = ((grad[0] - 0.5).abs() < 0.4).nonzero()
    assert len(mixed) > 10
    h = 1e-4
    for i, j in [*mixed[:: len(mixed) // 4].tolist(), (n - 1, 0)]:
        step = torch.zeros_like(costs)
        step[0, i, j] = h
        plus = soft_dtw_from_cost(costs.detach() + step, gamma=1.0, backend=backend)
        minus = soft_dtw_from_cost(costs.detach() - step, gamma=1.0, backend=backend)
        assert grad[0, i, j].item() == pytest.approx(((plus - minus) / (2 * h)).item(), abs=1e-6)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs_accumulate_in_float32(dtype):
    x, y, xl, yl = _pairs(2, 40, 30, 8, [40, 22], [30, 30], seed=11, dtype=torch.float32, pad_value=0.0)
    x = (x * 20).to(dtype).requires_grad_(True)  # path costs far beyond float16's range
    y = y.to(dtype).requires_grad_(True)
    values = soft_dtw(x, y, xl, yl)
    assert values.dtype == torch.float32
    assert bool(torch.isfinite(values).all()) and values.max() > 1e5
    x32 = x.detach().float().requires_grad_(True)
    want = soft_dtw(x32, y.detach().float(), xl, yl)
    assert torch.allclose(values, want, rtol=1e-6)
    values.sum().backward()
    assert x.grad.dtype == dtype and bool(torch.isfinite(x.grad).all())
    # The same float32 computation underneath: its gradient, rounded once to the input type.
    want.sum().backward()
    assert torch.equal(x.grad, x32.grad.to(dtype))


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_alignment_is_the_cost_gradient(backend):
    lx, ly = [7, 4], [6, 6]
    x, y, xl, yl = _pairs(2, 7, 6, 3, lx, ly, seed=12, pad_value=0.0)
    values, alignment = soft_dtw_alignment(x, y, xl, yl, gamma=0.5, backend=backend)
    costs = pairwise_cost(x, y).requires_grad_(True)
    want = soft_dtw_from_cost(costs, xl, yl, gamma=0.5, backend="reference")
    (want_alignment,) = torch.autograd.grad(want.sum(), costs)
    assert torch.allclose(values, want.detach(), rtol=1e-10)
    # Padding of x and y changes their costs, not the valid cells.
    for b, (n, m) in enumerate(zip(lx, ly)):
        assert torch.allclose(alignment[b, :n, :m], want_alignment[b, :n, :m], atol=1e-10)
        assert alignment[b, n:].abs().sum() == 0 and alignment[b, :, m:].abs().sum() == 0
        # Every path visits every row: each row's expected occupancy is at least 1.
        assert bool((alignment[b, :n, :m].sum(1) >= 1 - 1e-9).all())
        assert alignment[b, 0, 0] == pytest.approx(1.0) and alignment[b, n - 1, m - 1] == pytest.approx(1.0)


def test_modules_wrap_the_functions():
    x, y, xl, yl = _pairs(2, 8, 6, 3, [8, 5], [6, 4], seed=13, pad_value=0.0)
    sdtw = SoftDTW(gamma=0.3, cost="cosine", bandwidth=3)
    values, alignment = sdtw(x, y, xl, yl, return_alignment=True)
    assert torch.equal(values, soft_dtw(x, y, xl, yl, gamma=0.3, cost="cosine", bandwidth=3))
    assert alignment.shape == (2, 8, 6) and not alignment.requires_grad
    div = SoftDTWDivergence(gamma=0.3)
    assert torch.equal(div(x, y, xl, yl), soft_dtw_divergence(x, y, xl, yl, gamma=0.3))
    assert div(x, y, xl, yl, return_alignment=True)[1].shape == (2, 8, 6)
    assert "gamma=0.3" in repr(sdtw)


def test_callable_cost_and_precomputed_costs():
    x, y, xl, yl = _pairs(2, 6, 5, 3, [6, 3], [5, 5], seed=14, pad_value=0.0)

    def manhattan(a, b):
        return (a[:, :, None, :] - b[:, None, :, :]).abs().sum(-1)

    got = soft_dtw(x, y, xl, yl, cost=manhattan)
    want = soft_dtw_from_cost(manhattan(x, y), xl, yl)
    assert torch.allclose(got, want, rtol=1e-12)
    with pytest.raises(ScoreError, match="cost callable returned"):
        soft_dtw(x, y, cost=lambda a, b: a)


def test_infeasible_band_and_bad_inputs_raise_clear_errors(monkeypatch):
    x, y, xl, yl = _pairs(2, 9, 5, 2, [9, 5], [5, 5], seed=15, pad_value=0.0)
    with pytest.raises(ScoreError, match=r"bandwidth 3 is infeasible for pair 0 of lengths 9 and 5"):
        soft_dtw(x, y, xl, yl, bandwidth=3)
    bad_calls = {
        "bandwidth must be": dict(bandwidth=-1),
        "gamma must be": dict(gamma=0.0),
        "unknown cost": dict(cost="euclid"),
        "unknown backend": dict(backend="gpu"),
        r"x_lengths must lie in 1..9": dict(x_lengths=torch.tensor([0, 3])),
        "y_lengths must be an integer tensor": dict(y_lengths=torch.tensor([1.0, 2.0])),
    }
    for message, kwargs in bad_calls.items():
        with pytest.raises(ScoreError, match=message):
            soft_dtw(x, y, **kwargs)
    with pytest.raises(ScoreError, match="same batch size"):
        soft_dtw(x, y[:1])
    with pytest.raises(ScoreError, match=r"floating \(B, T, D\)"):
        soft_dtw(x[0], y[0])
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    if not torch.cuda.is_available():
        with pytest.raises(ScoreError, match="needs CUDA tensors|not installed"):
            soft_dtw(x, y, backend="triton")
    monkeypatch.setenv(BACKEND_ENV, "nonsense")
    with pytest.raises(ScoreError, match=BACKEND_ENV):
        soft_dtw(x, y)
    monkeypatch.setenv(BACKEND_ENV, "reference")
    assert functional._kernel("auto", x.device) is None


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_single_frame_and_short_sequences(backend):
    for n, m in itertools.product([1, 2, 5], [1, 3]):
        x, y, _, _ = _pairs(1, n, m, 2, [n], [m], seed=16)
        want = _enumerate_paths(_sq_cost(x[0], y[0]), 0.2)
        assert soft_dtw(x, y, gamma=0.2, backend=backend).item() == pytest.approx(want, rel=1e-10)


def test_cpu_weight_buffers_are_reused_only_once_released():
    from score_s3prl.softdtw import cpu

    x, y, xl, yl = _pairs(2, 30, 25, 3, [30, 20], [25, 25], seed=17, dtype=torch.float32, pad_value=0.0)
    costs = [pairwise_cost(x * s, y) for s in (1.0, 2.0, 3.0)]

    def pending():
        leaves = [c.clone().requires_grad_(True) for c in costs]
        return leaves, [soft_dtw_from_cost(c, xl, yl, gamma=5.0, backend="cpu") for c in leaves]

    def grads(order):
        leaves, values = pending()  # three forwards hold buffers at once
        for k in order:
            values[k].sum().backward()
        return [c.grad for c in leaves]

    want = []
    for c in costs:  # one at a time: each backward runs before the next forward
        leaf = c.clone().requires_grad_(True)
        soft_dtw_from_cost(leaf, xl, yl, gamma=5.0, backend="cpu").sum().backward()
        want.append(leaf.grad)
    for order in ([0, 1, 2], [2, 0, 1], [1, 2, 0]):
        assert all(torch.equal(got, w) for got, w in zip(grads(order), want))
    # A retained graph keeps its buffer through other calls: its second backward doubles the grads.
    leaves, values = pending()
    for v in values:
        v.sum().backward(retain_graph=True)
    grads([0, 1, 2])
    for v in values:
        v.sum().backward()
    assert all(torch.equal(c.grad, 2 * w) for c, w in zip(leaves, want))
    # Sequential calls settle on reusing the same buffers.
    grads([0, 1, 2])
    before = [id(a) for a in cpu._WORKSPACE._arrays]
    for _ in range(3):
        grads([0, 1, 2])
    assert [id(a) for a in cpu._WORKSPACE._arrays] == before


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_precomputed_costs_ignore_nan_padding(backend):
    x, y, xl, yl = _pairs(2, 6, 5, 2, [6, 3], [5, 2], seed=18, pad_value=0.0)
    clean = pairwise_cost(x, y)
    dirty = clean.clone()
    dirty[1, 3:] = float("nan")
    dirty[1, :, 2:] = float("nan")
    want = soft_dtw_from_cost(clean, xl, yl, backend=backend)
    costs = dirty.requires_grad_(True)
    got = soft_dtw_from_cost(costs, xl, yl, backend=backend)
    assert torch.equal(got, want)
    got.sum().backward()
    assert bool(torch.isfinite(costs.grad).all()) and costs.grad[1, 3:].abs().sum() == 0


@pytest.mark.parametrize("backend", KERNELS)
def test_divergence_matches_reference(backend):
    # Unequal lengths: the kernels' divergence (Triton's runs the three terms in one padded
    # launch) against the reference's three separate terms.
    x, y, xl, yl = _pairs(3, 9, 12, 3, [9, 4, 7], [12, 12, 5], seed=19, pad_value=0.0)
    results = []
    for name in (backend, "reference"):
        a = x.clone().requires_grad_(True)
        b = y.clone().requires_grad_(True)
        div = soft_dtw_divergence(a, b, xl, yl, gamma=0.3, bandwidth=8, backend=name)
        (div * torch.tensor([1.0, -2.0, 3.0], dtype=div.dtype)).sum().backward()
        results.append((div.detach(), a.grad, b.grad))
    for got, want in zip(*results):
        assert torch.allclose(got, want, rtol=1e-10, atol=1e-10)


def test_backward_keeps_only_the_weights_per_cell():
    batch, n, m, dim = 2, 40, 30, 16
    x = torch.randn(batch, n, dim, requires_grad=True)
    y = torch.randn(batch, m, dim, requires_grad=True)
    saved = []

    def pack(t):
        saved.append(t.numel())
        return t

    for cost in ("sqeuclidean", "cosine"):
        saved.clear()
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            soft_dtw(x, y, cost=cost)
        per_cell = [k for k in saved if k > batch * (n + m) * dim]
        # One tensor of three float32 weights per cell (plus one spare cell per pair).
        assert per_cell == [batch * 3 * (n * m + 1)]


def test_cpu_kernel_is_safe_to_call_from_several_threads():
    # The thread pool and the weight buffers are shared by every caller in the process: calls
    # from concurrent Python threads (each holding buffers until its backward) must not mix.
    from concurrent.futures import ThreadPoolExecutor

    x, y, xl, yl = _pairs(4, 24, 20, 3, [24, 9, 17, 3], [20, 20, 8, 2], seed=22, dtype=torch.float32, pad_value=0.0)
    costs = [pairwise_cost(x * s, y) for s in (1.0, 2.0, 3.0, 4.0)]

    def run(c):
        leaf = c.clone().requires_grad_(True)
        values = soft_dtw_from_cost(leaf, xl, yl, gamma=0.5, backend="cpu")
        values.sum().backward()
        return values.detach(), leaf.grad

    want = [run(c) for c in costs]
    with ThreadPoolExecutor(4) as pool:
        for _ in range(10):
            for got, w in zip(pool.map(run, costs), want):
                assert torch.equal(got[0], w[0]) and torch.equal(got[1], w[1])


def test_cpu_kernel_works_in_a_forked_child():
    mp = pytest.importorskip("multiprocessing")
    x, y, xl, yl = _pairs(4, 20, 15, 3, [20, 9, 14, 3], [15, 15, 7, 2], seed=20, pad_value=0.0)
    # Precomputed costs: torch's own OpenMP matmuls are not fork-safe, the kernel's threads are.
    costs = pairwise_cost(x, y).float()
    want = soft_dtw_from_cost(costs, xl, yl, backend="cpu")  # starts the thread pool here
    with mp.get_context("fork").Pool(1) as pool:
        got = pool.apply_async(soft_dtw_from_cost, (costs, xl, yl), dict(backend="cpu")).get(timeout=60)
    assert torch.equal(got, want)


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["fp32", "fp64"])
def test_triton_kernels_compile_for_hopper(dtype):
    # No GPU here: compile to an sm_90 cubin (H100/H200) to catch what the interpreter does
    # not check (types of loop-carried values, layouts of the register shifts).
    triton = pytest.importorskip("triton")
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from score_s3prl.softdtw import triton_kernel

    forward, backward = triton_kernel._kernels()
    ptr, strides = f"*{dtype}", ["i32"] * 4
    signatures = {
        forward: [ptr, "*i64", "*i64", ptr, ptr, ptr, *strides],
        backward: [ptr, "*i64", "*i64", ptr, ptr, *strides],
    }
    for kernel, types in signatures.items():
        names = [name for name in kernel.arg_names if name != "BLOCK"]
        for block, warps in ((16, 1), (1024, 32)):
            signature = {**dict(zip(names, types)), "BLOCK": "constexpr"}
            source = ASTSource(fn=kernel, signature=signature, constexprs={"BLOCK": block})
            compiled = triton.compile(source, target=GPUTarget("cuda", 90, 32), options={"num_warps": warps})
            assert compiled.asm["cubin"]


def test_sqeuclidean_centres_on_the_valid_frames_of_padded_pairs():
    # Features with a large shared offset, in a batch padded to four times their length: the
    # centring that keeps float32 costs exact must use the valid frames' mean, not the
    # padding's zeros, or float32 gradients are wrong by ~20 %.
    gen = torch.Generator().manual_seed(21)
    batch, n, m, dim = 2, 40, 36, 256
    x = 300 * torch.randn(1, 1, dim, generator=gen) + torch.randn(batch, n, dim, generator=gen).cumsum(1) / 4
    warp = (torch.arange(m) * (n - 1) / (m - 1)).round().long()
    y = x[:, warp] + 0.3 * torch.randn(batch, m, dim, generator=gen)
    x, y = torch.cat([x, torch.zeros(batch, 3 * n, dim)], 1), torch.cat([y, torch.zeros(batch, 3 * m, dim)], 1)
    xl, yl = torch.tensor([n, n]), torch.tensor([m, m])
    grads = {}
    for dtype in (torch.float64, torch.float32):
        a = x.to(dtype).requires_grad_(True)
        b = y.to(dtype).requires_grad_(True)
        soft_dtw_divergence(a, b, xl, yl, gamma=0.1).sum().backward()
        grads[dtype] = (a.grad.double(), b.grad.double())
    for g32, g64 in zip(grads[torch.float32], grads[torch.float64]):
        assert (g32 - g64).norm() / g64.norm() < 1e-5
    # pairwise_cost alone: the valid cells do not depend on the padding's content.
    clean = pairwise_cost(x[:, :n], y[:, :m])
    padded = pairwise_cost(x, y, x_lengths=xl, y_lengths=yl)[:, :n, :m]
    assert torch.allclose(padded, clean, rtol=1e-12, atol=1e-9)


@pytest.mark.parametrize("grad_of", ["x", "y", "both"])
def test_sqeuclidean_cost_and_gradients_equal_the_direct_formula(grad_of):
    # The cost's own backward (norm-carrying matmuls) against autograd through the direct
    # (B, N, M, D) formula, with a dense upstream gradient and either or both sides trainable.
    gen = torch.Generator().manual_seed(5)
    x = 3 + torch.randn(2, 7, 5, generator=gen, dtype=torch.float64)
    y = 3 + torch.randn(2, 6, 5, generator=gen, dtype=torch.float64)
    upstream = torch.randn(2, 7, 6, generator=gen, dtype=torch.float64)
    results = []
    for fn in (pairwise_cost, lambda a, b: ((a.unsqueeze(2) - b.unsqueeze(1)) ** 2).sum(-1)):
        a = x.clone().requires_grad_(grad_of in ("x", "both"))
        b = y.clone().requires_grad_(grad_of in ("y", "both"))
        costs = fn(a, b)
        costs.backward(upstream)
        results.append((costs.detach(), a.grad, b.grad))
    (got, got_gx, got_gy), (want, want_gx, want_gy) = results
    assert torch.allclose(got, want, rtol=1e-12, atol=1e-12)
    for g, w in ((got_gx, want_gx), (got_gy, want_gy)):
        assert (g is None) == (w is None)
        if w is not None:
            assert torch.allclose(g, w, rtol=1e-12, atol=1e-12)


def _banded_upstream(batch, n, m, seed, dtype):
    """A signed (B, N, M) gradient, zero outside a band around the diagonal, with one empty row."""
    gen = torch.Generator().manual_seed(seed)
    rows = torch.arange(n).unsqueeze(1) * (m - 1) / max(n - 1, 1)
    band = (rows - torch.arange(m).unsqueeze(0)).abs() <= 2
    upstream = (torch.rand(batch, n, m, generator=gen, dtype=dtype) - 0.5) * band
    upstream[:, n // 2] = 0
    return upstream


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("n", [9, 12])  # the kernel takes rows four at a time
def test_sparse_cpu_backward_equals_the_matmuls(monkeypatch, dtype, n):
    from score_s3prl.softdtw import cpu_sqeuclidean

    gen = torch.Generator().manual_seed(31)
    x = 5 + torch.randn(3, n, 6, generator=gen, dtype=dtype)
    # 40 columns: the band search skips whole 16-column chunks of zeros.
    y = 5 + torch.randn(3, 40, 6, generator=gen, dtype=dtype)
    upstream = _banded_upstream(3, n, 40, seed=32, dtype=dtype)
    upstream[1, 3, 30] = float("nan")  # a NaN gradient must come out, not be skipped
    grads = []
    for fraction in (1.0, 0.0):  # every band taken sparse; then the matmuls for any nonzero
        monkeypatch.setattr(cpu_sqeuclidean, "MAX_BAND_FRACTION", fraction)
        a, b = x.clone().requires_grad_(True), y.clone().requires_grad_(True)
        pairwise_cost(a, b).backward(upstream)
        grads.append((a.grad, b.grad))
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    for sparse, dense in zip(*grads):
        assert torch.equal(sparse.isnan(), dense.isnan()) and bool(sparse.isnan().any())
        assert torch.allclose(sparse.nan_to_num(), dense.nan_to_num(), rtol=tol, atol=tol)


def test_nonzero_bands_of_rows():
    from score_s3prl.softdtw import cpu_sqeuclidean

    rows = torch.zeros(1, 7, 40)
    rows[0, 0, 30], rows[0, 0, 31] = 0.25, -0.25  # a 16-column chunk whose values sum to 0
    rows[0, 1, 2], rows[0, 1, 30], rows[0, 1, 31] = 1.0, 0.25, -0.25  # the same, seen from the right
    rows[0, 2, 16] = 1.0  # the first column after a skipped chunk
    rows[0, 3, 23] = 1.0  # the last column before a skipped chunk
    rows[0, 4, 5] = float("nan")
    rows[0, 5] = 1.0
    # row 6 is empty: (M, 0) so that it never widens a block's union of bands
    bands = cpu_sqeuclidean.nonzero_bands(rows.numpy())
    assert bands[0].tolist() == [[30, 32], [2, 32], [16, 17], [23, 24], [5, 6], [0, 40], [40, 0]]


def test_sparse_cpu_backward_declines_dense_gradients():
    from score_s3prl.softdtw import cpu_sqeuclidean

    x, y = torch.randn(2, 9, 4), torch.randn(2, 8, 4)
    xa, ya = cpu_sqeuclidean.augment(x, y, torch.tensor([9, 9]), torch.tensor([8, 8]))
    assert cpu_sqeuclidean.sqeuclidean_backward(torch.ones(2, 9, 8), xa, ya) is None
    grad_x, grad_y = cpu_sqeuclidean.sqeuclidean_backward(torch.zeros(2, 9, 8), xa, ya)
    assert grad_x.shape == x.shape and grad_y.shape == y.shape
    assert not bool(grad_x.any()) and not bool(grad_y.any())


def test_gradcheck_float64_through_the_sparse_cpu_backward(monkeypatch):
    from score_s3prl.softdtw import cpu_sqeuclidean

    monkeypatch.setattr(cpu_sqeuclidean, "MAX_BAND_FRACTION", 1.0)
    x, y, xl, yl = _pairs(3, 7, 5, 3, [7, 4, 3], [5, 5, 2], seed=33, pad_value=0.5)
    x.requires_grad_(True)
    y.requires_grad_(True)

    def f(a, b):
        return soft_dtw_divergence(a, b, xl, yl, gamma=0.2, backend="cpu")

    assert torch.autograd.gradcheck(f, (x, y), eps=1e-6, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_cpu_augment_equals_the_torch_one(dtype):
    from score_s3prl.softdtw import cpu_sqeuclidean

    x, y, xl, yl = _pairs(3, 8, 6, 5, [8, 3, 5], [6, 6, 1], seed=34, dtype=dtype, pad_value=0.0)
    x, y = x + 40, y + 40  # a shared offset: the centre must be the valid frames' mean
    got = cpu_sqeuclidean.augment(x, y, xl, yl)
    want = functional._augment(x, y, xl, yl)
    tol = 1e-12 if dtype == torch.float64 else 1e-4
    for g, w in zip(got, want):
        assert torch.allclose(g, w, rtol=tol, atol=tol)
