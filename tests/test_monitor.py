"""A run people can watch: the held-out probe during fine-tuning (score_s3prl/monitor.py), LASER's two
loss terms apart, config.yaml and hparams in the run directory, plots titled by method."""

from __future__ import annotations

import csv
import math
import struct
from pathlib import Path

import pytest
import torch

from score_s3prl import monitor, probe
from score_s3prl.config import load_config
from score_s3prl.errors import ScoreError
from score_s3prl.model import ScoreModel, load_base_state
from score_s3prl.train import CONFIG_FILE, LOG_FILE, log_figure, train

REPO = Path(__file__).resolve().parents[1]
TINY_CONFIG = REPO / "upstream_configs" / "score_tiny.yaml"
SMALL = {"monitor.utterances": 3, "monitor.max_seconds": 2.0}  # a cheap probe


def tiny_config(tiny_ckpt, assets_dir, out, **values):
    return load_config(TINY_CONFIG, values_set={"init": str(tiny_ckpt), "data.root": str(assets_dir),
                                                "out": str(out), **SMALL, **values})


def scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """tag -> [(step, value)] of the TensorBoard event files in ``folder`` (TFRecord framing:
    length u64, its crc u32, the Event, its crc u32)."""
    from tensorboardX.proto import event_pb2

    found: dict[str, list[tuple[int, float]]] = {}
    for path in sorted(folder.glob("events.out.tfevents.*")):
        data, pos = path.read_bytes(), 0
        while pos < len(data):
            (length,) = struct.unpack("<Q", data[pos:pos + 8])
            event = event_pb2.Event.FromString(data[pos + 12:pos + 12 + length])
            pos += 12 + length + 4
            for value in event.summary.value:
                found.setdefault(value.tag, []).append((event.step, value.simple_value))
    return found


@pytest.mark.slow  # loads s3prl's hub
def test_the_monitor_value_is_the_probes_last_layer_score_value(tiny_ckpt, assets_dir, tmp_path):
    # the same utterances, views and seed through `score-s3prl probe`'s path (s3prl's hub entry
    # on the checkpoint) and through the training model's student: the same number
    cfg = tiny_config(tiny_ckpt, assets_dir, tmp_path, seed=3)
    model = ScoreModel(load_base_state(str(tiny_ckpt))[0])
    reading = monitor.HeldOutProbe.from_config(cfg)(model)
    assert model.training  # the model's mode is restored
    files = probe.find_audio(monitor.DEFAULT_AUDIO, cfg.monitor.utterances)
    score = probe.ViewPerturbation(probe.SCORE, tuple(cfg.views.speed_factors), tuple(cfg.views.semitones))
    rows = probe.probe_upstreams([("hubert_local", str(tiny_ckpt))], files, seed=3, device="cpu",
                                 max_seconds=cfg.monitor.max_seconds, perturbations=[score], progress=False)
    assert not reading.collapsed and 0.05 < reading.value < 2
    assert reading.value == pytest.approx(probe.last_layer_value(rows, "hubert_local"), rel=1e-4)


def test_a_collapsed_student_reads_as_collapsed(tiny_ckpt, assets_dir, tmp_path):
    cfg = tiny_config(tiny_ckpt, assets_dir, tmp_path)
    model = ScoreModel(load_base_state(str(tiny_ckpt))[0])
    norm = model.student.encoder.layers[-1].final_layer_norm  # post-LN: the last thing every frame meets
    with torch.no_grad():
        norm.weight.zero_()
        norm.bias.fill_(0.5)  # every frame the same vector
    reading = monitor.HeldOutProbe.from_config(cfg)(model)
    assert reading.collapsed and math.isnan(reading.value)


def test_monitor_off_or_without_audio(tiny_ckpt, assets_dir, tmp_path, monkeypatch, capsys):
    assert monitor.HeldOutProbe.from_config(tiny_config(tiny_ckpt, assets_dir, tmp_path, **{"monitor.every": 0})) is None
    with pytest.raises(ScoreError, match="nowhere: audio folder not found"):
        monitor.HeldOutProbe.from_config(tiny_config(tiny_ckpt, assets_dir, tmp_path,
                                                     **{"monitor.audio": str(tmp_path / "nowhere")}))
    monkeypatch.setattr(monitor, "DEFAULT_AUDIO", tmp_path / "not-installed")  # e.g. a wheel, no assets
    assert monitor.HeldOutProbe.from_config(tiny_config(tiny_ckpt, assets_dir, tmp_path)) is None
    assert "monitor: no held-out probe" in capsys.readouterr().err
    with pytest.raises(ScoreError, match="monitor.utterances = 1"):
        tiny_config(tiny_ckpt, assets_dir, tmp_path, **{"monitor.utterances": 1})


@pytest.mark.slow  # two short training runs
def test_a_laser_run_logs_its_terms_the_probe_config_and_hparams(tiny_ckpt, assets_dir, tmp_path):
    out = tmp_path / "laser"
    cfg = tiny_config(tiny_ckpt, assets_dir, out, method="laser", log_every=2,
                      **{"optim.total_updates": 5, "monitor.every": 2})
    train(cfg)
    with open(out / LOG_FILE, newline="") as handle:
        rows = list(csv.DictReader(handle))
    # a probe at 0 (the base), every 2 updates and at the last; loss rows every 2 updates and at the probes
    assert [int(r["update"]) for r in rows] == [0, 2, 4, 5]
    assert all(math.isfinite(float(r["probe"])) for r in rows)
    assert rows[0]["loss"] == "" and rows[0]["divergence"] == ""
    for row in rows[1:]:  # the two terms, alpha-weighted regulariser, sum to the loss
        assert float(row["divergence"]) > 0 and float(row["regulariser"]) > 0
        assert float(row["divergence"]) + float(row["regulariser"]) == pytest.approx(float(row["loss"]), rel=1e-5)
    tags = scalars(out / "tensorboard")
    assert [step for step, _ in tags["monitor/probe_value"]] == [0, 2, 4, 5]
    assert tags["monitor/probe_value"][-1][1] == pytest.approx(float(rows[-1]["probe"]), rel=1e-6)
    assert {"loss/divergence", "loss/regulariser", "train/loss", "monitor/probe_different_utterance"} <= set(tags)
    hparams = scalars(out / "tensorboard" / "hparams")
    assert hparams["hparam/final_probe"][-1][1] == pytest.approx(float(rows[-1]["probe"]), rel=1e-6)
    assert hparams["hparam/final_loss"][-1][1] == pytest.approx(float(rows[-1]["loss"]), rel=1e-6)
    assert load_config(out / CONFIG_FILE) == cfg  # the resolved config, read back
    assert (out / "loss.png").read_bytes()[:4] == b"\x89PNG"
    # monitoring measures, it does not touch the run: the same weights with it off
    quiet = train(tiny_config(tiny_ckpt, assets_dir, tmp_path / "quiet", method="laser", log_every=2,
                              **{"optim.total_updates": 5, "monitor.every": 0}))
    from score_s3prl.checkpoints.hubert import read_converted

    a, b = (read_converted(path)["model_weight"] for path in (out / "score_hubert.pt", quiet))
    assert all(torch.equal(a[k], b[k]) for k in a)
    with open(tmp_path / "quiet" / LOG_FILE, newline="") as handle:
        assert all(r["probe"] == "" for r in csv.DictReader(handle))


def test_loss_plot_names_the_method_and_shows_the_probe():
    rows = [{"update": "0", "loss": "", "probe": "0.8"},
            {"update": "2", "loss": "3.0", "divergence": "1.0", "regulariser": "2.0", "probe": "0.7"},
            {"update": "4", "loss": "2.0", "divergence": "1.0", "regulariser": "1.0", "probe": "nan"}]
    laser = log_figure(rows, "laser")
    assert laser.axes[0].get_title() == "LASER fine-tuning loss"
    assert [line.get_label() for line in laser.axes[0].get_lines()] == ["loss", "soft-DTW divergence",
                                                                       "alpha x regulariser"]
    assert "held-out probe" in laser.axes[1].get_title()
    assert probe.REFERENCE_LABEL in [line.get_label() for line in laser.axes[1].get_lines()]
    score = log_figure([{k: v for k, v in r.items() if k not in ("divergence", "regulariser")} for r in rows])
    assert score.axes[0].get_title() == "SCORE fine-tuning loss"
    assert len(score.axes[0].get_lines()) == 1
    assert len(log_figure([{"update": "2", "loss": "1.0", "probe": ""}]).axes) == 1  # no probe: no panel
    assert log_figure([]) is None
