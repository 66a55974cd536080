"""Corpus: scanning, the scan cache, manifests, length-bucketed batches, batch loading."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

from score_s3prl.audio import load_audio
from score_s3prl.data import (
    BatchPlan,
    CorpusWarning,
    Utterance,
    load_batch,
    read_manifest,
    scan_librispeech,
)
from score_s3prl.errors import ScoreError

SR = 16000
SUBSETS = ["train-clean-100", "test-other"]


@pytest.fixture
def root(tmp_path: Path, assets_dir: Path) -> Path:
    """A LibriSpeech-layout copy of the bundled audio, plus a corrupt and a too-short file."""
    root = tmp_path / "LibriSpeech"
    for subset in SUBSETS:
        shutil.copytree(assets_dir / subset, root / subset)
    bad = root / "train-clean-100" / "9999" / "1"
    bad.mkdir(parents=True)
    (bad / "9999-1-0000.flac").write_bytes(b"fLaC but not really" * 10)
    soundfile.write(bad / "9999-1-0001.flac", np.full(400, 0.1, dtype=np.float32), SR)
    return root


def _real_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*.flac") if not p.name.startswith("9999-1-0000"))


def test_scan_finds_files_and_lengths(root: Path) -> None:
    with pytest.warns(CorpusWarning, match=r"skipped 1 of 17 audio files.*9999-1-0000\.flac"):
        utts = scan_librispeech(root, SUBSETS)
    expected = [Utterance(str(p), soundfile.info(p).frames) for p in _real_files(root)]
    assert utts == expected and len(utts) == 16


def test_scan_cache_is_used_and_refreshed(root: Path, tmp_path: Path, monkeypatch) -> None:
    cache_dir = tmp_path / "cache"
    with pytest.warns(CorpusWarning):
        first = scan_librispeech(root, SUBSETS, cache_dir=cache_dir)
    assert len(list(cache_dir.glob("scan-*.tsv"))) == 1

    probed: list[str] = []
    real_info = soundfile.info

    def counting_info(path, *args, **kwargs):
        probed.append(str(path))
        return real_info(path, *args, **kwargs)

    monkeypatch.setattr(soundfile, "info", counting_info)
    with pytest.warns(CorpusWarning, match="skipped 1 of 17"):  # the corrupt file, from cache
        assert scan_librispeech(root, SUBSETS, cache_dir=cache_dir) == first
    assert probed == []

    # A new file and a changed file are probed, the rest still come from the cache.
    new = root / "test-other" / "9999" / "2" / "9999-2-0000.flac"
    new.parent.mkdir(parents=True)
    soundfile.write(new, np.zeros(1234, dtype=np.float32), SR)
    changed = Path(first[0].path)
    soundfile.write(changed, np.zeros(777, dtype=np.float32), SR)
    with pytest.warns(CorpusWarning):
        again = scan_librispeech(root, SUBSETS, cache_dir=cache_dir)
    assert sorted(probed) == sorted([str(new), str(changed)])
    assert Utterance(str(new), 1234) in again and Utterance(str(changed), 777) in again
    # Other subsets are another cache entry.
    scan_librispeech(root, ["test-other"], cache_dir=cache_dir)
    assert len(list(cache_dir.glob("scan-*.tsv"))) == 2


def test_scan_errors_name_root_and_subset(root: Path, tmp_path: Path) -> None:
    with pytest.raises(ScoreError, match=r"nowhere.*dataset root not found"):
        scan_librispeech(tmp_path / "nowhere", SUBSETS)
    with pytest.raises(ScoreError, match=r"subset 'dev-clean' not found"):
        scan_librispeech(root, ["dev-clean"])
    with pytest.raises(ScoreError, match="no subsets"):
        scan_librispeech(root, [])
    (tmp_path / "empty" / "train-clean-100").mkdir(parents=True)
    with pytest.raises(ScoreError, match=r"empty.*no usable audio"):
        scan_librispeech(tmp_path / "empty", ["train-clean-100"])
    junk = tmp_path / "junk" / "train-clean-100" / "1" / "2"
    junk.mkdir(parents=True)
    (junk / "1-2-0000.flac").write_bytes(b"junk")
    with pytest.warns(CorpusWarning), pytest.raises(ScoreError, match=r"junk.*no usable audio"):
        scan_librispeech(tmp_path / "junk", ["train-clean-100"])


def test_read_manifest(tmp_path: Path, assets_dir: Path) -> None:
    audio = sorted((assets_dir / "train-clean-100").rglob("*.flac"))
    (tmp_path / "a").mkdir()
    shutil.copy(audio[0], tmp_path / "a" / "x.flac")
    manifest = tmp_path / "train.tsv"
    manifest.write_text(f"# comment\na/x.flac\t26320\n\n{audio[1]}\t31440\n")
    assert read_manifest(manifest) == [
        Utterance(str(tmp_path / "a" / "x.flac"), 26320),
        Utterance(str(audio[1]), 31440),
    ]
    manifest.write_text("a/x.flac\t26320\na/y.flac\n")
    with pytest.raises(ScoreError, match=r"train\.tsv:2: expected 'path<TAB>num_samples'"):
        read_manifest(manifest)
    manifest.write_text("# nothing\n")
    with pytest.raises(ScoreError, match="lists no utterance"):
        read_manifest(manifest)
    with pytest.raises(ScoreError, match="manifest not found"):
        read_manifest(tmp_path / "missing.tsv")


@pytest.fixture(scope="module")
def corpus() -> list[Utterance]:
    """600 utterances of 0.05 to 25 s, as LibriSpeech's spread (no files behind them)."""
    rng = np.random.default_rng(0)
    lengths = rng.integers(800, 25 * SR, 600)
    return [Utterance(f"u{i}.flac", int(n)) for i, n in enumerate(lengths)]


@pytest.mark.parametrize(
    "seconds, max_size, crop", [(60.0, None, None), (60.0, 8, None), (30.0, None, 16 * SR)]
)
def test_batches_respect_budget_and_cover_corpus(corpus, seconds, max_size, crop) -> None:
    with pytest.warns(CorpusWarning, match=r"skipped \d+ of 600 utterances shorter than 16000"):
        plan = BatchPlan(corpus, seconds, max_size, seed=1, crop_samples=crop, min_samples=SR)
    usable = [i for i, u in enumerate(corpus) if u.num_samples >= SR]
    assert plan.num_skipped == len(corpus) - len(usable) > 0
    for epoch in (0, 1):
        batches = plan.epoch_batches(epoch)
        assert sorted(i for batch in batches for i in batch) == usable
        for batch in batches:
            padded = max(min(corpus[i].num_samples, crop or math.inf) for i in batch) * len(batch)
            assert padded <= seconds * SR or len(batch) == 1
            assert len(batch) <= (max_size or len(corpus))
        # Bucketing keeps padding small: under 10 % of the padded total.
        real = sum(min(corpus[i].num_samples, crop or math.inf) for i in usable)
        padded = sum(
            max(min(corpus[i].num_samples, crop or math.inf) for i in b) * len(b) for b in batches
        )
        assert real / padded > 0.9


def test_batches_deterministic_per_seed_and_epoch(corpus) -> None:
    plan = BatchPlan(corpus, 60.0, seed=3)
    assert plan.epoch_batches(2) == BatchPlan(corpus, 60.0, seed=3).epoch_batches(2)
    assert plan.epoch_batches(2) != plan.epoch_batches(3)
    assert plan.epoch_batches(2) != BatchPlan(corpus, 60.0, seed=4).epoch_batches(2)
    # Not just a reordering: batch composition varies across epochs too.
    assert sorted(map(sorted, plan.epoch_batches(0))) != sorted(map(sorted, plan.epoch_batches(1)))


def test_long_utterance_gets_its_own_batch() -> None:
    utts = [Utterance("long", 40 * SR), Utterance("a", 5 * SR), Utterance("b", 5 * SR)]
    batches = BatchPlan(utts, 20.0).epoch_batches(0)
    assert sorted(map(sorted, batches)) == [[0], [1, 2]]


def test_batch_plan_errors() -> None:
    utts = [Utterance("a", 100)]
    with pytest.raises(ScoreError, match="batch_seconds"):
        BatchPlan(utts, 0)
    with pytest.raises(ScoreError, match="max_batch_size"):
        BatchPlan(utts, 10, max_batch_size=0)
    with pytest.raises(ScoreError, match="none of the 1 utterances"):
        BatchPlan(utts, 10, min_samples=SR)


def test_load_batch_pads_crops_and_skips(root: Path) -> None:
    with pytest.warns(CorpusWarning):
        utts = scan_librispeech(root, SUBSETS)
    utts = utts + [Utterance(str(root / "gone.flac"), 20000)]
    short = next(i for i, u in enumerate(utts) if u.num_samples == 400)
    corrupt = Utterance(str(root / "train-clean-100/9999/1/9999-1-0000.flac"), 30000)
    utts.append(corrupt)
    good = [0, 11, 9]  # two longer than the crop, one shorter
    indices = [good[0], short, good[1], len(utts) - 2, good[2], len(utts) - 1]
    crop = 40000
    with pytest.warns(CorpusWarning) as caught:
        wavs, lengths, skipped = load_batch(
            utts, indices, crop, SR // 10, torch.Generator().manual_seed(0)
        )
    messages = " ".join(str(w.message) for w in caught)
    assert skipped == 3 and "too short" in messages and "not found" in messages
    assert "cannot decode" in messages
    assert wavs.dtype == torch.float32 and lengths.dtype == torch.int64
    assert lengths.tolist() == [min(utts[i].num_samples, crop) for i in good]
    assert wavs.shape == (3, int(lengths.max()))
    for row, length, i in zip(wavs, lengths.tolist(), good):
        assert torch.all(row[length:] == 0)
        full = load_audio(utts[i].path)
        candidates = torch.nonzero(full[: full.numel() - length + 1] == row[0]).flatten()
        assert any(torch.equal(full[s : s + length], row[:length]) for s in candidates.tolist())
    again, _, _ = load_batch(utts, good, crop, 1, torch.Generator().manual_seed(0))
    assert torch.equal(again, wavs)
    other, _, _ = load_batch(utts, good, crop, 1, torch.Generator().manual_seed(1))
    assert not torch.equal(other, wavs)


def test_load_batch_all_skipped(tmp_path: Path) -> None:
    with pytest.warns(CorpusWarning):
        wavs, lengths, skipped = load_batch(
            [Utterance(str(tmp_path / "x.flac"), 100)], [0], None, 1, torch.Generator()
        )
    assert wavs.shape == (0, 0) and lengths.shape == (0,) and skipped == 1
