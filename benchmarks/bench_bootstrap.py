"""Time of the paired bootstrap at SUPERB's real sizes, on made-up per-item data.

Prints seconds for:
  - ASR: test-clean's 2620 utterances, 3 baseline and 3 tuned runs (seeds), 10 000 draws;
  - QbE: QUESST 2014 eval's size (555 queries x 12 492 files, 1 to 5 occurrences a query),
    one run per system, 10 000 draws: ours (per-query losses at the candidate thresholds,
    one matrix product per chunk of draws) against the brute force the method is defined by
    (``max_twv`` on each resampled query set), the latter timed on --brute draws and scaled to
    10 000 per system (it is linear in the draws);
and the ratio. Usage: python benchmarks/bench_bootstrap.py [--brute 3]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from score_s3prl.superb.mtwv import max_twv, query_losses, resampled_mtwv
from score_s3prl.superb.statistics import DEFAULT_RESAMPLES, error_rate_statistic, paired_bootstrap, resample_counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--brute", type=int, default=3, help="brute-force MTWV draws to time (default 3)")
    args = parser.parse_args()
    rng = np.random.default_rng(0)

    n = 2620
    tokens = rng.integers(5, 60, n)
    runs = [error_rate_statistic(rng.binomial(tokens, 0.06), tokens) for _ in range(6)]
    start = time.perf_counter()
    paired_bootstrap(runs[:3], runs[3:], n, lower_is_better=True)
    print(f"ASR, {n} utterances, 3 + 3 runs, {DEFAULT_RESAMPLES} draws: {time.perf_counter() - start:.2f} s")

    queries, files = 555, 12492
    targets = np.zeros((queries, files), dtype=bool)
    for q in range(queries):
        targets[q, rng.choice(files, rng.integers(1, 6), replace=False)] = True
    base = rng.normal(size=targets.shape) + 2.5 * targets
    tuned = rng.normal(size=targets.shape) + 3.0 * targets
    start = time.perf_counter()
    losses = [query_losses(scores, targets) for scores in (base, tuned)]
    prepared = time.perf_counter() - start
    start = time.perf_counter()
    paired_bootstrap([lambda k: resampled_mtwv(losses[0], k)], [lambda k: resampled_mtwv(losses[1], k)], queries,
                     lower_is_better=False)
    ours = prepared + time.perf_counter() - start
    print(f"QbE, {queries} queries x {files} files, 1 + 1 runs, {DEFAULT_RESAMPLES} draws: {ours:.2f} s "
          f"({prepared:.2f} s of it the per-query losses; {losses[0].thresholds.size} candidate thresholds)")
    counts = next(resample_counts(queries, args.brute, seed=0))
    start = time.perf_counter()
    for row in counts:
        drawn = np.repeat(np.arange(queries), row)
        max_twv(base[drawn], targets[drawn])
    brute = (time.perf_counter() - start) / args.brute * DEFAULT_RESAMPLES * 2
    print(f"QbE brute force (max_twv per resampled query set), scaled from {args.brute} draws: {brute:.0f} s "
          f"= {brute / 3600:.1f} h; ours is {brute / ours:.0f} x faster")


if __name__ == "__main__":
    main()
