"""Reading audio for training and evaluation, with errors that name the file.

Everything the project reads goes through :func:`load_audio`, so every place that reads
audio refuses the same bad input in the same words.
"""

from __future__ import annotations

import os
import warnings
from typing import BinaryIO

import numpy as np
import soundfile
import torch
import torchaudio.functional as AF

from .errors import ScoreError

SAMPLE_RATE = 16000


class AudioError(ScoreError):
    """A file that cannot be used as audio: missing, corrupt, empty."""


def audio_info(path: str | os.PathLike | BinaryIO) -> soundfile._SoundFileInfo:
    """The header of an audio file (``samplerate`` Hz, ``channels``, ``frames`` samples per
    channel, ``format``, ``subtype``), read with soundfile: the one header reader of the project.

    Raises:
        AudioError: the file is missing or its header is not readable audio.
    """
    where = os.fspath(path) if isinstance(path, (str, os.PathLike)) else repr(path)
    try:
        return soundfile.info(os.fspath(path) if isinstance(path, os.PathLike) else path)
    except Exception as exc:  # soundfile raises several types for missing/corrupt files
        raise AudioError(f"{where}: cannot read audio header ({exc})") from exc


def read_audio(path: str | os.PathLike) -> tuple[torch.Tensor, int]:
    """Read a file as it is stored.

    Returns:
        (waveform, sample_rate): float32 tensor of shape (channels, frames) in [-1, 1] and
        the file's sample rate in Hz (torchaudio.load's contract).
    Raises:
        AudioError: the file is missing, unreadable, holds no samples or NaN/infinite ones.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise AudioError(f"{path}: audio file not found")
    try:
        data, sample_rate = soundfile.read(path, dtype="float32", always_2d=True)
    except Exception as exc:  # soundfile raises several types for corrupt files
        raise AudioError(f"{path}: cannot decode audio ({exc})") from exc
    if data.shape[0] == 0:
        raise AudioError(f"{path}: audio file holds no samples")
    if not np.isfinite(data).all():  # a float WAV can: every loss and gradient would be NaN
        bad = int(np.flatnonzero(~np.isfinite(data).all(axis=1))[0])
        raise AudioError(f"{path}: holds NaN or infinite samples (the first at sample {bad})")
    return torch.from_numpy(np.ascontiguousarray(data.T)), int(sample_rate)


def load_audio(
    path: str | os.PathLike,
    sample_rate: int = SAMPLE_RATE,
    min_samples: int = 1,
) -> torch.Tensor:
    """Read a file as mono float32 at ``sample_rate``.

    Multi-channel audio is averaged to mono and other rates are resampled, each with a
    warning naming the file (the stock s3prl recipes expect 16 kHz mono).

    Returns:
        waveform: float32 tensor of shape (frames,).
    Raises:
        AudioError: missing, corrupt or empty file, or fewer than ``min_samples`` samples.
    """
    wav, file_rate = read_audio(path)
    if wav.shape[0] > 1:
        warnings.warn(f"{path}: {wav.shape[0]} channels, averaged to mono", stacklevel=2)
        wav = wav.mean(dim=0, keepdim=True)
    if file_rate != sample_rate:
        warnings.warn(f"{path}: {file_rate} Hz audio resampled to {sample_rate} Hz", stacklevel=2)
        wav = AF.resample(wav, file_rate, sample_rate)
    wav = wav[0]
    if wav.numel() < min_samples:
        raise AudioError(
            f"{path}: too short ({wav.numel()} samples at {sample_rate} Hz, need {min_samples})"
        )
    return wav
