"""WER and PER recomputed from the transcript files s3prl's recipes write in ``-m evaluate``.

s3prl 0.4.18 writes, into the experiment directory, one line ``<utt_id> <tokens ...>`` per
utterance for every split whose name contains ``dev`` or ``test``:

- ASR (``-d asr``, ``downstream/asr/expert.py``): ``{split}-noLM-hyp.ark`` and
  ``{split}-noLM-ref.ark`` (``-LM-`` instead of ``-noLM-`` when decoding with a language
  model); the tokens are words.
- PR (``-d ctc``, ``downstream/ctc/expert.py``): ``{split}-hyp.ark`` and ``{split}-ref.ark``;
  the tokens are phones.

The error rate is corpus level: the Levenshtein distance between token sequences
(substitutions + deletions + insertions) summed over utterances, divided by the number of
reference tokens, as a percentage. Tokens are split on any whitespace, so an empty
hypothesis holds zero tokens (s3prl's own ``per`` splits on a single space and counts an
empty hypothesis as one empty token; that edge case is the only way the two can differ).
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import editdistance
import numpy as np

from ..errors import ScoreError

TASKS = ("asr", "pr")  # recipes that write transcripts: words (ASR), phones (PR)


@dataclass(frozen=True)
class ErrorRate:
    """Corpus-level token error rate."""

    edits: int  # substitutions + deletions + insertions, summed over utterances
    ref_tokens: int  # reference tokens (words or phones) over the corpus
    utterances: int  # reference utterances scored

    @property
    def percent(self) -> float:
        """Error rate in percent: 100 * edits / ref_tokens."""
        return 100.0 * self.edits / self.ref_tokens


def split_lines(path: str | os.PathLike, kind: str) -> list[tuple[int, list[str]]]:
    """The non-blank lines of a text file split on whitespace, with 1-based line numbers.

    Raises:
        ScoreError: the file is missing or unreadable (the message names ``kind`` of file).
    """
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise ScoreError(f"{path}: {kind} file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ScoreError(f"{path}: cannot read {kind} file ({exc})") from exc
    return [(number, line.split()) for number, line in enumerate(lines, start=1) if line.strip()]


def read_transcripts(path: str | os.PathLike) -> dict[str, list[str]]:
    """Read a ``<utt_id> <token> <token> ...`` file (s3prl's ``*-hyp.ark`` / ``*-ref.ark``).

    Blank lines are skipped; a line holding only an id is an empty transcript.

    Returns:
        utterance id -> list of tokens, in file order.
    Raises:
        ScoreError: the file is missing or unreadable, or an utterance id appears twice.
    """
    transcripts: dict[str, list[str]] = {}
    for number, fields in split_lines(path, "transcript"):
        if fields[0] in transcripts:
            raise ScoreError(f"{path}:{number}: utterance {fields[0]!r} appears twice")
        transcripts[fields[0]] = fields[1:]
    return transcripts


def _examples(ids: list[str], limit: int = 3) -> str:
    shown = ", ".join(ids[:limit])
    return shown + (f", ... ({len(ids)} in all)" if len(ids) > limit else "")


@dataclass(frozen=True)
class ItemErrors:
    """Per-utterance errors of one system on one test set: what the paired bootstrap resamples.

    The corpus-level rate is ``100 * edits.sum() / ref_tokens.sum()``.
    """

    items: tuple[str, ...]  # utterance ids, reference file order
    edits: np.ndarray  # (utterances,) int64: substitutions + deletions + insertions
    ref_tokens: np.ndarray  # (utterances,) int64: reference tokens (words or phones)

    @property
    def total(self) -> ErrorRate:
        """The corpus-level :class:`ErrorRate` of these utterances."""
        return ErrorRate(edits=int(self.edits.sum()), ref_tokens=int(self.ref_tokens.sum()),
                         utterances=len(self.items))


def item_errors(
    hyps: dict[str, list[str]],
    refs: dict[str, list[str]],
    source: str = "hypotheses",
) -> ItemErrors:
    """Edits and reference tokens of every reference utterance of ``refs`` (id -> tokens).

    A reference utterance without a hypothesis counts as all deletions and one without a
    reference is ignored, each with a warning naming ``source``.

    Raises:
        ScoreError: the references hold no tokens at all (the rate is undefined).
    """
    missing = [utt for utt in refs if utt not in hyps]
    if missing:
        warnings.warn(
            f"{source}: no hypothesis for {len(missing)} of {len(refs)} reference utterances "
            f"({_examples(missing)}); counted as all deletions",
            stacklevel=2,
        )
    extra = [utt for utt in hyps if utt not in refs]
    if extra:
        warnings.warn(
            f"{source}: {len(extra)} hypotheses have no reference ({_examples(extra)}); ignored",
            stacklevel=2,
        )
    edits = [editdistance.eval(hyps.get(utt, []), ref) for utt, ref in refs.items()]
    ref_tokens = [len(ref) for ref in refs.values()]
    if sum(ref_tokens) == 0:
        raise ScoreError(f"{source}: the references hold no tokens; the error rate is undefined")
    return ItemErrors(items=tuple(refs), edits=np.asarray(edits, dtype=np.int64),
                      ref_tokens=np.asarray(ref_tokens, dtype=np.int64))


def error_rate(
    hyps: dict[str, list[str]],
    refs: dict[str, list[str]],
    source: str = "hypotheses",
) -> ErrorRate:
    """Corpus-level error rate of ``hyps`` against ``refs`` (utterance id -> tokens); see
    :func:`item_errors` for missing and extra utterances.

    Raises:
        ScoreError: the references hold no tokens at all (the rate is undefined).
    """
    return item_errors(hyps, refs, source).total


def file_error_rate(hyp_path: str | os.PathLike, ref_path: str | os.PathLike) -> ErrorRate:
    """:func:`error_rate` of two transcript files (see :func:`read_transcripts`)."""
    return item_errors(read_transcripts(hyp_path), read_transcripts(ref_path), source=str(hyp_path)).total


def transcript_paths(
    expdir: str | os.PathLike, task: str, split: str, lm: bool = False
) -> tuple[Path, Path]:
    """The (hypothesis, reference) files s3prl writes for ``task`` ("asr" or "pr") and ``split``.

    ``lm`` selects the ASR files decoded with a language model (``-LM-``); PR has no LM.
    """
    expdir = Path(expdir)
    if task == "asr":
        stem = f"{split}-{'LM' if lm else 'noLM'}"
    elif task == "pr":
        if lm:
            raise ScoreError("task pr: s3prl's phone recognition recipe has no LM decoding")
        stem = split
    else:
        raise ScoreError(f"task {task!r}: transcripts exist only for {TASKS}")
    return expdir / f"{stem}-hyp.ark", expdir / f"{stem}-ref.ark"


def recipe_item_errors(
    expdir: str | os.PathLike, task: str, split: str, lm: bool = False
) -> ItemErrors:
    """Per-utterance :class:`ItemErrors` of an s3prl ``-m evaluate`` run (task "asr" or "pr")
    on ``split``: the data of a paired bootstrap (:mod:`.statistics`).

    Raises:
        ScoreError: a transcript file is missing (naming it and the run that should have
            written it) or unreadable.
    """
    hyp_path, ref_path = transcript_paths(expdir, task, split, lm)
    for path in (hyp_path, ref_path):
        if not path.is_file():
            raise ScoreError(
                f"{path}: transcript file not found; s3prl writes it in `-m evaluate -t {split}` "
                f"(only for splits named dev* or test*)"
            )
    return item_errors(read_transcripts(hyp_path), read_transcripts(ref_path), source=str(hyp_path))


def recipe_error_rate(
    expdir: str | os.PathLike, task: str, split: str, lm: bool = False
) -> ErrorRate:
    """WER (task "asr") or PER (task "pr") of an s3prl ``-m evaluate`` run on ``split``.

    Raises:
        ScoreError: a transcript file is missing (naming it and the run that should have
            written it) or unreadable.
    """
    return recipe_item_errors(expdir, task, split, lm).total
