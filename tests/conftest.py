"""Shared fixtures: the bundled real speech and a tiny random HuBERT checkpoint."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from score_s3prl.audio import load_audio
from score_s3prl.checkpoints.hubert import tiny_hubert_state, write_converted

REPO = Path(__file__).resolve().parents[1]
ASSETS = REPO / "assets" / "librispeech-mini"


@pytest.fixture(scope="session")
def assets_dir() -> Path:
    """Root of the bundled LibriSpeech utterances (see assets/librispeech-mini/ATTRIBUTION.md)."""
    return ASSETS


@pytest.fixture(scope="session")
def speech_path() -> Path:
    """One real 16 kHz LibriSpeech utterance with a transcript (about 4.6 s)."""
    return ASSETS / "transcribed/1272/128104/1272-128104-0001.flac"


@pytest.fixture(scope="session")
def speech(speech_path: Path) -> torch.Tensor:
    """That utterance as a float32 tensor of shape (frames,)."""
    return load_audio(speech_path)


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random HuBERT (4 layers, 32-d, 320-sample frames) in s3prl's converted format."""
    path = tmp_path_factory.mktemp("tiny") / "tiny_hubert.pt"
    write_converted(path, **tiny_hubert_state(seed=0))
    return path


@pytest.fixture(scope="session")
def tiny_wavlm_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random WavLM (4 layers, 32-d, gated relative position bias) in the format s3prl's
    ``wavlm_local`` reads."""
    from score_s3prl.checkpoints.wavlm import tiny_wavlm_state, write_wavlm

    path = tmp_path_factory.mktemp("tiny") / "tiny_wavlm.pt"
    write_wavlm(path, **tiny_wavlm_state(seed=0))
    return path


from slurm_cluster import slurm_cluster  # noqa: E402,F401  (the one-node SLURM session fixture)
