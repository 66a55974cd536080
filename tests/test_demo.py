"""``./run_superb.sh demo`` end to end on the CPU: no data, no weights, real s3prl recipes.

A shorter variant of the default demo (2 downstream updates, 4 SCORE updates) from a fresh
working directory; it takes a minute or two on 2 cores.
"""

from __future__ import annotations

import csv
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from score_s3prl import probe
from score_s3prl.superb import demo_data, metrics, mtwv, results

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
        ("pr", "per", "test"), ("qbe", "mtwv", "test"), ("qbe", "mtwv", "test"),
        ("probe", "view_divergence", "test-other"), ("probe", "view_divergence", "test-other")]
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
    for row in rows[4:6]:
        truth = folder / "data" / "quesst14Database" / "scoring" / "groundtruth_quesst14_eval"
        score_ = mtwv.qbe_score(Path(row["run_dir"]) / "benchmark.stdlist.xml", truth)
        assert float(row["value"]) == pytest.approx(score_.max_twv)
    assert (folder / "superb_gains.png").read_bytes()[:4] == b"\x89PNG"
    assert "paper gain" in out and "+12.65%" in out


def test_demo_probes_base_and_score_on_held_out_speakers(demo):
    cwd, out = demo
    folder = cwd / "demo"
    with open(folder / "superb_results.csv", newline="") as handle:
        rows = [r for r in csv.DictReader(handle) if r["task"] == "probe"]
    assert [r["upstream"] for r in rows] == ["hubert_local", "score_hubert_local"]
    assert all(r["lower_is_better"] == "true" and math.isfinite(float(r["value"])) for r in rows)
    assert math.isfinite(float(rows[1]["relative_gain_vs_baseline_%"]))
    for row in rows:  # the value is the last layer's for the "score" views in the probe's own CSV
        probe_dir = Path(row["run_dir"])
        assert probe_dir.parent.parent == folder / "probe"
        assert probe_dir.joinpath("probe.png").read_bytes()[:4] == b"\x89PNG"
        probed = probe.read_csv(probe_dir / "probe.csv")
        assert float(row["value"]) == pytest.approx(probe.last_layer_value(probed, row["upstream"]))
        # held out: test-other speakers, none of them in the fine-tuning subsets
        assert {r.n for r in probed} == {len(list(demo_data.ASSETS.joinpath("test-other").rglob("*.flac")))}
    tuned = yaml.safe_load((REPO / "upstream_configs" / "score_tiny.yaml").read_text())["data"]["subsets"]
    heard = {p.parent.parent.name for s in tuned for p in demo_data.ASSETS.joinpath(s).rglob("*.flac")}
    probed_speakers = {p.parent.parent.name for p in demo_data.ASSETS.joinpath("test-other").rglob("*.flac")}
    assert heard and probed_speakers and not heard & probed_speakers
    assert "invariance probe" in out and out.index("invariance probe") > out.index("paper gain")


def test_demo_rerun_skips_everything(demo):
    cwd, _ = demo
    before = (cwd / "demo" / "superb_results.csv").read_bytes()
    out = run_superb(cwd, "demo", "--steps", "2", "--finetune-steps", "4").stdout
    assert "running" not in out and out.count("done before, skipped") == 25
    assert "rows of this run in" in out
    assert (cwd / "demo" / "superb_results.csv").read_bytes() == before
