"""Smoke-test corpora built from the bundled ``assets/librispeech-mini`` (no network, deterministic).

These exercise the SUPERB recipes end to end on a CPU in seconds; their scores mean nothing.

- :func:`build_librispeech`: a LibriSpeech-layout corpus with transcripts and the splits the
  ASR and PR recipes read (``train-clean-100``, ``dev-clean``, ``test-clean``). All three hold
  the same 6 transcribed utterances: it is a smoke corpus, not a benchmark.
- :func:`build_quesst`: a QUESST 2014-layout query-by-example set cut from the ``test-other``
  utterances and their word alignments. Every word that occurs in at least two utterances
  becomes one query, cut from its first occurrence; the search collection is the utterances,
  with each query's own span silenced, so a query never finds itself and the ground truth
  (the word's other occurrences) is exact. Queries alternate between dev and eval in word order.
  Files and ground truth follow the official layout::

      quesst14Database/Audio/quesst14_NNNNN.wav
      quesst14Database/{dev,eval}_queries/quesst14_{dev,eval}_NNNN.wav
      quesst14Database/scoring/language_key_{utterances,dev,eval}.lst
      quesst14Database/scoring/groundtruth_quesst14_{dev,eval}/quesst14_{dev,eval}.{ecf.xml,rttm,tlist.xml}
"""

from __future__ import annotations

import csv
import os
import shutil
import xml.etree.ElementTree as ET
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import soundfile
import torch
import torchaudio.functional as AF

from ..audio import SAMPLE_RATE, load_audio
from ..corpora import BUNDLED_SPEECH
from ..errors import ScoreError
from ..fileio import atomic_open, atomic_write_text

ASSETS = BUNDLED_SPEECH
LIBRISPEECH_SPLITS = ("train-clean-100", "dev-clean", "test-clean")
QUESST_RATE = 8000  # QUESST 2014 ships 8 kHz audio; the recipe resamples it to 16 kHz


def build_librispeech(out_root: str | os.PathLike, assets: str | os.PathLike = ASSETS) -> Path:
    """Copy the 6 transcribed utterances into every split of a LibriSpeech-layout corpus.

    Returns:
        the corpus root ``<out_root>/LibriSpeech`` (what the recipes call ``libri_root``).
    Raises:
        ScoreError: ``assets`` has no ``transcribed/`` utterances.
    """
    source = Path(assets) / "transcribed"
    files = sorted(source.rglob("*.flac")) + sorted(source.rglob("*.trans.txt"))
    if not any(f.suffix == ".flac" for f in files):
        raise ScoreError(f"{source}: no transcribed .flac utterances")
    root = Path(out_root) / "LibriSpeech"
    for split in LIBRISPEECH_SPLITS:
        for src in files:
            dst = root / split / src.relative_to(source)
            dst.parent.mkdir(parents=True, exist_ok=True)
            with open(src, "rb") as reader, atomic_open(dst, "wb") as writer:
                shutil.copyfileobj(reader, writer)
    return root


@dataclass(frozen=True)
class Occurrence:
    """One aligned word token in a test-other utterance."""

    word: str
    utterance: str  # LibriSpeech utterance id
    start: float  # seconds
    end: float  # seconds


def read_word_segments(path: str | os.PathLike) -> list[Occurrence]:
    """Rows of ``test-other-word-segments.csv`` (word, speaker_id, utt_id, start, end), sorted."""
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
        tokens = [Occurrence(r["word"], r["utt_id"], float(r["start"]), float(r["end"])) for r in rows]
    except FileNotFoundError:
        raise ScoreError(f"{path}: word segment file not found") from None
    except (KeyError, TypeError, ValueError) as exc:
        raise ScoreError(f"{path}: expected columns word,speaker_id,utt_id,start,end ({exc})") from exc
    bad = [t for t in tokens if not 0 <= t.start < t.end]
    if bad:
        raise ScoreError(f"{path}: segment {bad[0].word} in {bad[0].utterance} has start >= end")
    return sorted(tokens, key=lambda t: (t.utterance, t.start, t.word))


def _write_wav(path: Path, wav: torch.Tensor, sample_rate: int) -> None:
    with atomic_open(path, "wb") as handle:
        soundfile.write(handle, wav.numpy(), sample_rate, format="WAV", subtype="PCM_16")


def _span(token: Occurrence) -> slice:
    return slice(round(token.start * SAMPLE_RATE), round(token.end * SAMPLE_RATE))


def _ground_truth(folder: Path, name: str, queries: list[tuple[str, Occurrence]],
                  targets: dict[str, list[Occurrence]], docs: dict[str, tuple[str, float]]) -> None:
    """Write ``<name>.ecf.xml``, ``<name>.tlist.xml`` and ``<name>.rttm`` (NIST STD 2006 formats)."""
    ecf = ET.Element("ecf", source_signal_duration=f"{sum(d for _, d in docs.values()):.3f}",
                     language="english", version="score-s3prl demo")
    for doc_id, duration in docs.values():
        ET.SubElement(ecf, "excerpt", audio_filename=f"Audio/{doc_id}.wav", channel="1",
                      tbeg="0.000", dur=f"{duration:.3f}", source_type="splitcts")
    tlist = ET.Element("termlist", ecf_filename=f"{name}.ecf.xml", version="1",
                       language="english", encoding="UTF-8")
    rttm = []
    for query_id, query in queries:
        term = ET.SubElement(tlist, "term", termid=query_id)
        ET.SubElement(term, "termtext").text = query.word
        for token in targets[query.word]:
            doc_id = docs[token.utterance][0]
            rttm.append(f"LEXEME {doc_id} 1 {token.start:.3f} {token.end - token.start:.3f} "
                        f"{query_id} lex <NA> <NA>\n")
    for element, suffix in ((ecf, "ecf.xml"), (tlist, "tlist.xml")):
        ET.indent(element)
        text = ET.tostring(element, encoding="unicode")
        atomic_write_text(folder / f"{name}.{suffix}", f'<?xml version="1.0" encoding="UTF-8"?>\n{text}\n')
    atomic_write_text(folder / f"{name}.rttm", "".join(rttm))


def build_quesst(out_root: str | os.PathLike, assets: str | os.PathLike = ASSETS,
                 sample_rate: int = QUESST_RATE) -> Path:
    """Build the QUESST 2014-layout QbE set described in the module docstring.

    Args:
        sample_rate: rate of the written WAV files (QUESST's own is 8 kHz).
    Returns:
        the dataset root ``<out_root>/quesst14Database`` (the recipe's ``dataset_root``).
    Raises:
        ScoreError: the alignments or audio are missing, or no word occurs in two utterances.
    """
    assets = Path(assets)
    tokens = read_word_segments(assets / "test-other-word-segments.csv")
    by_word: dict[str, list[Occurrence]] = defaultdict(list)
    for token in tokens:
        by_word[token.word].append(token)
    words = sorted(w for w, occ in by_word.items() if len({t.utterance for t in occ}) >= 2)
    if not words:
        raise ScoreError(f"{assets / 'test-other-word-segments.csv'}: no word occurs in two utterances")

    root = Path(out_root) / "quesst14Database"
    utterances = sorted({t.utterance for t in tokens})
    audio = {}
    for utt in utterances:
        speaker, chapter, _ = utt.split("-")
        audio[utt] = load_audio(assets / "test-other" / speaker / chapter / f"{utt}.flac")

    splits: dict[str, list[tuple[str, Occurrence]]] = {"dev": [], "eval": []}
    targets: dict[str, list[Occurrence]] = {}
    collection = {utt: wav.clone() for utt, wav in audio.items()}
    for index, word in enumerate(words):
        query, *others = by_word[word]
        split = "dev" if index % 2 == 0 else "eval"
        query_id = f"quesst14_{split}_{len(splits[split]) + 1:04d}"
        splits[split].append((query_id, query))
        targets[word] = others
        collection[query.utterance][_span(query)] = 0.0  # the query must not find itself
        wav = audio[query.utterance][_span(query)]
        _write_wav(root / f"{split}_queries" / f"{query_id}.wav",
                   AF.resample(wav, SAMPLE_RATE, sample_rate), sample_rate)

    docs = {}
    for number, utt in enumerate(utterances, start=1):
        doc_id = f"quesst14_{number:05d}"
        wav = AF.resample(collection[utt], SAMPLE_RATE, sample_rate)
        _write_wav(root / "Audio" / f"{doc_id}.wav", wav, sample_rate)
        docs[utt] = (doc_id, wav.numel() / sample_rate)

    scoring = root / "scoring"
    atomic_write_text(scoring / "language_key_utterances.lst",
                      "".join(f"quesst14Database/Audio/{d}.wav nnenglish\n" for d, _ in docs.values()))
    for split, queries in splits.items():
        atomic_write_text(scoring / f"language_key_{split}.lst",
                          "".join(f"quesst14Database/{split}_queries/{q}.wav nnenglish\n" for q, _ in queries))
        _ground_truth(scoring / f"groundtruth_quesst14_{split}", f"quesst14_{split}", queries, targets, docs)
    return root
