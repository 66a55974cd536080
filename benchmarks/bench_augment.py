"""Throughput of the views against torchaudio's PitchShift, on the bundled real speech.

Prints seconds of speech processed per second of wall time (the same count of speech for
every method, padding not counted) for, on the same padded batch:
  - ours: ``pitch_shift`` (half the batch +2, half -2 semitones, each utterance its own shift)
    and the full ``CorrespondenceViews`` (speed perturbation + pitch shift + pairing);
  - torchaudio: ``transforms.PitchShift`` at +2 on one half and at -2 on the other half
    (its first call builds the resampling kernel: reported apart, then excluded);
each method keeps its fastest of --repeats calls, the rounds alternating the methods;
and the ratio ours / torchaudio. Usage: python benchmarks/bench_augment.py [--device cuda]
"""

from __future__ import annotations

import argparse
import math
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


def _time(fn: Callable[[], object], device: torch.device) -> float:
    """Wall seconds of one call."""
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


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
    views = CorrespondenceViews()
    generator = torch.Generator().manual_seed(0)
    ours = {
        "ours pitch_shift, half +2 half -2": lambda: pitch_shift(batch, lengths, shifts),
        "ours CorrespondenceViews (speed + pitch)": lambda: views(batch, lengths, generator),
    }
    methods = dict(ours)
    # torchaudio gets the same work: each half of the batch, cut to its longest utterance.
    halves = []
    for semitones in (2, -2):
        rows = [i for i, s in enumerate(shifts) if s == semitones]
        half = batch[rows, : int(lengths[rows].max())]
        shift = T.PitchShift(SAMPLE_RATE, semitones).to(device)
        build = _time(lambda: shift(half[:1, :SAMPLE_RATE]), device)  # builds the kernel
        print(f"torchaudio PitchShift {semitones:+d}: kernel built in {build:.2f} s (excluded)")
        halves.append((shift, half))
    theirs = "torchaudio PitchShift, half +2 half -2"
    methods[theirs] = lambda: [shift(half) for shift, half in halves]
    # Rounds alternate the methods, and each keeps its fastest call: on a shared machine the
    # fastest call is the one least slowed by other load, for every method alike.
    best = {name: math.inf for name in methods}
    for _ in range(args.repeats):
        for name, fn in methods.items():
            best[name] = min(best[name], _time(fn, device))
    rate = {name: audio_seconds / seconds for name, seconds in best.items()}

    print(f"{'method (fastest of ' + str(args.repeats) + ' calls)':<44}{'speech s / s':>14}")
    for name, value in rate.items():
        print(f"{name:<44}{value:>14.1f}")
    for name in ours:
        print(f"ratio {name} / torchaudio: {rate[name] / rate[theirs]:.1f}x")


if __name__ == "__main__":
    main()
