"""Results CSV (assembled from run folders, schema, legacy files), relative gains, summary table,
gains plot, run identity."""

import csv
import dataclasses
import json
import math
import re

import matplotlib.image
import pytest

from score_s3prl.errors import ScoreError
from score_s3prl.superb.results import (
    COLUMNS,
    HEADER,
    PAPER_GAINS,
    LEGACY_COLUMNS,
    ResultRow,
    assemble,
    collect_rows,
    git_commit,
    plot_gains,
    read_results,
    relative_gain,
    summary_table,
)


def row(task, metric, upstream, value, lower, gain=None, split="test", seed=None, run_dir=None):
    return ResultRow(
        task=task, metric=metric, upstream=upstream, checkpoint=f"/ckpt/{upstream}.pt", split=split,
        value=value, lower_is_better=lower, run_dir=run_dir or f"/runs/{task}_{upstream}", git_commit="abc123",
        config_hash="0123456789", relative_gain_pct=gain, date="2025-01-01T00:00:00+00:00", seed=seed,
        baseline_system="hubert_local",
    )  # fmt: skip


def write_marker(out, unit: str, stem: str, rows) -> None:
    """A finished score stage's done-marker, as the pipeline writes it, holding ``rows``."""
    folder = out / unit
    folder.mkdir(parents=True, exist_ok=True)
    record = {"key": "k", "stamp": "s", "outputs": {"rows": [dataclasses.asdict(r) for r in rows]}}
    (folder / f"{stem}.done.json").write_text(json.dumps(record))


def write_run(out, values: dict[tuple[str, int], float]) -> None:
    """Score markers of an ASR run: ``values[(upstream, seed)]`` is the WER of that unit."""
    for (upstream, seed), value in values.items():
        unit = f"asr/{upstream}/seed{seed}"
        write_marker(out, unit, "score-test-clean",
                     [row("asr", "wer", upstream, value, True, split="test-clean", seed=seed,
                          run_dir=str(out / unit / "test-clean"))])


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


def test_assemble_collects_rows_pairs_gains_by_seed_and_writes_the_csv(tmp_path):
    out, path = tmp_path / "run", tmp_path / "results" / "superb_results.csv"
    write_run(out, {("hubert_local", 1): 10.0, ("hubert_local", 2): 8.0,
                    ("score_hubert_local", 1): 9.0, ("score_hubert_local", 2): 8.0})
    rows = assemble(out, path)
    assert path.read_text().splitlines()[0] == HEADER
    gains = {(r.upstream, r.seed): r.relative_gain_pct for r in rows}
    # each tuned row against the baseline of its own seed, not of another
    assert gains == {("hubert_local", 1): None, ("hubert_local", 2): None,
                     ("score_hubert_local", 1): pytest.approx(10.0), ("score_hubert_local", 2): pytest.approx(0.0)}
    with open(path, newline="") as handle:
        records = list(csv.DictReader(handle))
    assert list(records[0]) == list(COLUMNS)
    assert [(r["upstream"], r["seed"], r["relative_gain_vs_baseline_%"]) for r in records] == [
        ("hubert_local", "1", ""), ("hubert_local", "2", ""), ("score_hubert_local", "1", "10"),
        ("score_hubert_local", "2", "0")]
    assert [p.name for p in path.parent.iterdir() if p.name.endswith(".tmp")] == []


def test_assemble_replaces_a_rerun_and_keeps_other_runs_rows(tmp_path):
    path = tmp_path / "superb_results.csv"
    write_run(tmp_path / "a", {("hubert_local", 1): 10.0, ("score_hubert_local", 1): 9.0})
    write_run(tmp_path / "b", {("hubert_local", 1): 20.0, ("score_hubert_local", 1): 10.0})
    assemble(tmp_path / "a", path)
    assemble(tmp_path / "b", path)
    write_run(tmp_path / "a", {("score_hubert_local", 1): 5.0})  # a rerun of one unit of run a
    assemble(tmp_path / "a", path)
    rows = read_results(path)
    assert len(rows) == 4  # no duplicate of the rerun unit
    by_dir = dict(zip(rows["run_dir"], rows["value"]))
    assert by_dir[str(tmp_path / "a" / "asr/score_hubert_local/seed1/test-clean")] == 5.0
    assert by_dir[str(tmp_path / "b" / "asr/score_hubert_local/seed1/test-clean")] == 10.0
    assert sorted(rows["relative_gain_vs_baseline_%"].dropna()) == pytest.approx([50.0, 50.0])


def test_collect_rows_reads_only_score_markers(tmp_path):
    write_run(tmp_path, {("hubert_local", 1): 10.0})
    write_marker(tmp_path, "asr/hubert_local/seed1", "train", [row("asr", "wer", "x", 1.0, True)])
    (tmp_path / "asr" / "hubert_local" / "seed1" / "score-broken.done.json").write_text("{half")
    assert [r.upstream for r in collect_rows(tmp_path)] == ["hubert_local"]


def test_a_legacy_results_file_still_reads_and_is_upgraded(tmp_path):
    path = tmp_path / "old.csv"
    legacy = [row("asr", "wer", "hubert_local", 6.42, True), row("asr", "wer", "score_hubert_local", 6.35, True, 1.09)]
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(LEGACY_COLUMNS)
        for r in legacy:
            writer.writerow(r.csv_fields()[:len(LEGACY_COLUMNS)])
    frame = read_results(path)
    assert frame["baseline"].tolist() == [True, False]  # a legacy row: the empty gain tells
    assert frame["label"].tolist() == ["hubert_local", "score_hubert_local"] and frame["seed"].tolist() == ["", ""]
    write_run(tmp_path / "run", {("hubert_local", 1): 10.0})
    assemble(tmp_path / "run", path)
    assert path.read_text().splitlines()[0] == HEADER and len(read_results(path)) == 3


def test_malformed_csv_is_an_error_and_left_untouched(tmp_path):
    path = tmp_path / "superb_results.csv"
    path.write_text("task,metric,value\nasr,wer,6.4\n")
    before = path.read_bytes()
    write_run(tmp_path / "run", {("hubert_local", 1): 10.0})
    with pytest.raises(ScoreError, match="superb_results.csv: not a SUPERB results file"):
        assemble(tmp_path / "run", path)
    with pytest.raises(ScoreError, match="superb_results.csv: not a SUPERB results file"):
        read_results(path)
    assert path.read_bytes() == before


def test_read_results_round_trip(tmp_path):
    path = tmp_path / "r.csv"
    for k, r in enumerate(run_rows()):
        write_marker(tmp_path / "run", f"{r.task}/{r.upstream}", f"score-{k}", [r])
    assemble(tmp_path / "run", path)
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
    assert lines[0].split() == "task metric split upstream seed value gain paper gain".split()
    asr = next(line for line in lines if "score_hubert_local" in line and line.startswith("asr"))
    assert "+1.09%" in asr and "6.3500" in asr and f"{(6.42 - 6.35) / 6.42 * 100:+.2f}%" in asr
    qbe = next(line for line in lines if "score_hubert_local" in line and line.startswith("qbe"))
    assert f"{PAPER_GAINS['qbe']:+.2f}%" in qbe
    assert "baseline" in next(line for line in lines if "hubert_local " in line)


def test_undefined_gain_is_not_shown_as_a_baseline(tmp_path):
    # A baseline MTWV of 0 leaves the gain undefined (NaN): it reads "n/a", beside the paper's.
    rows = [row("qbe", "mtwv", "hubert_local", 0.0, False),
            row("qbe", "mtwv", "score_hubert_local", 0.0, False, relative_gain(0.0, 0.0, False))]
    for r in rows:
        write_marker(tmp_path / "run", f"qbe/{r.upstream}", "score-test", [r])
    assemble(tmp_path / "run", tmp_path / "r.csv")
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
