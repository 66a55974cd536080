"""``score-s3prl compare``: a tuned s3prl run against a baseline run, with a paired bootstrap.

``score-s3prl compare --task {asr,pr} BASE_RUN_DIR TUNED_RUN_DIR [--split S] [--resamples N]
[--seed S] [--json]``, and ``--task qbe ... --groundtruth DIR``.

A run directory is any s3prl ``-m evaluate`` experiment directory: the one holding the
transcripts (ASR ``{split}-noLM-hyp.ark`` / ``-ref.ark``, PR ``{split}-hyp.ark`` / ``-ref.ark``)
or QbE's ``benchmark.stdlist.xml``, or a folder holding it in a ``<split>/`` subfolder (the
SUPERB runner's unit folders). Both runs must have scored the same test items (the same
reference utterances and tokens; the same QbE ground truth). The method is
:mod:`.statistics`'; :func:`compare_runs` also takes several runs per system (seeds).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..errors import ArgumentParser, ScoreError
from ..recipes import RECIPES
from . import mtwv
from .metrics import ItemErrors, recipe_item_errors, transcript_paths
from .statistics import (DEFAULT_RESAMPLES, DEFAULT_SEED, Comparison, Statistic, error_rate_statistic,
                         paired_bootstrap)

TASKS = ("asr", "pr", "qbe")
STDLIST = "benchmark.stdlist.xml"  # what s3prl's quesst14_dtw expert writes


def evaluation_dir(run_dir: str | os.PathLike, task: str, split: str) -> Path:
    """The folder holding ``task``'s per-item files for ``split``: ``run_dir`` itself, else its
    ``<split>/`` subfolder.

    Raises:
        ScoreError: neither holds them (the message names the file looked for).
    """
    run_dir = Path(run_dir)
    wanted = Path(STDLIST) if task == "qbe" else transcript_paths(Path(), task, split)[0]
    for folder in (run_dir, run_dir / split):
        if (folder / wanted).is_file():
            return folder
    if not run_dir.is_dir():
        raise ScoreError(f"{run_dir}: run directory not found")
    raise ScoreError(f"{run_dir}: no {wanted} in it nor in {run_dir / split}; an s3prl `-m evaluate -t {split}` "
                     f"run writes it")


def paired_errors(runs: Sequence[ItemErrors], sources: Sequence[str]) -> list[ItemErrors]:
    """``runs`` in the first run's utterance order, after checking they scored the same items.

    Raises:
        ScoreError: a run has other utterances or other reference token counts than the first.
    """
    first = runs[0]
    expected = set(first.items)
    aligned = [first]
    for run, source in zip(runs[1:], sources[1:]):
        if set(run.items) != expected:
            only = sorted(set(run.items) ^ expected)[:3]
            raise ScoreError(f"{source}: its reference utterances differ from those of {sources[0]} "
                             f"(e.g. {', '.join(only)}); a paired comparison needs the same test set")
        position = {item: i for i, item in enumerate(run.items)}
        index = np.array([position[item] for item in first.items])
        run = ItemErrors(first.items, run.edits[index], run.ref_tokens[index])
        if not np.array_equal(run.ref_tokens, first.ref_tokens):
            raise ScoreError(f"{source}: its references differ from those of {sources[0]} "
                             "(other token counts); a paired comparison needs the same test set")
        aligned.append(run)
    return aligned


def error_statistics(task: str, run_dirs: Sequence[str | os.PathLike], split: str) -> tuple[list[Statistic], int]:
    """One error-rate :data:`Statistic` per run (task "asr" or "pr"), and the number of utterances."""
    folders = [evaluation_dir(d, task, split) for d in run_dirs]
    runs = paired_errors([recipe_item_errors(f, task, split) for f in folders], [str(f) for f in folders])
    return [error_rate_statistic(r.edits, r.ref_tokens) for r in runs], len(runs[0].items)


def mtwv_statistics(run_dirs: Sequence[str | os.PathLike], split: str,
                    groundtruth: str | os.PathLike) -> tuple[list[Statistic], int]:
    """One MTWV :data:`Statistic` per QbE run (resampling queries), and the number of queries."""
    truth = mtwv.load_groundtruth(groundtruth)
    statistics = []
    for run_dir in run_dirs:
        stdlist = evaluation_dir(run_dir, "qbe", split) / STDLIST
        trials = mtwv.build_trials(truth, mtwv.read_stdlist(stdlist), source=str(stdlist))
        losses = mtwv.query_losses(trials.scores, trials.targets)
        statistics.append(lambda counts, losses=losses: mtwv.resampled_mtwv(losses, counts))
    return statistics, len(mtwv.scored_queries(truth))


def compare_runs(
    task: str,
    base_dirs: Sequence[str | os.PathLike],
    tuned_dirs: Sequence[str | os.PathLike],
    split: str | None = None,
    groundtruth: str | os.PathLike | None = None,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = DEFAULT_SEED,
) -> Comparison:
    """Paired bootstrap of the tuned runs against the base runs (one or more each, e.g. seeds).

    ``split`` defaults to the recipe's test split; ``groundtruth`` (a QUESST ground truth folder)
    is needed for QbE.
    """
    if task not in TASKS:
        raise ScoreError(f"task {task!r}: compare takes {', '.join(TASKS)}")
    split = split or RECIPES[task].test_split
    assert split is not None
    dirs = [*base_dirs, *tuned_dirs]
    if task == "qbe":
        if groundtruth is None:
            raise ScoreError("compare --task qbe: --groundtruth DIR (the QUESST ground truth folder) is needed")
        statistics, n_items = mtwv_statistics(dirs, split, groundtruth)
    else:
        statistics, n_items = error_statistics(task, dirs, split)
    base, tuned = statistics[: len(base_dirs)], statistics[len(base_dirs):]
    return paired_bootstrap(base, tuned, n_items, RECIPES[task].lower_is_better, resamples, seed)


def format_comparison(comparison: Comparison, metric: str, base_name: str, tuned_name: str) -> str:
    """Readable lines: each system's value and interval, then the gain, its interval and verdict."""
    c, unit = comparison, "%" if metric != "mtwv" else ""
    items = "queries" if metric == "mtwv" else "utterances"

    def system(name: str, value: float, sd: float, runs: int, ci: tuple[float, float]) -> str:
        spread = f" +- {sd:.4g} over {runs} runs" if runs > 1 else ""
        return f"  {name}: {metric.upper()} {value:.4g}{unit}{spread}  (95% CI {ci[0]:.4g} to {ci[1]:.4g})"

    return "\n".join([
        f"{c.n_items} {items}, {c.resamples} paired resamples (seed {c.seed})",
        system(f"base  {base_name}", c.base, c.base_sd, c.n_base_runs, c.base_ci95),
        system(f"tuned {tuned_name}", c.tuned, c.tuned_sd, c.n_tuned_runs, c.tuned_ci95),
        f"  relative gain {c.gain_pct:+.2f}% (positive = better), 95% CI [{c.ci95[0]:+.2f}%, {c.ci95[1]:+.2f}%], "
        f"P(tuned better) {c.p_better:.3f}: {c.verdict}",
    ])  # fmt: skip


def int_at_least(minimum: int, name: str):
    """An argparse type: a whole number >= ``minimum``; argparse reports others as
    "invalid <name> value"."""
    def parse(text: str) -> int:
        value = int(text)
        if value < minimum:
            raise ValueError(text)
        return value

    parse.__name__ = name
    return parse


positive_int = int_at_least(1, "positive integer")  # --resamples
seed_value = int_at_least(0, "seed (0 or more)")  # --seed: numpy takes no negative seed


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(
        prog="score-s3prl compare",
        description="A tuned s3prl run against a baseline run: relative gain, its 95% paired-bootstrap "
                    "interval, P(tuned better) and a verdict (better / worse only when the interval excludes 0).",
    )
    parser.add_argument("--task", required=True, choices=TASKS)
    parser.add_argument("base", metavar="BASE_RUN_DIR", help="the baseline's s3prl evaluate directory")
    parser.add_argument("tuned", metavar="TUNED_RUN_DIR", help="the tuned upstream's s3prl evaluate directory")
    parser.add_argument("--split", help="evaluated split (default: the recipe's: asr test-clean, pr test, qbe test)")
    parser.add_argument("--groundtruth", type=Path, metavar="DIR",
                        help="qbe: the QUESST ground truth folder (*.ecf.xml, *.rttm, *.tlist.xml)")
    parser.add_argument("--resamples", type=positive_int, default=DEFAULT_RESAMPLES,
                        help=f"bootstrap draws (default {DEFAULT_RESAMPLES})")
    parser.add_argument("--seed", type=seed_value, default=DEFAULT_SEED, help=f"bootstrap seed (default {DEFAULT_SEED})")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    if args.groundtruth is not None and args.task != "qbe":
        raise ScoreError(f"compare --task {args.task}: --groundtruth is for --task qbe only")
    comparison = compare_runs(args.task, [args.base], [args.tuned], args.split, args.groundtruth,
                              args.resamples, args.seed)
    metric = RECIPES[args.task].metric
    split = args.split or RECIPES[args.task].test_split
    if args.json:
        print(json.dumps({"task": args.task, "metric": metric, "split": split, "base_run": str(args.base),
                          "tuned_run": str(args.tuned), **comparison.as_json()}, indent=2))
    else:
        print(f"{args.task} {split}: " + format_comparison(comparison, metric, args.base, args.tuned))
    return 0
