"""SUPERB results: the CSV, relative gains, the summary table and the gains plot.

``results/superb_results.csv`` holds one row per (task, upstream, split, seed) measurement. Each
score stage records its rows in its done-marker inside its own run directory; :func:`assemble`
collects them (:func:`collect_rows`), pairs each with the baseline system's row of the same task,
metric, split and seed to fill the relative gain, and merges them into the CSV: a row replaces the
older row of the same run directory, metric and split (a rerun never duplicates), rows of other
run folders are kept verbatim. The file is rewritten atomically under an exclusive lock, so
concurrent runners do not lose each other's rows. Files written before the ``seed``, ``label``,
``system`` and ``baseline_system`` columns existed still read (:data:`LEGACY_COLUMNS`).
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import io
import json
import math
import os
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd

from ..errors import ScoreError
from ..recipes import RECIPES
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
    "seed",  # s3prl --seed of the downstream training; empty for tasks that train nothing (QbE, probe)
    "label",  # the upstream's run folder name, unique in its run
    "system",  # the system the upstream belongs to (several fine-tuning seeds: one system)
    "baseline_system",  # the system this row is compared with (equal to system for the baseline)
)
HEADER = ",".join(COLUMNS)
LEGACY_COLUMNS = COLUMNS[:12]  # files written before seeds and systems: read, upgraded on the next write

# SCORE paper (ICASSP 2024): relative gains over HuBERT Base, percent
PAPER_GAINS = {task: r.paper_gain_pct for task, r in RECIPES.items() if r.paper_gain_pct is not None}
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
    relative_gain_pct: float | None = None  # None for the baseline (or with no baseline row to pair)
    date: str = field(default_factory=utc_now)
    seed: int | None = None
    label: str = ""  # "" -> the upstream's name
    system: str = ""  # "" -> the label
    baseline_system: str = ""  # "" -> unknown (a legacy row): the gain field alone tells

    def __post_init__(self) -> None:
        object.__setattr__(self, "label", self.label or self.upstream)
        object.__setattr__(self, "system", self.system or self.label)

    @property
    def is_baseline(self) -> bool:
        """The row of the baseline system (legacy rows: the one without a gain)."""
        if self.baseline_system:
            return self.system == self.baseline_system
        return self.relative_gain_pct is None

    def csv_fields(self) -> list[str]:
        """The CSV fields, in :data:`COLUMNS` order."""
        gain = "" if self.relative_gain_pct is None else f"{self.relative_gain_pct:.6g}"
        return [
            self.task, self.metric, self.upstream, str(self.checkpoint), self.split,
            repr(float(self.value)), "true" if self.lower_is_better else "false", gain,
            str(self.run_dir), self.date, self.git_commit, self.config_hash,
            "" if self.seed is None else str(self.seed), self.label, self.system, self.baseline_system,
        ]  # fmt: skip

    @classmethod
    def from_csv(cls, record: dict[str, str], source: str) -> ResultRow:
        """A row from a CSV record (:data:`COLUMNS` or :data:`LEGACY_COLUMNS`).

        Raises:
            ScoreError: naming ``source``, for a value of the wrong type.
        """
        try:
            gain = record[COLUMNS[7]]
            return cls(
                task=record["task"], metric=record["metric"], upstream=record["upstream"],
                checkpoint=record["checkpoint"], split=record["split"], value=float(record["value"]),
                lower_is_better=record["lower_is_better"].lower() == "true", run_dir=record["run_dir"],
                git_commit=record["git_commit"], config_hash=record["config_hash"],
                relative_gain_pct=float(gain) if gain else None, date=record["date"],
                seed=int(record["seed"]) if record.get("seed") else None, label=record.get("label", ""),
                system=record.get("system", ""), baseline_system=record.get("baseline_system", ""),
            )  # fmt: skip
        except (KeyError, ValueError) as exc:
            raise ScoreError(f"{source}: unreadable results row ({type(exc).__name__}: {exc})") from None


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
    if first not in (HEADER, ",".join(LEGACY_COLUMNS)):
        raise ScoreError(
            f"{path}: not a SUPERB results file (header {first[:120]!r}, expected {HEADER!r}); "
            "left untouched: move it away or pass another path"
        )
    return content if content.endswith(b"\n") else content + b"\n"


def _rows_of_content(content: bytes, source: str) -> list[ResultRow]:
    reader = csv.DictReader(io.StringIO(content.decode("utf-8", errors="replace")))
    return [ResultRow.from_csv(record, source) for record in reader]


def read_rows(csv_path: str | os.PathLike) -> list[ResultRow]:
    """The rows of a results CSV (either header); none for a missing file.

    Raises:
        ScoreError: the file has another header, or a row does not parse.
    """
    path = Path(csv_path)
    return _rows_of_content(_checked_content(path), str(path))


def collect_rows(out_dir: str | os.PathLike, stages: Sequence[Any] | None = None) -> list[ResultRow]:
    """The result rows recorded by finished score stages.

    Args:
        stages: the run's score stages (:class:`score_s3prl.superb.stages.Stage`): rows of those
            whose marker holds their current key. None: every score stage's marker under
            ``out_dir`` (``score-*.done.json``), as ``score-s3prl results`` reads a run folder.
    """
    if stages is not None:
        records = [stage.marker_content() for stage in stages if stage.done()]
    else:
        records = []
        for marker in sorted(Path(out_dir).rglob("score-*.done.json")):
            try:
                records.append(json.loads(marker.read_text(encoding="utf-8")))
            except (OSError, json.JSONDecodeError):
                continue  # markers are written atomically: an unreadable one is not a finished stage
    return [ResultRow(**row) for record in records if isinstance(record, dict)
            for row in (record.get("outputs") or {}).get("rows", [])]


def with_gains(rows: Sequence[ResultRow]) -> list[ResultRow]:
    """``rows`` with ``relative_gain_pct`` filled against the baseline system's row of the same
    task, metric, split and seed (the mean, if the baseline system has several upstreams);
    None for baseline rows and for rows whose baseline row is missing."""
    base: dict[tuple, list[float]] = {}
    for row in rows:
        if row.is_baseline:
            base.setdefault((row.task, row.metric, row.split, row.seed), []).append(row.value)
    out = []
    for row in rows:
        values = None if row.is_baseline else base.get((row.task, row.metric, row.split, row.seed))
        gain = relative_gain(row.value, sum(values) / len(values), row.lower_is_better) if values else None
        out.append(replace(row, relative_gain_pct=gain))
    return out


def assemble(out_dir: str | os.PathLike, csv_path: str | os.PathLike,
             stages: Sequence[Any] | None = None) -> list[ResultRow]:
    """Merge the rows of ``out_dir``'s finished score stages (:func:`collect_rows`), with their
    gains, into the results CSV; returns them.

    A collected row replaces an older row with the same run directory, metric and split; every
    other row is kept. The file is rewritten atomically, with the current header.

    Raises:
        ScoreError: the existing file has another header (it is not touched).
    """
    rows = with_gains(collect_rows(out_dir, stages))
    path = Path(csv_path)
    fresh = {(r.run_dir, r.metric, r.split) for r in rows}
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(COLUMNS)
    with _locked(path):
        kept = [r for r in read_rows(path) if (r.run_dir, r.metric, r.split) not in fresh]
        for row in (*kept, *rows):
            writer.writerow(row.csv_fields())
        with atomic_open(path, "wb") as handle:
            handle.write(buffer.getvalue().encode("utf-8"))
    return rows


def check_results_file(csv_path: str | os.PathLike) -> None:
    """Refuse now, before a long run, a results path that :func:`assemble` would refuse.

    Raises:
        ScoreError: ``csv_path`` is a folder, or a file with another header.
    """
    path = Path(csv_path)
    if path.is_dir():
        raise ScoreError(f"{path}: results path is a folder; pass a CSV file path")
    _checked_content(path)


def read_results(csv_path: str | os.PathLike) -> pd.DataFrame:
    """The results CSV as a DataFrame: ``value`` and the gain column as floats (NaN for
    empty or undefined), ``lower_is_better`` as bool, every other column as str (a legacy file's
    missing columns filled as :class:`ResultRow` fills them), plus a bool ``baseline`` column."""
    path = Path(csv_path)
    if not path.is_file():
        raise ScoreError(f"{path}: results file not found")
    return _frame(read_rows(path))


def _typed(frame: pd.DataFrame) -> pd.DataFrame:
    gain = COLUMNS[7]
    frame = frame.copy()
    legacy = frame["baseline_system"].astype(str) == ""
    frame["baseline"] = (frame["system"] == frame["baseline_system"]) | (legacy & (frame[gain].astype(str) == ""))
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
    header = ("task", "metric", "split", "upstream", "seed", "value", "gain", "paper gain")
    lines = [header]
    for _, row in frame.iterrows():
        is_base = row["baseline"]
        paper = paper_gains.get(row["task"])
        lines.append((
            row["task"], row["metric"], row["split"], row["label"], row["seed"], f"{row['value']:.4f}",
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
    ours = frame[~frame["baseline"]].groupby(["task", "label"], sort=False).tail(1)
    present = set(ours["task"]) | set(paper_gains)
    tasks = [t for t in TASK_ORDER if t in present] + sorted(present - set(TASK_ORDER))
    series = [("SCORE paper", [paper_gains.get(t, math.nan) for t in tasks])]
    for upstream, group in ours.groupby("label", sort=False):
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
