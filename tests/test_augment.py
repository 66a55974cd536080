"""Views: speed perturbation, pitch shift and the random pairing, checked on real speech."""

from __future__ import annotations

import math

import librosa
import numpy as np
import pytest
import torch

from score_s3prl.augment import CorrespondenceViews, pitch_shift, speed_perturb
from score_s3prl.errors import ScoreError

SR = 16000


@pytest.fixture(scope="module")
def excerpt(speech: torch.Tensor) -> torch.Tensor:
    """Three voiced seconds of the fixture utterance (keeps pyin fast)."""
    return speech[SR : 4 * SR].clone()


def _median_f0(wav: torch.Tensor) -> float:
    """Median F0 in Hz over pyin's voiced frames."""
    f0, voiced, _ = librosa.pyin(wav.numpy(), fmin=60, fmax=400, sr=SR, frame_length=1024)
    assert voiced.sum() > 20, "too few voiced frames to measure pitch"
    return float(np.median(f0[voiced]))


def _time_scale(orig: torch.Tensor, pert: torch.Tensor) -> float:
    """The duration ratio s for which pert's energy envelope best matches orig's stretched by s.

    Searches s on a 0.1 % grid; the envelope is frame energy in dB on a 5 ms hop.
    """

    def envelope(wav: torch.Tensor) -> np.ndarray:
        frames = wav.numpy()[: len(wav) // 80 * 80].reshape(-1, 80)
        return 10 * np.log10((frames**2).mean(axis=1) + 1e-6)

    env_o, env_p = envelope(orig), envelope(pert)
    best, best_err = 0.0, math.inf
    for s in np.arange(0.8, 1.25, 0.001):
        t = np.arange(len(env_p)) / s  # where each output frame sits in the original
        inside = t <= len(env_o) - 1
        err = np.mean((np.interp(t[inside], np.arange(len(env_o)), env_o) - env_p[inside]) ** 2)
        if err < best_err:
            best, best_err = s, err
    return float(best)


def _batch(wavs: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    lengths = torch.tensor([w.numel() for w in wavs])
    return torch.nn.utils.rnn.pad_sequence(wavs, batch_first=True), lengths


def _assert_zero_padding(wavs: torch.Tensor, lengths: torch.Tensor) -> None:
    assert wavs.shape[-1] == int(lengths.max())
    for row, length in zip(wavs, lengths.tolist()):
        assert torch.all(row[length:] == 0)
        assert row[:length].abs().max() > 0


@pytest.mark.slow
@pytest.mark.parametrize("factor", [0.9, 1.1])
def test_speed_perturb_scales_duration_and_pitch(excerpt: torch.Tensor, factor: float) -> None:
    wavs, lengths = speed_perturb(excerpt[None], torch.tensor([excerpt.numel()]), factor)
    assert lengths.tolist() == [math.ceil(excerpt.numel() / factor)]
    _assert_zero_padding(wavs, lengths)
    assert _time_scale(excerpt, wavs[0]) == pytest.approx(1 / factor, rel=0.01)
    assert _median_f0(wavs[0]) / _median_f0(excerpt) == pytest.approx(factor, rel=0.03)


@pytest.mark.slow
@pytest.mark.parametrize("semitones", [2.0, -2.0])
def test_pitch_shift_moves_f0_and_keeps_duration(excerpt: torch.Tensor, semitones: float) -> None:
    wavs, lengths = pitch_shift(excerpt[None], torch.tensor([excerpt.numel()]), semitones)
    assert lengths.tolist() == [excerpt.numel()] and wavs.shape == (1, excerpt.numel())
    assert _time_scale(excerpt, wavs[0]) == pytest.approx(1.0, rel=0.01)
    ratio = _median_f0(wavs[0]) / _median_f0(excerpt)
    assert ratio == pytest.approx(2 ** (semitones / 12), rel=0.03)


@pytest.mark.parametrize("semitones", [2.0, -2.0])
def test_pitch_shift_of_a_tone_is_a_clean_tone(semitones: float) -> None:
    """Off-bin tones, low and high, over 10 s: the phase vocoder must track their frequency."""
    t = torch.arange(10 * SR) / SR
    for freq in (220.0, 3217.0):
        tone = 0.5 * torch.sin(2 * math.pi * freq * t)
        out, _ = pitch_shift(tone[None], torch.tensor([tone.numel()]), semitones)
        target = freq * 2 ** (semitones / 12)
        for second in (1, 8):
            seg = out[0, second * SR : (second + 1) * SR].numpy()
            power = np.abs(np.fft.rfft(seg * np.hanning(SR))) ** 2  # 1 Hz bins
            near = power[round(target) - 10 : round(target) + 11].sum()
            assert near / power.sum() > 0.999, (freq, second)


def test_per_utterance_values_match_one_by_one(speech: torch.Tensor) -> None:
    rows = [speech[:12000], speech[5000:30000], speech[:20000]]
    wavs, lengths = _batch(rows)
    factors, shifts = [1.1, 0.9, 1.1], [2.0, -2.0, -2.0]
    sped, sped_len = speed_perturb(wavs, lengths, factors)
    shifted, shifted_len = pitch_shift(sped, sped_len, shifts)
    _assert_zero_padding(shifted, shifted_len)
    for row, factor, shift, out, length in zip(rows, factors, shifts, shifted, shifted_len):
        alone, alone_len = speed_perturb(row[None], torch.tensor([row.numel()]), factor)
        alone, alone_len = pitch_shift(alone, alone_len, shift)
        assert int(length) == int(alone_len[0])
        torch.testing.assert_close(out[:length], alone[0], atol=1e-5, rtol=0)


def test_identity_values_return_input(speech: torch.Tensor) -> None:
    wavs, lengths = _batch([speech[:8000], speech[:5000]])
    out, out_len = speed_perturb(wavs, lengths, 1.0)
    assert torch.equal(out, wavs) and torch.equal(out_len, lengths)
    out, out_len = pitch_shift(wavs, lengths, 0.0)
    assert torch.equal(out, wavs) and torch.equal(out_len, lengths)


def test_empty_batch_passes_through() -> None:
    wavs, lengths = torch.zeros(0, 0), torch.zeros(0, dtype=torch.long)
    wav_a, len_a, wav_b, len_b = CorrespondenceViews()(wavs, lengths, torch.Generator())
    assert wav_a.shape == wav_b.shape == (0, 0) and len_a.shape == len_b.shape == (0,)


def _swapped(views, wavs: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Which rows got the perturbed view on branch a (branch b must then hold the original)."""
    wav_a, len_a, wav_b, len_b = views
    swapped = []
    for i, length in enumerate(lengths.tolist()):
        a_is_orig = int(len_a[i]) == length and torch.equal(wav_a[i, :length], wavs[i, :length])
        b_is_orig = int(len_b[i]) == length and torch.equal(wav_b[i, :length], wavs[i, :length])
        assert a_is_orig != b_is_orig, f"row {i}: exactly one branch must hold the original"
        swapped.append(b_is_orig)
    return torch.tensor(swapped)


@pytest.fixture(scope="module")
def many(speech: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """400 short excerpts of real speech of varied lengths."""
    gen = torch.Generator().manual_seed(1)
    lengths = torch.randint(1600, 3200, (400,), generator=gen)
    starts = torch.randint(0, speech.numel() - 3200, (400,), generator=gen)
    return _batch([speech[s : s + n] for s, n in zip(starts.tolist(), lengths.tolist())])


@pytest.mark.parametrize("prob", [0.5, 0.2])
def test_swap_follows_its_probability(many, prob: float) -> None:
    wavs, lengths = many
    views = CorrespondenceViews(swap_prob=prob)(wavs, lengths, torch.Generator().manual_seed(0))
    count = int(_swapped(views, wavs, lengths).sum())
    sigma = math.sqrt(len(lengths) * prob * (1 - prob))
    assert abs(count - len(lengths) * prob) < 4 * sigma
    for wav, length in zip(views[0::2], views[1::2]):
        _assert_zero_padding(wav, length)


def test_views_draw_every_factor_and_keep_lengths(many) -> None:
    wavs, lengths = many
    _, len_a, _, len_b = CorrespondenceViews()(wavs, lengths, torch.Generator().manual_seed(3))
    perturbed = torch.where(len_a == lengths, len_b, len_a)  # speed 1.0 keeps it equal anyway
    expected = {f: [math.ceil(n / f) for n in lengths.tolist()] for f in (0.9, 1.0, 1.1)}
    drawn = [
        next(f for f in (0.9, 1.0, 1.1) if expected[f][i] == n)
        for i, n in enumerate(perturbed.tolist())
    ]
    assert all(drawn.count(f) > 80 for f in (0.9, 1.0, 1.1)), drawn


def test_views_deterministic_given_generator(many) -> None:
    wavs, lengths = many[0][:16], many[1][:16]
    views = CorrespondenceViews()
    one = views(wavs, lengths, torch.Generator().manual_seed(7))
    two = views(wavs, lengths, torch.Generator().manual_seed(7))
    other = views(wavs, lengths, torch.Generator().manual_seed(8))
    assert all(torch.equal(x, y) for x, y in zip(one, two))
    assert not all(x.shape == y.shape and torch.equal(x, y) for x, y in zip(one, other))


def test_swap_extremes(many) -> None:
    wavs, lengths = many[0][:8], many[1][:8]
    gen = torch.Generator().manual_seed(0)
    assert not _swapped(CorrespondenceViews(swap_prob=0.0)(wavs, lengths, gen), wavs, lengths).any()
    assert _swapped(CorrespondenceViews(swap_prob=1.0)(wavs, lengths, gen), wavs, lengths).all()


def test_bad_arguments_are_clear_errors(speech: torch.Tensor) -> None:
    wavs, lengths = _batch([speech[:4000], speech[:3000]])
    with pytest.raises(ScoreError, match=r"factor must lie in \[0.1, 10.0\]"):
        speed_perturb(wavs, lengths, [1.1, -1.0])
    with pytest.raises(ScoreError, match="pitch ratio must lie in"):
        pitch_shift(wavs, lengths, 48.0)
    with pytest.raises(ScoreError, match="expected one value or 2"):
        pitch_shift(wavs, lengths, [2.0, 2.0, 2.0])
    with pytest.raises(ScoreError, match="lengths"):
        speed_perturb(wavs, lengths[:1], 0.9)
    with pytest.raises(ScoreError, match="swap_prob"):
        CorrespondenceViews(swap_prob=1.5)
    with pytest.raises(ScoreError, match="speed_factors must lie in"):
        CorrespondenceViews(speed_factors=(0.0, 1.0))
    with pytest.raises(ScoreError, match="semitones"):
        CorrespondenceViews(semitones=(-2.0, 48.0))
    with pytest.raises(ScoreError, match="at least one value"):
        CorrespondenceViews(semitones=())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu(many) -> None:
    wavs, lengths = many[0][:16], many[1][:16]
    views = CorrespondenceViews()
    cpu = views(wavs, lengths, torch.Generator().manual_seed(5))
    gpu = views(wavs.cuda(), lengths.cuda(), torch.Generator().manual_seed(5))
    for x, y in zip(cpu, gpu):
        assert y.device.type == "cuda"
        torch.testing.assert_close(y.cpu(), x, atol=1e-3, rtol=0)
