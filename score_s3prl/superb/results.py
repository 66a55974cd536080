"""SUPERB results: the append-only CSV, relative gains, the summary table and the gains plot.

``results/superb_results.csv`` gets one row per (task, upstream, split) measurement. Rows are
appended, never rewritten: an append copies the old bytes verbatim, adds the new rows and
renames the result over the file, under an exclusive lock so that concurrent runners do not
lose each other's rows.
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import io
import math
import os
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from ..errors import ScoreError
from ..recipes import RECIPES, SCORE_HUBERT
from ..fileio import atomic_open

COLUMNS = (
    "task",  # asr, pr or qbe
    "metric",  # wer, per (percent) or mtwv
    "upstream",  # s3prl upstream name, e.g. hubert_local or score_hubert_local
    "checkpoint",  # upstream checkpoint path
    "split",  # evaluated split, e.g. test-clean, test, eval
    "value",  # the metric
    "lower_is_better",  # true for error rates, false for MTWV
    "relative_gain_vs_baseline_%",  # empty for the baseline row
    "run_dir",  # s3prl experiment directory
    "date",  # UTC, ISO 8601
    "git_commit",  # commit of this project, or "unknown"
    "config_hash",  # hashing.json_hash() of the run's settings
)
HEADER = ",".join(COLUMNS)

# SCORE paper (ICASSP 2024): relative gains over HuBERT Base, percent
PAPER_GAINS = {task: r.paper_gains[SCORE_HUBERT] for task, r in RECIPES.items() if SCORE_HUBERT in r.paper_gains}
TASK_ORDER = tuple(RECIPES)


def utc_now() -> str:
    """Current UTC time, ISO 8601 to the second."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass(frozen=True)
class ResultRow:
    """One line of the results CSV (see :data:`COLUMNS`)."""

    task: str
    metric: str
    upstream: str
    checkpoint: str
    split: str
    value: float
    lower_is_better: bool
    run_dir: str
    git_commit: str
    config_hash: str
    relative_gain_pct: float | None = None  # None for the baseline
    date: str = field(default_factory=utc_now)

    def csv_fields(self) -> list[str]:
        """The CSV fields, in :data:`COLUMNS` order."""
        gain = "" if self.relative_gain_pct is None else f"{self.relative_gain_pct:.6g}"
        return [
            self.task, self.metric, self.upstream, str(self.checkpoint), self.split,
            repr(float(self.value)), "true" if self.lower_is_better else "false", gain,
            str(self.run_dir), self.date, self.git_commit, self.config_hash,
        ]  # fmt: skip


def relative_gain(value: float, base: float, lower_is_better: bool) -> float:
    """Relative gain over the baseline in percent, positive when ``value`` is better.

    (base - value) / base * 100 when lower is better (error rates), else
    (value - base) / |base| * 100 (MTWV). NaN when ``base`` is 0 (undefined).
    """
    if base == 0:
        return math.nan
    if lower_is_better:
        return (base - value) / base * 100.0
    return (value - base) / abs(base) * 100.0


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on a sidecar file beside ``path`` (POSIX advisory lock)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(f".{path.name}.lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _checked_content(path: Path) -> bytes:
    """The file's bytes, after checking its header; the header alone for a new or empty file."""
    try:
        content = path.read_bytes()
    except FileNotFoundError:
        content = b""
    if not content:
        return (HEADER + "\n").encode()
    first = content.split(b"\n", 1)[0].rstrip(b"\r").decode("utf-8", errors="replace")
    if first != HEADER:
        raise ScoreError(
            f"{path}: not a SUPERB results file (header {first[:120]!r}, expected {HEADER!r}); "
            "left untouched: move it away or pass another path"
        )
    return content if content.endswith(b"\n") else content + b"\n"


def check_results_file(csv_path: str | os.PathLike) -> None:
    """Refuse now, before a long run, a results path that :func:`append_results` would refuse.

    Raises:
        ScoreError: ``csv_path`` is a folder, or a file with another header.
    """
    path = Path(csv_path)
    if path.is_dir():
        raise ScoreError(f"{path}: results path is a folder; pass a CSV file path")
    _checked_content(path)


def append_results(csv_path: str | os.PathLike, rows: Sequence[ResultRow]) -> None:
    """Append ``rows`` to the results CSV, creating it with its header if needed.

    Earlier bytes are kept exactly; the new file replaces the old one atomically.

    Raises:
        ScoreError: the existing file has another header (it is not touched).
    """
    path = Path(csv_path)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    for row in rows:
        writer.writerow(row.csv_fields())
    with _locked(path):
        content = _checked_content(path)
        with atomic_open(path, "wb") as handle:
            handle.write(content + buffer.getvalue().encode("utf-8"))


def read_results(csv_path: str | os.PathLike) -> pd.DataFrame:
    """The results CSV as a DataFrame: ``value`` and the gain column as floats (NaN for
    empty or undefined), ``lower_is_better`` as bool, every other column as str, plus a bool
    ``baseline`` column (the gain field is empty)."""
    path = Path(csv_path)
    if not path.is_file():
        raise ScoreError(f"{path}: results file not found")
    _checked_content(path)
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    return _typed(frame)


def _typed(frame: pd.DataFrame) -> pd.DataFrame:
    gain = COLUMNS[7]
    frame = frame.copy()
    frame["baseline"] = frame[gain].astype(str) == ""  # "nan" is a gain that is undefined
    frame["value"] = pd.to_numeric(frame["value"], errors="coerce")
    frame[gain] = pd.to_numeric(frame[gain], errors="coerce")
    frame["lower_is_better"] = frame["lower_is_better"].astype(str).str.lower() == "true"
    return frame


def _frame(rows: Sequence[ResultRow] | pd.DataFrame) -> pd.DataFrame:
    if isinstance(rows, pd.DataFrame):
        return rows
    records = [row.csv_fields() for row in rows]
    return _typed(pd.DataFrame(records, columns=list(COLUMNS)))


def _percent(value: float) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:+.2f}%"


def summary_table(
    rows: Sequence[ResultRow] | pd.DataFrame, paper_gains: dict[str, float] = PAPER_GAINS
) -> str:
    """A plain-text table of the results, our relative gains beside the paper's."""
    frame = _frame(rows)
    gain = COLUMNS[7]
    header = ("task", "metric", "split", "upstream", "value", "gain", "paper gain")
    lines = [header]
    for _, row in frame.iterrows():
        is_base = row["baseline"]
        paper = paper_gains.get(row["task"])
        lines.append((
            row["task"], row["metric"], row["split"], row["upstream"], f"{row['value']:.4f}",
            "baseline" if is_base else _percent(row[gain]),
            "" if is_base or paper is None else f"{paper:+.2f}%",
        ))  # fmt: skip
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(header))]
    text = ("  ".join(str(c).ljust(w) for c, w in zip(line, widths)).rstrip() for line in lines)
    return "\n".join(text)


def plot_gains(
    rows: Sequence[ResultRow] | pd.DataFrame,
    png_path: str | os.PathLike,
    paper_gains: dict[str, float] = PAPER_GAINS,
) -> None:
    """Bar chart (PNG, written atomically) of relative gains per task: the paper's, and for each
    non-baseline upstream its latest row per task."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # no pyplot: no global backend
    from matplotlib.figure import Figure

    frame = _frame(rows)
    gain = COLUMNS[7]
    ours = frame[~frame["baseline"]].groupby(["task", "upstream"], sort=False).tail(1)
    present = set(ours["task"]) | set(paper_gains)
    tasks = [t for t in TASK_ORDER if t in present] + sorted(present - set(TASK_ORDER))
    series = [("SCORE paper", [paper_gains.get(t, math.nan) for t in tasks])]
    for upstream, group in ours.groupby("upstream", sort=False):
        by_task = dict(zip(group["task"], group[gain]))
        series.append((str(upstream), [by_task.get(t, math.nan) for t in tasks]))

    figure = Figure(figsize=(2.0 + 1.6 * len(tasks), 4.0))
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    width = 0.8 / len(series)
    for k, (label, values) in enumerate(series):
        positions = [i + (k - (len(series) - 1) / 2) * width for i in range(len(tasks))]
        bars = axes.bar(positions, values, width, label=label)
        axes.bar_label(bars, fmt="%.2f", fontsize=8)
    axes.axhline(0.0, color="black", linewidth=0.8)
    axes.set_xticks(range(len(tasks)), [t.upper() for t in tasks])
    axes.set_ylabel("relative gain over baseline (%)")
    axes.set_title("SUPERB: relative gain over the baseline upstream")
    axes.legend(fontsize=8)
    figure.tight_layout()
    with atomic_open(png_path, "wb") as handle:
        figure.savefig(handle, format="png", dpi=120)


def git_commit(repo_dir: str | os.PathLike | None = None) -> str:
    """Short commit hash of ``repo_dir`` (default: this project's checkout); "unknown" when
    git is missing or the directory is not a git checkout."""
    repo_dir = Path(__file__).resolve().parents[2] if repo_dir is None else Path(repo_dir)
    try:
        done = subprocess.run(
            ["git", "-C", str(repo_dir), "rev-parse", "--short=12", "HEAD"],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return done.stdout.strip() if done.returncode == 0 and done.stdout.strip() else "unknown"
