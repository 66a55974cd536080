"""score_s3prl.probe: invariance shows as ~0, content-carrying features as clearly > 0, collapse as
collapse (never as invariance); the CLI runs a real hub upstream end to end, deterministically."""

from __future__ import annotations

import csv
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torchaudio
from torch import nn

from score_s3prl import cli, probe
from score_s3prl.softdtw import soft_dtw_divergence

REPO = Path(__file__).resolve().parents[1]
HOP = 320  # HuBERT's frame hop, which the hand-built models copy


def held_out(assets_dir: Path) -> list[Path]:
    """Bundled test-other utterances (assets/librispeech-mini/ATTRIBUTION.md), a short subset."""
    return probe.find_audio(assets_dir / "test-other", max_utterances=4)


class LogMel(nn.Module):
    """An identity-like upstream: log-mel frames at HuBERT's hop; two 'layers' (mel, and mel
    after a fixed random projection). ``gain_invariant`` divides each utterance by its RMS first."""

    def __init__(self, gain_invariant: bool = False) -> None:
        super().__init__()
        self.mel = torchaudio.transforms.MelSpectrogram(16000, n_fft=400, hop_length=HOP, n_mels=40)
        self.proj = nn.Linear(40, 16, bias=False)
        torch.nn.init.normal_(self.proj.weight, generator=torch.Generator().manual_seed(0))
        self.gain_invariant = gain_invariant

    def forward(self, wavs: list[torch.Tensor]) -> dict:
        wav = wavs[0]
        if self.gain_invariant:
            wav = wav / wav.square().mean().sqrt()
        mel = (self.mel(wav) + 1e-6).log().T[None]  # (1, T, 40)
        return {"hidden_states": [mel, self.proj(mel)]}


class Constant(nn.Module):
    """A collapsed upstream: one frame per hop, every frame the same vector, whatever the input."""

    def forward(self, wavs: list[torch.Tensor]) -> dict:
        return {"hidden_states": [torch.ones(1, wavs[0].shape[0] // HOP, 8)]}


class Gain:
    """An exact perturbation: scale by -1/2 (a power of two: no rounding), flipping polarity."""

    name = "gain"

    def __call__(self, wavs, generator):
        return [w * -0.5 for w in wavs]


def run(model: nn.Module, files, perturbations=None, max_seconds: float | None = 3.0,
        **kwargs) -> list[probe.ProbeRow]:
    return probe.probe_upstreams(["hand"], files, loader=lambda name, ckpt, device: model,
                                 perturbations=perturbations, progress=False, max_seconds=max_seconds, **kwargs)


def by(rows, layer, perturbation) -> probe.ProbeRow:
    (row,) = [r for r in rows if r.layer == layer and r.perturbation == perturbation]
    return row


def test_neighbour_pairs_follow_length_order():
    assert probe.neighbour_pairs([30, 10, 20, 10]) == [(1, 3), (3, 2), (2, 0)]
    assert probe.neighbour_pairs([5]) == []


def test_pair_divergences_are_scores_loss_whatever_the_grouping():
    gen = torch.Generator().manual_seed(0)
    # two frame widths in one call, as layers of different widths come
    sizes = [(7, 5, 6), (12, 12, 6), (3, 8, 4), (9, 2, 4), (4, 4, 6)]
    xs = [torch.nn.functional.normalize(torch.randn(n, d, generator=gen), dim=-1) for n, _, d in sizes]
    ys = [torch.nn.functional.normalize(torch.randn(m, d, generator=gen), dim=-1) for _, m, d in sizes]
    expected = torch.stack([
        soft_dtw_divergence(x[None], y[None], gamma=0.1)[0] / (len(x) + len(y)) for x, y in zip(xs, ys)
    ]).double()
    together = probe.pair_divergences(xs, ys, gamma=0.1)
    one_by_one = probe.pair_divergences(xs, ys, gamma=0.1, max_cells=1)
    assert torch.allclose(together, expected, atol=1e-6)
    assert torch.allclose(one_by_one, expected, atol=1e-6)
    assert (together > 0).all()


def test_exactly_invariant_model_gives_zero_and_a_sensitive_one_does_not(assets_dir):
    files = held_out(assets_dir)
    perts = [Gain(), probe.ViewPerturbation("identity")]
    invariant = run(LogMel(gain_invariant=True), files, perts)
    sensitive = run(LogMel(gain_invariant=False), files, perts)
    for layer in (0, 1):
        row = by(invariant, layer, "gain")
        assert not row.collapsed and row.different_utterance > 0.01
        assert row.value < 1e-3, row
        assert by(sensitive, layer, "gain").value > 0.05
        # the identity view is the original itself: exactly zero for any model
        assert by(sensitive, layer, "identity").value == 0.0


def test_identity_like_features_are_far_from_invariant_to_speed_and_pitch(assets_dir):
    rows = run(LogMel(), held_out(assets_dir))
    assert {r.perturbation for r in rows} == {"speed0.9", "speed1.1", "pitch-2", "pitch+2", "score"}
    for row in rows:
        assert not row.collapsed and row.n == 4 and row.n_pairs == 3
        assert 0.1 < row.value < 2.0, row
        assert math.isclose(row.value, row.same_utterance / row.different_utterance)


class Scaled(nn.Module):
    """Another model's frames times 10 per layer: the same directions, larger norms."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, wavs):
        return {"hidden_states": [10 * h for h in self.inner(wavs)["hidden_states"]]}


def test_frames_are_l2_normalised_so_feature_scale_does_not_matter(assets_dir, speech):
    frames = probe.layer_frames(LogMel(), speech[:16000])
    assert [f.shape for f in frames] == [(51, 40), (51, 16)]
    assert all(torch.allclose(f.norm(dim=-1), torch.ones(51)) for f in frames)
    plain, scaled = run(LogMel(), held_out(assets_dir)), run(Scaled(LogMel()), held_out(assets_dir))
    for a, b in zip(plain, scaled):
        assert a.value == pytest.approx(b.value, rel=1e-4)


@pytest.mark.parametrize("max_seconds", [3.0, None])
def test_collapse_is_flagged_not_reported_as_invariance(assets_dir, max_seconds):
    # Identical frames everywhere: both divergences are only the length floor, which is 0 for
    # equal lengths (3 s crops: 0/0) and small but nonzero for unequal ones (whole utterances:
    # floor/floor, a meaningless ratio). Either way: value NaN, collapsed set.
    rows = run(Constant(), held_out(assets_dir), max_seconds=max_seconds)
    for row in rows:
        assert row.collapsed and math.isnan(row.value)
        assert row.different_utterance == pytest.approx(row.length_floor, abs=1e-6)
        assert (row.length_floor > 0) == (max_seconds is None)
    assert math.isnan(probe.last_layer_value(rows, "hand"))


def test_seed_changes_only_the_random_views(assets_dir):
    files = held_out(assets_dir)
    first, again, other = (run(LogMel(), files, seed=seed) for seed in (0, 0, 1))
    assert first == again
    assert by(first, 1, "score").value != by(other, 1, "score").value
    assert by(first, 1, "speed0.9") == by(other, 1, "speed0.9")


def test_last_layer_value_picks_the_top_layer(assets_dir):
    rows = run(LogMel(), held_out(assets_dir))
    assert probe.last_layer_value(rows, "hand") == by(rows, 1, "score").value
    assert probe.last_layer_value(rows, "hand", "pitch+2") == by(rows, 1, "pitch+2").value
    with pytest.raises(probe.ScoreError):
        probe.last_layer_value(rows, "other")


def test_csv_reads_back_what_was_written_nan_and_collapse_included(assets_dir, tmp_path):
    rows = run(LogMel(), held_out(assets_dir)) + run(Constant(), held_out(assets_dir))
    assert any(r.collapsed and math.isnan(r.value) for r in rows)
    probe.write_csv(rows, tmp_path / "probe.csv")
    back = probe.read_csv(tmp_path / "probe.csv")
    assert len(back) == len(rows) and all(isinstance(r.layer, int) and isinstance(r.collapsed, bool) for r in back)
    for got, want in zip(back, rows):  # floats as written (8 significant digits), NaN as NaN
        assert (got.upstream, got.layer, got.perturbation, got.collapsed, got.n) == \
            (want.upstream, want.layer, want.perturbation, want.collapsed, want.n)
        assert got.value == pytest.approx(want.value, rel=1e-7, nan_ok=True)
    (tmp_path / "other.csv").write_text("task,value\nasr,1\n")
    with pytest.raises(probe.ScoreError, match="not a probe CSV"):
        probe.read_csv(tmp_path / "other.csv")
    with pytest.raises(probe.ScoreError, match="probe CSV not found"):
        probe.read_csv(tmp_path / "none.csv")


def cli_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "score_s3prl.cli", "probe", "--no-progress", *args]


@pytest.mark.slow  # two subprocesses loading s3prl
def test_cli_tiny_hubert_through_the_hub_end_to_end(tiny_ckpt, assets_dir, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    common = ["--upstream", f"score_hubert_local={tiny_ckpt}", "--audio", str(assets_dir / "test-other"),
              "--max-utterances", "5", "--max-seconds", "4", "--seed", "3"]
    outputs = []
    for out in (tmp_path / "a", tmp_path / "b"):
        result = subprocess.run(cli_cmd(*common, "--out", str(out)), env=env, capture_output=True, text=True,
                                timeout=600)
        assert result.returncode == 0, result.stderr
        assert (out / "probe.png").stat().st_size > 1000
        outputs.append((out / "probe.csv").read_text())
    assert outputs[0] == outputs[1]
    rows = list(csv.DictReader(outputs[0].splitlines()))
    assert len(rows) == 5 * 5  # 4 transformer layers + the CNN output, x 5 perturbations
    for name in ("upstream", "checkpoint", "layer", "perturbation", "value", "same_utterance",
                 "different_utterance", "n"):
        assert name in rows[0]
    assert {r["upstream"] for r in rows} == {"score_hubert_local"}
    assert {r["checkpoint"] for r in rows} == {str(tiny_ckpt)}
    assert all(0 < float(r["value"]) < 2 and r["n"] == "5" for r in rows)
    assert "score" in result.stdout and "probe.csv" in result.stdout


@pytest.mark.parametrize("case", ["missing-dir", "empty-dir", "unknown-upstream", "missing-ckpt", "garbage-ckpt"])
def test_bad_input_is_one_error_line(case, tmp_path, assets_dir, capsys):
    audio, upstream = str(assets_dir / "test-other"), "score_hubert_local=" + str(tmp_path / "x.pt")
    if case == "missing-dir":
        audio = str(tmp_path / "nowhere")
    elif case == "empty-dir":
        (tmp_path / "empty").mkdir()
        audio = str(tmp_path / "empty")
    elif case == "unknown-upstream":
        upstream = "no_such_upstream"
    elif case == "garbage-ckpt":
        (tmp_path / "x.pt").write_bytes(b"not a checkpoint")
    code = cli.main(["probe", "--no-progress", "--upstream", upstream, "--audio", audio,
                     "--max-utterances", "2", "--max-seconds", "1", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len([line for line in err if line.startswith("error: ")]) == 1 and "Traceback" not in "\n".join(err)
    assert not (tmp_path / "out" / "probe.csv").exists()
