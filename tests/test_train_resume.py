"""Fine-tuning resumes across a data move, refusals name the keys, the update splits exactly."""

from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path

import pytest
import torch

from score_s3prl.checkpoints.hubert import read_converted
from score_s3prl.config import load_config
from score_s3prl.errors import ScoreError
from score_s3prl.train import STATE_FILE, check_split, train

REPO = Path(__file__).resolve().parents[1]
TINY_CONFIG = REPO / "upstream_configs" / "score_tiny.yaml"
VALUES = {"optim.total_updates": 4, "save_every": 2, "optim.utterances_per_update": 2}


def config(tiny_ckpt, data: Path, out: Path, **values):
    return load_config(TINY_CONFIG, values_set={"init": str(tiny_ckpt), "data.root": str(data), "out": str(out),
                                                **VALUES, **values})


def stopped_after(monkeypatch, updates: int, signum: int = signal.SIGUSR2):
    """Send ``signum`` to this process once ``updates`` updates are done, as SLURM would."""
    from score_s3prl import train as train_module

    real = train_module.update_step

    def step(run):
        result = real(run)
        if run.position.update == updates:
            os.kill(os.getpid(), signum)
        return result

    monkeypatch.setattr(train_module, "update_step", step)


def test_resume_after_the_data_moved_is_bit_identical(tiny_ckpt, assets_dir, tmp_path, monkeypatch):
    whole = read_converted(train(config(tiny_ckpt, assets_dir, tmp_path / "whole")))["model_weight"]

    first = tmp_path / "login-disk" / "LibriSpeech"
    shutil.copytree(assets_dir, first)
    with monkeypatch.context() as patch:
        stopped_after(patch, 2)
        with pytest.raises(SystemExit) as stopped:  # SLURM's pre-timeout signal: save, then exit
            train(config(tiny_ckpt, first, tmp_path / "run"))
    assert stopped.value.code == 128 + signal.SIGUSR2
    assert torch.load(tmp_path / "run" / STATE_FILE, weights_only=True)["position"]["update"] == 2

    moved = tmp_path / "node-local" / "copy"  # the same files staged elsewhere
    shutil.copytree(first, moved)
    shutil.rmtree(first)
    resumed = read_converted(train(config(tiny_ckpt, moved, tmp_path / "run")))["model_weight"]
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)


def test_a_refused_resume_names_the_keys_that_differ(tiny_ckpt, assets_dir, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(assets_dir, data)
    train(config(tiny_ckpt, data, tmp_path / "run", **{"optim.total_updates": 1}))
    with pytest.raises(ScoreError, match=r"trained with another config: optim\.lr \(0\.001 -> 1\.0\); "
                                         r"optim\.total_updates \(1 -> 2\); use the same settings"):
        train(config(tiny_ckpt, data, tmp_path / "run", **{"optim.total_updates": 1 + 1, "optim.lr": 1.0}))
    victim = sorted((data / "train-clean-100").rglob("*.flac"))[0]
    victim.unlink()  # the corpus changed: one file fewer
    with pytest.raises(ScoreError, match=r"another config: data\.content \('[0-9a-f]+' -> '[0-9a-f]+'\); "
                                         r"data\.files \((\d+) -> (?!\1)\d+\); data\.samples"):
        train(config(tiny_ckpt, data, tmp_path / "run", **{"optim.total_updates": 1}))


def test_update_size_must_split_evenly_over_processes(tiny_ckpt, assets_dir, tmp_path, monkeypatch):
    check_split(8, 1)
    check_split(8, 4)
    with pytest.raises(ScoreError, match=r"optim\.utterances_per_update = 4 cannot be split evenly over 3 "
                                         r"processes \(each would take 2, 6 per update\); use a multiple of 3 "
                                         r"\(3 or 6\) or a process count that divides 4"):
        check_split(4, 3)
    monkeypatch.setenv("WORLD_SIZE", "3")  # as torchrun sets it: refused before any process group forms
    with pytest.raises(ScoreError, match="cannot be split evenly over 3 processes"):
        train(config(tiny_ckpt, assets_dir, tmp_path / "run", **{"optim.utterances_per_update": 4}))
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("first, then, stops_at_once", [
    (signal.SIGUSR2, signal.SIGUSR2, False),  # SLURM signals every process, the launcher forwards
    (signal.SIGUSR2, signal.SIGTERM, False),  # the requeue's SIGTERM after the pre-timeout signal
    (signal.SIGUSR1, signal.SIGINT, True),  # a person's Ctrl-C always counts
    (signal.SIGTERM, signal.SIGTERM, True),  # a second stop: leave the update now
    (signal.SIGINT, signal.SIGUSR2, False),
])
def test_a_pre_timeout_stop_is_one_stop(first, then, stops_at_once):
    from score_s3prl.train import StopNow, StopRequest

    with StopRequest() as stop:
        os.kill(os.getpid(), first)
        assert stop.signal == first
        if stops_at_once:
            with pytest.raises(StopNow):
                os.kill(os.getpid(), then)
        else:
            os.kill(os.getpid(), then)
        assert stop.signal == first
