"""The runner's units: one (task, upstream, seed) chain each, seeds and systems, unique labels."""

from __future__ import annotations

from pathlib import Path

import pytest

from score_s3prl.errors import ScoreError
from score_s3prl.superb import cli
from score_s3prl.superb.plan import Planner
from score_s3prl.superb.settings import Upstream, distinct_labels, parse_upstream


def settings(tmp_path: Path, *argv: str):
    return cli.settings_from(cli.parse_args([*argv, "--out", str(tmp_path / "out"), "--device", "cpu",
                                             "--libri-root", str(tmp_path / "libri"),
                                             "--quesst-root", str(tmp_path / "quesst")]))


def test_trained_tasks_have_one_unit_per_seed_and_the_others_one_per_upstream(tmp_path):
    s = settings(tmp_path, "all", "--seeds", "3,1,3", "--upstream", "hubert_base",
                 "--upstream", f"score_hubert_local={tmp_path}/a.pt")
    assert s.seeds == (3, 1)  # distinct, in the order given
    units = Planner(s).units()
    keys = [u.key for u in units]
    assert keys == [
        "asr/hubert_base/seed3", "asr/hubert_base/seed1", "asr/score_hubert_local--a/seed3", "asr/score_hubert_local--a/seed1",
        "pr/hubert_base/seed3", "pr/hubert_base/seed1", "pr/score_hubert_local--a/seed3", "pr/score_hubert_local--a/seed1",
        "qbe/hubert_base", "qbe/score_hubert_local--a", "probe/hubert_base", "probe/score_hubert_local--a"]
    asr = units[1]
    assert asr.run_dir == s.out / "asr" / "hubert_base" / "seed1"
    assert all(stage.folder == asr.run_dir for stage in asr.stages)
    train = asr.stages[0].command()
    assert train[train.index("--seed") + 1] == "1"
    assert [stage.name for stage in asr.score_stages] == ["asr/hubert_base/seed1/score"]
    # no unit waits on another: only the shared preparation is a dependency from outside the unit
    shared = set(Planner(s).shared_stages())
    for unit in units:
        for stage in unit.stages:
            assert all(dep in unit.stages or dep.name.startswith("prepare/") for dep in stage.deps), stage.name
    assert {stage.name for stage in shared} == {"prepare/asr", "prepare/pr"}


def test_default_is_one_seed_s3prls_own(tmp_path):
    s = settings(tmp_path, "asr", "--upstream", "hubert_base")
    assert s.seeds == (1337,)
    assert [u.key for u in Planner(s).units()] == ["asr/hubert_base/seed1337"]


@pytest.mark.parametrize("text", ["", "1,x", "-1", "1.5", str(2**32)])
def test_bad_seeds_are_one_line(tmp_path, text):
    with pytest.raises(ScoreError, match="--seeds"):
        settings(tmp_path, "asr", "--seeds", text)


def test_systems_group_fine_tuning_seeds_and_labels_stay_unique(tmp_path):
    ups = distinct_labels(tuple(parse_upstream(text) for text in (
        "hubert_base",
        f"score:score_hubert_local={tmp_path}/s1/score_hubert.pt",
        f"score:score_hubert_local={tmp_path}/s2/score_hubert.pt")))
    assert [u.label for u in ups] == ["hubert_base", "score_hubert_local--s1_score_hubert",
                                      "score_hubert_local--s2_score_hubert"]
    assert [u.system_name for u in ups] == ["hubert_base", "score", "score"]
    assert ups[1].flags == ["-u", "score_hubert_local", "-k", f"{tmp_path}/s1/score_hubert.pt"]
    # a URL checkpoint keeps its name; the system prefix is not taken from a URL's scheme
    url = parse_upstream("score_hubert_url=https://example.org/x/score_hubert.pt")
    assert (url.name, url.ckpt, url.system) == ("score_hubert_url", "https://example.org/x/score_hubert.pt", None)
    with pytest.raises(ScoreError, match="given twice"):
        distinct_labels((Upstream("hubert_local", "/a/b.pt"), Upstream("hubert_local", "/a/b.pt")))


def test_rows_name_their_seed_system_and_baseline(tmp_path):
    s = settings(tmp_path, "asr", "--seeds", "7", "--upstream", "hubert_base",
                 "--upstream", f"score:score_hubert_local={tmp_path}/a.pt")
    planner = Planner(s)
    unit = planner.units()[1]
    row = planner.row("asr", "wer", unit.upstream, "test-clean", 5.0, unit.run_dir, "h", unit.seed)
    assert (row.seed, row.label, row.system, row.baseline_system) == (7, "score_hubert_local--a", "score", "hubert_base")
    assert row.relative_gain_pct is None and not row.is_baseline
