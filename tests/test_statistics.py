"""The paired bootstrap (score_s3prl/superb/statistics.py) and the MTWV bootstrap over queries:
verdicts on known cases, the pairing, brute-force MTWV on resampled query sets, and a cross-check
against kaldialign's port of Kaldi's compute-wer-bootci."""

import math

import numpy as np
import pytest

from score_s3prl.superb import results
from score_s3prl.superb.mtwv import max_twv, query_losses, resampled_mtwv
from score_s3prl.superb.statistics import (
    BETTER,
    NO_EVIDENCE,
    WORSE,
    error_rate_statistic,
    mean_sd,
    paired_bootstrap,
    percentile_interval,
    relative_gain,
    resample_counts,
    verdict,
)


def corpus(n, seed, mean_tokens=12):
    """Per-utterance reference tokens and edits of a made-up test set (varied lengths and errors)."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(1, 2 * mean_tokens, n)
    edits = rng.binomial(tokens, rng.uniform(0.0, 0.4, n))
    return edits, tokens


def rate(edits, tokens):
    return error_rate_statistic(edits, tokens)


def test_resample_counts_are_draws_with_replacement_fixed_by_seed():
    chunks = list(resample_counts(7, 2500, seed=3))
    counts = np.concatenate(chunks)
    assert counts.shape == (2500, 7) and (counts.sum(axis=1) == 7).all()
    assert counts.mean() == pytest.approx(1.0, abs=0.05)  # each item drawn once per draw on average
    assert (counts == 0).any() and (counts >= 2).any()  # with replacement
    assert np.array_equal(counts, np.concatenate(list(resample_counts(7, 2500, seed=3))))
    assert not np.array_equal(counts, np.concatenate(list(resample_counts(7, 2500, seed=4))))


def test_chunks_do_not_change_the_draws(monkeypatch):
    whole = np.concatenate(list(resample_counts(50, 300, seed=1)))
    monkeypatch.setattr("score_s3prl.superb.statistics._DRAW_CELLS", 50 * 7)  # chunks of 7 draws
    chunks = list(resample_counts(50, 300, seed=1))
    assert len(chunks) == 43 and np.array_equal(np.concatenate(chunks), whole)


def test_error_rate_statistic_is_corpus_level():
    edits, tokens = np.array([1, 0, 3]), np.array([2, 5, 3])
    counts = np.array([[1, 1, 1], [2, 0, 1], [0, 3, 0]])
    # 100 * (4/10), 100 * (2+3)/(4+3), 100 * 0/15: edits summed over tokens summed, not a mean of rates
    assert rate(edits, tokens)(counts) == pytest.approx([40.0, 500 / 7, 0.0])


def test_identical_systems_have_no_evidence():
    edits, tokens = corpus(200, seed=0)
    c = paired_bootstrap([rate(edits, tokens)], [rate(edits, tokens)], 200, lower_is_better=True, resamples=2000)
    assert c.gain_pct == 0.0 and c.ci95[0] <= 0.0 <= c.ci95[1]
    assert c.p_better == 0.0  # every draw is a tie, and a tie is not better
    assert c.verdict == NO_EVIDENCE


def test_fewer_errors_on_every_utterance_is_better():
    edits, tokens = corpus(200, seed=1)
    edits = edits + 1  # every utterance has at least one error
    tuned = edits - 1  # ... and the tuned system makes one fewer on each
    c = paired_bootstrap([rate(edits, tokens)], [rate(tuned, tokens)], 200, lower_is_better=True, resamples=2000)
    assert c.p_better == 1.0 and c.ci95[0] > 0 and c.verdict == BETTER
    assert c.gain_pct == pytest.approx(100 * 200 / edits.sum())
    reverse = paired_bootstrap([rate(tuned, tokens)], [rate(edits, tokens)], 200, lower_is_better=True,
                               resamples=2000)
    assert reverse.p_better == 0.0 and reverse.ci95[1] < 0 and reverse.verdict == WORSE


def test_both_systems_are_scored_on_the_same_draws():
    edits, tokens = corpus(60, seed=2)
    tuned = np.maximum(edits - 1, 0)
    c, base_draws, tuned_draws = paired_bootstrap([rate(edits, tokens)], [rate(tuned, tokens)], 60,
                                                  lower_is_better=True, resamples=500, seed=9, return_draws=True)
    counts = np.concatenate(list(resample_counts(60, 500, seed=9)))
    assert np.array_equal(base_draws, rate(edits, tokens)(counts))
    assert np.array_equal(tuned_draws, rate(tuned, tokens)(counts))
    # pairing is what makes the verdict: the systems' own intervals overlap widely, yet the tuned
    # one is never worse on a draw, because both see the same utterances
    assert c.tuned_ci95[1] > c.base_ci95[0]
    assert c.p_better > 0.99 and c.verdict == BETTER
    assert c.ci95 == pytest.approx(percentile_interval(100 * (base_draws - tuned_draws) / base_draws))


def test_seeds_are_pooled_per_draw_and_reported_as_mean_and_sd():
    edits, tokens = corpus(80, seed=3)
    seeds = [edits, np.maximum(edits - 1, 0)]  # two baseline seeds
    tuned = [np.maximum(edits - 2, 0), np.maximum(edits - 1, 0)]
    c, base_draws, _ = paired_bootstrap([rate(e, tokens) for e in seeds], [rate(e, tokens) for e in tuned], 80,
                                        lower_is_better=True, resamples=300, return_draws=True)
    per_seed = [100 * e.sum() / tokens.sum() for e in seeds]
    assert (c.n_base_runs, c.n_tuned_runs) == (2, 2)
    assert (c.base, c.base_sd) == pytest.approx((np.mean(per_seed), np.std(per_seed, ddof=1)))
    counts = np.concatenate(list(resample_counts(80, 300, seed=0)))
    # one draw of utterances for both seeds; with the same references, the mean of the seeds'
    # rates is the rate of their pooled edits
    pooled = 100 * (counts @ (seeds[0] + seeds[1])) / (2 * counts @ tokens)
    assert base_draws == pytest.approx(pooled)


def test_mean_sd_and_verdict_and_gain():
    assert mean_sd([2.0]) == (2.0, pytest.approx(math.nan, nan_ok=True))
    assert mean_sd([1.0, 3.0]) == (2.0, pytest.approx(math.sqrt(2)))
    assert verdict(0.1, 2.0) == BETTER and verdict(-2.0, -0.1) == WORSE
    assert verdict(-0.1, 2.0) == verdict(0.0, 1.0) == verdict(math.nan, math.nan) == NO_EVIDENCE
    for tuned, base, lower in [(4.0, 5.0, True), (0.3, 0.2, False), (0.1, -0.2, False), (6.0, 5.0, True)]:
        assert relative_gain(tuned, base, lower) == pytest.approx(results.relative_gain(tuned, base, lower))
    assert math.isnan(relative_gain(1.0, 0.0, True))


def test_an_error_free_baseline_has_no_evidence():
    tokens = np.full(20, 5)
    c = paired_bootstrap([rate(np.zeros(20), tokens)], [rate(np.ones(20), tokens)], 20, True, resamples=200)
    assert math.isnan(c.gain_pct) and c.verdict == NO_EVIDENCE
    assert c.as_json()["ci95"] == [None, None] and c.as_json()["verdict"] == NO_EVIDENCE


# -- MTWV: a bootstrap over queries, the threshold re-maximised per draw ---------------------


def random_trials(rng, queries, files, everywhere=False):
    scores = rng.integers(-4, 5, size=(queries, files)).astype(float)  # few values: many ties
    scores[rng.random(scores.shape) < 0.3] = -10.0  # trials the stdlist lacked: the default score
    targets = rng.random((queries, files)) < 0.25
    targets[np.arange(queries), rng.integers(0, files, queries)] = True
    if everywhere:
        targets[0] = True  # a query occurring in every file (its P_fa is 0)
    return scores, targets


@pytest.mark.parametrize("case", range(40))
def test_resampled_mtwv_matches_brute_force_on_resampled_query_sets(case):
    rng = np.random.default_rng(case)
    scores, targets = random_trials(rng, int(rng.integers(1, 9)), int(rng.integers(2, 12)), everywhere=case % 4 == 0)
    losses = query_losses(scores, targets)
    n = scores.shape[0]
    assert resampled_mtwv(losses, np.ones((1, n)))[0] == pytest.approx(max_twv(scores, targets)[0], abs=1e-12)
    counts = np.concatenate(list(resample_counts(n, 25, seed=case)))
    for row, value in zip(counts, resampled_mtwv(losses, counts)):
        drawn = np.repeat(np.arange(n), row)  # the resampled query set, duplicates kept
        assert value == pytest.approx(max_twv(scores[drawn], targets[drawn])[0], abs=1e-12)


def test_mtwv_bootstrap_is_over_queries_and_paired():
    rng = np.random.default_rng(5)
    scores, targets = random_trials(rng, 30, 40)
    base_scores = np.where(targets, scores + 3.0, scores)  # a baseline that finds some targets
    tuned_scores = np.where(targets, scores + 5.0, scores)  # ... and one that finds more
    base, tuned = query_losses(base_scores, targets), query_losses(tuned_scores, targets)
    c, base_draws, tuned_draws = paired_bootstrap(
        [lambda k: resampled_mtwv(base, k)], [lambda k: resampled_mtwv(tuned, k)], 30, lower_is_better=False,
        resamples=400, return_draws=True)
    assert c.base == pytest.approx(max_twv(base_scores, targets)[0])
    assert c.tuned == pytest.approx(max_twv(tuned_scores, targets)[0])
    counts = np.concatenate(list(resample_counts(30, 400, seed=0)))
    first = np.repeat(np.arange(30), counts[0])
    assert base_draws[0] == pytest.approx(max_twv(base_scores[first], targets[first])[0])
    assert tuned_draws[0] == pytest.approx(max_twv(tuned_scores[first], targets[first])[0])
    assert c.base > 0 and c.gain_pct > 0 and c.verdict == BETTER


# -- the cross-check against kaldialign (Kaldi's compute-wer-bootci) --------------------------


def references(n, seed=0):
    rng = np.random.default_rng(seed)
    return [[int(w) for w in rng.integers(0, 50, rng.integers(3, 25))] for _ in range(n)]


def hypotheses(refs, seed, error):
    """A hypothesis per reference with about ``error`` of the words substituted, a third as many deleted."""
    rng = np.random.default_rng(seed)
    return [[w if rng.random() > error else 99 for w in ref if rng.random() > error / 3] for ref in refs]


@pytest.mark.parametrize("tuned_error, expected", [(0.10, BETTER), (0.198, NO_EVIDENCE)])
def test_agrees_with_kaldialign_bootstrap_wer_ci(tuned_error, expected):
    kaldialign = pytest.importorskip("kaldialign")
    import editdistance

    refs = references(400)
    base_hyps, tuned_hyps = hypotheses(refs, seed=1, error=0.2), hypotheses(refs, seed=2, error=tuned_error)
    tokens = np.array([len(r) for r in refs])
    base_edits = np.array([editdistance.eval(h, r) for h, r in zip(base_hyps, refs)])
    tuned_edits = np.array([editdistance.eval(h, r) for h, r in zip(tuned_hyps, refs)])
    ours = paired_bootstrap([rate(base_edits, tokens)], [rate(tuned_edits, tokens)], 400, True)
    theirs = kaldialign.bootstrap_wer_ci(refs, base_hyps, tuned_hyps, replications=10_000, seed=0)

    for system, interval in ((theirs["system1"], ours.base_ci95), (theirs["system2"], ours.tuned_ci95)):
        # Kaldi reports mean +- 1.96 sd of its draws (a fraction); ours are percentiles (percent).
        # Monte-Carlo error of a 2.5 % quantile from 10 000 draws is about 0.03 sd: allow 0.1 of
        # the half-width (~0.2 sd) for it and the normal approximation
        half = 100 * system["ci95"]
        assert interval[0] == pytest.approx(100 * system["ci95min"], abs=0.1 * half)
        assert interval[1] == pytest.approx(100 * system["ci95max"], abs=0.1 * half)
    p = theirs["p_s2_improv_over_s1"]
    # two independent Monte-Carlo estimates of one probability: allow 4 sd of their difference
    assert ours.p_better == pytest.approx(p, abs=4 * math.sqrt(2 * p * (1 - p) / 10_000) + 1e-3)
    # Kaldi gives no verdict; its P(improvement) beyond 0.975 is the same two-sided 95 % test
    kaldi_verdict = BETTER if p > 0.975 else WORSE if p < 0.025 else NO_EVIDENCE
    assert ours.verdict == kaldi_verdict == expected
