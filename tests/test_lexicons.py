"""PR's lexicon as the authors used it: s3prl's g2p files by default, fetched once through the
safe downloader (file:// mirrors here, never the network) and checked by content; CMUdict on
request; the lexicon named in what the run records."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from score_s3prl import lexicons
from score_s3prl.checkpoints.download import DownloadError
from score_s3prl.errors import ScoreError
from score_s3prl.lexicons import CMUDICT, G2P, Lexicon, parse_lexicon
from score_s3prl.recipes import RECIPES

# s3prl/downstream/ctc/libriphone.yaml at s3prl's commit ec8064b5 (release 0.4.18), corpus.lexicon,
# as read from s3prl's repository (the pip package does not ship the file):
S3PRL_LIBRIPHONE_LEXICON = [
    "downstream/ctc/lexicon/librispeech-lexicon-200k-g2p.txt",
    "downstream/ctc/lexicon/librispeech-lexicon-allothers-g2p.txt",
]


def test_the_g2p_files_are_the_ones_s3prls_libriphone_recipe_names():
    names = [name for name, _ in lexicons.G2P_FILES]
    assert names == [Path(p).name for p in S3PRL_LIBRIPHONE_LEXICON]  # same files, same order
    # our recipe config names them as s3prl's does
    config = yaml.safe_load(RECIPES["pr"].config_path.read_text())
    assert config["downstream_expert"]["corpus"]["lexicon"] == S3PRL_LIBRIPHONE_LEXICON
    # fetched from the folder s3prl's config points into, at the pinned commit
    assert lexicons.G2P_URL == (f"https://raw.githubusercontent.com/s3prl/s3prl/{lexicons.S3PRL_COMMIT}/"
                                f"s3prl/{Path(S3PRL_LIBRIPHONE_LEXICON[0]).parent}/")


def test_the_pin_is_the_installed_s3prl_and_its_own_g2p_names_the_same_files():
    import s3prl
    from s3prl.dataio.encoder.g2p import DEFAULT_LEXICON_URL

    assert s3prl.__version__ == lexicons.S3PRL_VERSION  # upgrading s3prl means re-pinning the lexicon
    assert [url.rsplit("/", 1)[1] for url in DEFAULT_LEXICON_URL] == [name for name, _ in lexicons.G2P_FILES]


def test_git_blob_id_is_gits(tmp_path):
    path = tmp_path / "hello.txt"
    path.write_bytes(b"hello\n")
    assert lexicons.git_blob_id(path) == "ce013625030ba8dba906f756967f9e9ca394464a"  # git hash-object of "hello\n"
    if shutil.which("git"):
        path.write_bytes(b"WORD\tW ER1 D\n" * 1000)
        found = subprocess.run(["git", "hash-object", str(path)], capture_output=True, text=True, check=True)
        assert lexicons.git_blob_id(path) == found.stdout.strip()


@pytest.fixture
def mirror(tmp_path, monkeypatch) -> Path:
    """Two g2p files in a local folder, pinned by their blob ids, served as file:// URLs into a
    download cache of the test's own."""
    from s3prl.util import download

    folder = tmp_path / "mirror"
    folder.mkdir()
    contents = {"librispeech-lexicon-200k-g2p.txt": "HELLO\tHH AH0 L OW1\nWORLD\tW ER1 L D\n",
                "librispeech-lexicon-allothers-g2p.txt": "ZYX\tZ IH1 K S\nHELLO\tHH EH1 L OW0\n"}
    for name, text in contents.items():
        (folder / name).write_text(text)
    monkeypatch.setattr(lexicons, "G2P_FILES", tuple((n, lexicons.git_blob_id(folder / n)) for n in contents))
    monkeypatch.setenv(lexicons.URL_ENV, folder.as_uri())
    monkeypatch.setattr(download, "_download_dir", tmp_path / "cache")
    return folder


def test_fetch_caches_the_files_once(mirror):
    paths = lexicons.fetch_g2p()
    assert paths == lexicons.g2p_paths()
    assert [p.read_text() for p in paths] == [(mirror / n).read_text() for n, _ in lexicons.G2P_FILES]
    shutil.rmtree(mirror)  # fetched once: the cache serves the next run
    assert lexicons.fetch_g2p() == paths


def test_a_file_with_other_content_is_refused_and_not_cached(mirror):
    (mirror / "librispeech-lexicon-allothers-g2p.txt").write_text("ZYX\tZ IH1 K S\n")  # not the pinned bytes
    with pytest.raises(DownloadError, match=r"librispeech-lexicon-allothers-g2p.txt: cannot download lexicon "
                                            r"\(librispeech-lexicon-allothers-g2p.txt is not s3prl 0.4.18's file"):
        lexicons.fetch_g2p()
    assert not lexicons.g2p_paths()[1].exists()


def test_an_unreachable_source_is_one_error_naming_the_url(tmp_path, monkeypatch):
    from s3prl.util import download

    monkeypatch.setattr(download, "_download_dir", tmp_path / "cache")
    monkeypatch.setenv(lexicons.URL_ENV, (tmp_path / "nowhere").as_uri())
    with pytest.raises(DownloadError, match=r"nowhere/librispeech-lexicon-200k-g2p.txt: cannot download lexicon"):
        lexicons.fetch_g2p()


def test_the_three_sources(tmp_path, mirror):
    prepared = tmp_path / "prepared"
    assert parse_lexicon("g2p") == Lexicon(G2P) and parse_lexicon("cmudict") == Lexicon(CMUDICT)
    assert Lexicon(G2P).files(prepared) == lexicons.g2p_paths()
    assert Lexicon(CMUDICT).files(prepared) == [prepared / "lexicon.txt"]
    mine = tmp_path / "mine.txt"
    mine.write_text("HELLO HH AH0 L OW1\n")
    assert parse_lexicon(str(mine)) == Lexicon(file=mine) and Lexicon(file=mine).files(prepared) == [mine]
    assert Lexicon(G2P).label == ("s3prl 0.4.18 g2p: librispeech-lexicon-200k-g2p.txt, "
                                  "librispeech-lexicon-allothers-g2p.txt")
    assert Lexicon(CMUDICT).label.startswith("cmudict ")
    assert Lexicon(file=mine).label.startswith("file mine.txt sha256:")
    with pytest.raises(ScoreError, match="lexicon source 'espeak': expected g2p, cmudict or a file"):
        Lexicon("espeak")


def libri_words(root: Path, words: str) -> Path:
    """A LibriSpeech-layout dev-clean with one 0.1 s utterance saying ``words``."""
    import numpy as np
    import soundfile

    chapter = root / "dev-clean" / "19" / "198"
    chapter.mkdir(parents=True)
    soundfile.write(chapter / "19-198-0001.flac", np.zeros(1600, dtype=np.float32), 16000)
    (chapter / "19-198.trans.txt").write_text(f"19-198-0001 {words}\n")
    return root


def test_prepare_pr_fetches_the_g2p_files_and_points_the_recipe_at_them(tmp_path, mirror, capsys):
    from score_s3prl.corpora import override
    from score_s3prl.superb import prepare

    libri = libri_words(tmp_path / "libri", "HELLO ZYX WORLD")
    text = prepare.prepare_pr(libri, tmp_path / "pr", ["dev-clean"])
    assert text == override({"config.downstream_expert.corpus.path": str(libri.resolve()),
                             "config.downstream_expert.corpus.lexicon": [str(p) for p in lexicons.g2p_paths()]})
    assert all(p.is_file() for p in lexicons.g2p_paths())
    assert "all 3 transcript words covered" in capsys.readouterr().err
    assert not (tmp_path / "pr" / "lexicon.txt").exists()  # nothing written from CMUdict


def test_the_recipe_reads_the_first_pronunciation_across_the_g2p_files(mirror):
    from s3prl.downstream.ctc.text import load_text_encoder

    from downstream_recipes.libriphone import read_lexicon

    config = RECIPES["pr"].config_path
    vocab = config.parent / yaml.safe_load(config.read_text())["downstream_expert"]["text"]["vocab_file"]
    entries = read_lexicon(lexicons.fetch_g2p(), load_text_encoder("word", str(vocab)))
    assert entries == {"HELLO": ["HH", "AH0", "L", "OW1"], "WORLD": ["W", "ER1", "L", "D"], "ZYX": ["Z", "IH1", "K", "S"]}


def test_prepare_pr_stops_on_a_word_the_g2p_files_lack(tmp_path, mirror):
    from score_s3prl.superb import prepare

    libri = libri_words(tmp_path / "libri", "HELLO QWERTY")
    with pytest.raises(ScoreError, match=r"g2p lexicon has no entry for 1 transcript words \(first: 'QWERTY'\)"):
        prepare.prepare_pr(libri, tmp_path / "pr", ["dev-clean"])


def test_prepare_pr_with_cmudict_writes_the_lexicon(tmp_path):
    from score_s3prl.superb import prepare

    libri = libri_words(tmp_path / "libri", "HELLO QWERTY")
    text = prepare.prepare_pr(libri, tmp_path / "pr", ["dev-clean"], lexicon=CMUDICT)
    written = (tmp_path / "pr" / "lexicon.txt").resolve()
    assert str(written) in text
    assert written.read_text() == "HELLO HH AH0 L OW1\nQWERTY SPN\n"


def test_the_lexicon_is_in_the_pr_stages_settings_and_row_hash(tmp_path, monkeypatch, mirror):
    from score_s3prl.superb import cli
    from score_s3prl.superb.plan import Planner

    libri = libri_words(tmp_path / "libri", "HELLO")
    monkeypatch.delenv("LIBRISPEECH_LEXICON", raising=False)

    def planned(*extra: str):
        args = cli.parse_args(["pr", "--libri-root", str(libri), "--out", str(tmp_path / "exp"),
                               "--upstream", "hubert_base", "--device", "cpu", *extra])
        planner = Planner(cli.settings_from(args))
        stages = {s.name: s for s in planner.stages()}
        return planner, stages

    hashes = {}
    for source in (G2P, CMUDICT):
        planner, stages = planned("--lexicon", source)
        label = Lexicon(source).label
        assert stages["prepare/pr"].settings["lexicon"] == label
        (train,) = [stage for name, stage in stages.items() if name.startswith("pr/hubert_base/") and
                    name.endswith("/train")]
        assert train.settings["lexicon"] == label
        assert label in stages["prepare/pr"].describe
        hashes[source] = planner.row_hash("pr", planner.settings.upstreams[0], "test", None, planner.data_detail("pr"))
    assert hashes[G2P] != hashes[CMUDICT]
    monkeypatch.setenv("LIBRISPEECH_LEXICON", "cmudict")  # the environment names a source too
    assert planned()[1]["prepare/pr"].settings["lexicon"] == Lexicon(CMUDICT).label
    # other tasks' keys do not change with the lexicon (no detail)
    assert Planner(cli.settings_from(cli.parse_args(["asr", "--libri-root", str(libri), "--upstream", "hubert_base",
                                                     "--device", "cpu"]))).data_detail("asr") == {}
