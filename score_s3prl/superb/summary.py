"""The SUPERB summary: one row per (task, split, baseline, system), with mean +- sd over seeds, the
relative gain, its 95 % paired-bootstrap interval, P(better) and a verdict; its CSV
(``superb_summary.csv``), printed table and gains chart.

Built from the results rows of a run folder (:func:`summarise`) and the per-item data in their
run directories: ASR / PR transcripts (:func:`.metrics.recipe_item_errors`), QbE per-query losses
(:data:`.mtwv.QUERY_LOSSES_FILE`, written by the score stage). The method is :mod:`.statistics`'
(docs/statistics.md). The probe keeps no per-utterance values: its rows have no interval, hence
``no evidence``.

Paper bars: a tuned system's gain is set beside the paper's only for the method and base the
paper reports (:data:`score_s3prl.recipes.Recipe.paper_gains`, keyed by (method, base)), read from
the tuned checkpoint's own metadata (:func:`checkpoint_identity`); any other system (another base,
a model of another size, a checkpoint without metadata) gets none.
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from functools import lru_cache
from pathlib import Path

import numpy as np

from ..errors import ScoreError
from ..fileio import atomic_open
from ..recipes import RECIPES
from . import mtwv
from .compare import paired_errors
from .metrics import recipe_item_errors
from .results import ResultRow
from .statistics import (DEFAULT_RESAMPLES, DEFAULT_SEED, NO_EVIDENCE, Statistic, error_rate_statistic, mean_sd,
                         paired_bootstrap, relative_gain)

SUMMARY_FILE = "superb_summary.csv"
AXIS_LABEL = "relative gain over the baseline (%), positive = better"


@dataclass(frozen=True)
class SummaryRow:
    """One comparison of a system with the baseline (a line of ``superb_summary.csv``)."""

    task: str
    metric: str
    split: str
    baseline: str  # the baseline system's name
    system: str
    n_seeds: int  # downstream seeds both systems have (1 for tasks without training)
    n_runs: int  # the system's runs: its upstreams (fine-tuning seeds) x downstream seeds
    baseline_mean: float
    baseline_sd: float  # NaN for one run
    mean: float
    sd: float
    rel_gain_pct: float  # of the means, positive = better
    ci95_low: float  # NaN without per-item data (the probe)
    ci95_high: float
    p_better: float
    verdict: str  # better / worse only when the interval excludes 0, else no evidence
    n_items: int  # test items resampled (0: none)
    resamples: int
    bootstrap_seed: int
    lower_is_better: bool
    paper_gain_pct: float  # the paper's gain for this method and base; NaN where it gives none


SUMMARY_COLUMNS = tuple(f.name for f in fields(SummaryRow))


def _format(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.6g}"
    return str(value)


def write_summary(path: str | os.PathLike, rows: Sequence[SummaryRow]) -> None:
    """Write ``superb_summary.csv`` (header :data:`SUMMARY_COLUMNS`; NaN as an empty field), atomically."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(SUMMARY_COLUMNS)
    for row in rows:
        writer.writerow([_format(getattr(row, name)) for name in SUMMARY_COLUMNS])
    with atomic_open(path, "w", encoding="utf-8") as handle:
        handle.write(buffer.getvalue())


# -- per-item data of one run -----------------------------------------------------------------


def run_statistics(task: str, group: Sequence[ResultRow]) -> tuple[list[Statistic], int] | None:
    """One :data:`~.statistics.Statistic` per row of ``group`` (same task and split), from the
    per-item data in its ``run_dir``, and the number of items; None for a task without per-item
    data (the probe).

    Raises:
        ScoreError: a run's per-item data is missing or unreadable, or the runs scored
            different test items.
    """
    if task in ("asr", "pr"):
        runs = [recipe_item_errors(row.run_dir, task, row.split) for row in group]
        runs = paired_errors(runs, [row.run_dir for row in group])
        return [error_rate_statistic(r.edits, r.ref_tokens) for r in runs], len(runs[0].items)
    if task == "qbe":
        loaded = [mtwv.load_query_losses(Path(row.run_dir) / mtwv.QUERY_LOSSES_FILE) for row in group]
        for (_, queries), row in zip(loaded[1:], group[1:]):
            if queries != loaded[0][1]:
                raise ScoreError(f"{row.run_dir}: its QbE queries differ from those of {group[0].run_dir}; "
                                 "a paired comparison needs the same ground truth")
        return [lambda counts, losses=losses: mtwv.resampled_mtwv(losses, counts) for losses, _ in loaded], \
            len(loaded[0][1])
    return None


# -- which paper number applies ---------------------------------------------------------------

HUBERT_BASE_SHAPE = (12, 768)  # (layers, width) of HuBERT Base, the SCORE and LASER papers' HuBERT


def base_name(metadata: dict, architecture: str, model_cfg: dict) -> str | None:
    """The named base a tuned checkpoint was fine-tuned from, e.g. "hubert_base", "wavlm_base_plus".

    From the fine-tuning metadata's ``base_model`` when it names one of s3prl's bases (its aliases
    "hubert", "wavlm" resolve to the explicit name of the same file). A local file or transformers
    folder is known by its shape only: a HuBERT of Base's shape counts as "hubert_base"; a WavLM
    none, since WavLM Base+ has WavLM Base's shape.
    """
    from ..checkpoints.bases import BASE_URLS

    source = str(metadata.get("base_model", "")).split(" ")[0]
    if source in BASE_URLS:
        return max((name for name, url in BASE_URLS.items() if url == BASE_URLS[source]), key=len)
    shape = (model_cfg.get("encoder_layers"), model_cfg.get("encoder_embed_dim"))
    return "hubert_base" if architecture == "hubert" and shape == HUBERT_BASE_SHAPE else None


@lru_cache(maxsize=None)
def checkpoint_identity(upstream: str, checkpoint: str) -> tuple[str, str] | None:
    """(method, base) of a tuned checkpoint from its own metadata, e.g. ("SCORE", "hubert_base")
    (:func:`base_name`); None when the upstream is not one of ours, the file has no fine-tuning
    metadata, or its base is not known by name (a tiny demo model, a local WavLM)."""
    from .checks import CONVERTED_HUBERT_ENTRIES, WAVLM_ENTRIES

    ours = upstream in CONVERTED_HUBERT_ENTRIES or upstream in WAVLM_ENTRIES
    if not ours or not checkpoint or "://" in checkpoint or not os.path.isfile(checkpoint):
        return None
    from ..checkpoints.models import base_architecture
    from ..checkpoints.safeload import load_checkpoint

    try:
        state = load_checkpoint(checkpoint)  # weights only: the file chooses no code
    except ScoreError:
        return None  # the runner's checks reported it before any stage; here it only loses a paper bar
    if not isinstance(state, dict):
        return None
    config = "cfg" if base_architecture(state) == "wavlm" else "model_cfg"
    metadata, model = state.get("score"), state.get(config)
    if not isinstance(metadata, dict) or not isinstance(model, dict):
        return None
    method, architecture = metadata.get("method"), metadata.get("architecture")
    if not isinstance(method, str) or not isinstance(architecture, str):
        return None
    base = base_name(metadata, architecture, model)
    return None if base is None else (method.upper(), base)


def paper_gain(task: str, rows: Sequence[ResultRow],
               identity: Callable[[str, str], tuple[str, str] | None] = checkpoint_identity) -> float:
    """The paper's gain for ``task`` when every run of a system is the same (method, base) the
    paper reports; NaN otherwise."""
    keys = {identity(row.upstream, row.checkpoint) for row in rows}
    if len(keys) != 1 or None in keys:
        return math.nan
    return RECIPES[task].paper_gains.get(keys.pop(), math.nan)


# -- the summary --------------------------------------------------------------------------------


def summarise(
    rows: Sequence[ResultRow],
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = DEFAULT_SEED,
    identity: Callable[[str, str], tuple[str, str] | None] = checkpoint_identity,
) -> list[SummaryRow]:
    """One :class:`SummaryRow` per (task, split, baseline, system) of the tasks' own metrics in
    ``rows`` (a run folder's results), in task order.

    Runs pair up by downstream seed: only seeds both the baseline and the system have are used.
    """
    out = []
    groups: dict[tuple[str, str], list[ResultRow]] = {}
    for row in rows:
        if row.task in RECIPES and row.metric == RECIPES[row.task].metric:
            groups.setdefault((row.task, row.split), []).append(row)
    order = list(RECIPES)
    for (task, split), group in sorted(groups.items(), key=lambda kv: (order.index(kv[0][0]), kv[0][1])):
        baseline = next((r.baseline_system for r in group if r.baseline_system),
                        next((r.system for r in group if r.is_baseline), group[0].system))  # legacy rows
        systems = list(dict.fromkeys(r.system for r in group if r.system != baseline))
        base_rows = [r for r in group if r.system == baseline]
        for system in systems:
            tuned_rows = [r for r in group if r.system == system]
            seeds = {r.seed for r in base_rows} & {r.seed for r in tuned_rows}
            if not seeds:
                continue  # nothing pairs up (yet): a run still missing
            out.append(_compare(task, split, baseline, system, [r for r in base_rows if r.seed in seeds],
                                [r for r in tuned_rows if r.seed in seeds], len(seeds), resamples, seed,
                                identity))
    return out


def _compare(task: str, split: str, baseline: str, system: str, base: list[ResultRow], tuned: list[ResultRow],
             n_seeds: int, resamples: int, seed: int, identity) -> SummaryRow:
    lower = RECIPES[task].lower_is_better
    statistics = run_statistics(task, [*base, *tuned])
    common = dict(task=task, metric=RECIPES[task].metric, split=split, baseline=baseline, system=system,
                  n_seeds=n_seeds, n_runs=len(tuned), lower_is_better=lower,
                  paper_gain_pct=paper_gain(task, tuned, identity))
    if statistics is None:  # no per-item data: mean +- sd and the gain, no interval
        (base_mean, base_sd), (mean, sd) = mean_sd([r.value for r in base]), mean_sd([r.value for r in tuned])
        return SummaryRow(**common, baseline_mean=base_mean, baseline_sd=base_sd, mean=mean, sd=sd,
                          rel_gain_pct=float(relative_gain(mean, base_mean, lower)), ci95_low=math.nan,
                          ci95_high=math.nan, p_better=math.nan, verdict=NO_EVIDENCE, n_items=0, resamples=0,
                          bootstrap_seed=seed)
    runs, n_items = statistics
    _check_values([*base, *tuned], runs, n_items)
    c = paired_bootstrap(runs[: len(base)], runs[len(base):], n_items, lower, resamples, seed)
    return SummaryRow(**common, baseline_mean=c.base, baseline_sd=c.base_sd, mean=c.tuned, sd=c.tuned_sd,
                      rel_gain_pct=c.gain_pct, ci95_low=c.ci95[0], ci95_high=c.ci95[1], p_better=c.p_better,
                      verdict=c.verdict, n_items=n_items, resamples=resamples, bootstrap_seed=seed)


def _check_values(rows: Sequence[ResultRow], runs: Sequence[Statistic], n_items: int) -> None:
    """Each run's per-item data must give the value its results row recorded: otherwise the files
    in its run directory are not that measurement's (rewritten since)."""
    full = np.ones((1, n_items), dtype=np.int64)
    for row, run in zip(rows, runs):
        value = float(run(full)[0])
        if not math.isclose(value, row.value, rel_tol=1e-9, abs_tol=1e-12):
            raise ScoreError(f"{row.run_dir}: its per-item data gives {row.metric} {value:.6g}, its results row "
                             f"{row.value:.6g}; the files changed after scoring: rerun its score stage")


# -- the printed table and the chart ----------------------------------------------------------


def _value(mean: float, sd: float) -> str:
    return f"{mean:.4g}" + ("" if math.isnan(sd) else f" ± {sd:.3g}")


def _pct(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:+.2f}%"


def format_table(rows: Sequence[SummaryRow]) -> str:
    """The summary as a plain-text table: mean ± sd over seeds, the gain, its interval, P(better),
    the verdict and the paper's gain for the same method and base (blank where none)."""
    header = ("task", "metric", "split", "system (vs baseline)", "seeds", "baseline", "system", "gain",
              "95% CI", "P(better)", "verdict", "paper")
    lines = [header]
    for r in rows:
        interval = "none" if math.isnan(r.ci95_low) else f"[{r.ci95_low:+.2f}%, {r.ci95_high:+.2f}%]"
        lines.append((
            r.task, r.metric, r.split, f"{r.system} (vs {r.baseline})", str(r.n_seeds),
            _value(r.baseline_mean, r.baseline_sd), _value(r.mean, r.sd), _pct(r.rel_gain_pct), interval,
            "" if math.isnan(r.p_better) else f"{r.p_better:.3f}", r.verdict,
            "" if math.isnan(r.paper_gain_pct) else f"{r.paper_gain_pct:+.2f}%",
        ))  # fmt: skip
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    text = ["  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in lines]
    note = ("gain: relative to the baseline, positive = better; ± sd over the runs; 95% CI: paired bootstrap "
            "over test items, pooled over seeds; verdict better/worse only when the CI excludes 0")
    return "\n".join([*text, note])


def main_summary_rows(rows: Sequence[SummaryRow]) -> list[SummaryRow]:
    """The rows the chart shows: each task's test split (QbE: also a chosen test layer); the
    probe's one split."""
    def main(row: SummaryRow) -> bool:
        test = RECIPES[row.task].test_split
        return test is None or row.split == test or row.split.startswith(f"{test}-layer")

    return [r for r in rows if main(r)]


@dataclass(frozen=True)
class Bar:
    """One bar of the gains chart."""

    x: float  # position: group index + offset
    value: float  # relative gain, percent
    error: tuple[float, float] | None  # (below, above) the value: the 95 % interval; None without one
    series: str  # legend entry: the system, or "paper, <system>'s method and base"
    colour: str
    paper: bool
    text: str  # the annotation above the bar


def chart_bars(rows: Sequence[SummaryRow]) -> tuple[list[tuple[str, str]], list[Bar]]:
    """The chart's groups ((task, split) of :func:`main_summary_rows`) and bars: per group, each
    system's gain with its interval, and a paper bar only where the paper reports the system's own
    method and base (``paper_gain_pct`` not NaN)."""
    rows = main_summary_rows(rows)
    groups = list(dict.fromkeys((r.task, r.split) for r in rows))
    systems = list(dict.fromkeys(r.system for r in rows))
    papers = list(dict.fromkeys(r.system for r in rows if not math.isnan(r.paper_gain_pct)))
    series = [(s, False) for s in systems] + [(s, True) for s in papers]
    width = 0.8 / max(len(series), 1)
    bars = []
    for k, (system, paper) in enumerate(series):
        offset, colour = (k - (len(series) - 1) / 2) * width, f"C{systems.index(system)}"
        for i, group in enumerate(groups):
            row = next((r for r in rows if (r.task, r.split) == group and r.system == system), None)
            if row is None:
                continue
            if paper:
                if not math.isnan(row.paper_gain_pct):
                    bars.append(Bar(i + offset, row.paper_gain_pct, None, f"paper, {system}'s method and base",
                                    colour, True, f"{row.paper_gain_pct:+.2f}%"))
                continue
            gain = 0.0 if math.isnan(row.rel_gain_pct) else row.rel_gain_pct
            error = None if math.isnan(row.ci95_low) else (max(gain - row.ci95_low, 0.0),
                                                           max(row.ci95_high - gain, 0.0))
            text = f"{_pct(row.rel_gain_pct)}\n{_value(row.mean, row.sd)}\nn={row.n_seeds}, {row.verdict}"
            bars.append(Bar(i + offset, gain, error, system, colour, False, text))
    return groups, bars


def plot_summary(rows: Sequence[SummaryRow], png_path: str | os.PathLike) -> None:
    """Bar chart (PNG, written atomically) of :func:`chart_bars`: the gains with their 95 %
    intervals as error bars, each system's mean ± sd, seeds and verdict above its bar, the
    baseline's mean ± sd under each task, and hatched paper bars."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # no pyplot: no global backend
    from matplotlib.figure import Figure

    groups, bars = chart_bars(rows)
    figure = Figure(figsize=(2.5 + 2.2 * max(len(groups), 1), 4.8))
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    width = 0.8 / max(len({(b.series, b.paper) for b in bars}), 1)
    labelled: set[str] = set()  # one legend entry per series
    for bar in bars:
        style = dict(color=bar.colour, label=None if bar.series in labelled else bar.series)
        labelled.add(bar.series)
        if bar.paper:
            axes.bar(bar.x, bar.value, width, alpha=0.35, hatch="//", **style)
        else:
            error = None if bar.error is None else [[bar.error[0]], [bar.error[1]]]
            axes.bar(bar.x, bar.value, width, yerr=error, capsize=3, **style)
        end = bar.value
        if bar.error is not None:
            end = bar.value + bar.error[1] if bar.value >= 0 else bar.value - bar.error[0]
        axes.annotate(bar.text, (bar.x, end), fontsize=6, ha="center", va="bottom" if bar.value >= 0 else "top")
    axes.axhline(0.0, color="black", linewidth=0.8)
    ticks = []
    for task, split in groups:
        row = next(r for r in rows if (r.task, r.split) == (task, split))
        ticks.append(f"{task.upper()} {split} ({row.metric})\n{row.baseline}: "
                     f"{_value(row.baseline_mean, row.baseline_sd)}")
    axes.set_xticks(range(len(groups)), ticks, fontsize=7)
    axes.set_ylabel(AXIS_LABEL, fontsize=8)
    axes.set_title("SUPERB: gain over the baseline, 95% paired-bootstrap interval (error bars)", fontsize=9)
    axes.margins(y=0.25)
    if bars:
        axes.legend(fontsize=7)
    figure.tight_layout()
    with atomic_open(png_path, "wb") as handle:
        figure.savefig(handle, format="png", dpi=120)


# -- score-s3prl results OUT_DIR ----------------------------------------------------------------


def report(out_dir: str | os.PathLike, csv_path: str | os.PathLike, plot_path: str | os.PathLike,
           resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED, merge: bool = True) -> str:
    """Rebuild a run folder's report from the rows of every finished score stage under ``out_dir``:
    merge them into the results CSV (:func:`.results.assemble`; ``merge=False``: the caller just
    did), write ``superb_summary.csv`` beside it and the chart ``plot_path``. Returns the text to
    print: the runs' table, the summary table, and where the files are."""
    from . import results

    rows = results.assemble(out_dir, csv_path) if merge else results.with_gains(results.collect_rows(out_dir))
    order = list(RECIPES)
    rows = sorted(rows, key=lambda r: order.index(r.task) if r.task in order else len(order))  # stable
    summary = summarise(rows, resamples, seed)
    path = Path(csv_path).with_name(SUMMARY_FILE)
    write_summary(path, summary)
    lines = [results.runs_table(rows) if rows else f"{out_dir}: no finished score stage yet", ""]
    if summary:
        lines.append(format_table(summary))
    else:
        lines.append("no comparison yet: the baseline and another system need a finished run of the same "
                     "task, split and seed")
    if main_summary_rows(summary):
        plot_summary(summary, plot_path)
        lines.append(f"gains chart: {plot_path}")
    lines.append(f"summary: {path} ({len(summary)} comparisons); results: {csv_path} ({len(rows)} rows of {out_dir})")
    return "\n".join(lines)


def default_results_csv(out_dir: Path) -> Path:
    """The results CSV of a run folder: ``<out>/superb_results.csv`` where it exists (the demo
    writes there), else the runner's default ``results/superb_results.csv``."""
    inside = out_dir / "superb_results.csv"
    return inside if inside.is_file() else Path("results/superb_results.csv")


def main(argv: list[str] | None = None) -> int:
    from ..errors import ArgumentParser
    from .compare import positive_int, seed_value

    parser = ArgumentParser(
        prog="score-s3prl results",
        description="Rebuild a SUPERB run folder's results: the CSV rows of every finished score stage under "
                    "OUT_DIR, superb_summary.csv beside the CSV (mean ± sd over seeds, gain, 95% paired-bootstrap "
                    "interval, P(better), verdict), the printed tables and the gains chart. Tasks run separately "
                    "(or on other machines) into one OUT_DIR end in one report.",
    )
    parser.add_argument("out", type=Path, metavar="OUT_DIR", help="the runner's --out folder")
    parser.add_argument("--results", type=Path, metavar="CSV",
                        help="results CSV (default: OUT_DIR/superb_results.csv if present, else "
                             "results/superb_results.csv)")
    parser.add_argument("--plot", type=Path, metavar="PNG", help="gains chart (default: superb_gains.png beside the CSV)")
    parser.add_argument("--resamples", type=positive_int, default=DEFAULT_RESAMPLES,
                        help=f"bootstrap draws (default {DEFAULT_RESAMPLES})")
    parser.add_argument("--seed", type=seed_value, default=DEFAULT_SEED, help=f"bootstrap seed (default {DEFAULT_SEED})")
    args = parser.parse_args(argv)
    out = args.out.expanduser().resolve()
    if not out.is_dir():
        raise ScoreError(f"{out}: run folder not found")
    csv_path = (args.results or default_results_csv(out)).expanduser().resolve()
    from .results import check_results_file

    check_results_file(csv_path)
    plot = (args.plot or csv_path.with_name("superb_gains.png")).expanduser().resolve()
    print(report(out, csv_path, plot, args.resamples, args.seed))
    return 0
