"""The two views SCORE compares: the original utterance and a speed- and pitch-perturbed copy.

Everything runs as batched torch operations on the batch's device (CPU or CUDA). Batches are
zero-padded ``(B, T)`` float waveforms with their lengths ``(B,)`` in samples; every function
keeps the padding beyond each length at exactly zero.

Speed perturbation resamples (as sox ``speed`` does): factor ``f`` scales duration by ``1/f``
and pitch by ``f``. Pitch shift by ``n`` semitones stretches time by ``r = 2**(n/12)`` with a
phase vocoder and resamples by ``1/r``: pitch moves by ``r``, duration stays. Both ratios are
taken as small fractions (0.9 = 9/10, 2**(2/12) ~ 55/49), so the resampling kernels are tiny;
``torchaudio.transforms.PitchShift`` resamples between 16000 Hz and an integer rate near
``16000 / r``, whose kernel has thousands of phases, and that is what makes it slow.

Each utterance draws its own factors: the functions take one value per utterance (or one for
the whole batch) and process the utterances that share a value together.
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Callable, Sequence

import torch
import torchaudio.functional as AF
from torch import nn

from .audio import SAMPLE_RATE
from .errors import ScoreError

# Largest denominator of the rational approximation of a ratio: 2**(2/12) becomes 55/49
# (0.001 % off), and resampling kernels stay at most ~100 phases.
MAX_DENOMINATOR = 100
# Speed factors and pitch ratios must lie in [MIN_RATIO, 1 / MIN_RATIO] (+-39 semitones):
# beyond, the approximation above is too coarse.
MIN_RATIO = 0.1
# Phase-vocoder analysis window (32 ms, as torchaudio's PitchShift at 16 kHz) and hop.
WINDOW_SECONDS = 0.032
HOPS_PER_WINDOW = 4

Values = float | Sequence[float] | torch.Tensor


def speed_perturb(
    wavs: torch.Tensor, lengths: torch.Tensor, factor: Values
) -> tuple[torch.Tensor, torch.Tensor]:
    """Play each utterance ``factor`` times faster: duration x 1/factor, pitch x factor.

    Args:
        wavs: (B, T) float waveforms, zero beyond ``lengths``.
        lengths: (B,) int64 lengths in samples.
        factor: one positive speed factor for the batch, or one per utterance (B values).
    Returns:
        (wavs, lengths): (B, T') waveforms zero beyond the new lengths ceil(length / factor),
        with T' the longest new length.
    """
    return _per_value(wavs, lengths, factor, "factor", _resample)


def pitch_shift(
    wavs: torch.Tensor,
    lengths: torch.Tensor,
    semitones: Values,
    sample_rate: int = SAMPLE_RATE,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Shift pitch by ``semitones`` (frequencies x 2**(semitones/12)); durations stay.

    Args:
        wavs: (B, T) float waveforms, zero beyond ``lengths``.
        lengths: (B,) int64 lengths in samples.
        semitones: one shift for the batch, or one per utterance (B values); may be negative.
        sample_rate: Hz; sets the phase-vocoder window to 32 ms.
    Returns:
        (wavs, lengths): (B, T) waveforms, zero beyond the unchanged ``lengths``.
    """
    n_fft = 1 << max(4, round(math.log2(WINDOW_SECONDS * sample_rate)))

    def shift(sub: torch.Tensor, sub_lengths: torch.Tensor, ratio: Fraction):
        stretched, stretched_lengths = _time_stretch(
            sub, sub_lengths, ratio, n_fft, n_fft // HOPS_PER_WINDOW
        )
        shifted, _ = _resample(stretched, stretched_lengths, ratio)
        return _fit(shifted, sub.shape[-1]), sub_lengths

    values = _as_list(semitones, wavs.shape[0], "semitones")
    return _per_value(wavs, lengths, [2.0 ** (s / 12.0) for s in values], "pitch ratio", shift)


class CorrespondenceViews(nn.Module):
    """Make SCORE's pair of views for a batch.

    For every utterance: draw a speed factor from ``speed_factors`` and a pitch shift from
    ``semitones`` (uniformly), perturb (speed first, then pitch), and with probability
    ``swap_prob`` swap which view goes to branch a and which to branch b.

    Args:
        speed_factors: speed factors to draw from (1.0 = unchanged speed).
        semitones: pitch shifts to draw from, in semitones.
        swap_prob: probability that an utterance's perturbed view goes to branch a.
        sample_rate: Hz of the waveforms.
    """

    def __init__(
        self,
        speed_factors: Sequence[float] = (0.9, 1.0, 1.1),
        semitones: Sequence[float] = (-2.0, 2.0),
        swap_prob: float = 0.5,
        sample_rate: int = SAMPLE_RATE,
    ) -> None:
        super().__init__()
        if not speed_factors or not semitones:
            raise ScoreError("speed_factors and semitones must each list at least one value")
        _check_ratios([float(f) for f in speed_factors], "speed_factors")
        # in the log domain: 2**(1e300/12) would overflow before the range check
        _check_ratios([2.0 ** max(-64.0, min(64.0, s / 12.0)) for s in semitones], "pitch ratios 2**(semitones/12)")
        if not 0.0 <= swap_prob <= 1.0:
            raise ScoreError(f"swap_prob must lie in [0, 1], got {swap_prob}")
        self.speed_factors = [float(f) for f in speed_factors]
        self.semitones = [float(s) for s in semitones]
        self.swap_prob = float(swap_prob)
        self.sample_rate = sample_rate

    @torch.no_grad()
    def forward(
        self, wavs: torch.Tensor, lengths: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Args:
            wavs: (B, T) float waveforms, zero beyond ``lengths``.
            lengths: (B,) int64 lengths in samples.
            generator: the source of every random draw (views are a function of its state).
        Returns:
            (wav_a, len_a, wav_b, len_b): (B, Ta), (B,), (B, Tb), (B,); row i of a is the
            original and row i of b the perturbed view, or the other way round where swapped.
            Each is zero beyond its lengths and Ta, Tb are the longest lengths.
        """
        batch = wavs.shape[0]
        draw = {"generator": generator, "device": generator.device}
        speed = torch.randint(len(self.speed_factors), (batch,), **draw).tolist()
        shift = torch.randint(len(self.semitones), (batch,), **draw).tolist()
        swap = (torch.rand(batch, **draw) < self.swap_prob).to(wavs.device)

        pert, pert_len = speed_perturb(wavs, lengths, [self.speed_factors[i] for i in speed])
        pert, pert_len = pitch_shift(
            pert, pert_len, [self.semitones[i] for i in shift], self.sample_rate
        )
        width = max(wavs.shape[-1], pert.shape[-1])
        orig, pert = _fit(wavs, width), _fit(pert, width)
        rows = swap[:, None]
        wav_a, wav_b = torch.where(rows, pert, orig), torch.where(rows, orig, pert)
        len_a, len_b = torch.where(swap, pert_len, lengths), torch.where(swap, lengths, pert_len)
        return _trim(wav_a, len_a), len_a, _trim(wav_b, len_b), len_b


def _per_value(
    wavs: torch.Tensor,
    lengths: torch.Tensor,
    values: Values,
    name: str,
    fn: Callable[[torch.Tensor, torch.Tensor, Fraction], tuple[torch.Tensor, torch.Tensor]],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply ``fn(sub_wavs, sub_lengths, ratio)`` to each group of rows sharing one value."""
    if wavs.dim() != 2 or lengths.shape != (wavs.shape[0],):
        raise ScoreError(
            f"expected wavs (B, T) and lengths (B,), got {tuple(wavs.shape)} and "
            f"{tuple(lengths.shape)}"
        )
    values = _as_list(values, wavs.shape[0], name)
    _check_ratios(values, name)
    lengths = lengths.to(device=wavs.device, dtype=torch.long)
    pieces: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
    for value in sorted(set(values)):
        rows = torch.tensor([i for i, v in enumerate(values) if v == value], device=wavs.device)
        sub_lengths = lengths[rows]
        sub = wavs[rows, : int(sub_lengths.max())]
        ratio = Fraction(value).limit_denominator(MAX_DENOMINATOR)
        if ratio != 1:
            sub, sub_lengths = fn(sub, sub_lengths, ratio)
        pieces.append((rows, sub, sub_lengths))
    width = max((sub.shape[-1] for _, sub, _ in pieces), default=0)
    out = wavs.new_zeros(wavs.shape[0], width)
    out_lengths = torch.empty_like(lengths)
    for rows, sub, sub_lengths in pieces:
        out[rows, : sub.shape[-1]] = sub
        out_lengths[rows] = sub_lengths
    return _zero_padding(out, out_lengths), out_lengths


def _resample(
    wavs: torch.Tensor, lengths: torch.Tensor, ratio: Fraction
) -> tuple[torch.Tensor, torch.Tensor]:
    """Resample by q/p for ``ratio`` = p/q: duration x q/p, frequencies x p/q.

    Zero padding behaves as the silence after each utterance, so the batch resamples like its
    rows one by one; new lengths are ceil(length * q / p).
    """
    p, q = ratio.numerator, ratio.denominator
    out = AF.resample(wavs.float(), p, q).to(wavs.dtype)
    return out, -((-lengths * q) // p)


def _time_stretch(
    wavs: torch.Tensor, lengths: torch.Tensor, ratio: Fraction, n_fft: int, hop: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Phase-vocoder time stretch: durations x ``ratio``, pitch unchanged.

    Returns (B, T') waveforms and lengths round(lengths * ratio), zero beyond them: the
    window's spill past each end is cut, so a row does not depend on its batch.

    Output frame m reads the input at frame position m / ratio: magnitudes interpolate
    linearly between the two neighbouring frames, phases advance by each bin's measured
    instantaneous frequency. The phase is accumulated as the exact expected advance
    (2 pi k hop m / n_fft, reduced modulo 2 pi in integers) plus the cumulative deviation
    from it, which keeps float32 phases accurate over thousands of frames.
    """
    device = wavs.device
    window = torch.hann_window(n_fft, device=device)
    # Silence appended so that, whatever the batch's width, every row has all the analysis
    # frames that touch its samples and all the synthesis frames that overlap its output.
    tail = math.ceil((n_fft // 2 + hop) * max(1, 1 / ratio))
    spec = torch.stft(
        torch.nn.functional.pad(wavs.float(), (0, tail)), n_fft, hop, window=window,
        center=True, pad_mode="constant", return_complex=True,
    )  # (B, F, N)
    bins, frames = spec.shape[-2:]
    out_frames = math.ceil(frames * ratio)
    m = torch.arange(out_frames, device=device)
    # Exact read positions m * q / p as integer part and fraction.
    num = m * ratio.denominator
    left = torch.div(num, ratio.numerator, rounding_mode="floor")
    frac = (num - left * ratio.numerator).float() / ratio.numerator
    # A silent frame past the end, so that frame left + 1 always exists (left < N).
    magnitude = torch.nn.functional.pad(spec.abs(), (0, 1))
    angle = torch.nn.functional.pad(spec.angle(), (0, 1))
    k = torch.arange(bins, device=device)[:, None]
    advance = (2.0 * math.pi * hop / n_fft) * k  # (F, 1) expected phase advance per hop
    # Per input frame n: how far the phase advance from n to n + 1 departs from the expected.
    # (In-place steps: these (B, F, N) tensors are most of the time spent.)
    deviation = torch.diff(angle, dim=-1).sub_(advance)
    deviation = deviation.add_(math.pi).remainder_(2.0 * math.pi).sub_(math.pi)[..., left]
    # Frame m's phase: the first frame's phase plus the advances of frames 0 .. m-1.
    expected = (2.0 * math.pi / n_fft) * ((k * hop * m) % n_fft).float()
    phase = torch.cumsum(deviation, dim=-1).sub_(deviation).add_(expected).add_(angle[..., :1])
    magnitude = torch.lerp(magnitude[..., left], magnitude[..., left + 1], frac)
    stretched = torch.polar(magnitude, phase)
    p, q = ratio.numerator, ratio.denominator
    new_lengths = (2 * p * lengths + q) // (2 * q)
    width = int(new_lengths.max())
    out = torch.istft(stretched, n_fft, hop, window=window, center=True, length=width)
    return _zero_padding(out.to(wavs.dtype), new_lengths), new_lengths


def _as_list(values: Values, batch: int, name: str) -> list[float]:
    """One float per utterance from a scalar or a sequence/tensor of ``batch`` values."""
    if isinstance(values, torch.Tensor):
        values = values.tolist()
    if isinstance(values, (int, float)):
        return [float(values)] * batch
    values = [float(v) for v in values]
    if len(values) != batch:
        raise ScoreError(f"{name}: expected one value or {batch}, got {len(values)}")
    return values


def _check_ratios(values: list[float], name: str) -> None:
    if any(not MIN_RATIO <= v <= 1 / MIN_RATIO for v in values):
        raise ScoreError(f"{name} must lie in [{MIN_RATIO}, {1 / MIN_RATIO}], got {values}")


def _fit(wavs: torch.Tensor, width: int) -> torch.Tensor:
    """Crop or zero-pad the time axis to ``width`` samples."""
    return torch.nn.functional.pad(wavs, (0, width - wavs.shape[-1]))


def _zero_padding(wavs: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Set every sample at or beyond its row's length to zero."""
    keep = torch.arange(wavs.shape[-1], device=wavs.device) < lengths[:, None]
    return wavs * keep


def _trim(wavs: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Drop the columns beyond the longest length."""
    return wavs[:, : int(lengths.max())] if lengths.numel() else wavs[:, :0]
