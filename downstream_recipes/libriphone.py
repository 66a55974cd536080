"""LibriSpeech as phone sequences: the corpus s3prl's ``ctc`` expert loads for ``name: libriphone``.

The registry's s3prl lacks ``s3prl/downstream/ctc/corpus/``; :func:`score_s3prl.recipes.install`
makes ``s3prl.downstream.ctc.corpus.libriphone`` this module. The interface is what
``s3prl.downstream.ctc.data`` calls::

    LibriPhoneDataset(split_names, tokenizer, bucket_size, path=..., lexicon=[...], **corpus)

and items are ``(audio_path, token_ids)``, or with ``bucket_size > 1`` the list of the
``bucket_size`` utterances starting at the item's position in the length-sorted list (the last
buckets are clamped to the end, so an epoch sees every utterance in up to ``bucket_size``
buckets, as s3prl's LibriSpeech corpora do).

Transcripts come from LibriSpeech's ``<speaker>-<chapter>.trans.txt``; words become phones by
the first pronunciation in the lexicon files (``WORD PH1 PH2 ...``, as written by
``python -m score_s3prl.superb.prepare pr``). Every audio file must be 16 kHz mono: the stock
collate function reads audio as stored, so anything else would be silently misread.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

from score_s3prl.errors import ScoreError
from score_s3prl.fileio import read_utf8
from score_s3prl.corpora import audio_frames, split_files, transcripts


def read_lexicon(paths: Sequence[str | os.PathLike], tokenizer: Any) -> dict[str, list[str]]:
    """word -> phones, first pronunciation of each word across ``paths`` in order.

    Blank lines are skipped.

    Raises:
        ScoreError: a file is missing, a line has no phones, or a phone is not in the vocabulary.
    """
    lexicon: dict[str, list[str]] = {}
    for path in paths:
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise ScoreError(f"{path}: lexicon file not found")
        for number, line in enumerate(read_utf8(path).splitlines(), start=1):
            if not line.strip():
                continue
            word, *phones = line.split()
            if not phones:
                raise ScoreError(f"{path}:{number}: lexicon line has a word but no phones")
            unknown = [p for p in phones if tokenizer.vocab_to_idx(p) == tokenizer.unk_idx]
            if unknown:
                raise ScoreError(f"{path}:{number}: phone {unknown[0]!r} is not in the phone vocabulary")
            lexicon.setdefault(word, phones)
    return lexicon


class LibriPhoneDataset:
    """Utterances of LibriSpeech splits with their phone token ids, sorted by label length.

    Args:
        split: split folder names under ``path`` (e.g. ``['train-clean-100']``).
        tokenizer: s3prl's ``WordTextEncoder`` over the phone vocabulary.
        bucket_size: utterances per item (1: single utterances).
        path: LibriSpeech root.
        lexicon: lexicon files, earlier files win.
        ascending: sort short-to-long instead of long-to-short.
    """

    def __init__(self, split: Sequence[str], tokenizer: Any, bucket_size: int, path: str,
                 lexicon: Sequence[str], ascending: bool = False, **_: Any) -> None:
        root = Path(path)
        word_phones = read_lexicon(lexicon, tokenizer)
        items = []
        for name in split:
            files = split_files(root, name)
            words_of = transcripts(files)
            for audio in files:
                audio_frames(audio)  # 16 kHz mono, or an error naming the file
                words = words_of[audio.stem]
                missing = [w for w in words if w not in word_phones]
                if missing:
                    raise ScoreError(
                        f"{audio}: word {missing[0]!r} is in no lexicon file ({', '.join(map(str, lexicon))}); "
                        "write a lexicon covering the corpus with `python -m score_s3prl.superb.prepare pr`"
                    )
                phones = [p for w in words for p in word_phones[w]]
                items.append((str(audio), tokenizer.encode(" ".join(phones))))
        # Python's sort is stable and the files were sorted by path: ties break the same way everywhere.
        items.sort(key=lambda item: len(item[1]), reverse=not ascending)
        self.items = items
        self.bucket_size = bucket_size

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int):
        if self.bucket_size > 1:
            start = max(0, min(len(self.items) - self.bucket_size, index))
            return self.items[start:start + self.bucket_size]
        return self.items[index]
