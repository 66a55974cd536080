"""What one ``score-s3prl superb`` invocation runs on: its :class:`Settings` and :class:`Upstream` s.

Below the runner's jobs (:mod:`.checks`, :mod:`.plan`, :mod:`.demo`, :mod:`.cli`), which all read these.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from ..corpora import SPLITS
from ..errors import ScoreError
from ..lexicons import G2P

LAST_LAYER = -1  # QbE layer the SCORE paper evaluated
ENV = {"libri_root": "LIBRISPEECH_ROOT", "quesst_root": "QUESST14_ROOT", "lexicon": "LIBRISPEECH_LEXICON"}
DEFAULT_UPSTREAMS = ("hubert_base", "score_hubert")  # score_hubert: -k from $SCORE_HUBERT_CKPT
PROBE_SPLIT = "dev-clean"  # the probe's held-out audio under the LibriSpeech root (not trained on, not tested)
PROBE_UTTERANCES = 100  # utterances the probe measures by default

# QbE: s3prl's -t dev reads the dev queries, any other split the eval queries
QBE_GROUNDTRUTH = {"dev": "groundtruth_quesst14_dev", "test": "groundtruth_quesst14_eval"}
QBE_LANGUAGE_KEY = {"dev": "dev", "test": "eval"}

__all__ = ["SPLITS", "LAST_LAYER", "ENV", "DEFAULT_UPSTREAMS", "PROBE_SPLIT", "PROBE_UTTERANCES",
           "QBE_GROUNDTRUTH", "QBE_LANGUAGE_KEY",
           "Upstream", "parse_upstream", "Settings", "qbe_splits"]


@dataclass(frozen=True)
class Upstream:
    """An s3prl upstream: hub entry name and optional ``-k`` checkpoint (absolute path or URL)."""

    name: str
    ckpt: str | None = None

    @property
    def label(self) -> str:
        """Folder name of this upstream's runs."""
        if not self.ckpt:
            return self.name
        stem = re.sub(r"[^\w.-]+", "_", Path(self.ckpt.rstrip("/")).stem)
        return f"{self.name}--{stem}"

    @property
    def flags(self) -> list[str]:
        return ["-u", self.name, *(["-k", self.ckpt] if self.ckpt else [])]


def parse_upstream(text: str) -> Upstream:
    """``NAME[=CKPT]`` -> :class:`Upstream`; a local CKPT becomes absolute, ``score_hubert`` without
    one gets the checkpoint its hub entry would load (``$SCORE_HUBERT_CKPT`` or the default path)."""
    name, _, ckpt = text.partition("=")
    if not re.fullmatch(r"[A-Za-z_]\w*", name):
        raise ScoreError(f"--upstream {text!r}: expected NAME or NAME=CKPT with an s3prl upstream NAME")
    if not ckpt and name == "score_hubert":
        from ..hub import default_checkpoint

        ckpt = default_checkpoint()
    if ckpt and "://" not in ckpt:
        ckpt = str(Path(ckpt).expanduser().resolve())
    return Upstream(name, ckpt or None)


@dataclass(frozen=True)
class Settings:
    """One invocation of the runner."""

    tasks: tuple[str, ...]  # keys of RECIPES, in order
    upstreams: tuple[Upstream, ...]  # the first is the baseline
    out: Path  # run folder
    results: Path  # results CSV
    plot: Path  # gains bar chart (PNG)
    libri_root: Path | None
    quesst_root: Path | None
    lexicon: Path | None  # a word -> phones file given; None: lexicon_source's
    device: str  # s3prl --device
    steps: int | None  # ASR/PR training updates (None: the recipe's)
    workers: int | None  # dataloader workers (None: the recipe's)
    qbe_layer: int  # -l of the QbE test evaluation
    qbe_dev_layers: tuple[int, ...]  # -l of the QbE dev sweep
    demo: bool = False
    env: tuple[tuple[str, str], ...] = ()  # extra environment of every command
    probe_audio: Path | None = None  # held-out audio of the probe task (None: not given)
    probe_utterances: int = PROBE_UTTERANCES  # the probe's first N files of probe_audio
    # without a lexicon file: "g2p", s3prl's g2p files as the authors' PR (fetched once), or
    # "cmudict", written from CMUdict (offline; the demo's); see score_s3prl/lexicons.py
    lexicon_source: str = G2P


def qbe_splits(settings: Settings) -> list[str]:
    """QbE splits evaluated: test, and dev when a dev layer sweep is asked for."""
    return ["test"] + (["dev"] if settings.qbe_dev_layers else [])
