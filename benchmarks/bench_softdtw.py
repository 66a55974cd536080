"""Soft-DTW forward + backward speed: ours against pysdtw and tslearn, from one run.

For each device (the CPU always; CUDA when available, else it says it skipped it) and on the
same random batch, times the forward and ``out.backward(ones)`` of:
  - end to end, x (B, N, D) and y (B, M, D) -> squared-Euclidean cost matrix -> soft-DTW:
    ours, pysdtw (its CPU or CUDA kernel), tslearn's SoftDTWLossPyTorch (CPU only: minutes
    on the GPU size);
  - the dynamic programme alone, from a precomputed (B, N, M) cost matrix: ours and pysdtw;
  - the cost matrix alone with a dense gradient, which takes the two backward matmuls (the
    end-to-end path sums over the alignment's nonzero bands instead when it is sparse).
Inputs are fresh leaf copies made before the clock starts. Each round runs every method in
turn (three back-to-back calls, keeping the fastest: the steady state of a training loop);
each method keeps its median over --rounds rounds (the CPU is shared, so only ratios from one
run compare). Prints seconds, Mcells/s (B N M cells per second) and ours / peer speed ratios.
Sizes: CPU B=8, N=500, M=450, D=256; CUDA B=32, N=M=1000, D=256.
Usage: python benchmarks/bench_softdtw.py [--rounds 5] [--no-tslearn]
"""

from __future__ import annotations

import os

# pysdtw's kernels run on numba's OpenMP layer and torch on its own OpenMP runtime: with the
# default busy-waiting, each one's idle threads spin on the cores the next call needs, which
# slows whichever method runs next. Passive waiting makes the interleaved timings fair.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from typing import Callable  # noqa: E402

import torch  # noqa: E402

from score_s3prl.softdtw import pairwise_cost, soft_dtw, soft_dtw_from_cost  # noqa: E402

SIZES = {"cpu": (8, 500, 450, 256), "cuda": (32, 1000, 1000, 256)}
GAMMA = 0.1


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time(method: tuple[Callable[..., torch.Tensor], tuple[torch.Tensor, ...]], device: torch.device) -> float:
    """Wall seconds of one forward + backward of ``fn(*inputs)``, on fresh leaf copies made
    before the clock starts."""
    fn, inputs = method
    leaves = [t.detach().clone().requires_grad_(True) for t in inputs]
    _sync(device)
    start = time.perf_counter()
    out = fn(*leaves)
    # A dense gradient (not sum()'s broadcast view, which matmuls would first copy).
    out.backward(torch.ones_like(out))
    _sync(device)
    return time.perf_counter() - start


def _methods(device: torch.device, x: torch.Tensor, y: torch.Tensor, costs: torch.Tensor, tslearn: bool) -> dict:
    """name -> (callable returning the (B,) values, its inputs), all on the same data."""
    import pysdtw
    from pysdtw.sdtw_cpu import SoftDTWcpu
    from pysdtw.sdtw_cuda import SoftDTWcuda

    cuda = device.type == "cuda"
    peer_dp = SoftDTWcuda.apply if cuda else SoftDTWcpu.apply
    batch, rows, cols = costs.shape
    pair_lengths = torch.tensor([[rows, cols]] * batch)  # pysdtw's (B, 2) lengths, on the CPU
    peer = pysdtw.SoftDTW(gamma=GAMMA, use_cuda=cuda)
    methods = {
        "ours end-to-end": (lambda a, b: soft_dtw(a, b, gamma=GAMMA), (x, y)),
        "pysdtw end-to-end": (peer, (x, y)),
        "ours DP only": (lambda c: soft_dtw_from_cost(c, gamma=GAMMA), (costs,)),
        "pysdtw DP only": (lambda c: peer_dp(c, pair_lengths, GAMMA, 0), (costs,)),
        "cost matrix only": (pairwise_cost, (x, y)),
    }
    if tslearn and not cuda:
        from tslearn.metrics import SoftDTWLossPyTorch

        methods["tslearn end-to-end"] = (SoftDTWLossPyTorch(gamma=GAMMA), (x, y))
    return methods


def bench(device: torch.device, rounds: int, tslearn: bool) -> None:
    batch, rows, cols, dim = SIZES[device.type]
    gen = torch.Generator().manual_seed(0)
    # L2-normalised frames, as SCORE's head produces them.
    x = torch.nn.functional.normalize(torch.randn(batch, rows, dim, generator=gen), dim=-1).to(device)
    y = torch.nn.functional.normalize(torch.randn(batch, cols, dim, generator=gen), dim=-1).to(device)
    costs = pairwise_cost(x, y)
    cells = batch * rows * cols
    methods = _methods(device, x, y, costs, tslearn)
    ours = soft_dtw(x, y, gamma=GAMMA)
    peer_fn, _ = methods["pysdtw end-to-end"]
    peer = peer_fn(x, y)
    print(f"\n== {device.type}: B={batch}, N={rows}, M={cols}, D={dim}, gamma={GAMMA}, float32 ==")
    print(f"max |ours - pysdtw| / |pysdtw| = {float(((ours - peer).abs() / peer.abs()).max()):.2e}")
    for method in methods.values():  # warm-up: compilation, caches, allocator
        _time(method, device)
    times: dict[str, list[float]] = {name: [] for name in methods}
    for r in range(rounds):
        for name, method in methods.items():
            if name.startswith("tslearn"):
                if r == 0:  # seconds per call: one timed call is enough
                    times[name].append(_time(method, device))
                continue
            # The best of a few back-to-back calls: the steady state of a training loop, where
            # the allocator already holds the buffers that the previous method released.
            times[name].append(min(_time(method, device) for _ in range(3)))
    median = {name: statistics.median(t) for name, t in times.items()}
    print(f"{'method':<22}{'fwd+bwd ms':>12}{'Mcells/s':>12}")
    for name, seconds in median.items():
        print(f"{name:<22}{seconds * 1e3:>12.2f}{cells / seconds / 1e6:>12.1f}")
    print("speed ratios (same run):")
    for ours_name, peer_name in (
        ("ours end-to-end", "pysdtw end-to-end"),
        ("ours DP only", "pysdtw DP only"),
        ("ours end-to-end", "tslearn end-to-end"),
    ):
        if peer_name in median:
            print(f"  {ours_name} / {peer_name}: {median[peer_name] / median[ours_name]:.1f}x")
    if device.type == "cuda":
        print(f"peak GPU memory: {torch.cuda.max_memory_allocated(device) / 2**20:.0f} MiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="timed calls per method")
    parser.add_argument("--no-tslearn", action="store_true", help="skip tslearn (seconds per call)")
    args = parser.parse_args()
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']}; "
        "ours keeps 12 bytes per cell (float32)"
    )
    bench(torch.device("cpu"), args.rounds, not args.no_tslearn)
    if torch.cuda.is_available():
        bench(torch.device("cuda"), args.rounds, not args.no_tslearn)
    else:
        print("\n== cuda: skipped, no CUDA device available ==")


if __name__ == "__main__":
    main()
