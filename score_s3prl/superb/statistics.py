"""Paired bootstrap confidence intervals for a tuned system against a baseline (pure numpy).

The method (docs/statistics.md has the full statement):

- **Items.** A test set of ``n`` items (utterances for WER/PER, queries for MTWV) that every run
  of both systems was scored on. A run enters as a :data:`Statistic`: a function of how often
  each item is drawn (``counts``, shape (draws, items)) to the metric per draw.
- **Paired bootstrap** (Bisani & Ney, ICASSP 2004; Kaldi's ``compute-wer-bootci``): each draw
  takes ``n`` items uniformly with replacement, *the same items for both systems*; an error
  rate per draw is corpus level (the drawn items' edits summed over their reference tokens
  summed, :func:`error_rate_statistic`), MTWV is re-maximised over thresholds on the drawn
  queries (:func:`score_s3prl.superb.mtwv.resampled_mtwv`).
- **Several seeds.** Every run of a system (downstream seeds, fine-tuning seeds) is scored on
  the same draw; a system's value per draw is the mean over its runs, so seed pairs are resampled
  jointly and pooled (as Clark et al., ACL 2011, resample the test set once per draw across
  optimiser replicates). The runs' own spread is reported beside it as mean +- sd. The
  interval is the uncertainty from the test items *given these runs*; it does not resample
  training seeds (two or three are too few to bootstrap).
- **Per draw** the relative gain in percent (positive = better, :func:`relative_gain`); the
  interval is its 2.5 and 97.5 percentiles; ``p_better`` is the share of draws in which the
  tuned system is strictly better (ties count as not better, as in Kaldi). A draw where the
  baseline's value is 0 has no relative gain; it is left out of the interval and counted.
- **Verdict** (:func:`verdict`): ``better`` or ``worse`` only when the interval excludes 0,
  else ``no evidence``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

# counts (draws, items) -> the metric of each draw (draws,)
Statistic = Callable[[np.ndarray], np.ndarray]

DEFAULT_RESAMPLES = 10_000  # as Kaldi's compute-wer-bootci and kaldialign
DEFAULT_SEED = 0  # as kaldialign.bootstrap_wer_ci
LEVEL = 0.95  # the interval's coverage
BETTER, WORSE, NO_EVIDENCE = "better", "worse", "no evidence"
_DRAW_CELLS = 1 << 22  # draws x items per chunk: bounds memory (32 MiB of indices)


def resample_counts(n_items: int, resamples: int, seed: int) -> Iterator[np.ndarray]:
    """The bootstrap draws, in chunks: (draws, n_items) int64, how often each item is drawn.

    Draw b takes ``n_items`` item indices uniformly with replacement
    (``numpy.random.default_rng(seed).integers``); the same ``(n_items, resamples, seed)``
    always gives the same draws.
    """
    if n_items < 1 or resamples < 1:
        raise ValueError(f"need at least one item and one resample, got {n_items} and {resamples}")
    rng = np.random.default_rng(seed)
    chunk = max(1, min(resamples, _DRAW_CELLS // n_items))
    for start in range(0, resamples, chunk):
        size = min(chunk, resamples - start)
        drawn = rng.integers(0, n_items, size=(size, n_items))
        offsets = (np.arange(size) * n_items)[:, None]
        yield np.bincount((drawn + offsets).ravel(), minlength=size * n_items).reshape(size, n_items)


def error_rate_statistic(edits: np.ndarray, ref_tokens: np.ndarray) -> Statistic:
    """Corpus-level error rate in percent per draw: 100 * sum of the drawn items' edits / sum of
    their reference tokens (``edits`` and ``ref_tokens``: (items,)). A draw whose items hold
    no reference token gives NaN."""
    edits = np.asarray(edits, dtype=np.float64)
    ref_tokens = np.asarray(ref_tokens, dtype=np.float64)

    def rate(counts: np.ndarray) -> np.ndarray:
        tokens = counts @ ref_tokens
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(tokens > 0, 100.0 * (counts @ edits) / tokens, np.nan)

    return rate


def relative_gain(tuned: np.ndarray | float, base: np.ndarray | float, lower_is_better: bool) -> np.ndarray:
    """Relative gain of ``tuned`` over ``base`` in percent, positive when ``tuned`` is better:
    (base - tuned) / base * 100 when lower is better (error rates), else
    (tuned - base) / |base| * 100 (MTWV). NaN where ``base`` is 0 (undefined)."""
    tuned, base = np.asarray(tuned, dtype=np.float64), np.asarray(base, dtype=np.float64)
    change = base - tuned if lower_is_better else tuned - base
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(base != 0, 100.0 * change / np.abs(base), np.nan)


def percentile_interval(draws: np.ndarray, level: float = LEVEL) -> tuple[float, float]:
    """The ((1 - level) / 2, (1 + level) / 2) percentiles of the finite ``draws``; (NaN, NaN)
    when none is finite."""
    finite = np.asarray(draws, dtype=np.float64)
    finite = finite[np.isfinite(finite)]
    if finite.size == 0:
        return math.nan, math.nan
    low, high = np.percentile(finite, [50.0 * (1.0 - level), 50.0 * (1.0 + level)])
    return float(low), float(high)


def verdict(ci_low: float, ci_high: float) -> str:
    """``better`` when the gain's interval lies above 0, ``worse`` when below, else (0 inside,
    or an undefined interval) ``no evidence``."""
    if ci_low > 0:
        return BETTER
    if ci_high < 0:
        return WORSE
    return NO_EVIDENCE


def mean_sd(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof 1) of per-run values; sd is NaN for one run."""
    array = np.asarray(values, dtype=np.float64)
    sd = float(array.std(ddof=1)) if array.size > 1 else math.nan
    return float(array.mean()), sd


@dataclass(frozen=True)
class Comparison:
    """A tuned system against a baseline: the point values and the paired bootstrap."""

    base: float  # baseline metric: mean over its runs, on the full test set
    base_sd: float  # sd over the baseline's runs (NaN for one run)
    tuned: float
    tuned_sd: float
    n_base_runs: int
    n_tuned_runs: int
    gain_pct: float  # relative gain of the means, percent, positive = better
    ci95: tuple[float, float]  # percentile interval of the gain over the draws
    p_better: float  # share of draws where the tuned system is strictly better
    base_ci95: tuple[float, float]  # percentile interval of the baseline metric
    tuned_ci95: tuple[float, float]
    n_items: int
    resamples: int
    undefined_draws: int  # draws without a gain (a baseline of 0 there): left out of ci95
    seed: int
    lower_is_better: bool

    @property
    def verdict(self) -> str:
        return verdict(*self.ci95)

    def as_json(self) -> dict:
        """JSON-ready: NaN becomes null."""
        def clean(value):
            if isinstance(value, tuple):
                return [clean(v) for v in value]
            return None if isinstance(value, float) and not math.isfinite(value) else value

        fields = {name: clean(getattr(self, name)) for name in self.__dataclass_fields__}
        return {**fields, "verdict": self.verdict}


def paired_bootstrap(
    base: Sequence[Statistic],
    tuned: Sequence[Statistic],
    n_items: int,
    lower_is_better: bool,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = DEFAULT_SEED,
    return_draws: bool = False,
) -> Comparison | tuple[Comparison, np.ndarray, np.ndarray]:
    """Paired bootstrap of the tuned system's runs against the baseline's runs.

    Each of ``base`` and ``tuned`` holds one :data:`Statistic` per run (e.g. per seed), all on
    the same ``n_items`` test items. Every draw of :func:`resample_counts` is scored by every run
    of both systems; a system's value per draw is the mean over its runs.

    Returns:
        the :class:`Comparison`; with ``return_draws``, also the per-draw values of the base and
        the tuned system, each (resamples,).
    """
    if not base or not tuned:
        raise ValueError("each system needs at least one run")
    full = np.ones((1, n_items), dtype=np.int64)  # the test set itself
    base_runs = [float(run(full)[0]) for run in base]
    tuned_runs = [float(run(full)[0]) for run in tuned]
    base_draws, tuned_draws = [], []
    for counts in resample_counts(n_items, resamples, seed):
        base_draws.append(np.mean([run(counts) for run in base], axis=0))
        tuned_draws.append(np.mean([run(counts) for run in tuned], axis=0))
    base_values, tuned_values = np.concatenate(base_draws), np.concatenate(tuned_draws)
    gains = relative_gain(tuned_values, base_values, lower_is_better)
    better = tuned_values < base_values if lower_is_better else tuned_values > base_values
    (base_mean, base_sd), (tuned_mean, tuned_sd) = mean_sd(base_runs), mean_sd(tuned_runs)
    comparison = Comparison(
        base=base_mean, base_sd=base_sd, tuned=tuned_mean, tuned_sd=tuned_sd,
        n_base_runs=len(base_runs), n_tuned_runs=len(tuned_runs),
        gain_pct=float(relative_gain(tuned_mean, base_mean, lower_is_better)),
        ci95=percentile_interval(gains), p_better=float(better.mean()),
        base_ci95=percentile_interval(base_values), tuned_ci95=percentile_interval(tuned_values),
        n_items=n_items, resamples=resamples, undefined_draws=int((~np.isfinite(gains)).sum()), seed=seed,
        lower_is_better=lower_is_better,
    )  # fmt: skip
    return (comparison, base_values, tuned_values) if return_draws else comparison
