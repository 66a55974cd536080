"""What the probe writes for people: kind and amount columns in probe.csv (old files still read), one
figure with every upstream overlaid, shared axes, a labelled reference line and readable panel names."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from score_s3prl import probe


def rows_for(upstream: str, scale: float, perts=("speed0.9", "pitch+2", "score"), layers=3) -> list[probe.ProbeRow]:
    out = []
    for layer in range(layers):
        for pert in perts:
            kind, amount = probe.perturbation_parts(pert)
            value = scale * (1 + layer) / layers
            out.append(probe.ProbeRow(upstream, f"/ckpt/{upstream}.pt", layer, pert, kind, amount, value,
                                      value * 0.2, 0.2, 0.01, False, 4, 3))
    return out


@pytest.mark.parametrize(("name", "parts"), [
    ("speed0.9", ("speed", 0.9)), ("speed1.1", ("speed", 1.1)), ("pitch+2", ("pitch", 2.0)),
    ("pitch-2.5", ("pitch", -2.5)), ("score", ("score", math.nan)), ("gain", ("gain", math.nan)),
    ("speedy", ("speedy", math.nan)),
])
def test_perturbation_names_split_into_kind_and_amount(name, parts):
    kind, amount = probe.perturbation_parts(name)
    assert kind == parts[0] and (amount == parts[1] or math.isnan(amount) and math.isnan(parts[1]))


def test_default_perturbations_give_numeric_amounts(tmp_path):
    rows = rows_for("a", 1.0, perts=[p.name for p in probe.default_perturbations([0.9, 1.0, 1.1], [-2.0, 2.0])])
    probe.write_csv(rows, tmp_path / "probe.csv")
    header = (tmp_path / "probe.csv").read_text().splitlines()[0].split(",")
    assert header[:6] == ["upstream", "checkpoint", "layer", "perturbation", "kind", "amount"]
    back = probe.read_csv(tmp_path / "probe.csv")
    assert {(r.kind, r.amount) for r in back if r.kind != "score"} == {("speed", 0.9), ("speed", 1.1),
                                                                        ("pitch", -2.0), ("pitch", 2.0)}
    assert all(math.isnan(r.amount) for r in back if r.kind == "score")


def test_a_probe_csv_without_the_new_columns_still_reads(tmp_path):
    old = tmp_path / "probe.csv"  # as written before kind and amount existed
    old.write_text("upstream,checkpoint,layer,perturbation,value,same_utterance,different_utterance,"
                   "length_floor,collapsed,n,n_pairs\n"
                   "hubert_base,,12,speed0.9,0.5,0.1,0.2,0.01,0,4,3\n"
                   "hubert_base,,12,score,nan,0.1,0.2,0.2,1,4,3\n")
    first, second = probe.read_csv(old)
    assert (first.kind, first.amount, first.value) == ("speed", 0.9, 0.5)
    assert second.kind == "score" and math.isnan(second.amount) and second.collapsed and math.isnan(second.value)


def test_the_figure_overlays_upstreams_on_shared_axes_with_a_labelled_reference(tmp_path):
    # through the CSV: every `score` row then has its own NaN amount (NaN != NaN), still one panel
    probe.write_csv(rows_for("hubert_base", 0.9) + rows_for("score_hubert", 0.3), tmp_path / "probe.csv")
    rows = probe.read_csv(tmp_path / "probe.csv")
    fig = probe.probe_figure(rows)
    panels = [ax for ax in fig.axes if ax.get_title()]
    assert [ax.get_title() for ax in panels] == ["speed x0.9", "pitch +2 semitones", "SCORE views (speed+pitch)"]
    for ax in panels:
        labels = [line.get_label() for line in ax.get_lines()]
        assert labels == ["hubert_base", "score_hubert", probe.REFERENCE_LABEL]  # every upstream in every panel
        assert ax.get_ylim() == panels[0].get_ylim() and ax.get_xlim() == panels[0].get_xlim()
        assert ax.get_ylim()[0] == 0 and ax.get_ylim()[1] > 1.0  # the 1.0 line always shows
    assert "lower = more invariant" in panels[0].get_ylabel()
    assert "lower = more invariant" in fig.get_suptitle()
    assert probe.REFERENCE_LABEL in [t.get_text() for t in panels[0].get_legend().get_texts()]


def test_runner_figures_group_every_upstream_by_split(tmp_path, monkeypatch):
    for upstream, scale in (("hubert_base", 0.9), ("score_hubert", 0.3)):
        for split in ("dev-clean", "test-other"):
            folder = tmp_path / "probe" / upstream / split
            folder.mkdir(parents=True)
            probe.write_csv(rows_for(upstream, scale), folder / "probe.csv")
    csvs = sorted((tmp_path / "probe").glob("*/*/probe.csv"))
    figures = probe.plot_by_folder(csvs, tmp_path / "probe")
    assert sorted(figures) == [tmp_path / "probe" / "dev-clean.png", tmp_path / "probe" / "test-other.png"]
    assert all(Path(f).read_bytes()[:4] == b"\x89PNG" for f in figures)
    drawn = {}
    monkeypatch.setattr(probe, "plot", lambda rows, path, title=None: drawn.update({Path(path).stem: rows}))
    probe.plot_by_folder(csvs, tmp_path / "probe")
    assert {split: {r.upstream for r in rows} for split, rows in drawn.items()} == {
        "dev-clean": {"hubert_base", "score_hubert"}, "test-other": {"hubert_base", "score_hubert"}}
