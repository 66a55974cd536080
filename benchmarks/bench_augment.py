"""Throughput of the views against torchaudio's PitchShift, on the bundled real speech.

Prints seconds of speech processed per second of wall time (the same count of speech for
every method, padding not counted) for, on the same padded batch:
  - ours: ``pitch_shift`` (half the batch +2, half -2 semitones, each utterance its own shift)
    and the full ``CorrespondenceViews`` (speed perturbation + pitch shift + pairing);
  - torchaudio: ``transforms.PitchShift`` at +2 and at -2 semitones, each on the whole batch
    (its first call builds the resampling kernel: reported apart, then excluded);
and the ratio ours / torchaudio. Usage: python benchmarks/bench_augment.py [--device cuda]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Callable

import torch
import torchaudio.transforms as T

from score_s3prl.audio import SAMPLE_RATE, load_audio
from score_s3prl.augment import CorrespondenceViews, pitch_shift

ASSETS = Path(__file__).resolve().parents[1] / "assets" / "librispeech-mini"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _rate(fn: Callable[[], object], audio_seconds: float, repeats: int, device) -> float:
    """Audio seconds per wall second over ``repeats`` calls, after one warm-up call."""
    fn()
    _sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    _sync(device)
    return audio_seconds * repeats / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=8, help="utterances per batch")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per method")
    args = parser.parse_args()
    device = torch.device(args.device)

    # The longest bundled utterances, as training batches hold (LibriSpeech: ~12 s on average).
    files = sorted(ASSETS.rglob("*.flac"), key=lambda p: -p.stat().st_size)[: args.batch]
    wavs = [load_audio(p) for p in files]
    lengths = torch.tensor([w.numel() for w in wavs], device=device)
    batch = torch.nn.utils.rnn.pad_sequence(wavs, batch_first=True).to(device)
    audio_seconds = float(lengths.sum()) / SAMPLE_RATE
    padded_seconds = batch.numel() / SAMPLE_RATE
    print(
        f"device {device}, batch {len(wavs)} utterances, {audio_seconds:.1f} s of speech "
        f"({padded_seconds:.1f} s padded), torch threads {torch.get_num_threads()}"
    )

    shifts = [2.0 if i % 2 == 0 else -2.0 for i in range(len(wavs))]
    ours = _rate(lambda: pitch_shift(batch, lengths, shifts), audio_seconds, args.repeats, device)
    views = CorrespondenceViews()
    generator = torch.Generator().manual_seed(0)
    ours_views = _rate(
        lambda: views(batch, lengths, generator), audio_seconds, args.repeats, device
    )

    theirs = {}
    for semitones in (2, -2):
        shift = T.PitchShift(SAMPLE_RATE, semitones).to(device)
        start = time.perf_counter()
        shift(batch[:1, :SAMPLE_RATE])  # builds the kernel
        _sync(device)
        build = time.perf_counter() - start
        theirs[semitones] = _rate(lambda: shift(batch), audio_seconds, args.repeats, device)
        print(f"torchaudio PitchShift {semitones:+d}: kernel built in {build:.2f} s")
        del shift
    # Half the utterances at each shift: the harmonic mean of the two rates.
    theirs_mixed = 2 / (1 / theirs[2] + 1 / theirs[-2])

    print(f"{'method':<44}{'audio s / s':>14}")
    print(f"{'torchaudio PitchShift +2 (warm)':<44}{theirs[2]:>14.1f}")
    print(f"{'torchaudio PitchShift -2 (warm)':<44}{theirs[-2]:>14.1f}")
    print(f"{'torchaudio PitchShift, half +2 half -2':<44}{theirs_mixed:>14.1f}")
    print(f"{'ours pitch_shift, half +2 half -2':<44}{ours:>14.1f}")
    print(f"{'ours CorrespondenceViews (speed + pitch)':<44}{ours_views:>14.1f}")
    print(f"ratio pitch_shift / PitchShift: {ours / theirs_mixed:.1f}x")
    print(f"ratio CorrespondenceViews / PitchShift: {ours_views / theirs_mixed:.1f}x")


if __name__ == "__main__":
    main()
