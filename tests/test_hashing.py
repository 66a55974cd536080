"""Stable hashes of files and settings."""

import hashlib
import re
from pathlib import Path

from score_s3prl.hashing import file_sha256, json_hash


def test_json_hash_is_deterministic_and_order_free():
    a = json_hash({"lr": 2e-5, "steps": 3600, "data": Path("/data/ls"), "layers": {11, 12}})
    b = json_hash({"layers": {12, 11}, "data": "/data/ls", "steps": 3600, "lr": 2e-5})
    assert a == b and re.fullmatch(r"[0-9a-f]{12}", a)
    assert json_hash({"lr": 2e-5, "steps": 3601, "data": "/data/ls", "layers": {11, 12}}) != a


def test_file_sha256_is_the_bytes_digest(tmp_path, speech_path):
    assert file_sha256(speech_path) == hashlib.sha256(speech_path.read_bytes()).hexdigest()
    path = tmp_path / "f.bin"
    path.write_bytes(b"abc")
    assert file_sha256(path) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
