"""The training corpus: untranscribed utterances and length-bucketed batches of them.

A corpus is a list of :class:`Utterance` (a path and its length in samples at 16 kHz), found
by :func:`scan_librispeech` under a LibriSpeech-layout root or read from a manifest by
:func:`read_manifest`. :class:`BatchPlan` groups it into batches of similar length under a
budget of padded audio seconds, the same for a given seed and epoch, so training resumes at an
exact (epoch, batch) position. :func:`load_batch` reads one batch into a padded tensor.

Unusable audio never stops training: missing, corrupt and too-short files are skipped with a
:class:`CorpusWarning` and counted; only a corpus with no usable audio at all is an error.

Manifest format: one utterance per line, ``path<TAB>num_samples`` (further columns are
ignored); a relative path is relative to the manifest's folder; blank lines and lines starting
with ``#`` are ignored.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from .audio import SAMPLE_RATE, AudioError, audio_info, load_audio
from .corpora import list_audio
from .errors import ScoreError
from .fileio import atomic_write_text, read_utf8

# Header probes are I/O bound (network file systems): a few threads hide the latency.
PROBE_THREADS = 8
# Utterances whose lengths fall in the same bucket are interchangeable when batches are
# formed, so each epoch draws different batches at a padding cost below this many seconds.
BUCKET_SECONDS = 0.25
# Warnings list at most this many skipped files by name.
LISTED = 5


class CorpusWarning(UserWarning):
    """Audio skipped from the corpus: missing, unreadable or too short."""


@dataclass(frozen=True)
class Utterance:
    """One training utterance.

    Attributes:
        path: the audio file.
        num_samples: its length in samples at 16 kHz (as :func:`load_audio` returns it).
    """

    path: str
    num_samples: int


def scan_librispeech(
    root: str | os.PathLike, subsets: Sequence[str], cache_dir: str | os.PathLike | None = None
) -> list[Utterance]:
    """Find every audio file under ``root/<subset>`` and read its length from its header.

    With ``cache_dir``, the lengths are kept in a file there, keyed by root and subsets, and a
    later scan reads only the headers of files that are new or changed (size or mtime) since.
    Unreadable and empty files are skipped with one :class:`CorpusWarning` that counts them.

    Returns:
        the utterances, sorted by path.
    Raises:
        ScoreError: root or a subset folder is missing, or no usable audio was found.
    """
    root = Path(root).resolve()
    if not subsets:
        raise ScoreError(f"{root}: no subsets given (e.g. train-clean-100)")
    if not root.is_dir():
        raise ScoreError(f"{root}: dataset root not found")
    files: list[tuple[str, int, int]] = []  # path, size, mtime_ns
    for subset in subsets:
        folder = root / subset
        if not folder.is_dir():
            raise ScoreError(f"{folder}: subset {subset!r} not found under dataset root {root}")
        files += _list_audio(folder)
    files.sort()

    cache = None
    if cache_dir is not None:
        key = hashlib.sha1(json.dumps([str(root), list(subsets)]).encode()).hexdigest()[:16]
        cache = Path(cache_dir) / f"scan-{key}.tsv"
    known = _read_cache(cache) if cache is not None and cache.is_file() else {}
    # Probe the files the cache does not know in their current state (size, mtime).
    todo = [entry for entry in files if known.get(entry[0], ())[1:] != entry[1:]]
    if todo:
        with ThreadPoolExecutor(PROBE_THREADS) as pool:
            probes = pool.map(_probe, [path for path, _, _ in todo])
            for (path, size, mtime), probed in zip(todo, probes):
                known[path] = (probed, size, mtime)
        if cache is not None:
            # Unreadable files are kept too (their error instead of a length): not re-probed.
            lines = [f"# scan of {root} {' '.join(subsets)}: path, samples|error, size, mtime_ns"]
            lines += ["\t".join(map(str, (path, *known[path]))) for path, _, _ in files]
            atomic_write_text(cache, "\n".join(lines) + "\n")
    entries = [(path, known[path][0]) for path, _, _ in files]

    where = f"dataset root {root} (subsets {', '.join(subsets)})"
    return _usable(entries, where)


def read_manifest(tsv: str | os.PathLike) -> list[Utterance]:
    """Read a manifest: ``path<TAB>num_samples`` per line (see the module docstring).

    Raises:
        ScoreError: the file is missing, a line is malformed, or it lists no utterance.
    """
    tsv = Path(tsv)
    if not tsv.is_file():
        raise ScoreError(f"{tsv}: manifest not found")
    base = tsv.resolve().parent
    entries = []
    for number, line in enumerate(read_utf8(tsv).splitlines(), start=1):
        if not line.strip() or line.startswith("#"):
            continue
        fields = line.split("\t")
        try:
            num_samples = int(fields[1])
            if num_samples < 0:
                raise ValueError
        except (IndexError, ValueError):
            raise ScoreError(
                f"{tsv}:{number}: expected 'path<TAB>num_samples' (a count >= 0), got {line!r}"
            ) from None
        entries.append((str(base / fields[0]), num_samples))
    if not entries:
        raise ScoreError(f"{tsv}: manifest lists no utterance")
    return [Utterance(path, num) for path, num in entries]


class BatchPlan:
    """Length-bucketed batches over a corpus, reproducible from (seed, epoch).

    A batch's size is its padded length (its longest utterance, cropped to ``crop_samples``)
    times its number of utterances; batches fill up to ``batch_seconds`` of it and
    ``max_batch_size`` utterances. An utterance longer than the budget forms a batch alone.
    Utterances shorter than ``min_samples`` are left out (one warning; see ``num_skipped``).

    Args:
        utterances: the corpus; batches hold indices into it.
        batch_seconds: budget of padded audio per batch, in seconds.
        max_batch_size: most utterances per batch (None: no limit).
        seed: non-negative; with the epoch, fixes batch composition and order.
        crop_samples: utterances longer than this are cropped when loaded (None: never).
        min_samples: shorter utterances are left out.
        sample_rate: Hz of ``num_samples``.
    """

    def __init__(
        self,
        utterances: Sequence[Utterance],
        batch_seconds: float,
        max_batch_size: int | None = None,
        seed: int = 0,
        crop_samples: int | None = None,
        min_samples: int = 1,
        sample_rate: int = SAMPLE_RATE,
    ) -> None:
        if not batch_seconds > 0:
            raise ScoreError(f"batch_seconds must be positive, got {batch_seconds}")
        if max_batch_size is not None and max_batch_size < 1:
            raise ScoreError(f"max_batch_size must be at least 1, got {max_batch_size}")
        if crop_samples is not None and crop_samples < max(min_samples, 1):
            raise ScoreError(
                f"crop_samples ({crop_samples}) must be at least min_samples ({min_samples})"
            )
        self.budget = int(batch_seconds * sample_rate)
        self.max_batch_size = max_batch_size or len(utterances)
        self.seed = seed
        self.bucket = max(1, int(BUCKET_SECONDS * sample_rate))
        lengths = np.array([u.num_samples for u in utterances], dtype=np.int64)
        if crop_samples is not None:
            lengths = np.minimum(lengths, crop_samples)
        usable = lengths >= max(min_samples, 1)
        self.num_skipped = int((~usable).sum())
        if not usable.any():
            raise ScoreError(
                f"none of the {len(utterances)} utterances reaches min_samples = {min_samples}"
            )
        if self.num_skipped:
            warnings.warn(
                f"skipped {self.num_skipped} of {len(utterances)} utterances shorter than "
                f"{min_samples} samples",
                CorpusWarning,
                stacklevel=2,
            )
        self.indices = np.flatnonzero(usable)
        self.lengths = lengths[self.indices]

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        """The batches of one epoch, in training order.

        Every usable utterance appears exactly once. Utterances are sorted by length bucket
        (random order within a bucket), packed greedily, and the batches are shuffled; the
        result depends only on (seed, epoch) and the corpus.

        Returns:
            one list of utterance indices per batch.
        """
        rng = np.random.default_rng([self.seed, epoch])
        order = rng.permutation(len(self.indices))
        order = order[np.argsort(self.lengths[order] // self.bucket, kind="stable")]
        batches: list[list[int]] = []
        current: list[int] = []
        longest = 0
        for i in order.tolist():
            length = int(self.lengths[i])
            if current and (
                len(current) == self.max_batch_size
                or max(longest, length) * (len(current) + 1) > self.budget
            ):
                batches.append(current)
                current, longest = [], 0
            current.append(int(self.indices[i]))
            longest = max(longest, length)
        batches.append(current)
        return [batches[i] for i in rng.permutation(len(batches))]


def load_batch(
    utterances: Sequence[Utterance],
    indices: Sequence[int],
    crop_samples: int | None,
    min_samples: int,
    generator: torch.Generator,
    sample_rate: int = SAMPLE_RATE,
    failed: set[int] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Read one batch as a zero-padded tensor.

    An utterance longer than ``crop_samples`` is cut to a random window of that length
    (start drawn from ``generator``, so a seeded generator gives the same crops). Missing,
    unreadable and too-short files are skipped with a :class:`CorpusWarning` each.
    With ``failed``, the indices of skipped files are added to it, and a file already in it
    is skipped without another warning (a bad file is met again every epoch: callers count
    files, not events).

    Returns:
        (wavs, lengths, skipped): (B, T) float32 zero beyond each length, (B,) int64 lengths
        in samples, and how many of ``indices`` were skipped (B = len(indices) - skipped;
        B may be 0).
    """
    wavs: list[torch.Tensor] = []
    skipped = 0
    for index in indices:
        path = utterances[index].path
        if failed is not None and index in failed:
            skipped += 1
            continue
        try:
            wav = load_audio(path, sample_rate, max(min_samples, 1))
        except AudioError as exc:
            warnings.warn(f"skipped: {exc}", CorpusWarning, stacklevel=2)
            skipped += 1
            if failed is not None:
                failed.add(index)
            continue
        if crop_samples is not None and wav.numel() > crop_samples:
            start = int(torch.randint(wav.numel() - crop_samples + 1, (1,), generator=generator))
            wav = wav[start : start + crop_samples]
        wavs.append(wav)
    lengths = torch.tensor([w.numel() for w in wavs], dtype=torch.int64)
    batch = torch.nn.utils.rnn.pad_sequence(wavs, batch_first=True) if wavs else torch.zeros(0, 0)
    return batch, lengths, skipped


def _list_audio(folder: Path) -> list[tuple[str, int, int]]:
    """(path, size, mtime_ns) of every audio file below ``folder`` (:func:`corpora.list_audio`)."""
    found = []
    for path in list_audio(folder):
        stat = path.stat()
        found.append((str(path), stat.st_size, stat.st_mtime_ns))
    return found


def _probe(path: str) -> int | str:
    """The file's length in samples at 16 kHz from its header, or why it cannot be used."""
    try:
        info = audio_info(path)
    except AudioError as exc:
        # the reason only: the warning that lists skipped files names each file itself
        reason = str(exc).removeprefix(f"{path}: ")
        return reason.replace("\t", " ").replace("\n", " ")
    if info.frames <= 0:
        return "holds no samples"
    # load_audio resamples other rates to 16 kHz, giving ceil(frames * 16000 / rate) samples.
    return math.ceil(info.frames * SAMPLE_RATE / info.samplerate)


def _read_cache(cache: Path) -> dict[str, tuple[int | str, int, int]]:
    """The cached probes: path -> (samples or error, size, mtime_ns); {} if unreadable."""
    known: dict[str, tuple[int | str, int, int]] = {}
    try:
        for line in cache.read_text(encoding="utf-8").splitlines():
            if line.startswith("#"):
                continue
            path, probed, size, mtime = line.split("\t")
            known[path] = (int(probed) if probed.isdigit() else probed, int(size), int(mtime))
    except (OSError, ValueError) as exc:
        warnings.warn(f"{cache}: unreadable scan cache ignored ({exc})", CorpusWarning, 3)
        return {}
    return known


def _usable(entries: list[tuple[str, int | str]], where: str) -> list[Utterance]:
    """Utterances from (path, samples or error) pairs; warn about and count the others."""
    good = [Utterance(path, probed) for path, probed in entries if isinstance(probed, int)]
    bad = [f"{path}: {probed}" for path, probed in entries if not isinstance(probed, int)]
    if bad:
        listed = "; ".join(bad[:LISTED]) + ("; ..." if len(bad) > LISTED else "")
        warnings.warn(
            f"{where}: skipped {len(bad)} of {len(entries)} audio files: {listed}",
            CorpusWarning,
            stacklevel=3,
        )
    if not good:
        raise ScoreError(f"{where}: no usable audio found")
    return good
