"""``./run_superb.sh demo`` end to end on the CPU: no data, no weights, real s3prl recipes.

A shorter variant of the default demo (2 downstream updates, 4 SCORE updates) from a fresh
working directory; it takes about a minute on 2 cores.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

from score_s3prl.superb import metrics, mtwv, results

pytestmark = pytest.mark.slow  # the whole demo, end to end, in subprocesses

REPO = Path(__file__).resolve().parents[1]


def run_superb(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    result = subprocess.run([str(REPO / "run_superb.sh"), *args], cwd=cwd, capture_output=True, text=True,
                            timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1",
                                 "SCORE_S3PRL_PYTHON": sys.executable})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> tuple[Path, str]:
    cwd = tmp_path_factory.mktemp("fresh")
    return cwd, run_superb(cwd, "demo", "--steps", "2", "--finetune-steps", "4").stdout


def test_demo_runs_all_tasks_for_base_and_score(demo):
    cwd, out = demo
    folder = cwd / "demo"  # the default output folder, in the working directory
    assert out.count("NOT SUPERB numbers") == 2
    with open(folder / "superb_results.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["task"], r["metric"], r["split"]) for r in rows] == [
        ("asr", "wer", "test-clean"), ("asr", "wer", "test-clean"), ("pr", "per", "test"),
        ("pr", "per", "test"), ("qbe", "mtwv", "test"), ("qbe", "mtwv", "test")]
    base, score = rows[0::2], rows[1::2]
    assert {r["upstream"] for r in base} == {"hubert_local"}
    assert {r["checkpoint"] for r in base} == {str(folder / "models" / "tiny_base.pt")}
    assert {r["upstream"] for r in score} == {"score_hubert_local"}
    assert {r["checkpoint"] for r in score} == {str(folder / "score_tiny" / "score_hubert.pt")}
    assert all(r["relative_gain_vs_baseline_%"] == "" for r in base)
    for b, s in zip(base, score):
        lower = b["lower_is_better"] == "true"
        expected = results.relative_gain(float(s["value"]), float(b["value"]), lower)
        gain = float(s["relative_gain_vs_baseline_%"])  # NaN where the baseline scores 0 (tiny QbE)
        assert gain == pytest.approx(expected, rel=1e-5, abs=1e-9, nan_ok=True)
    # the metrics are recomputed from the files s3prl wrote
    for row in rows[:4]:
        rate = metrics.recipe_error_rate(row["run_dir"], row["task"], row["split"])
        assert float(row["value"]) == pytest.approx(rate.percent)
    for row in rows[4:]:
        truth = folder / "data" / "quesst14Database" / "scoring" / "groundtruth_quesst14_eval"
        score_ = mtwv.qbe_score(Path(row["run_dir"]) / "benchmark.stdlist.xml", truth)
        assert float(row["value"]) == pytest.approx(score_.max_twv)
    assert (folder / "superb_gains.png").read_bytes()[:4] == b"\x89PNG"
    assert "paper gain" in out and "+12.65%" in out


def test_demo_rerun_skips_everything(demo):
    cwd, _ = demo
    before = (cwd / "demo" / "superb_results.csv").read_bytes()
    out = run_superb(cwd, "demo", "--steps", "2", "--finetune-steps", "4").stdout
    assert "running" not in out and out.count("done before, skipped") == 21
    assert "0 rows appended" in out
    assert (cwd / "demo" / "superb_results.csv").read_bytes() == before
