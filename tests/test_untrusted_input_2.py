"""Untrusted input, second round (issue 19): for each kind, a crafted input of our own making
runs nothing (a marker file stays absent), leaks nothing (an environment value stays out of
every output) and loses nothing; each refusal is one line with exit 2.

Sections follow the issue: (1) code from plain data: the values stock s3prl eval()s or uses as
names, places and downloads; (2) stock loaders; (3) secrets through interpolation; (4) two
writers, one run folder; (5) the input destroyed by the output; (6) the smaller ones; then a
seeded fuzz over the commands' inputs (files, config values, signals).
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
import yaml
from test_train import wait_for
from test_untrusted_input import TINY_CONFIG, run_cli, tiny_config

from score_s3prl import recipes, s3prl_guard
from score_s3prl.errors import ScoreError
from score_s3prl.runlock import run_lock
from score_s3prl.train import EXPORT_FILE, LOG_FILE, STATE_FILE, train

REPO = Path(__file__).resolve().parents[1]
SECRET_NAME, SECRET = "SCORE_TEST_SECRET_TOKEN", "hf_s3cr3t_do_not_print_7d1c"


def system(marker: Path) -> str:
    """A Python expression that creates ``marker`` when evaluated (and reads the secret)."""
    return f"__import__('os').system('touch {marker}') or __import__('os').environ.get('{SECRET_NAME}')"


def no_trace(marker: Path, *texts: str, folder: Path | None = None) -> None:
    """Nothing ran (no marker) and nothing leaked (the secret in no text, nor in any file)."""
    assert not marker.exists(), "the crafted input ran code"
    for text in texts:
        assert SECRET not in text
    for path in (folder.rglob("*") if folder else ()):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path


@pytest.fixture
def secret_env(monkeypatch):
    monkeypatch.setenv(SECRET_NAME, SECRET)


# ============================================================== 1. code from plain data


def stock_state(tmp_path: Path, downstream: str, ckpt: str = "/absent/upstream.pt") -> dict:
    """What s3prl's own runner saves in ``states-*.ckpt`` for a fresh run of ``downstream``
    (its parser's args, our recipe's config), written into ``tmp_path/exp``: plain data that
    passes weights_only."""
    from score_s3prl import compat, hub

    compat.apply()
    hub.register()
    from s3prl import run_downstream as stock

    exp = tmp_path / "exp"
    argv = sys.argv
    sys.argv = ["run_downstream.py", "-m", "train", "-u", "score_hubert_local", "-k", ckpt, "-d", downstream,
                "-p", str(exp), "-c", str(recipes.config_path(downstream)), "--device", "cpu"]
    try:
        args, config, _ = stock.get_downstream_args()
    finally:
        sys.argv = argv
    return {"Args": args, "Config": config, "Step": 2, "Epoch": 0, "Downstream": {}}


def write_state(tmp_path: Path, state: dict, name: str = "dev-best.ckpt") -> Path:
    path = tmp_path / "exp" / name
    path.parent.mkdir(exist_ok=True)
    torch.save(state, path)
    return path


def set_key(config: dict, dotted: str, value) -> None:
    *sections, last = dotted.split(".")
    for name in sections:
        config = config.setdefault(name, {})
    config[last] = value


# (downstream, config key, the stock code that eval()s it, as (module, expression template))
EVAL_SITES = {
    "ctc-select": ("ctc", "downstream_expert.model.select", "s3prl.downstream.ctc.expert", "{}"),
    "ctc-metric": ("ctc", "downstream_expert.metric", "s3prl.downstream.ctc.expert", "{}"),
    "asr-select": ("asr", "downstream_expert.modelrc.select", "s3prl.downstream.asr.expert", "{}"),
    "asr-unk-weight": ("asr", "downstream_expert.datarc.decoder_args", "s3prl.downstream.asr.expert", "{}"),
    "optimizer": ("asr", "optimizer.name", "s3prl.optimizers", "get_{}"),
    "scheduler": ("ctc", "scheduler.name", "s3prl.schedulers", "get_{}"),
}


def crafted_value(site: str, marker: Path):
    payload = system(marker)
    if site == "ctc-metric":
        return [payload]
    if site == "asr-unk-weight":  # the kenlm decoder eval()s unk_weight
        return {"decoder_type": "kenlm", "unk_weight": payload}
    if site in ("optimizer", "scheduler"):  # eval(f"get_{name}"): the name continues the expression
        return f"TorchOptim if ({payload}) else 0"
    return payload


@pytest.mark.parametrize("site", EVAL_SITES)
def test_the_crafted_values_are_code_for_stock_s3prl(site, tmp_path, secret_env):
    # the control: each crafted value, evaluated where stock s3prl evaluates it, runs
    import importlib

    _, _, module, template = EVAL_SITES[site]
    marker = tmp_path / "marker"
    value = crafted_value(site, marker)
    text = value[0] if isinstance(value, list) else value["unk_weight"] if isinstance(value, dict) else value
    namespace = dict(vars(importlib.import_module(module)))
    try:
        eval(template.format(text), namespace)  # noqa: S307 - the point of the test
    except Exception:
        pass
    assert marker.exists()


@pytest.mark.parametrize("site", EVAL_SITES)
def test_downstream_checkpoint_config_runs_nothing(site, tmp_path, capsys, secret_env, monkeypatch):
    downstream, key, _, _ = EVAL_SITES[site]
    marker = tmp_path / "marker"
    state = stock_state(tmp_path, downstream)
    set_key(state["Config"], key, crafted_value(site, marker))
    path = write_state(tmp_path, state)
    monkeypatch.chdir(tmp_path)
    code, line = run_cli(capsys, "downstream", "-m", "evaluate", "-e", str(path), "--device", "cpu")
    assert code == 2
    assert line.startswith(f"error: {path}: config.{key}") and "refused for safety, nothing was run" in line, line
    no_trace(marker, line, folder=tmp_path)


SAVED_ARGS = {
    "expdir": lambda tmp: str(tmp / "elsewhere"),
    "cache_dir": lambda tmp: str(tmp / "cache"),
    "upstream_ckpt": lambda tmp: "https://attacker.example/model.pt",
    "upstream_model_config": lambda tmp: "file:///etc/passwd",
    "hub": lambda tmp: "huggingface",
    "push_to_hf_hub": lambda tmp: True,
    "downstream": lambda tmp: "emotion",
    "upstream": lambda tmp: "os",
    "seed": lambda tmp: 2**70,
    "upstream_refresh": lambda tmp: "yes",
    "from_hf_hub": lambda tmp: True,  # not an argument: s3prl sets it for --hub huggingface
}


@pytest.mark.parametrize("key", SAVED_ARGS)
def test_saved_args_choose_no_place_download_or_code(key, tmp_path, capsys, monkeypatch):
    state = stock_state(tmp_path, "ctc")
    value = SAVED_ARGS[key](tmp_path)
    setattr(state["Args"], key, value)
    path = write_state(tmp_path, state)
    monkeypatch.chdir(tmp_path)
    code, line = run_cli(capsys, "downstream", "-m", "evaluate", "-e", str(path), "--device", "cpu")
    assert code == 2
    assert line.startswith(f"error: {path}: Args.{key} = ") and "refused for safety" in line, line
    assert not (tmp_path / "elsewhere").exists() and not (tmp_path / "cache").exists()


def test_the_users_override_replaces_a_saved_place_before_s3prl_uses_it(tmp_path, capsys, monkeypatch):
    # run_superb evaluates with -o args.expdir=...: the saved folder is never created; the run
    # goes on to the next check (here: the upstream checkpoint, absent on purpose)
    state = stock_state(tmp_path, "ctc")
    state["Args"].expdir = str(tmp_path / "elsewhere")
    path = write_state(tmp_path, state)
    monkeypatch.chdir(tmp_path)
    mine = tmp_path / "mine"
    code, line = run_cli(capsys, "downstream", "-m", "evaluate", "-e", str(path), "--device", "cpu",
                         "-o", f"args.expdir='{mine}',,config.downstream_expert.corpus.path='{tmp_path}'")
    assert code == 2 and "refused" not in line, line
    assert mine.is_dir() and not (tmp_path / "elsewhere").exists()


def test_a_saved_config_of_the_run_folder_itself_passes(tmp_path):
    # what s3prl writes for a real run is allowed as it is (the guard is not a wall)
    state = stock_state(tmp_path, "asr")
    s3prl_guard.check_saved_args(tmp_path / "exp" / "states-2.ckpt", state, {})


def test_override_values_are_literals_never_code(tmp_path, capsys, secret_env, monkeypatch):
    marker = tmp_path / "marker"
    monkeypatch.chdir(tmp_path)
    code, line = run_cli(capsys, "downstream", "-m", "train", "-u", "score_hubert_local", "-k", "x.pt",
                         "-d", "ctc", "-p", str(tmp_path / "exp"),
                         "-o", f"config.downstream_expert.model.select={system(marker)}")
    assert code == 2 and "config.downstream_expert.model.select" in line and "refused for safety" in line
    no_trace(marker, line)
    code, line = run_cli(capsys, "downstream", "-m", "train", "-u", "score_hubert_local", "-k", "x.pt",
                         "-d", "ctc", "-p", str(tmp_path / "exp"), "-o", f"args.mode={system(marker)}")
    assert code == 2 and "args.mode" in line, line
    no_trace(marker, line)


def test_parse_override_reads_literals_and_refuses_the_rest():
    pairs = s3prl_guard.parse_override("config.a.b=1e-3,,args.seed=3,,config.runner.eval_dataloaders=['dev', 'test'],,"
                                       "config.x.dev-clean=['dev-clean'],,config.y=dev-clean")
    assert pairs == [("config.a.b", 1e-3), ("args.seed", 3), ("config.runner.eval_dataloaders", ["dev", "test"]),
                     ("config.x.dev-clean", ["dev-clean"]), ("config.y", "dev-clean")]
    assert s3prl_guard.parse_override("config.z=abs")[0][1] == "abs"  # stock eval() gave the builtin
    for bad in ("noequals", "a=1", "args.nope=1", "config=1", "config.a=b=c", "args.seed.x=1"):
        with pytest.raises(ScoreError):
            s3prl_guard.parse_override(bad)


@pytest.mark.parametrize("text, problem", [
    ("runner: !!python/name:os.system\n", "invalid YAML"),
    ("runner: {a: 1}\nrunner: {b: 2}\n", "duplicate key 'runner'"),
])
def test_a_config_file_is_plain_yaml(text, problem, tmp_path, capsys, monkeypatch):
    config = tmp_path / "c.yaml"
    config.write_text(text)
    monkeypatch.chdir(tmp_path)
    code, line = run_cli(capsys, "downstream", "-m", "train", "-u", "score_hubert_local", "-k", "x.pt",
                         "-d", "ctc", "-p", str(tmp_path / "exp"), "-c", str(config))
    assert code == 2 and line.startswith(f"error: {config}: invalid YAML") and problem in line, line


def test_only_the_recipes_downstreams_run(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = tmp_path / "c.yaml"
    config.write_text("runner: {}\ndownstream_expert: {}\n")
    code, line = run_cli(capsys, "downstream", "-m", "train", "-u", "score_hubert_local", "-k", "x.pt",
                         "-d", "emotion", "-c", str(config), "-p", str(tmp_path / "exp"))
    assert code == 2 and "args.downstream = 'emotion'" in line and "asr, ctc, quesst14_dtw" in line, line


def test_a_past_exp_folder_with_odd_names_is_one_line(tmp_path, capsys):
    (tmp_path / "states-best.ckpt").write_bytes(b"")
    code, line = run_cli(capsys, "downstream", "-m", "evaluate", "-e", str(tmp_path))
    assert code == 2 and "states-best.ckpt: not a states-<update>.ckpt name" in line
    code, line = run_cli(capsys, "downstream", "-m", "evaluate", "-e", str(tmp_path / "empty"))
    assert code == 2 and "checkpoint not found" in line


def test_the_allow_lists_name_what_the_installed_s3prl_has():
    import importlib

    import torch.nn as nn
    from s3prl import optimizers, schedulers

    for name in s3prl_guard.OPTIMIZERS:
        assert callable(getattr(optimizers, f"get_{name}"))
    for name in s3prl_guard.SCHEDULERS:
        assert callable(getattr(schedulers, f"get_{name}"))
    for downstream, heads in s3prl_guard.HEADS.items():
        expert = importlib.import_module(f"s3prl.downstream.{downstream}.expert")
        assert all(issubclass(getattr(expert, head), nn.Module) for head in heads)
    metric = importlib.import_module("s3prl.downstream.ctc.metric")
    assert all(callable(getattr(metric, name)) for name in s3prl_guard.CTC_METRICS)
    assert all(issubclass(getattr(nn, name), nn.Module) for name in s3prl_guard.ACTIVATIONS + s3prl_guard.RNN_MODULES)
    assert set(s3prl_guard.downstreams()) == {"asr", "ctc", "quesst14_dtw"}
    # every shipped recipe config passes as it is
    for downstream in s3prl_guard.downstreams():
        config = yaml.safe_load(recipes.config_path(downstream).read_text())
        s3prl_guard.check_config(downstream, config, "recipe")


# ============================================================== 2. stock loaders


class Touch:
    """Unpickles as os.system("touch MARKER") (a pickle REDUCE of a GLOBAL)."""

    def __init__(self, marker: Path) -> None:
        self.command = f"touch {marker}"

    def __reduce__(self):
        return (os.system, (self.command,))


def write_inst_payload(path: Path, marker: Path) -> Path:
    """A torch zip whose pickle builds os.system("touch MARKER") with the protocol-0 INST opcode:
    torch's weights-only reader refuses it without naming a GLOBAL."""
    import zipfile

    torch.save({"x": 1}, path)
    with zipfile.ZipFile(path) as archive:
        files = {name: archive.read(name) for name in archive.namelist()}
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, f"(ios\nsystem\nS'touch {marker}'\no.".encode() if name.endswith("data.pkl") else data)
    return path


@pytest.fixture(params=["reduce", "inst"])
def stock_crafted(request, tmp_path) -> tuple[Path, Path]:
    """(a crafted upstream checkpoint, the marker its payload would create)."""
    marker, path = tmp_path / "marker", tmp_path / "evil.ckpt"
    if request.param == "reduce":
        torch.save({"Config": {}, "Upstream_Config": {"transformer": {}}, "x": Touch(marker)}, path)
    else:
        write_inst_payload(path, marker)
    return path, marker


STOCK_LOADERS = ["mockingjay_local", "tera_local", "audio_albert_local", "distiller_local"]


def refused_for_safety(line: str, path: Path) -> None:
    assert "\n" not in line and str(path) in line and "refused for safety, nothing was run" in line, line
    assert "weights_only" not in line and "trust" not in line, line  # never torch's advice to turn it off


@pytest.mark.parametrize("entry", STOCK_LOADERS)
def test_stock_loaders_run_the_payload_without_the_guard(entry, tmp_path):
    # the control: these stock entries ask torch.load for weights_only=False
    from score_s3prl import compat, hub

    compat.apply()
    hub.register()
    import s3prl.hub

    marker, path = tmp_path / "marker", tmp_path / "evil.ckpt"
    torch.save({"Config": {}, "x": Touch(marker)}, path)
    with pytest.raises(Exception):
        getattr(s3prl.hub, entry)(ckpt=str(path))
    assert marker.exists()


@pytest.mark.parametrize("entry", STOCK_LOADERS)
def test_probe_loads_stock_upstreams_under_the_guard(entry, stock_crafted, assets_dir, tmp_path, capsys):
    path, marker = stock_crafted
    code, line = run_cli(capsys, "probe", "--upstream", f"{entry}={path}", "--audio",
                         str(assets_dir / "transcribed"), "--out", str(tmp_path / "out"), "--no-progress")
    assert code == 2
    refused_for_safety(line, path)
    assert not marker.exists()


def test_the_probe_api_guards_stock_entries_too(stock_crafted):
    from score_s3prl.probe import load_upstream

    path, marker = stock_crafted
    with pytest.raises(ScoreError) as error:
        load_upstream("tera_local", str(path))
    refused_for_safety(str(error.value), path)
    assert not marker.exists()


@pytest.mark.parametrize("command", ["export", "finetune"])
def test_a_refused_checkpoint_never_repeats_torchs_advice(command, stock_crafted, assets_dir, tmp_path, capsys):
    path, marker = stock_crafted
    # finetune checks its data before the model: give it real audio so that the checkpoint is reached
    argv = ([str(path), str(tmp_path / "hf")] if command == "export" else
            ["--init", str(path), "--out", str(tmp_path / "r"), "--data", str(assets_dir)])
    code, line = run_cli(capsys, command, *argv)
    assert code == 2
    refused_for_safety(line, path)
    assert not marker.exists()


def test_the_guard_nests_and_restores():
    from score_s3prl.checkpoints.safeload import weights_only_torch_load

    real_load, real_yaml = torch.load, yaml.load
    with weights_only_torch_load():
        outer = torch.load
        with weights_only_torch_load():
            assert torch.load is not outer and torch.serialization.load is torch.load
        assert torch.load is outer
    assert torch.load is real_load and yaml.load is real_yaml


def test_yaml_under_the_guard_builds_no_python_objects():
    from score_s3prl.checkpoints.safeload import weights_only_torch_load

    with weights_only_torch_load(), pytest.raises(yaml.constructor.ConstructorError):
        yaml.load("a: !!python/name:os.system", Loader=yaml.FullLoader)  # noqa: S506 - the point
    assert yaml.load("a: !!python/name:os.system", Loader=yaml.FullLoader)["a"] is os.system  # noqa: S506


# ============================================================== 3. secrets through interpolation


def write_fairseq(path: Path, **task_values) -> Path:
    from score_s3prl.checkpoints.hubert import tiny_hubert_state

    state = tiny_hubert_state(seed=0)
    torch.save({"cfg": {"model": {**state["model_cfg"], "_name": "hubert"}, "task": {**state["task_cfg"], **task_values}},
                "model": state["model_weight"], "task_state": {"dictionaries": []}}, path)
    return path


def test_omegaconf_would_copy_the_secret(secret_env):
    # the control: what resolving with OmegaConf did
    from omegaconf import OmegaConf

    resolved = OmegaConf.to_container(OmegaConf.create({"task": {"data": f"${{oc.env:{SECRET_NAME}}}"}}), resolve=True)
    assert resolved["task"]["data"] == SECRET


@pytest.mark.parametrize("value", [f"${{oc.env:{SECRET_NAME}}}", f"${{oc.env:{SECRET_NAME},x}}", "${oc.decode:'1'}",
                                   "${oc.create:{a: 1}}", "pre-${oc.env:HOME}", "${${model.label_rate}}", "${.label_rate}"])
def test_a_fairseq_config_reads_no_environment(value, assets_dir, tmp_path, capsys, secret_env):
    path = write_fairseq(tmp_path / "fairseq.pt", data=value)
    out = tmp_path / "run"
    # real audio: finetune checks its data before it reads the checkpoint
    code, line = run_cli(capsys, "finetune", "--init", str(path), "--out", str(out), "--data", str(assets_dir))
    assert code == 2 and line.startswith(f"error: {path}: the interpolation") and "refused for safety" in line, line
    no_trace(tmp_path / "marker", line, folder=tmp_path)
    assert not (out / EXPORT_FILE).exists()


def test_plain_references_still_resolve(tmp_path, monkeypatch):
    import types

    from score_s3prl.checkpoints import load_base_state
    from score_s3prl.checkpoints.hubert import tiny_hubert_state

    # fairseq's label dictionary, pickled under its own name (the loader reads it as a stand-in)
    module = types.ModuleType("fairseq.data.dictionary")
    module.Dictionary = type("Dictionary", (), {"__module__": "fairseq.data.dictionary"})
    for name in ("fairseq", "fairseq.data", "fairseq.data.dictionary"):
        monkeypatch.setitem(sys.modules, name, module)
    dictionaries = []
    for symbols in tiny_hubert_state(seed=0)["dictionaries_symbols"]:
        dictionaries.append(module.Dictionary())
        dictionaries[-1].symbols = symbols
    path = write_fairseq(tmp_path / "fairseq.pt", label_rate="${model.label_rate}", note="rate ${model.label_rate} Hz")
    saved = torch.load(path, weights_only=False)
    saved["task_state"]["dictionaries"] = dictionaries
    torch.save(saved, path)
    monkeypatch.undo()
    state, _ = load_base_state(str(path))
    assert state["task_cfg"]["label_rate"] == 50.0 and state["task_cfg"]["note"] == "rate 50.0 Hz"


def test_an_unbounded_expansion_is_refused_quickly(tmp_path):
    from score_s3prl.checkpoints import load_base_state

    values = {"l0": "x" * 1000, **{f"l{i}": f"${{task.l{i - 1}}}${{task.l{i - 1}}}" for i in range(1, 40)}}
    path = write_fairseq(tmp_path / "fairseq.pt", **values)
    started = time.perf_counter()
    with pytest.raises(ScoreError, match="an expansion past 1000000 values and characters.*refused for safety"):
        load_base_state(str(path))
    assert time.perf_counter() - started < 10


# ============================================================== downloads


class Server:
    """A local HTTP server: /drip (a byte every 50 ms, forever), /big (says 10 GB),
    /endless (no length, bytes until the client stops), /to-ftp and /to-file (redirects)."""

    def __init__(self) -> None:
        import http.server
        import threading

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server's name
                if self.path.startswith("/to-"):
                    self.send_response(302)
                    self.send_header("Location", {"/to-ftp": "ftp://127.0.0.1/x.pt",
                                                  "/to-file": "file:///etc/hostname"}[self.path])
                    self.end_headers()
                    return
                self.send_response(200)
                if self.path == "/big":
                    self.send_header("Content-Length", str(10**10))
                elif self.path == "/drip":
                    self.send_header("Content-Length", str(10**6))
                self.end_headers()
                try:
                    while True:
                        self.wfile.write(b"x" * (1 << 16) if self.path != "/drip" else b"x")
                        self.wfile.flush()
                        time.sleep(0.05 if self.path == "/drip" else 0)
                except OSError:
                    pass

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"


@pytest.fixture
def server(tmp_path, monkeypatch):
    from s3prl.util import download

    monkeypatch.setattr(download, "_download_dir", tmp_path / "cache")
    serving = Server()
    yield serving.url
    serving.httpd.shutdown()
    serving.httpd.server_close()


def test_a_drip_ends_at_the_deadline(server, tmp_path):
    from score_s3prl.checkpoints.download import fetch

    started = time.perf_counter()
    with pytest.raises(ScoreError, match=r"/drip: cannot download checkpoint \(not done within 1 s \(\d+ bytes so far\)\)"):
        fetch(f"{server}/drip", timeout=5, deadline=1)
    assert time.perf_counter() - started < 4  # each read returned within the 5 s timeout: the deadline ended it
    assert not [p for p in (tmp_path / "cache").glob("*") if p.is_file()]  # nothing cached, no temp file


@pytest.mark.parametrize("path, problem", [("/big", "10000000000 bytes, more than the 1000000"),
                                           ("/endless", "more than the 1000000 bytes")])
def test_a_download_larger_than_the_cap_is_refused(path, problem, server, tmp_path):
    from score_s3prl.checkpoints.download import fetch

    with pytest.raises(ScoreError, match=re.escape(problem)):
        fetch(f"{server}{path}", max_bytes=10**6)
    assert not [p for p in (tmp_path / "cache").glob("*") if p.is_file()]


@pytest.mark.parametrize("path, problem", [("/to-ftp", "redirected from http to ftp"),
                                           ("/to-file", "redirected from http to file")])
def test_no_redirect_to_another_scheme(path, problem, server, capsys):
    from score_s3prl import hub

    with pytest.raises(ScoreError, match=f"{problem}.*refused for safety"):
        hub.score_hubert_url(ckpt=f"{server}{path}")


# ============================================================== 4. two writers, one run folder


def test_a_second_finetune_into_a_held_out_is_refused_before_any_work(tiny_ckpt, assets_dir, tmp_path):
    out = tmp_path / "run"
    with run_lock(out):  # the first writer (flock is per open file: this process counts as another)
        with pytest.raises(ScoreError, match=r"another run is using this --out \(PID \d+: .*\)"):
            train(tiny_config(tiny_ckpt, assets_dir, out, **{"optim.total_updates": 1}))
    assert sorted(p.name for p in out.iterdir()) == [".run.lock"]  # nothing written


# ============================================================== 5. the input destroyed by the output


@pytest.mark.parametrize("name", [EXPORT_FILE, STATE_FILE, "tensorboard/x.pt", "cache/base.pt"])
def test_an_init_the_run_would_write_is_refused_before_any_work(name, tiny_ckpt, assets_dir, tmp_path):
    out = tmp_path / "run"
    base = out / name
    base.parent.mkdir(parents=True)
    base.write_bytes(Path(tiny_ckpt).read_bytes())
    before = base.read_bytes()
    with pytest.raises(ScoreError, match=rf"init {re.escape(str(base))}: this run writes .* so it would overwrite"):
        train(tiny_config(base, assets_dir, out, **{"optim.total_updates": 1}))
    assert base.read_bytes() == before and not (out / LOG_FILE).exists()


def test_an_init_linked_to_the_export_path_is_refused(tiny_ckpt, assets_dir, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / EXPORT_FILE).symlink_to(tiny_ckpt)
    with pytest.raises(ScoreError, match="overwrite its own base"):
        train(tiny_config(tiny_ckpt, assets_dir, out, **{"optim.total_updates": 1}))


# ============================================================== 6. the smaller ones


def test_a_duplicated_yaml_key_is_one_line(tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text("optim:\n  lr: 1.0e-5\n  total_updates: 3\n  lr: 1.0\n")
    code, line = run_cli(capsys, "finetune", "--config", str(config))
    assert code == 2 and line == f"error: {config}: invalid YAML at line 4, column 3: duplicate key 'lr' (first on line 2)"


@pytest.mark.parametrize("override, expected", [
    ("seed=1180591620717411303424", "seed = 1180591620717411303424: expected less than 4294967296"),
    ("views.semitones=[1e300]", "views.semitones[0] = 1e+300: expected less than or equal to 39.8"),
    ("views.speed_factors=[1e300]", "views.speed_factors[0] = 1e+300: expected less than or equal to 10"),
])
def test_huge_numbers_are_one_line(override, expected, capsys):
    code, line = run_cli(capsys, "finetune", override)
    assert code == 2 and expected in line, line


def test_the_largest_seed_runs(tiny_ckpt, assets_dir, tmp_path):
    from score_s3prl.train import update_seed

    torch.manual_seed(update_seed(2**32 - 1, 10**7, 1023))  # the per-update seeds fit torch's range
    train(tiny_config(tiny_ckpt, assets_dir, tmp_path, seed=2**32 - 1, **{"optim.total_updates": 1}))


def write_wav(path: Path, samples: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(path, samples, 16000, subtype="FLOAT")
    return path


def test_nan_audio_is_skipped_naming_the_file(tiny_ckpt, assets_dir, tmp_path):
    from score_s3prl.audio import AudioError, load_audio

    chapter = tmp_path / "corpus" / "train-clean-100" / "1" / "2"
    good = next((assets_dir / "train-clean-100").rglob("*.flac"))
    chapter.mkdir(parents=True)
    (chapter / good.name).write_bytes(good.read_bytes())
    samples = np.random.default_rng(0).normal(0, 0.1, 48000).astype(np.float32)
    samples[1000] = np.nan
    bad = write_wav(chapter / "1-2-0000.wav", samples)
    with pytest.raises(AudioError, match=rf"^{re.escape(str(bad))}: holds NaN or infinite samples \(the first at sample 1000\)"):
        load_audio(bad)
    cfg = tiny_config(tiny_ckpt, tmp_path / "corpus", tmp_path / "run", **{"optim.total_updates": 2,
                      "data.subsets": ["train-clean-100"]})
    with pytest.warns(UserWarning, match=rf"skipped: {re.escape(str(bad))}: holds NaN"):
        export = train(cfg)
    assert export.is_file()


def test_a_ten_minute_file_in_whole_mode_is_refused_before_loading(tiny_ckpt, tmp_path):
    corpus = tmp_path / "corpus" / "train-clean-100" / "1" / "2"
    corpus.mkdir(parents=True)
    long = corpus / "1-2-0000.wav"
    soundfile.write(long, np.zeros(16000 * 600, dtype=np.int16), 16000)  # ten minutes
    cfg = tiny_config(tiny_ckpt, tmp_path / "corpus", tmp_path / "run",
                      **{"data.mode": "whole", "data.subsets": ["train-clean-100"]})
    started = time.perf_counter()
    with pytest.raises(ScoreError, match=rf"^{re.escape(str(long))}: 600.0 s is longer than data.batch_seconds = 40 s"):
        train(cfg)
    assert time.perf_counter() - started < 60
    assert not (tmp_path / "run" / STATE_FILE).exists()


def test_a_latin1_transcript_is_one_line(tmp_path, capsys):
    from score_s3prl.corpora import transcripts

    chapter = tmp_path / "dev-clean" / "1" / "2"
    chapter.mkdir(parents=True)
    (chapter / "1-2.trans.txt").write_bytes("1-2-0000 CAF\xc9 AU LAIT\n".encode("latin-1"))
    with pytest.raises(ScoreError, match=r"1-2.trans.txt:1: byte 0xc9 at column 13 is not UTF-8; save the file as UTF-8"):
        transcripts([chapter / "1-2-0000.flac"])


# ---------------------------------------------------------------- crafted train_state.pt values


def _good_state(tiny_ckpt, assets_dir, out) -> dict:
    train(tiny_config(tiny_ckpt, assets_dir, out, **{"optim.total_updates": 2}))
    return torch.load(out / STATE_FILE, weights_only=True)


STATE_CHANGES = {
    "update-type": (lambda s: s["position"].update(update="5"), "position.update = '5'"),
    "update-negative": (lambda s: s["position"].update(update=-1_000_000), "position.update = -1000000"),
    "update-huge": (lambda s: s["position"].update(update=1_000_000), "beyond optim.total_updates"),
    "position-list": (lambda s: s.update(position=[1, 2]), "position [1, 2]"),
    "unknown-field": (lambda s: s["position"].update(evil=1), "expected the fields"),
    "seconds-nan": (lambda s: s["position"].update(audio_seconds=float("nan")), "position.audio_seconds = nan"),
    "not-a-dict": (lambda s: s.clear() or s.update(x=[1]), "not a training state of this program"),
    "scheduler-ahead": (lambda s: s["scheduler"].update(last_epoch=999), "its scheduler is at step 999"),
    "lr-huge": (lambda s: s["optimizer"]["param_groups"][0].update(lr=1e30), "its optimiser has lr = 1e+30"),
    "betas": (lambda s: s["optimizer"]["param_groups"][0].update(betas=(0.0, 0.0)), "its optimiser has betas"),
    "moment-shape": (lambda s: next(iter(s["optimizer"]["state"].values())).update(exp_avg=torch.zeros(3)),
                     "has shape (3,)"),
    "moment-nan": (lambda s: next(iter(s["optimizer"]["state"].values()))["exp_avg"].fill_(float("nan")),
                   "holds NaN or inf"),
    "weights-inf": (lambda s: next(iter(s["trainable"].values())).fill_(float("inf")), "weights hold NaN or inf"),
}


@pytest.mark.parametrize("change", STATE_CHANGES)
def test_a_crafted_training_state_is_one_line_and_kept(change, tiny_ckpt, assets_dir, tmp_path):
    out = tmp_path / "run"
    state = _good_state(tiny_ckpt, assets_dir, out)
    edit, message = STATE_CHANGES[change]
    edit(state)
    torch.save(state, out / STATE_FILE)
    before = (out / STATE_FILE).read_bytes()
    with pytest.raises(ScoreError) as error:
        train(tiny_config(tiny_ckpt, assets_dir, out, **{"optim.total_updates": 2}))
    text = str(error.value)
    assert "\n" not in text and text.startswith(str(out / STATE_FILE)) and message in text, text
    assert "to start over" in text
    assert (out / STATE_FILE).read_bytes() == before  # nothing lost: the file is left for the user


def test_a_diverging_run_keeps_the_last_state_that_trained_on(tiny_ckpt, assets_dir, tmp_path):
    out = tmp_path / "run"
    cfg = tiny_config(tiny_ckpt, assets_dir, out, save_every=1, max_bad_losses=2,
                      **{"optim.lr": 1e30, "optim.warmup_updates": 1, "optim.total_updates": 8})
    with pytest.raises(ScoreError, match=r"2 non-finite losses in a row: stopping \(the last state that trained "
                                         r"on \(update (\d+)\) is in .*; check optim.lr = 1e\+30") as error:
        train(cfg)
    saved = torch.load(out / STATE_FILE, weights_only=True)
    assert f"(update {saved['position']['update']})" in str(error.value)
    # the weights on disk gave a finite loss: those of the base, never the 1e30-sized ones
    assert all(torch.isfinite(w).all() and w.abs().max() < 100 for w in saved["trainable"].values())


def test_a_second_signal_mid_update_drops_only_that_update(tiny_ckpt, assets_dir, tmp_path, monkeypatch, capsys):
    # deterministic: both signals arrive inside update 4's batch loading (the StopNow path)
    from score_s3prl import train as train_module

    values = {"optim.total_updates": 6, "save_every": 2, "optim.utterances_per_update": 2}
    whole = weights(train(tiny_config(tiny_ckpt, assets_dir, tmp_path / "whole", **values)))
    real_next_batch, calls = train_module.next_batch, []

    def interrupted(run):
        calls.append(run.position.update)
        if run.position.update == 3 and calls.count(3) == 1:
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)
        return real_next_batch(run)

    monkeypatch.setattr(train_module, "next_batch", interrupted)
    with pytest.raises(SystemExit) as stop:
        train(tiny_config(tiny_ckpt, assets_dir, tmp_path / "run", **values))
    assert stop.value.code == 128 + signal.SIGINT
    assert "stopped by signal 2 at update 3" in capsys.readouterr().err
    assert torch.load(tmp_path / "run" / STATE_FILE, weights_only=True)["position"]["update"] == 3
    monkeypatch.setattr(train_module, "next_batch", real_next_batch)
    resumed = weights(train(tiny_config(tiny_ckpt, assets_dir, tmp_path / "run", **values)))
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)


# ---------------------------------------------------------------- start-up under a memory limit


def test_a_memory_limit_is_named_not_the_torchaudio_version(tmp_path):
    import resource

    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (1_500_000_000, resource.RLIM_INFINITY))

    result = subprocess.run([sys.executable, "-m", "score_s3prl.cli", "finetune", "-h"], capture_output=True,
                            text=True, preexec_fn=limit, cwd=tmp_path,
                            env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"})
    assert result.returncode == 2, result.stderr[-2000:]
    (line,) = result.stderr.strip().splitlines()
    assert "out of memory while mapping its libraries" in line and "address-space limit of 1.5 GB" in line, line
    assert "pip install" not in line


# ============================================================== subprocess runs: writers, signals


def finetune(out: Path, tiny_ckpt, assets_dir, *extra: str) -> list[str]:
    return [sys.executable, "-m", "score_s3prl.cli", "finetune", "--config", str(TINY_CONFIG), "--init", str(tiny_ckpt),
            "--data", str(assets_dir), "--out", str(out), "--steps", "24", "save_every=2", *extra]


ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
# train_log.csv's rows of those 24 updates: log_every 5, and the tiny config's held-out probe at 0 and the end
LOGGED = [0, 5, 10, 15, 20, 24]


def weights(export: Path) -> dict:
    from score_s3prl.checkpoints.hubert import read_converted

    return read_converted(export)["model_weight"]


def logged_updates(out: Path) -> list[int]:
    import csv

    with open(out / LOG_FILE) as handle:
        return [int(row["update"]) for row in csv.DictReader(handle)]


@pytest.fixture(scope="module")
def uninterrupted(tiny_ckpt, assets_dir, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("whole")
    result = subprocess.run(finetune(out, tiny_ckpt, assets_dir), env=ENV, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    return weights(out / EXPORT_FILE)


@pytest.mark.slow
def test_a_second_finetune_into_the_same_out_is_one_line_and_the_first_finishes(tiny_ckpt, assets_dir, tmp_path,
                                                                                uninterrupted):
    out = tmp_path / "run"
    first = subprocess.Popen(finetune(out, tiny_ckpt, assets_dir), env=ENV, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    wait_for(out / STATE_FILE, first)
    second = subprocess.run(finetune(out, tiny_ckpt, assets_dir), env=ENV, capture_output=True, text=True)
    assert second.returncode == 2, second.stderr[-3000:]
    (line,) = second.stderr.strip().splitlines()
    assert re.fullmatch(rf"error: {re.escape(str(out))}: another run is using this --out \(PID {first.pid}: .*finetune.*\); "
                        r"wait for it to end or pass another --out", line), line
    _, stderr = first.communicate(timeout=600)
    assert first.returncode == 0, stderr[-3000:]
    updates = logged_updates(out)
    assert updates == LOGGED  # every row once
    assert all(torch.equal(uninterrupted[k], v) for k, v in weights(out / EXPORT_FILE).items())


@pytest.mark.slow
@pytest.mark.parametrize("signals", [(signal.SIGINT, signal.SIGINT), (signal.SIGHUP,), (signal.SIGTERM, signal.SIGHUP)])
def test_signals_stop_with_one_line_and_lose_nothing(signals, tiny_ckpt, assets_dir, tmp_path, uninterrupted):
    out = tmp_path / "run"
    proc = subprocess.Popen(finetune(out, tiny_ckpt, assets_dir), env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    wait_for(out / STATE_FILE, proc)
    for sig in signals:
        proc.send_signal(sig)
        time.sleep(0.05)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 128 + signals[0], stderr[-3000:]
    assert "Traceback" not in stderr and f"stopped by signal {int(signals[0])} at update" in stderr, stderr[-3000:]
    stopped_at = torch.load(out / STATE_FILE, weights_only=True)["position"]["update"]
    resumed = subprocess.run(finetune(out, tiny_ckpt, assets_dir), env=ENV, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming {out} at update {stopped_at}" in resumed.stderr
    assert all(torch.equal(uninterrupted[k], v) for k, v in weights(out / EXPORT_FILE).items())
    updates = logged_updates(out)
    assert updates == LOGGED


# ============================================================== fuzz (seeded): files, values, signals

FUZZ_ARGS = {"expdir": ["/", "/tmp/x", "", "https://x/y", 3], "cache_dir": ["/tmp", 1.5], "upstream": ["os", "", None, 7],
             "upstream_ckpt": ["http://x/y.pt", "gs://b/k", ["a"]], "hub": ["huggingface", None], "downstream": [
                 "example", "../ctc", None], "seed": [-1, 2**64, "1", True], "push_to_hf_hub": ["False", 1],
             "upstream_layer_selection": ["-1", 1.5], "evaluate_split": ["../x", "a/b", ""], "device": [3],
             "from_hf_hub": [True], "upstream_feature_selection": ["a.b", "__class__()"]}
FUZZ_CONFIG = {"downstream_expert.model.select": "{p}", "downstream_expert.metric": ["{p}"], "optimizer.name": "{p}",
               "optimizer.torch_optim_name": "{p}", "scheduler": {"name": "{p}"}, "downstream_expert.text.mode": "bert-{p}",
               "downstream_expert.corpus.train": ["../{p}"], "runner.eval_dataloaders": ["{p}/.."], "evil": {"x": 1},
               "downstream_expert.model.FrameLevel": {"activation": "{p}", "hiddens": [4]},
               "downstream_expert.corpus.name": "{p}"}


def with_payload(value, payload: str):
    if isinstance(value, dict):
        return {k: with_payload(v, payload) for k, v in value.items()}
    if isinstance(value, list):
        return [with_payload(v, payload) for v in value]
    return value.replace("{p}", payload) if isinstance(value, str) else value


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(4))
def test_fuzz_downstream_checkpoints(seed, tmp_path, capsys, secret_env, monkeypatch):
    import random

    rng = random.Random(seed)
    monkeypatch.chdir(tmp_path)
    marker = tmp_path / "marker"
    base = stock_state(tmp_path, "ctc")
    for case in range(6):
        state = {**base, "Args": argparse.Namespace(**vars(base["Args"])),
                 "Config": yaml.safe_load(yaml.safe_dump(base["Config"]))}
        for _ in range(rng.randint(1, 3)):
            if rng.random() < 0.5:
                key = rng.choice(sorted(FUZZ_ARGS))
                setattr(state["Args"], key, rng.choice(FUZZ_ARGS[key]))
            else:
                key = rng.choice(sorted(FUZZ_CONFIG))
                set_key(state["Config"], key, with_payload(FUZZ_CONFIG[key], system(marker)))
        path = write_state(tmp_path, state, f"states-{case}.ckpt")
        code, line = run_cli(capsys, "downstream", "-m", rng.choice(["evaluate", "train"]), "-e", str(path),
                             "--device", "cpu")
        assert code == 2 and "refused for safety" in line, (seed, case, line)
        no_trace(marker, line)
    assert not (tmp_path / "x").exists()


INTERPOLATIONS = ["${model.label_rate}", "${task.sample_rate}", "x${model.label_rate}y", "${nope}", "${oc.env:%s}" % SECRET_NAME,
                  "${oc.decode:1}", "${${model.label_rate}}", "${.x}", "\\${model.label_rate}", "${model}", "$", "${",
                  "${task.a0}${task.a0}", "${model.label_rate", "}${", "${task.a1}"]


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(4))
def test_fuzz_interpolations_match_omegaconf_or_are_refused(seed, secret_env):
    # where ours resolves, OmegaConf (without its resolvers' reach) gives the same; otherwise a refusal
    import random

    from omegaconf import OmegaConf

    from score_s3prl.checkpoints.safeload import resolve_interpolations

    rng = random.Random(seed)
    for _ in range(40):
        task = {f"a{i}": "".join(rng.choice(INTERPOLATIONS) for _ in range(rng.randint(1, 3))) for i in range(3)}
        config = {"model": {"label_rate": 50}, "task": {"sample_rate": 16000, **task}}
        try:
            ours = resolve_interpolations(config, "f.pt")
        except ScoreError as exc:
            assert "\n" not in str(exc) and SECRET not in str(exc) and "refused for safety" in str(exc)
            continue
        assert SECRET not in repr(ours)
        assert ours == OmegaConf.to_container(OmegaConf.create(config), resolve=True), task


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(3))
def test_fuzz_finetune_values_and_state_files(seed, tiny_ckpt, assets_dir, tmp_path, capsys):
    import random

    rng = random.Random(seed)
    keys = ["seed", "views.semitones", "views.speed_factors", "optim.lr", "data.batch_seconds", "optim.eps"]
    values = ["2**70", "1e300", "[1e300]", "[-1e300]", "[0]", "1180591620717411303424", ".nan", "[.inf]", "-0.0"]
    for _ in range(6):
        code, line = run_cli(capsys, "finetune", f"{rng.choice(keys)}={rng.choice(values)}")
        assert code == 2 and line, line
    out = tmp_path / "run"
    good = _good_state(tiny_ckpt, assets_dir, out)
    for case in range(4):
        state = {**good, "position": dict(good["position"])}
        field = rng.choice(sorted(state["position"]))
        value = rng.choice([-1, "1", 1e300, float("nan"), None, [1], 10**9, True])
        state["position"][field] = value
        # of its kind and in range: a count >= 0 (the update at most the total), a list of indices
        valid = (field in ("epoch", "cursor", "skipped_files", "bad_in_a_row", "audio_seconds")
                 and type(value) is int and value >= 0) or (field == "unreadable" and value == [1])
        torch.save(state, out / STATE_FILE)
        before = (out / STATE_FILE).read_bytes()
        code, line = run_cli(capsys, "finetune", "--config", str(TINY_CONFIG), "--init", str(tiny_ckpt), "--data",
                             str(assets_dir), "--out", str(out), "--steps", "2")
        if valid:
            assert code == 0, (field, value)
            continue
        assert code == 2 and line.startswith(f"error: {out / STATE_FILE}:"), (field, value, line)
        assert (out / STATE_FILE).read_bytes() == before


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(2))
def test_fuzz_signals(seed, tiny_ckpt, assets_dir, tmp_path, uninterrupted):
    # any of SIGINT/SIGTERM/SIGHUP, once or twice, at a random moment: one line, and a resume
    # ends at the uninterrupted run's weights
    import random

    rng = random.Random(seed)
    out = tmp_path / "run"
    proc = subprocess.Popen(finetune(out, tiny_ckpt, assets_dir), env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    wait_for(out / STATE_FILE, proc)
    time.sleep(rng.uniform(0, 1.5))
    sent = [rng.choice([signal.SIGINT, signal.SIGTERM, signal.SIGHUP]) for _ in range(rng.randint(1, 2))]
    for sig in sent:
        if proc.poll() is None:
            proc.send_signal(sig)
        time.sleep(rng.uniform(0, 0.2))
    _, stderr = proc.communicate(timeout=300)
    assert "Traceback" not in stderr, stderr[-3000:]
    assert proc.returncode in (0, 128 + sent[0]), stderr[-3000:]
    if proc.returncode:
        resumed = subprocess.run(finetune(out, tiny_ckpt, assets_dir), env=ENV, capture_output=True, text=True)
        assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert all(torch.equal(uninterrupted[k], v) for k, v in weights(out / EXPORT_FILE).items())
