"""The low corpus helpers (score_s3prl/corpora.py, audio.audio_info) and the recipe table."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import soundfile
import yaml

from score_s3prl import corpora, data
from score_s3prl.audio import AudioError, audio_info
from score_s3prl.errors import ScoreError
from score_s3prl.recipes import RECIPES, DataPaths, Recipe, by_downstream, config_path
from score_s3prl.superb import prepare
from score_s3prl.superb.plan import Planner


def write_chapter(root: Path, split: str, suffixes: dict[str, str]) -> list[Path]:
    """One chapter with an utterance per (id number, suffix), 0.1 s each, and its transcripts."""
    chapter = root / split / "19" / "198"
    chapter.mkdir(parents=True)
    files = []
    for number, suffix in suffixes.items():
        path = chapter / f"19-198-{number}{suffix}"
        soundfile.write(path, np.zeros(1600, dtype=np.float32), 16000)
        files.append(path)
    (chapter / "19-198.trans.txt").write_text("".join(f"19-198-{n} A B\n" for n in suffixes))
    (chapter / "notes.txt").write_text("not audio\n")
    return files


def test_one_scanner_takes_flac_and_wav_for_both_callers(tmp_path):
    files = write_chapter(tmp_path, "dev-clean", {"0001": ".flac", "0002": ".wav"})
    assert corpora.split_files(tmp_path, "dev-clean") == sorted(files)
    assert set(corpora.transcripts(files)) == {"19-198-0001", "19-198-0002"}
    scanned = data.scan_librispeech(tmp_path, ["dev-clean"])
    assert [Path(u.path) for u in scanned] == sorted(p.resolve() for p in files)
    assert all(u.num_samples == 1600 for u in scanned)
    assert [corpora.audio_frames(f) for f in files] == [1600, 1600]


def test_a_split_without_audio_names_the_folder(tmp_path):
    (tmp_path / "dev-clean").mkdir()
    with pytest.raises(ScoreError, match=r"dev-clean: no \.flac or \.wav files"):
        corpora.split_files(tmp_path, "dev-clean")


def test_audio_info_reads_headers_and_names_bad_files(tmp_path):
    path = tmp_path / "a.wav"
    soundfile.write(path, np.zeros((800, 2), dtype=np.float32), 8000)
    info = audio_info(path)
    assert (info.samplerate, info.channels, info.frames) == (8000, 2, 800)
    with pytest.raises(AudioError, match="16000 Hz mono"):
        corpora.audio_frames(path)
    broken = tmp_path / "broken.flac"
    broken.write_bytes(b"not audio at all")
    with pytest.raises(AudioError, match=f"{broken}: cannot read audio header"):
        audio_info(broken)


def test_every_recipe_is_complete():
    fields = {f.name for f in dataclasses.fields(DataPaths)}
    for task, recipe in RECIPES.items():
        assert recipe.task == task
        assert set(recipe.data_roots) <= fields and (recipe.given_instead or "lexicon") in fields
        assert callable(getattr(Planner, recipe.plan)), recipe.plan
        if recipe.downstream is None:  # label-free (the probe): nothing of s3prl's, never found by -d
            assert recipe.config_path is None and recipe.check_config is None and recipe.data_overrides is None
            assert recipe.prepare is None and not recipe.assets and not recipe.paper_gains
            continue
        assert by_downstream(recipe.downstream) is recipe and config_path(recipe.downstream) == recipe.config_path
        config = yaml.safe_load(recipe.config_path.read_text())
        for section, key in recipe.assets:
            assert key in config["downstream_expert"][section], (task, section, key)
        # Planner.trained evaluates the checkpoint training saves: a trained task must name it
        assert recipe.plan != "trained" or recipe.best_checkpoint
        keys = recipe.data_overrides(DataPaths(prepared=Path("/p"), libri_root=Path("/l"), quesst_root=Path("/q")))
        assert keys and all(k.startswith("config.downstream_expert.") for k in keys)
    assert by_downstream("emotion") is None and config_path("emotion") is None
    assert by_downstream(None) is None  # s3prl run without -d (-e): not the label-free recipe
    assert [t for t, r in RECIPES.items() if r.downstream is None] == ["probe"]


def test_a_recipe_has_all_s3prl_fields_or_none():
    with pytest.raises(ValueError, match="given together or not at all"):
        Recipe(task="x", downstream="asr", metric="m", lower_is_better=True, test_split=None, plan="probe")


def test_prepare_prints_the_recipe_overrides(tmp_path):
    write_chapter(tmp_path / "libri", "dev-clean", {"0001": ".flac"})
    out = tmp_path / "asr"
    text = prepare.prepare_asr(tmp_path / "libri", out, ["dev-clean"])
    paths = DataPaths(prepared=out.resolve(), libri_root=(tmp_path / "libri").resolve(), splits=("dev-clean",))
    assert text == corpora.override(RECIPES["asr"].data_overrides(paths))
    assert (out / "dev-clean.csv").read_text().splitlines()[1] == "dev-clean/19/198/19-198-0001.flac,1600,"
