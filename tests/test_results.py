"""Results CSV (append-only, schema), relative gains, summary table, gains plot, run identity."""

import csv
import math
import re

import matplotlib.image
import pytest

from score_s3prl.errors import ScoreError
from score_s3prl.superb.results import (
    COLUMNS,
    HEADER,
    PAPER_GAINS,
    ResultRow,
    append_results,
    git_commit,
    plot_gains,
    read_results,
    relative_gain,
    summary_table,
)


def row(task, metric, upstream, value, lower, gain=None, split="test"):
    return ResultRow(
        task=task, metric=metric, upstream=upstream, checkpoint=f"/ckpt/{upstream}.pt", split=split,
        value=value, lower_is_better=lower, run_dir=f"/runs/{task}_{upstream}", git_commit="abc123",
        config_hash="0123456789", relative_gain_pct=gain, date="2025-01-01T00:00:00+00:00",
    )  # fmt: skip


def run_rows():
    return [
        row("asr", "wer", "hubert_local", 6.42, True),
        row("asr", "wer", "score_hubert_local", 6.35, True, relative_gain(6.35, 6.42, True)),
        row("qbe", "mtwv", "hubert_local", 0.0736, False),
        row("qbe", "mtwv", "score_hubert_local", 0.0829, False,
            relative_gain(0.0829, 0.0736, False)),
    ]


@pytest.mark.parametrize(
    "value, base, lower, expected",
    [
        (9.0, 10.0, True, 10.0),  # lower error rate: positive gain
        (11.0, 10.0, True, -10.0),  # higher error rate: negative gain
        (0.11, 0.10, False, 10.0),  # higher MTWV: positive gain
        (0.09, 0.10, False, -10.0),
        (0.0, -0.05, False, 100.0),  # a negative MTWV baseline divides by |base|
    ],
)
def test_relative_gain_sign(value, base, lower, expected):
    assert relative_gain(value, base, lower) == pytest.approx(expected)


def test_relative_gain_of_zero_baseline_is_nan():
    assert math.isnan(relative_gain(0.1, 0.0, False))


def test_append_creates_then_only_appends(tmp_path):
    path = tmp_path / "results" / "superb_results.csv"
    rows = run_rows()
    append_results(path, rows[:2])
    first = path.read_bytes()
    assert first.decode().splitlines()[0] == HEADER
    append_results(path, rows[2:])
    second = path.read_bytes()
    assert second.startswith(first)  # earlier rows are never changed
    with open(path, newline="") as handle:
        records = list(csv.DictReader(handle))
    assert list(records[0]) == list(COLUMNS)
    assert [r["task"] for r in records] == ["asr", "asr", "qbe", "qbe"]
    assert records[0]["relative_gain_vs_baseline_%"] == ""  # baseline
    gain = float(records[1]["relative_gain_vs_baseline_%"])
    assert gain == pytest.approx((6.42 - 6.35) / 6.42 * 100, rel=1e-5)
    assert records[3]["lower_is_better"] == "false" and float(records[3]["value"]) == 0.0829
    assert [p.name for p in path.parent.iterdir() if p.name.endswith(".tmp")] == []


def test_malformed_csv_is_an_error_and_left_untouched(tmp_path):
    path = tmp_path / "superb_results.csv"
    path.write_text("task,metric,value\nasr,wer,6.4\n")
    before = path.read_bytes()
    with pytest.raises(ScoreError, match="superb_results.csv: not a SUPERB results file"):
        append_results(path, run_rows())
    with pytest.raises(ScoreError, match="superb_results.csv: not a SUPERB results file"):
        read_results(path)
    assert path.read_bytes() == before


def test_read_results_round_trip(tmp_path):
    path = tmp_path / "r.csv"
    append_results(path, run_rows())
    frame = read_results(path)
    assert list(frame.columns) == [*COLUMNS, "baseline"]
    assert frame["baseline"].tolist() == [True, False, True, False]
    assert frame["value"].tolist() == [6.42, 6.35, 0.0736, 0.0829]
    assert frame["lower_is_better"].tolist() == [True, True, False, False]
    gains = frame["relative_gain_vs_baseline_%"]
    assert gains.isna().tolist() == [True, False, True, False]
    assert gains.iloc[3] == pytest.approx((0.0829 - 0.0736) / 0.0736 * 100, rel=1e-5)
    assert frame["config_hash"].iloc[0] == "0123456789"  # kept as text, not a number


def test_summary_table_puts_paper_gains_beside_ours():
    table = summary_table(run_rows())
    lines = table.splitlines()
    assert lines[0].split() == "task metric split upstream value gain paper gain".split()
    asr = next(line for line in lines if "score_hubert_local" in line and line.startswith("asr"))
    assert "+1.09%" in asr and "6.3500" in asr and f"{(6.42 - 6.35) / 6.42 * 100:+.2f}%" in asr
    qbe = next(line for line in lines if "score_hubert_local" in line and line.startswith("qbe"))
    assert f"{PAPER_GAINS['qbe']:+.2f}%" in qbe
    assert "baseline" in next(line for line in lines if "hubert_local " in line)


def test_undefined_gain_is_not_shown_as_a_baseline(tmp_path):
    # A baseline MTWV of 0 leaves the gain undefined (NaN): it reads "n/a", beside the paper's.
    rows = [row("qbe", "mtwv", "hubert_local", 0.0, False),
            row("qbe", "mtwv", "score_hubert_local", 0.0, False, relative_gain(0.0, 0.0, False))]
    append_results(tmp_path / "r.csv", rows)
    for source in (rows, read_results(tmp_path / "r.csv")):
        score_line = summary_table(source).splitlines()[2]
        assert "n/a" in score_line and f"{PAPER_GAINS['qbe']:+.2f}%" in score_line


def test_plot_gains_writes_a_png(tmp_path):
    path = tmp_path / "plots" / "gains.png"
    plot_gains(run_rows(), path)
    data = path.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
    assert sorted(p.name for p in path.parent.iterdir()) == ["gains.png"]


def test_git_commit(tmp_path, monkeypatch):
    commit = git_commit()
    assert commit == "unknown" or re.fullmatch(r"[0-9a-f]{12}", commit)
    assert git_commit(tmp_path) == "unknown"  # not a checkout
    monkeypatch.setenv("PATH", str(tmp_path))  # no git at all
    assert git_commit() == "unknown"
