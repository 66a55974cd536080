"""Stable short hashes: of a file's bytes, and of settings as canonical JSON."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of the file's bytes, read in chunks."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def _canonical(obj: object) -> object:
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, (set, frozenset)):
        return sorted(obj, key=repr)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    raise TypeError(f"json_hash: cannot hash a {type(obj).__name__}")


def json_hash(obj: object) -> str:
    """12 hex digits of SHA-256 over the canonical JSON of ``obj`` (keys sorted; paths as
    strings, sets sorted, dataclasses as dicts): equal settings give equal hashes."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=_canonical)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]
