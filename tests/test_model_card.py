"""The exported model card (`score-s3prl export --format hf`): Hub metadata read back by
huggingface_hub's own parser, SUPERB rows from a results CSV, no machine path in the export, and
`--push-to-hub` up to the Hub client's call (never a network call)."""

from __future__ import annotations

import csv
import json
import os
import socket
from pathlib import Path

import pytest

pytest.importorskip("transformers")
huggingface_hub = pytest.importorskip("huggingface_hub")

from huggingface_hub import ModelCard  # noqa: E402

from score_s3prl import __version__  # noqa: E402
from score_s3prl import model_card  # noqa: E402
from score_s3prl.checkpoints.hubert import tiny_hubert_state, write_converted  # noqa: E402
from score_s3prl.cli import main as cli  # noqa: E402
from score_s3prl.errors import ScoreError  # noqa: E402
from score_s3prl.superb.results import COLUMNS, ResultRow  # noqa: E402

TINY_CONFIG = Path(__file__).resolve().parents[1] / "upstream_configs" / "score_tiny.yaml"
REPO = Path(__file__).resolve().parents[1]


def superb_csv(path: Path, checkpoint: str, values: dict[tuple[str, str, str], tuple[float, float]],
               seed: int | None = 0, run_dir: str = "/runs/x") -> Path:
    """Rows of a results CSV as the runner writes them (appended, header first): per (task, metric,
    split), the baseline's row, then ``checkpoint``'s with its gain."""
    rows = []
    for (task, metric, split), (base, ours) in values.items():
        lower = metric != "mtwv"
        gain = (base - ours) / base * 100 if lower else (ours - base) / abs(base) * 100
        common = dict(task=task, metric=metric, split=split, lower_is_better=lower, run_dir=run_dir,
                      git_commit="abc", config_hash="h", seed=seed if task in ("asr", "pr") else None,
                      baseline_system="hubert_base")
        rows += [ResultRow(upstream="hubert_base", checkpoint="", value=base, **common),
                 ResultRow(upstream="score_hubert", checkpoint=checkpoint, value=ours, relative_gain_pct=gain, **common)]
    new = not path.exists()
    with open(path, "a", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        if new:
            writer.writerow(COLUMNS)
        writer.writerows(row.csv_fields() for row in rows)
    return path


SUPERB_VALUES = {("asr", "wer", "test-clean"): (6.42, 6.35), ("pr", "per", "test"): (5.41, 5.22),
                 ("qbe", "mtwv", "test"): (0.0736, 0.0829),
                 ("qbe", "mtwv", "dev-layer3"): (0.05, 0.06),  # a dev sweep row: not in the card
                 ("probe", "view_divergence", "dev-clean"): (0.5, 0.3)}  # not SUPERB: not in the card


def machine_paths(*extra: Path) -> list[str]:
    """Paths of this machine an export must not mention."""
    paths = {str(REPO), str(Path.home()), os.getcwd(), *(str(p) for p in extra)}
    return sorted(p for p in paths if p not in ("/", ""))


def assert_no_machine_path(folder: Path, *extra: Path) -> None:
    for file in folder.iterdir():
        data = file.read_bytes()
        for path in machine_paths(*extra):
            assert path.encode() not in data, f"{file.name} mentions {path}"


def card_results(card: ModelCard) -> dict[tuple[str, str], float]:
    return {(r.task_name, r.metric_type): r.metric_value for r in card.data.eval_results}


EXPECTED_ROWS = {("SUPERB ASR", "wer"): 6.35, ("SUPERB PR", "per"): 5.22, ("SUPERB QbE", "mtwv"): 0.0829}


@pytest.fixture(scope="module")
def tuned(tmp_path_factory, assets_dir) -> Path:
    """A tiny HuBERT after 2 SCORE updates: the export a user shares."""
    from score_s3prl.config import load_config
    from score_s3prl.train import train

    folder = tmp_path_factory.mktemp("tuned")
    base = folder / "tiny_base.pt"
    write_converted(base, **tiny_hubert_state(seed=0))
    return train(load_config(TINY_CONFIG, values_set={
        "init": str(base), "data.root": str(assets_dir), "out": str(folder / "run"),
        "optim.total_updates": 2, "optim.warmup_updates": 1, "optim.utterances_per_update": 2}))


@pytest.mark.slow  # a 2-update fine-tuning of the tiny model, then the export
def test_the_card_of_a_tuned_model_parses_with_the_hub_parser_and_holds_the_csv_rows(tuned, tmp_path):
    csv_path = superb_csv(tmp_path / "superb_results.csv", str(tuned), SUPERB_VALUES)
    out = tmp_path / "hf"
    assert cli(["export", str(tuned), "--format", "hf", str(out), "--results", str(csv_path),
                "--base-model", "facebook/hubert-base-ls960", "--name", "score-hubert-tiny"]) == 0

    card = ModelCard.load(out / "README.md")
    data = card.data
    assert data.library_name == "transformers"
    assert data.base_model == "facebook/hubert-base-ls960"
    assert data.license == "mit"
    assert "openslr/librispeech_asr" in data.datasets
    assert {"score", "score-s3prl", "hubert"} <= set(data.tags)
    assert data.model_name == "score-hubert-tiny"
    assert card_results(card) == EXPECTED_ROWS
    assert all(r.dataset_split in ("test", "eval") for r in data.eval_results)
    text = card.text
    assert "HubertModel.from_pretrained" in text and "hf_hubert_custom" in text  # both usage snippets
    assert "| updates | 2 |" in text and f"| score-s3prl | {__version__} |" in text
    assert "audio processed" in text

    record = json.loads((out / "score_s3prl.json").read_text())
    assert record["exported_from"]["file"] == tuned.name
    assert record["config"]["init"] == "tiny_base.pt"
    assert record["base_model"].startswith("local:tiny_base.pt sha256:")
    assert "out" not in record["config"]
    assert_no_machine_path(out, tmp_path, tuned.parent)


def fake_export(path: Path, score: dict | None) -> Path:
    """A tiny converted HuBERT carrying ``score`` as its training record (no training)."""
    write_converted(path, **tiny_hubert_state(seed=0), **({"score": score} if score else {}))
    return path


def record_with_paths(root: Path, method: str = "SCORE", base: str | None = None) -> dict:
    return {"method": method, "architecture": "hubert",
            "config": {"seed": 3, "init": str(root / "bases" / "hubert.pt"), "out": str(root / "exp" / "run"),
                       "device": "cuda:0", "method": method.lower(),
                       "data": {"root": str(root / "LibriSpeech"), "subsets": ["train-clean-100"],
                                "manifest": None, "cache_dir": str(root / "cache")},
                       "optim": {"lr": 2e-5, "total_updates": 3600, "warmup_updates": 1000,
                                 "utterances_per_update": 8},
                       "loss": {"gamma": 0.1, "alpha": 0.4, "sigma": 0, "margin": 1.1}},
            "config_hash": "0123456789ab", "updates": 3600, "audio_hours": 101.3,
            "base_model": base or f"local:{root / 'bases' / 'hubert.pt'} sha256:{'e' * 64}",
            "score_s3prl_version": "0.1.0"}


def test_export_writes_a_card_and_a_record_without_machine_paths(tmp_path):
    ckpt = fake_export(tmp_path / "score_hubert.pt", record_with_paths(tmp_path))
    out = tmp_path / "hf"
    assert cli(["export", str(ckpt), str(out)]) == 0
    assert {"README.md", "score_s3prl.json", "model.safetensors"} <= {p.name for p in out.iterdir()}
    record = json.loads((out / "score_s3prl.json").read_text())
    assert record["config"]["init"] == "hubert.pt" and record["config"]["data"]["root"] == "LibriSpeech"
    assert not {"out", "device"} & set(record["config"]) and "cache_dir" not in record["config"]["data"]
    assert record["base_model"] == f"local:hubert.pt sha256:{'e' * 64}"
    card = ModelCard.load(out / "README.md")
    assert card.data.base_model is None and card.data.license is None  # a local base score-s3prl cannot name
    assert card.data.eval_results is None  # no --results
    assert "101.30 h" in card.text and "| updates | 3600 |" in card.text
    assert_no_machine_path(out, tmp_path)


def test_a_known_base_gives_base_model_and_licence(tmp_path):
    record = record_with_paths(tmp_path, method="LASER", base=f"wavlm_base sha256:{'a' * 64}")
    text = model_card.card_text(architecture="wavlm", score=record, model_name="laser-wavlm",
                                repo_id="me/laser-wavlm")
    card = ModelCard(text)
    assert card.data.base_model == "microsoft/wavlm-base" and card.data.license == "mit"
    assert "laser" in card.data.tags and "wavlm" in card.data.tags
    assert 'WavLMModel.from_pretrained("me/laser-wavlm")' in card.text
    assert "LASER regulariser" in card.text
    assert "unilm" in card.text  # the licence's source is stated


def test_given_base_model_and_licence_override(tmp_path):
    card = ModelCard(model_card.card_text(architecture="hubert", score=record_with_paths(tmp_path),
                                          model_name="m", base_model="someone/hubert", license="apache-2.0"))
    assert card.data.base_model == "someone/hubert" and card.data.license == "apache-2.0"


def test_strip_paths_keeps_urls_and_names():
    assert model_card.strip_paths("local:/data/x/base.pt sha256:ab") == "local:base.pt sha256:ab"
    assert model_card.strip_paths("hf:/home/me/models/hubert sha256:ab") == "hf:hubert sha256:ab"
    assert model_card.strip_paths("https://huggingface.co/s3prl/x.pt") == "https://huggingface.co/s3prl/x.pt"
    assert model_card.strip_paths({"a": ["/a/b/c.txt", "rel/d.txt", 3]}) == {"a": ["c.txt", "rel/d.txt", 3]}
    assert model_card.strip_paths("hubert_base") == "hubert_base"


# -- the results CSV ---------------------------------------------------------------------------


def test_read_results_keeps_the_checkpoints_test_rows_the_last_of_each(tmp_path):
    ckpt = tmp_path / "export.pt"
    csv_path = superb_csv(tmp_path / "r.csv", str(ckpt), SUPERB_VALUES)
    superb_csv(csv_path, str(ckpt), {("asr", "wer", "test-clean"): (6.42, 6.30)})  # a re-run appends
    superb_csv(csv_path, str(tmp_path / "other.pt"), {("pr", "per", "test"): (5.41, 1.0)})  # another model
    rows = model_card.read_results(csv_path, ckpt)
    assert [(r.task, r.metric, r.split, r.value) for r in rows] == [
        ("asr", "wer", "test-clean", 6.30), ("pr", "per", "test", 5.22), ("qbe", "mtwv", "test", 0.0829)]
    assert rows[1].relative_gain_pct == pytest.approx((5.41 - 5.22) / 5.41 * 100, rel=1e-5)  # 6 digits in the CSV


def test_several_seeds_make_one_result_with_their_mean_and_the_run_names_the_lexicon(tmp_path):
    ckpt = tmp_path / "export.pt"
    unit = tmp_path / "exp" / "pr" / "score_hubert" / "seed1"
    unit.mkdir(parents=True)
    (unit / "score-test.done.json").write_text(json.dumps(
        {"outputs": {"detail": {"lexicon": "s3prl 0.4.18 g2p: a.txt, b.txt", "per": 5.0}}}))
    csv_path = superb_csv(tmp_path / "r.csv", str(ckpt), {("pr", "per", "test"): (5.4, 5.2)}, seed=0)
    superb_csv(csv_path, str(ckpt), {("pr", "per", "test"): (5.6, 5.0)}, seed=1, run_dir=str(unit / "test"))
    (result,) = model_card.read_results(csv_path, ckpt)
    assert result.values == (5.2, 5.0) and result.value == pytest.approx(5.1)
    assert result.relative_gain_pct == pytest.approx(((5.4 - 5.2) / 5.4 + (5.6 - 5.0) / 5.6) * 50, rel=1e-5)
    assert result.notes == (("lexicon", "s3prl 0.4.18 g2p: a.txt, b.txt"),)
    card = ModelCard(model_card.card_text(architecture="hubert", score=None, results=[result], model_name="m"))
    (entry,) = card.data.eval_results
    assert entry.metric_value == pytest.approx(5.1) and entry.metric_name == "PER (%), mean of 2 seeds"
    assert "pr lexicon: s3prl 0.4.18 g2p: a.txt, b.txt" in card.text
    assert "| pr | test | PER (%) | 5.1 | 2 | 5.2, 5 |" in card.text


def test_read_results_matches_a_run_of_another_machine_by_file_name(tmp_path):
    csv_path = superb_csv(tmp_path / "r.csv", "/cluster/exp/score_hubert.pt", {("pr", "per", "test"): (5.4, 5.2)})
    assert [r.value for r in model_card.read_results(csv_path, tmp_path / "score_hubert.pt")] == [5.2]


@pytest.mark.parametrize("content, problem", [
    ("a,b\n1,2\n", "not a SUPERB results CSV"),
    ("task,metric,upstream,checkpoint,split,value,relative_gain_vs_baseline_%\n"
     "pr,per,x,/e/export.pt,test,nan,\n", r"r.csv:2: value 'nan' is not a finite number"),
    ("task,metric,upstream,checkpoint,split,value,relative_gain_vs_baseline_%\n"
     "pr,per,x,/e/other.pt,test,5.0,\n", "no SUPERB row of export.pt .checkpoints in the CSV: other.pt"),
    ("task,metric,upstream,checkpoint,split,value,relative_gain_vs_baseline_%\n"
     "qbe,mtwv,x,/e/export.pt,dev-layer3,0.1,\n", "none on a SUPERB test split"),
    ("task,metric,upstream,checkpoint,split,value,relative_gain_vs_baseline_%\n"
     "pr,per,x,/e/export.pt,test\n", r"r.csv:2: value None is not a finite number"),  # a short row
])
def test_a_bad_results_csv_is_one_error_naming_it(tmp_path, content, problem):
    (tmp_path / "r.csv").write_text(content)
    with pytest.raises(ScoreError, match=problem):
        model_card.read_results(tmp_path / "r.csv", tmp_path / "export.pt")


def test_a_bad_results_csv_stops_the_export_before_it_writes(tmp_path, capsys):
    ckpt = fake_export(tmp_path / "export.pt", record_with_paths(tmp_path))
    (tmp_path / "r.csv").write_text("a,b\n")
    assert cli(["export", str(ckpt), str(tmp_path / "hf"), "--results", str(tmp_path / "r.csv")]) == 2
    assert "r.csv: not a SUPERB results CSV" in capsys.readouterr().err
    assert not (tmp_path / "hf").exists()


# -- --push-to-hub ------------------------------------------------------------------------------


@pytest.fixture
def no_network(monkeypatch):
    """Any socket connection fails the test: pushes are checked up to the Hub client, never sent."""
    def refuse(*args, **kwargs):
        raise AssertionError("a test tried to reach the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def test_push_to_hub_uploads_the_exported_files(tmp_path, monkeypatch, no_network):
    calls = {}

    def create_repo(self, repo_id, **kwargs):
        calls["create"] = (repo_id, kwargs)

    def upload_folder(self, **kwargs):
        calls["upload"] = kwargs
        return huggingface_hub.CommitInfo(commit_url="https://huggingface.co/me/m/commit/1", commit_message="m",
                                          commit_description="", oid="1" * 40)

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", create_repo)
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", upload_folder)
    ckpt = fake_export(tmp_path / "export.pt", record_with_paths(tmp_path))
    out = tmp_path / "hf"
    out.mkdir()
    (out / "notes.txt").write_text("mine, not the export's")
    assert cli(["export", str(ckpt), str(out), "--push-to-hub", "me/score-tiny", "--private"]) == 0
    assert calls["create"] == ("me/score-tiny", {"repo_type": "model", "private": True, "exist_ok": True})
    upload = calls["upload"]
    assert upload["repo_id"] == "me/score-tiny" and upload["repo_type"] == "model"
    assert Path(upload["folder_path"]) == out
    assert sorted(upload["allow_patterns"]) == sorted(["config.json", "model.safetensors",
                                                      "preprocessor_config.json", "README.md", "score_s3prl.json"])
    card = ModelCard.load(out / "README.md")
    assert 'from_pretrained("me/score-tiny")' in card.text


def test_push_to_hub_offline_is_one_error_line(tmp_path, monkeypatch, capsys, no_network):
    """The Hub client's own offline switch (HF_HUB_OFFLINE=1) stops the upload before any request."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_TOKEN", "hf_" + "x" * 34)  # a token, so that only offline mode stops the call
    ckpt = fake_export(tmp_path / "export.pt", record_with_paths(tmp_path))
    assert cli(["export", str(ckpt), str(tmp_path / "hf"), "--push-to-hub", "me/score-tiny"]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1  # one line (transformers' progress bar aside)
    assert errors[0].startswith("error: me/score-tiny: upload to the Hugging Face Hub failed (")
    assert "offline mode is enabled" in errors[0]
    assert (tmp_path / "hf" / "README.md").is_file()  # the export itself is kept


def test_a_bad_repo_id_stops_before_the_export(tmp_path, capsys):
    ckpt = fake_export(tmp_path / "export.pt", None)
    assert cli(["export", str(ckpt), str(tmp_path / "hf"), "--push-to-hub", "not a/repo/id"]) == 2
    assert "--push-to-hub not a/repo/id: not a Hub repository id" in capsys.readouterr().err
    assert not (tmp_path / "hf").exists()


def test_the_known_bases_are_named_bases_and_others_get_no_licence(tmp_path):
    from score_s3prl.checkpoints.bases import BASE_URLS

    assert set(model_card.KNOWN_BASES) <= set(BASE_URLS)
    assert {"hubert_base", "wavlm_base", "hubert_large_ll60k", "wavlm_base_plus", "wavlm_large"} <= set(
        model_card.KNOWN_BASES)
    record = record_with_paths(tmp_path, base=f"contentvec sha256:{'c' * 64}")  # named, licence not known here
    card = ModelCard(model_card.card_text(architecture="hubert", score=record, model_name="m"))
    assert card.data.base_model is None and card.data.license is None
    assert "No licence is declared" in card.text
