"""superb_summary.csv, its table and chart, from results rows and hand-made run directories."""

import csv
import math

import matplotlib.image
import numpy as np
import pytest
from test_compare import REFS, quesst, with_errors, write_run, write_stdlist

from score_s3prl.errors import ScoreError
from score_s3prl.recipes import LASER_WAVLM, RECIPES, SCORE_HUBERT
from score_s3prl.superb import mtwv
from score_s3prl.superb.compare import compare_runs
from score_s3prl.superb.metrics import recipe_error_rate
from score_s3prl.superb.results import ResultRow
from score_s3prl.superb.summary import (
    SUMMARY_COLUMNS,
    chart_bars,
    checkpoint_identity,
    format_table,
    plot_summary,
    summarise,
    write_summary,
)

REQUIRED = ("n_seeds", "baseline_mean", "baseline_sd", "mean", "sd", "rel_gain_pct", "ci95_low", "ci95_high",
            "p_better", "verdict")


def result(task, system, run_dir, value, seed=None, baseline="hubert", split=None, metric=None, label=None,
           upstream="hubert_local", checkpoint=""):
    return ResultRow(
        task=task, metric=metric or RECIPES[task].metric, upstream=upstream, checkpoint=checkpoint,
        split=split or RECIPES[task].test_split, value=value, lower_is_better=RECIPES[task].lower_is_better,
        run_dir=str(run_dir), git_commit="abc", config_hash="0", seed=seed, label=label or system, system=system,
        baseline_system=baseline,
    )  # fmt: skip


def pr_run(tmp_path, name, errors):
    folder = write_run(tmp_path / name / "test", "test", with_errors(errors))
    return folder, recipe_error_rate(folder, "pr", "test").percent


def no_identity(upstream, checkpoint):
    return None


def pr_rows(tmp_path, tuned_errors=(1, 1), base_errors=(2, 3)):
    rows = []
    for seed, errors in zip((1, 2), base_errors):
        folder, value = pr_run(tmp_path, f"hubert/seed{seed}", errors)
        rows.append(result("pr", "hubert", folder, value, seed))
    for seed, errors in zip((1, 2), tuned_errors):
        folder, value = pr_run(tmp_path, f"score/seed{seed}", errors)
        rows.append(result("pr", "score", folder, value, seed, upstream="score_hubert_local"))
    return rows


def test_two_seeds_give_mean_sd_and_a_pooled_interval(tmp_path):
    rows = pr_rows(tmp_path)
    [summary] = summarise(rows, resamples=500, identity=no_identity)
    per = [100 * 12 * e / 54 for e in (2, 3)]  # 12 utterances, 54 phones, 2 or 3 edits each
    assert (summary.task, summary.split, summary.baseline, summary.system) == ("pr", "test", "hubert", "score")
    assert (summary.n_seeds, summary.n_runs) == (2, 2)
    assert summary.baseline_mean == pytest.approx(np.mean(per))
    assert summary.baseline_sd == pytest.approx(np.std(per, ddof=1))
    assert summary.mean == pytest.approx(100 * 12 / 54) and summary.sd == 0.0
    assert summary.rel_gain_pct == pytest.approx(100 * (1 - 1 / 2.5))
    assert summary.p_better == 1.0 and summary.verdict == "better" and summary.ci95_low > 0
    assert math.isnan(summary.paper_gain_pct)
    # the same pooled bootstrap as compare with the runs of each system
    c = compare_runs("pr", [r.run_dir for r in rows[:2]], [r.run_dir for r in rows[2:]], resamples=500)
    assert (summary.ci95_low, summary.ci95_high, summary.p_better) == (c.ci95[0], c.ci95[1], c.p_better)


def test_only_seeds_both_systems_have_pair_up(tmp_path):
    rows = pr_rows(tmp_path)
    folder, value = pr_run(tmp_path, "score/seed3", 0)
    rows.append(result("pr", "score", folder, value, 3))  # no baseline seed 3 (yet)
    [summary] = summarise(rows, resamples=100, identity=no_identity)
    assert (summary.n_seeds, summary.n_runs) == (2, 2)
    assert summary.mean == pytest.approx(100 * 12 / 54)


def test_summary_csv_has_the_columns_and_empty_fields_for_none(tmp_path):
    rows = pr_rows(tmp_path, tuned_errors=(2, 3))  # the same as the baseline
    probe = [result("probe", "hubert", tmp_path, 0.8, split="test-other"),
             result("probe", "score", tmp_path, 0.7, split="test-other")]
    summary = summarise(rows + probe, resamples=100, identity=no_identity)
    path = tmp_path / "out" / "superb_summary.csv"
    write_summary(path, summary)
    with open(path, newline="") as handle:
        table = list(csv.DictReader(handle))
    assert set(REQUIRED) <= set(SUMMARY_COLUMNS) and list(table[0]) == list(SUMMARY_COLUMNS)
    pr, probe_row = table
    assert pr["verdict"] == "no evidence" and float(pr["rel_gain_pct"]) == 0.0
    assert float(pr["ci95_low"]) <= 0 <= float(pr["ci95_high"])
    # the probe keeps no per-utterance values: a gain, no interval, so no evidence
    assert probe_row["task"] == "probe" and probe_row["ci95_low"] == probe_row["p_better"] == ""
    assert float(probe_row["rel_gain_pct"]) == pytest.approx(12.5) and probe_row["verdict"] == "no evidence"
    assert probe_row["baseline_sd"] == "" and probe_row["n_seeds"] == "1"


def test_qbe_reads_the_per_query_file_of_each_run(tmp_path):
    truth, targets = quesst(tmp_path)
    noise = np.random.default_rng(1).normal(size=targets.shape)
    rows = []
    for system, strength in (("hubert", 2.0), ("score", 4.0)):
        folder = write_stdlist(tmp_path / system / "test", noise + strength * targets)
        score = mtwv.qbe_score(folder / "benchmark.stdlist.xml", truth, per_query=folder / mtwv.QUERY_LOSSES_FILE)
        rows.append(result("qbe", system, folder, score.max_twv))
        rows.append(result("qbe", system, folder, score.max_twv, metric="mtwv_official"))  # not resampled
    [summary] = summarise(rows, resamples=300, identity=no_identity)
    c = compare_runs("qbe", [tmp_path / "hubert"], [tmp_path / "score"], groundtruth=truth, resamples=300)
    assert summary.n_items == c.n_items == 8 and summary.n_seeds == 1
    assert (summary.rel_gain_pct, summary.ci95_low, summary.ci95_high) == (c.gain_pct, *c.ci95)
    (tmp_path / "score" / "test" / mtwv.QUERY_LOSSES_FILE).unlink()
    with pytest.raises(ScoreError, match="per-query QbE file not found"):
        summarise(rows, resamples=10, identity=no_identity)


def test_per_item_files_that_changed_since_scoring_are_an_error(tmp_path):
    rows = pr_rows(tmp_path)
    write_run(tmp_path / "score/seed1/test", "test", with_errors(4))  # rewritten after its row
    with pytest.raises(ScoreError, match=r"score/seed1/test: its per-item data gives per .* rerun its score stage"):
        summarise(rows, resamples=10, identity=no_identity)


def test_paper_bars_only_for_the_method_and_base_run(tmp_path):
    rows = pr_rows(tmp_path)
    rows += [result("pr", "laser", r.run_dir, r.value, r.seed, upstream="score_wavlm_local", checkpoint="w.pt")
             for r in rows[2:]]
    rows += [result("pr", "mine", r.run_dir, r.value, r.seed, upstream="score_hubert_local", checkpoint="m.pt")
             for r in rows[2:4]]
    identities = {"": SCORE_HUBERT, "w.pt": LASER_WAVLM, "m.pt": None}
    summary = summarise(rows, resamples=50, identity=lambda upstream, ckpt: identities[ckpt])
    paper = {r.system: r.paper_gain_pct for r in summary}
    assert paper["score"] == 3.58 and paper["laser"] == 11.7 and math.isnan(paper["mine"])
    groups, bars = chart_bars(summary)
    assert groups == [("pr", "test")]
    papers = {b.series: b.value for b in bars if b.paper}
    assert papers == {"paper, score's method and base": 3.58, "paper, laser's method and base": 11.7}
    ours = [b for b in bars if not b.paper]
    assert [b.series for b in ours] == ["score", "laser", "mine"] and all(b.error is not None for b in ours)
    score = ours[0]
    assert score.value - score.error[0] == pytest.approx(summary[0].ci95_low)
    assert score.value + score.error[1] == pytest.approx(summary[0].ci95_high)
    # LASER reports no QbE: no paper bar there even for a LASER WavLM system
    assert RECIPES["qbe"].paper_gains == {SCORE_HUBERT: 12.65}


def test_table_and_chart(tmp_path):
    summary = summarise(pr_rows(tmp_path), resamples=200, identity=no_identity)
    table = format_table(summary)
    line = next(x for x in table.splitlines() if x.startswith("pr"))
    assert "score (vs hubert)" in line and " 2 " in line and "±" in line and line.rstrip().endswith("better")
    assert f"[{summary[0].ci95_low:+.2f}%, {summary[0].ci95_high:+.2f}%]" in line
    assert "positive = better" in table
    path = tmp_path / "gains.png"
    plot_summary(summary, path)
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[0] > 100


def test_checkpoint_identity_reads_the_tuned_checkpoints_metadata(tmp_path):
    from score_s3prl.checkpoints.hubert import write_converted
    from score_s3prl.checkpoints.wavlm import write_wavlm

    def converted(name, layers, dim, score):
        path = tmp_path / name
        write_converted(path, {}, {"encoder_layers": layers, "encoder_embed_dim": dim}, {}, [[]], score=score)
        return str(path)

    base_size = converted("a.pt", 12, 768, {"method": "LASER", "architecture": "hubert",
                                             "base_model": "local:/x/hubert.pt sha256:00"})
    assert checkpoint_identity("score_hubert_local", base_size) == ("LASER", "hubert_base")
    named = converted("n.pt", 12, 768, {"method": "score", "architecture": "hubert", "base_model": "hubert sha256:0"})
    assert checkpoint_identity("score_hubert_local", named) == ("SCORE", "hubert_base")  # s3prl's alias
    large = converted("l.pt", 24, 1024, {"method": "SCORE", "architecture": "hubert",
                                         "base_model": "hubert_large_ll60k sha256:00"})
    assert checkpoint_identity("score_hubert_local", large) == ("SCORE", "hubert_large_ll60k")
    assert RECIPES["pr"].paper_gains.get(("SCORE", "hubert_large_ll60k")) is None  # so: no paper bar
    tiny = converted("b.pt", 2, 32, {"method": "SCORE", "architecture": "hubert"})
    assert checkpoint_identity("score_hubert_local", tiny) is None  # not a base the paper tuned
    assert checkpoint_identity("score_hubert_local", converted("c.pt", 12, 768, None)) is None  # no metadata
    assert checkpoint_identity("hubert_base", "") is None

    def wavlm(name, base_model):
        path = tmp_path / name
        write_wavlm(path, {"encoder_layers": 12, "encoder_embed_dim": 768}, {},
                    score={"method": "LASER", "architecture": "wavlm", "base_model": base_model})
        return str(path)

    assert checkpoint_identity("score_wavlm_local", wavlm("w.pt", "wavlm_base sha256:0")) == ("LASER", "wavlm_base")
    # s3prl's default "wavlm" is Base+, which LASER did not report; a local WavLM file: Base or Base+?
    assert checkpoint_identity("score_wavlm_local", wavlm("p.pt", "wavlm sha256:0")) == ("LASER", "wavlm_base_plus")
    assert checkpoint_identity("score_wavlm_local", wavlm("f.pt", "local:/w.pt sha256:0")) is None
    assert checkpoint_identity("some_upstream", base_size) is None


def write_marker(out, unit, stem, rows):
    """A finished score stage's done-marker holding ``rows`` (as the pipeline writes it)."""
    import dataclasses
    import json

    folder = out / unit
    folder.mkdir(parents=True, exist_ok=True)
    record = {"key": "k", "stamp": "s", "outputs": {"rows": [dataclasses.asdict(r) for r in rows]}}
    (folder / f"{stem}.done.json").write_text(json.dumps(record))


def test_results_command_rebuilds_everything_from_the_run_folder(tmp_path, capsys):
    from score_s3prl import cli

    out = tmp_path / "exp"
    pr = pr_rows(out / "pr")  # run directories under the run folder, as the runner makes them
    for r in pr:
        write_marker(out, f"pr/{r.system}/seed{r.seed}", "score-test", [r])
    csv_path = tmp_path / "results" / "superb_results.csv"
    assert cli.main(["results", str(out), "--results", str(csv_path), "--resamples", "300"]) == 0
    printed = capsys.readouterr().out
    with open(csv_path.with_name("superb_summary.csv"), newline="") as handle:
        [summary] = list(csv.DictReader(handle))
    assert (summary["task"], summary["system"], summary["n_seeds"], summary["verdict"]) == ("pr", "score", "2", "better")
    assert (csv_path.with_name("superb_gains.png")).read_bytes()[:4] == b"\x89PNG"
    assert "score (vs hubert)" in printed and "gains chart:" in printed and "seed" in printed.splitlines()[0]
    # a task run later (another invocation, another machine) joins the same report
    truth, targets = quesst(tmp_path)
    noise = np.random.default_rng(1).normal(size=targets.shape)
    for system, strength in (("hubert", 2.0), ("score", 4.0)):
        folder = write_stdlist(out / "qbe" / system / "test", noise + strength * targets)
        score = mtwv.qbe_score(folder / "benchmark.stdlist.xml", truth, per_query=folder / mtwv.QUERY_LOSSES_FILE)
        write_marker(out, f"qbe/{system}", "score-test", [result("qbe", system, folder, score.max_twv)])
    assert cli.main(["results", str(out), "--results", str(csv_path), "--resamples", "300"]) == 0
    with open(csv_path.with_name("superb_summary.csv"), newline="") as handle:
        assert [(r["task"], r["split"]) for r in csv.DictReader(handle)] == [("pr", "test"), ("qbe", "test")]
    with open(csv_path, newline="") as handle:
        assert len(list(csv.DictReader(handle))) == 6  # 4 PR runs + 2 QbE runs, none duplicated
    capsys.readouterr()
    assert cli.main(["results", str(tmp_path / "nowhere")]) == 2
    assert "run folder not found" in capsys.readouterr().err
