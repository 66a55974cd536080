"""``score-s3prl compare`` on hand-made s3prl-style run directories (ASR, PR, QbE)."""

import json

import numpy as np
import pytest
from test_mtwv import stdlist_xml

from score_s3prl import cli
from score_s3prl.superb import mtwv
from score_s3prl.superb.compare import compare_runs

REFS = {f"u{i}": ("a b c d e f" if i % 2 else "g h i") for i in range(12)}


def write_run(folder, stem, hyps, refs=REFS):
    """An s3prl evaluate directory: ``{stem}-hyp.ark`` and ``{stem}-ref.ark``."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{stem}-ref.ark").write_text("".join(f"{u} {t}\n" for u, t in refs.items()))
    (folder / f"{stem}-hyp.ark").write_text("".join(f"{u} {hyps[u]}\n" for u in refs))
    return folder


def with_errors(count):
    """Each reference with its first ``count`` tokens substituted: ``count`` edits per utterance."""
    return {u: " ".join(["x"] * count + t.split()[count:]) for u, t in REFS.items()}


def run_cli(capsys, *argv):
    code = cli.main(["compare", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_pr_json_has_the_numbers(tmp_path, capsys):
    base = write_run(tmp_path / "base", "test", with_errors(2))
    tuned = write_run(tmp_path / "tuned", "test", with_errors(1))
    code, out, _ = run_cli(capsys, "--task", "pr", str(base), str(tuned), "--resamples", "500", "--json")
    assert code == 0
    result = json.loads(out)
    tokens = sum(len(t.split()) for t in REFS.values())  # 54
    base_per, tuned_per = 100 * 24 / tokens, 100 * 12 / tokens  # 2 and 1 edits per utterance
    assert result["base"] == pytest.approx(base_per) and result["tuned"] == pytest.approx(tuned_per)
    assert result["gain_pct"] == pytest.approx(50.0)
    assert result["n_items"] == 12 and result["p_better"] == 1.0 and result["verdict"] == "better"
    assert len(result["ci95"]) == 2 and 0 < result["ci95"][0] <= 50.0 <= result["ci95"][1]
    assert (result["task"], result["metric"], result["split"], result["resamples"]) == ("pr", "per", "test", 500)


def test_asr_text_names_the_verdict_and_unit_folders_are_found(tmp_path, capsys):
    # the runner's unit folder holds the evaluation in <split>/; the ASR files are {split}-noLM-*
    base = write_run(tmp_path / "base" / "test-clean", "test-clean-noLM", with_errors(1)).parent
    tuned = write_run(tmp_path / "tuned" / "test-clean", "test-clean-noLM", with_errors(1))
    code, out, _ = run_cli(capsys, "--task", "asr", str(base), str(tuned), "--resamples", "200")
    assert code == 0
    assert "relative gain +0.00% (positive = better)" in out and out.rstrip().endswith("no evidence")
    assert "12 utterances, 200 paired resamples (seed 0)" in out


def test_same_seed_same_interval(tmp_path):
    rng = np.random.default_rng(0)
    hyps = {u: " ".join(w if rng.random() > 0.3 else "x" for w in t.split()) for u, t in REFS.items()}
    base = write_run(tmp_path / "base", "test", with_errors(1))
    tuned = write_run(tmp_path / "tuned", "test", hyps)
    first = compare_runs("pr", [base], [tuned], resamples=300, seed=4)
    assert compare_runs("pr", [base], [tuned], resamples=300, seed=4) == first
    assert compare_runs("pr", [base], [tuned], resamples=300, seed=5).ci95 != first.ci95


def test_other_test_sets_are_refused(tmp_path, capsys):
    base = write_run(tmp_path / "base", "test", with_errors(1))
    other = {**REFS, "u0": "a b"}
    tuned = write_run(tmp_path / "tuned", "test", with_errors(1), refs=other)
    code, _, err = run_cli(capsys, "--task", "pr", str(base), str(tuned))
    assert code == 2 and "references differ" in err and str(tuned) in err and len(err.splitlines()) == 1
    fewer = write_run(tmp_path / "fewer", "test", with_errors(1), refs=dict(list(REFS.items())[:5]))
    code, _, err = run_cli(capsys, "--task", "pr", str(base), str(fewer))
    assert code == 2 and "reference utterances differ" in err


def test_missing_run_and_bad_arguments_are_one_error_line(tmp_path, capsys):
    base = write_run(tmp_path / "base", "test", with_errors(1))
    code, _, err = run_cli(capsys, "--task", "pr", str(base), str(tmp_path / "nowhere"))
    assert code == 2 and err == f"error: {tmp_path / 'nowhere'}: run directory not found\n"
    code, _, err = run_cli(capsys, "--task", "asr", str(base), str(base))
    assert code == 2 and "test-clean-noLM-hyp.ark" in err
    code, _, err = run_cli(capsys, "--task", "pr", str(base), str(base), "--resamples", "0")
    assert code == 2 and "--resamples" in err
    code, _, err = run_cli(capsys, "--task", "qbe", str(base), str(base))
    assert code == 2 and "--groundtruth" in err


def quesst(tmp_path, queries=8, files=10, seed=0):
    """A random QUESST ground truth folder and the targets matrix (queries, files)."""
    rng = np.random.default_rng(seed)
    targets = rng.random((queries, files)) < 0.3
    targets[np.arange(queries), rng.integers(0, files, queries)] = True
    truth = tmp_path / "groundtruth"
    truth.mkdir()
    (truth / "t.ecf.xml").write_text("<ecf>" + "".join(f'<excerpt audio_filename="Audio/f{j}.wav"/>'
                                                       for j in range(files)) + "</ecf>")
    (truth / "t.tlist.xml").write_text("<termlist>" + "".join(f'<term termid="q{i}"/>' for i in range(queries))
                                       + "</termlist>")
    (truth / "t.rttm").write_text("".join(f"LEXEME f{j} 1 0.0 0.5 q{i} <NA> <NA> <NA>\n"
                                          for i, j in zip(*np.nonzero(targets))))
    return truth, targets


def write_stdlist(folder, scores):
    folder.mkdir(parents=True)
    terms = {f"q{i}": [(f"f{j}", float(s), "NO") for j, s in enumerate(row)] for i, row in enumerate(scores)}
    (folder / "benchmark.stdlist.xml").write_text(stdlist_xml(terms))
    return folder


def test_qbe_compares_mtwv_over_queries(tmp_path, capsys):
    truth, targets = quesst(tmp_path)
    rng = np.random.default_rng(1)
    noise = rng.normal(size=targets.shape)
    base = write_stdlist(tmp_path / "base" / "test", noise + 2.0 * targets).parent  # a unit folder
    tuned = write_stdlist(tmp_path / "tuned", noise + 4.0 * targets)
    code, out, _ = run_cli(capsys, "--task", "qbe", str(base), str(tuned), "--groundtruth", str(truth),
                           "--resamples", "300", "--json")
    assert code == 0
    result = json.loads(out)
    base_mtwv = mtwv.qbe_score(base / "test" / "benchmark.stdlist.xml", truth).max_twv
    tuned_mtwv = mtwv.qbe_score(tuned / "benchmark.stdlist.xml", truth).max_twv
    assert result["base"] == pytest.approx(base_mtwv) and result["tuned"] == pytest.approx(tuned_mtwv)
    assert result["gain_pct"] == pytest.approx(100 * (tuned_mtwv - base_mtwv) / base_mtwv)
    assert result["n_items"] == 8 and result["metric"] == "mtwv" and result["lower_is_better"] is False
    assert result["verdict"] == "better" and result["p_better"] > 0.975
