"""What a new user meets first: --version, help text, abbreviations, config errors, --print-config,
the device default and the thread defaults (score_s3prl/errors.py, cli.py, config.py, runtime.py)."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from score_s3prl import __version__, cli, runtime
from score_s3prl.config import config_keys, config_yaml, load_config
from score_s3prl.errors import ScoreError, plain_text

REPO = Path(__file__).resolve().parents[1]
# every subcommand whose parser is ours (`downstream` hands its flags to s3prl's own parser)
OURS = [name for name in cli.SUBCOMMANDS if name != "downstream"]


def help_text(name: str, capsys) -> str:
    module = importlib.import_module(cli.SUBCOMMANDS[name][0])
    with pytest.raises(SystemExit) as stop:
        module.main(["--help"])
    assert stop.value.code == 0
    return capsys.readouterr().out


def test_version(capsys):
    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out == f"score-s3prl {__version__}\n"
    cli.main(["--help"])
    assert "--version" in capsys.readouterr().out


@pytest.mark.parametrize("name", OURS)
def test_help_is_plain_text_with_defaults(name, capsys):
    text = help_text(name, capsys)
    assert "`" not in text and ":mod:" not in text and ":class:" not in text, text
    assert "%%" not in text, text  # argparse formats help strings, not the description: no doubled %
    if name != "fetch":  # the one subcommand with no option that has a default (NAME..., --refresh)
        assert "(default: " in text, text


def test_help_states_the_defaults_that_matter(capsys):
    finetune = " ".join(help_text("finetune", capsys).split())
    assert "HuBERT or WavLM" in finetune
    assert "sets optim.total_updates (default: 3600" in finetune and "sets device (default: auto" in finetune
    assert "--print-config" in finetune
    probe = " ".join(help_text("probe", capsys).split())
    assert "(default: auto)" in probe  # the same device default as finetune and superb
    superb = " ".join(help_text("superb", capsys).split())
    assert "(default: auto)" in superb
    tiny = " ".join(help_text("make-tiny", capsys).split())
    assert "transformer layers (default: 4)" in tiny


def test_plain_text_removes_rst_markup():
    assert plain_text("``score-s3prl probe``: see :mod:`score_s3prl.probe` and `x`") == \
        "score-s3prl probe: see score_s3prl.probe and x"
    assert plain_text(None) is None


@pytest.mark.parametrize(("name", "argv", "flag"), [
    ("finetune", ["--step", "3"], "--step"),
    ("probe", ["--upstream", "x", "--audio", "a", "--out", "o", "--max-utt", "3"], "--max-utt"),
    ("superb", ["asr", "--dry"], "--dry"),
    ("make-tiny", ["out.pt", "--lay", "2"], "--lay"),
])
def test_no_abbreviated_options(name, argv, flag):
    module = importlib.import_module(cli.SUBCOMMANDS[name][0])
    with pytest.raises(ScoreError, match=f"unrecognized arguments: .*{flag}"):
        module.main(argv)


def test_print_config_prints_the_resolved_config_and_exits(capsys, tmp_path):
    from score_s3prl.train import main

    tiny = REPO / "upstream_configs" / "score_tiny.yaml"
    assert main(["--config", str(tiny), "--steps", "7", "--print-config", "optim.lr=3e-4"]) == 0
    text = capsys.readouterr().out
    printed = tmp_path / "printed.yaml"
    printed.write_text(text)
    cfg = load_config(printed)
    assert cfg == load_config(tiny, ["optim.lr=3e-4"], {"optim.total_updates": 7})
    assert (cfg.optim.total_updates, cfg.optim.lr, cfg.data.mode) == (7, 3e-4, "crops")
    assert not Path(cfg.out).exists()  # nothing ran
    with pytest.raises(ScoreError, match="optim.lr = -1"):  # validated before it is printed
        main(["--print-config", "optim.lr=-1"])


def test_config_yaml_round_trips_every_key(tmp_path):
    cfg = load_config(None, ["method=laser", "data.subsets=[a, b]", "loss.bandwidth=40"])
    path = tmp_path / "c.yaml"
    path.write_text(config_yaml(cfg))
    assert load_config(path) == cfg
    flat = yaml.safe_load(config_yaml(cfg))
    assert {f"{section}.{key}" for section, keys in flat.items() if isinstance(keys, dict) for key in keys} | \
        set(flat) == set(config_keys())


@pytest.mark.parametrize("path", sorted(p for p in (REPO / "upstream_configs").glob("*.yaml") if p.stem != "score_tiny"),
                         ids=lambda p: p.stem)
def test_paper_configs_state_every_key(path):
    data = yaml.safe_load(path.read_text())
    stated = set(data) | {f"{section}.{key}" for section, keys in data.items() if isinstance(keys, dict)
                          for key in keys}
    assert stated == set(config_keys()), set(config_keys()) ^ stated


@pytest.mark.parametrize(("override", "unknown", "hint"), [
    ("optim.lrr=1", "optim.lrr", "optim.lr"),
    ("lr=1", "lr", "optim.lr"),  # the right name in another section
    ("gama=1", "gama", "loss.gamma"),
    ("data.rooot=x", "data.rooot", "data.root"),
    ("monitr.every=3", "monitr", "monitor"),  # a section
])
def test_unknown_config_keys_get_a_suggestion(override, unknown, hint):
    with pytest.raises(ScoreError) as error:
        load_config(None, [override])
    assert str(error.value) == f"config: unknown config key {unknown} (did you mean {hint}?)"


def test_an_unknown_key_with_no_near_name_gets_no_guess():
    with pytest.raises(ScoreError) as error:
        load_config(None, ["frobnicate=1"])
    assert str(error.value) == "config: unknown config key frobnicate"


@pytest.mark.parametrize(("text", "where"), [
    ("optim:\n\tlr: 1\n", "at line 2, column 1: found character '\\t' that cannot start any token"),
    ("seed: 0\noptim: {lr: 1\n", "at line 3, column 1: expected ',' or '}'"),
    ("seed: 0\nmethod: score\nmodel:\n  head: linear\n head_dim: 3\n", "at line 5, column 2"),
])
def test_yaml_errors_name_line_and_column(tmp_path, text, where):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ScoreError) as error:
        load_config(path)
    message = str(error.value)
    assert message.startswith(f"{path}: invalid YAML {where}"), message
    assert "\n" not in message


def test_data_is_checked_before_the_model_is_built(tiny_ckpt, tmp_path, monkeypatch):
    from score_s3prl import checkpoints, train

    def no_model(*args, **kwargs):
        raise AssertionError("the base model was loaded before the data was checked")

    monkeypatch.setattr(checkpoints, "load_base_state", no_model)
    cfg = load_config(REPO / "upstream_configs" / "score_tiny.yaml",
                      values_set={"init": "hubert_base", "data.root": str(tmp_path / "nowhere"),
                                  "out": str(tmp_path / "run")})
    with pytest.raises(ScoreError, match="nowhere"):
        train.train(cfg)


def test_auto_is_resolved_only_where_the_computation_runs(monkeypatch):
    import torch

    from score_s3prl.run_downstream import resolve_device_flag

    for available, name in ((True, "cuda"), (False, "cpu")):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: available)
        assert runtime.resolve_device("auto") == name
        assert resolve_device_flag(["-m", "train", "--device", "auto", "-o", "x"]) == \
            ["-m", "train", "--device", name, "-o", "x"]
        assert resolve_device_flag(["--device=auto"]) == [f"--device={name}"]
    assert runtime.resolve_device("cuda:1") == "cuda:1"
    assert resolve_device_flag(["--device", "cpu", "-n", "auto"]) == ["--device", "cpu", "-n", "auto"]
    with pytest.raises(ScoreError, match="'gpu': expected auto"):
        importlib.import_module("score_s3prl.probe").main(["--upstream", "x", "--audio", "a", "--out", "o",
                                                           "--device", "gpu"])


def test_thread_defaults_leave_the_users_choice_alone():
    assert 1 <= runtime.usable_cpus() <= (os.cpu_count() or 1)
    environ: dict[str, str] = {}
    assert runtime.configure_threads(environ) == {"OMP_WAIT_POLICY": "PASSIVE",
                                                  "OMP_NUM_THREADS": str(runtime.usable_cpus())}
    chosen = {"OMP_NUM_THREADS": "3", "OMP_WAIT_POLICY": "ACTIVE"}
    assert runtime.configure_threads(chosen) == {} and chosen == {"OMP_NUM_THREADS": "3", "OMP_WAIT_POLICY": "ACTIVE"}


@pytest.mark.slow  # two interpreters loading torch
def test_the_cli_sets_thread_defaults_before_torch_loads(tmp_path):
    script = ("import os, sys, torch; from score_s3prl import cli; cli.main(sys.argv[1:]); "
              "print(os.environ.get('OMP_WAIT_POLICY'), torch.get_num_threads())")
    # torch imported first: a library call changes nothing in the caller's process
    env = {k: v for k, v in os.environ.items() if not k.startswith("OMP_")} | {"PYTHONPATH": str(REPO)}
    run = subprocess.run([sys.executable, "-c", script, "make-tiny", str(tmp_path / "a.pt")], env=env,
                         capture_output=True, text=True, check=True)
    assert run.stdout.split()[-2] == "None"
    # as the console entry: set before torch loads
    script = ("import os, sys; from score_s3prl import cli; cli.main(sys.argv[1:]); import torch; "
              "print(os.environ.get('OMP_WAIT_POLICY'), torch.get_num_threads())")
    run = subprocess.run([sys.executable, "-c", script, "make-tiny", str(tmp_path / "b.pt")], env=env,
                         capture_output=True, text=True, check=True)
    assert run.stdout.split()[-2:] == ["PASSIVE", str(runtime.usable_cpus())]
    run = subprocess.run([sys.executable, "-c", script, "make-tiny", str(tmp_path / "c.pt")],
                         env=env | {"OMP_NUM_THREADS": "1"}, capture_output=True, text=True, check=True)
    assert run.stdout.split()[-2:] == ["PASSIVE", "1"]
