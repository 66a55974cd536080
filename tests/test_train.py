"""The SCORE fine-tuning runner: learning, freezing, export, resume, bad input."""

from __future__ import annotations

import contextlib
import csv
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from score_s3prl.checkpoints.hubert import read_converted
from score_s3prl.config import load_config
from score_s3prl.errors import ScoreError
from score_s3prl.train import EXPORT_FILE, STATE_FILE, lr_factor, train

REPO = Path(__file__).resolve().parents[1]
TINY_CONFIG = REPO / "upstream_configs" / "score_tiny.yaml"


def tiny_config(tiny_ckpt, assets_dir, out, **values):
    return load_config(
        TINY_CONFIG,
        values_set={"init": str(tiny_ckpt), "data.root": str(assets_dir), "out": str(out), **values},
    )


def finetune_cmd(tiny_ckpt, assets_dir, out, *extra):
    return [sys.executable, "-m", "score_s3prl.cli", "finetune", "--config", str(TINY_CONFIG),
            "--init", str(tiny_ckpt), "--data", str(assets_dir), "--out", str(out), *extra]


def subprocess_env():
    # One thread: the same float reductions in every process, so runs compare bit for bit.
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}


def test_paper_config_states_every_default():
    cfg = load_config(REPO / "upstream_configs" / "score_hubert_base.yaml")
    assert cfg == load_config(None)
    assert cfg.precision == "fp32" and cfg.model.dropout == "official" and cfg.data.mode == "whole"
    assert (cfg.optim.lr, cfg.optim.warmup_updates, cfg.optim.total_updates) == (2e-5, 1000, 3600)
    assert (cfg.loss.gamma, cfg.model.head_dim, cfg.model.trainable_layers) == (0.1, 256, 2)
    assert cfg.views.speed_factors == [0.9, 1.0, 1.1] and cfg.views.semitones == [-2.0, 2.0]


def test_config_errors_name_the_key(tmp_path):
    with pytest.raises(ScoreError, match="unknown config key.*lr"):
        load_config(None, ["lr=1"])
    with pytest.raises(ScoreError, match="unknown config key optim.learning_rate"):
        load_config(None, ["optim.learning_rate=1"])
    with pytest.raises(ScoreError, match="missing.yaml: config file not found"):
        load_config(tmp_path / "missing.yaml")
    assert load_config(None, ["optim.lr=1e-4", "data.subsets=[a, b]"]).data.subsets == ["a", "b"]


@pytest.mark.parametrize("shifted", [False, True])
def test_lr_schedule_warms_up_then_decays_to_zero(shifted):
    factors = [lr_factor(u, 10, 30, shifted=shifted) for u in range(30)]
    # official (s3prl's linear_schedule_with_warmup): k / 10, so the first update has lr 0
    assert factors[0] == pytest.approx(0.1 if shifted else 0.0)
    assert factors[9] == pytest.approx(1.0 if shifted else 0.9)
    assert factors[10] == pytest.approx(1.0) and factors[29] == pytest.approx(0.05)
    assert all(a <= b for a, b in zip(factors[:10], factors[1:10]))
    assert all(a >= b for a, b in zip(factors[10:], factors[11:]))


def test_loss_falls_on_a_fixed_batch(tiny_ckpt, speech):
    from score_s3prl.augment import CorrespondenceViews
    from score_s3prl.checkpoints import load_base_state
    from score_s3prl.model import ScoreModel

    torch.manual_seed(0)
    base, _ = load_base_state(str(tiny_ckpt))
    model = ScoreModel(base, head_dim=16, trainable_layers=2, train_final_norm=True, gamma=0.1, bandwidth=None)
    wavs = torch.stack([speech[:32000], speech[16000:48000]])
    lengths = torch.tensor([32000, 32000])
    views = CorrespondenceViews([0.9, 1.1], [-2.0, 2.0], 0.5, 16000)
    batch = views(wavs, lengths, torch.Generator().manual_seed(0))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    losses = []
    for _ in range(30):
        optimizer.zero_grad()
        loss, _ = model(*batch)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses


@pytest.mark.slow
@pytest.mark.parametrize("method", ["score", "laser"])
def test_run_trains_only_the_top_layers_and_exports(tiny_ckpt, assets_dir, tmp_path, method):
    cfg = tiny_config(tiny_ckpt, assets_dir, tmp_path / "run", **{"optim.total_updates": 6, "log_every": 2,
                                                                  "method": method})
    export_path = train(cfg)
    assert export_path == tmp_path / "run" / EXPORT_FILE
    base, tuned = read_converted(tiny_ckpt), read_converted(export_path)
    assert tuned["model_cfg"] == base["model_cfg"] and tuned["task_cfg"] == base["task_cfg"]
    assert tuned["score"]["updates"] == 6 and tuned["score"]["audio_hours"] > 0
    changed = {k for k, v in base["model_weight"].items() if not torch.equal(v, tuned["model_weight"][k])}
    # Tiny model: 4 layers; the top 2 and the norms the official code trains; nothing else moves.
    # SCORE trains encoder.layer_norm and layer_norm; LASER's runner freezes `model.layer_norm`.
    assert changed, "nothing trained"
    allowed = ("encoder.layers.2.", "encoder.layers.3.", "encoder.layer_norm.")
    allowed += ("layer_norm.",) if method == "score" else ()
    assert all(k.startswith(allowed) for k in changed), sorted(changed)
    assert any(k.startswith("encoder.layers.3.") for k in changed)
    assert any(k.startswith("encoder.layer_norm.") for k in changed)
    assert tuned["score"]["method"] == method.upper()
    with open(tmp_path / "run" / "train_log.csv") as handle:
        assert [int(r["update"]) for r in csv.DictReader(handle)] == [2, 4, 6]
    assert (tmp_path / "run" / "loss.png").stat().st_size > 0
    assert list((tmp_path / "run" / "tensorboard").iterdir())


@pytest.mark.slow
def test_same_seed_same_weights(tiny_ckpt, assets_dir, tmp_path):
    exports = [train(tiny_config(tiny_ckpt, assets_dir, tmp_path / name, **{"optim.total_updates": 3}))
               for name in ("a", "b")]
    a, b = (read_converted(p)["model_weight"] for p in exports)
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("settings", [
    {"model.dropout": "official", "data.mode": "whole"},
    {"model.dropout": "frozen-eval", "data.mode": "crops", "optim.optimizer": "torch-adamw",
     "optim.warmup": "shifted"},
    {"model.dropout": "official", "method": "laser"},
])
@pytest.mark.slow  # three short training runs each
def test_interrupted_run_resumes_bit_exactly(tiny_ckpt, assets_dir, tmp_path, monkeypatch, settings):
    """An update that dies half-way (after the state of update 3 was saved) and a resume give
    the weights of an uninterrupted run, with dropout in the teacher and frozen layers on or off."""
    from score_s3prl import train as train_module

    values = {"optim.total_updates": 6, "save_every": 3, "optim.utterances_per_update": 2, **settings}
    whole = read_converted(train(tiny_config(tiny_ckpt, assets_dir, tmp_path / "whole", **values)))

    real_step, calls = train_module.update_step, []

    def dying_step(run):
        calls.append(run.position.update)
        if len(calls) == 5:  # mid-way through update 5: forward passes done, nothing saved
            real_step(run)
            raise RuntimeError("killed")
        return real_step(run)

    monkeypatch.setattr(train_module, "update_step", dying_step)
    with pytest.raises(RuntimeError, match="killed"):
        train(tiny_config(tiny_ckpt, assets_dir, tmp_path / "resumed", **values))
    monkeypatch.setattr(train_module, "update_step", real_step)
    assert torch.load(tmp_path / "resumed" / STATE_FILE, weights_only=True)["position"]["update"] == 3
    resumed = read_converted(train(tiny_config(tiny_ckpt, assets_dir, tmp_path / "resumed", **values)))
    a, b = whole["model_weight"], resumed["model_weight"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_dropout_modes_train_different_weights(tiny_ckpt, assets_dir, tmp_path):
    """The official mode's dropout in the teacher and frozen layers does change what is trained."""
    values = {"optim.total_updates": 2, "optim.utterances_per_update": 2}
    a, b = (read_converted(train(tiny_config(tiny_ckpt, assets_dir, tmp_path / mode, **values,
                                             **{"model.dropout": mode})))["model_weight"]
            for mode in ("official", "frozen-eval"))
    assert not torch.equal(a["encoder.layers.3.fc1.weight"], b["encoder.layers.3.fc1.weight"])


def test_paper_configs_default_to_the_official_recipe():
    for name, method in [("score_hubert_base", "score"), ("laser_hubert_base", "laser"),
                         ("score_wavlm_base", "score"), ("laser_wavlm_base", "laser")]:
        cfg = load_config(REPO / "upstream_configs" / f"{name}.yaml")
        assert cfg.method == method and cfg.precision == "fp32" and cfg.model.dropout == "official"
        assert (cfg.optim.optimizer, cfg.optim.eps, cfg.optim.warmup) == ("s3prl-adamw", None, "official")
        assert cfg.data.mode == "whole" and cfg.optim.utterances_per_update == 8
    laser = load_config(REPO / "upstream_configs" / "laser_hubert_base.yaml")
    assert (laser.loss.sigma, laser.loss.margin, laser.loss.alpha, laser.loss.gamma) == (0, 1.1, 0.4, 0.1)
    laser_wavlm = load_config(REPO / "upstream_configs" / "laser_wavlm_base.yaml")
    assert (laser_wavlm.loss.sigma, laser_wavlm.loss.margin, laser_wavlm.loss.alpha) == (0, 1.0, 0.15)
    score_wavlm = load_config(REPO / "upstream_configs" / "score_wavlm_base.yaml")
    assert score_wavlm.init == "wavlm_base" and score_wavlm.model.head == "mlp"
    assert score_wavlm.views.speed_factors == [0.85, 0.9, 1.0, 1.1, 1.15]


def test_unknown_choice_is_an_error(tiny_ckpt, assets_dir, tmp_path):
    with pytest.raises(ScoreError, match="precision = 'fp16': expected 'fp32' or 'bf16'"):
        train(tiny_config(tiny_ckpt, assets_dir, tmp_path, precision="fp16"))


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.time() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.time() < deadline, f"{path} never appeared"
        time.sleep(0.02)


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_killed_run_resumes_to_the_same_weights(tiny_ckpt, assets_dir, tmp_path, sig):
    extra = ["--steps", "24", "save_every=2"]
    env = subprocess_env()
    whole = subprocess.run(finetune_cmd(tiny_ckpt, assets_dir, tmp_path / "whole", *extra),
                           env=env, capture_output=True, text=True)
    assert whole.returncode == 0, whole.stderr

    run_dir = tmp_path / "killed"
    proc = subprocess.Popen(finetune_cmd(tiny_ckpt, assets_dir, run_dir, *extra), env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(run_dir / STATE_FILE, proc)
    proc.send_signal(sig)
    _, stderr = proc.communicate()
    assert proc.returncode == (-sig if sig == signal.SIGKILL else 128 + sig), stderr
    assert not (run_dir / EXPORT_FILE).exists(), "the run finished before it was killed"
    stopped_at = torch.load(run_dir / STATE_FILE, weights_only=True)["position"]["update"]
    assert 0 < stopped_at < 24

    resumed = subprocess.run(finetune_cmd(tiny_ckpt, assets_dir, run_dir, *extra),
                             env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming {run_dir} at update {stopped_at}" in resumed.stderr
    a = read_converted(tmp_path / "whole" / EXPORT_FILE)["model_weight"]
    b = read_converted(run_dir / EXPORT_FILE)["model_weight"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    with open(run_dir / "train_log.csv") as handle:
        updates = [int(r["update"]) for r in csv.DictReader(handle)]
    assert updates == sorted(set(updates))  # no rows repeated by the resume


def test_resume_refuses_another_config(tiny_ckpt, assets_dir, tmp_path):
    train(tiny_config(tiny_ckpt, assets_dir, tmp_path, **{"optim.total_updates": 1}))
    with pytest.raises(ScoreError, match="trained with another config"):
        train(tiny_config(tiny_ckpt, assets_dir, tmp_path, **{"optim.total_updates": 2, "optim.lr": 1.0}))


def test_nan_losses_skip_updates_then_abort(tiny_ckpt, assets_dir, tmp_path, monkeypatch, capsys):
    from score_s3prl import model as model_module

    real_forward = model_module.ScoreModel.forward

    def nan_forward(self, *args):
        loss, stats = real_forward(self, *args)
        return loss * float("nan"), stats

    monkeypatch.setattr(model_module.ScoreModel, "forward", nan_forward)
    cfg = tiny_config(tiny_ckpt, assets_dir, tmp_path, max_bad_losses=3)
    with pytest.raises(ScoreError, match="3 non-finite losses in a row"):
        train(cfg)
    assert "non-finite loss" in capsys.readouterr().err
    assert not (tmp_path / EXPORT_FILE).exists()


def test_missing_data_and_init_are_clear_errors(tiny_ckpt, tmp_path):
    with pytest.raises(ScoreError, match="nowhere"):
        train(tiny_config(tiny_ckpt, tmp_path / "nowhere", tmp_path / "run"))
    with pytest.raises(ScoreError, match="no base model"):
        train(load_config(TINY_CONFIG, values_set={"out": str(tmp_path / "run2")}))


@pytest.mark.slow
def test_cli_prints_one_error_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "score_s3prl.cli", "finetune", "--config",
                           str(tmp_path / "none.yaml")], capture_output=True, text=True, env=subprocess_env())
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"error: {tmp_path / 'none.yaml'}: config file not found"


@pytest.mark.slow
def test_export_loads_through_both_hub_entries(tiny_ckpt, assets_dir, tmp_path, speech):
    from score_s3prl import hub

    hub.register()  # applies the compat shims first: s3prl.hub does not import without them
    import s3prl.hub

    export_path = train(tiny_config(tiny_ckpt, assets_dir, tmp_path, **{"optim.total_updates": 2}))
    ours = s3prl.hub.score_hubert_local(ckpt=str(export_path))
    stock = s3prl.hub.hubert_local(ckpt=str(export_path))
    base = s3prl.hub.hubert_local(ckpt=str(tiny_ckpt))
    with torch.no_grad():
        mine, theirs, before = (u.eval()([speech])["hidden_states"] for u in (ours, stock, base))
    assert all(torch.equal(a, b) for a, b in zip(mine, theirs))
    assert not torch.equal(mine[-1], before[-1])  # the export carries the tuned weights
    assert ours.score_metadata["updates"] == 2


@pytest.mark.slow
def test_two_process_ddp_run(tiny_ckpt, assets_dir, tmp_path):
    torchrun = Path(sys.executable).with_name("torchrun")
    cmd = [str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "score_s3prl.cli", *finetune_cmd(
        tiny_ckpt, assets_dir, tmp_path, "--steps", "3")[3:]]
    proc = subprocess.run(cmd, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    tuned = read_converted(tmp_path / EXPORT_FILE)
    assert tuned["score"]["updates"] == 3
    base = read_converted(tiny_ckpt)["model_weight"]
    assert not torch.equal(base["encoder.layers.3.fc1.weight"], tuned["model_weight"]["encoder.layers.3.fc1.weight"])


def test_cuda_process_group_also_reduces_cpu_tensors(monkeypatch):
    # The loop all-reduces CPU flags and counts; an NCCL-only group refuses CPU tensors.
    from score_s3prl import train as train_module

    backends = []
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(train_module.dist, "init_process_group", backends.append)
    monkeypatch.setattr(train_module.dist, "get_rank", lambda: 1)
    monkeypatch.setattr(train_module.dist, "get_world_size", lambda: 2)
    assert train_module.init_distributed("cuda").world == 2
    assert "cpu:gloo" in backends[0] and "cuda:nccl" in backends[0]


def worker_pid(launcher: subprocess.Popen, local_rank: int, timeout: float = 60.0) -> int:
    """The pid of torchrun's worker with ``local_rank`` (read from the children's environments)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        for task in Path(f"/proc/{launcher.pid}/task").iterdir():
            for child in (task / "children").read_text().split():
                try:
                    environ = Path(f"/proc/{child}/environ").read_bytes().split(b"\0")
                except OSError:
                    continue
                if f"LOCAL_RANK={local_rank}".encode() in environ:
                    return int(child)
        time.sleep(0.05)
    raise AssertionError(f"no torchrun worker with LOCAL_RANK={local_rank}")


@pytest.mark.slow
def test_ddp_run_stopped_on_one_rank_stops_all_together_and_resumes(tiny_ckpt, assets_dir, tmp_path):
    # A signal that reaches one rank only must stop every rank at the same update (a rank that
    # leaves alone hangs its peers in their next all-reduce), and the saved state resumes.
    torchrun = Path(sys.executable).with_name("torchrun")

    def cmd(out):
        return [str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "score_s3prl.cli",
                *finetune_cmd(tiny_ckpt, assets_dir, out, "--steps", "16", "save_every=2")[3:]]

    env = subprocess_env()
    whole = subprocess.run(cmd(tmp_path / "whole"), env=env, capture_output=True, text=True, timeout=300)
    assert whole.returncode == 0, whole.stderr[-3000:]

    run_dir = tmp_path / "stopped"
    proc = subprocess.Popen(cmd(run_dir), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    workers = [worker_pid(proc, rank) for rank in (0, 1)]
    try:
        wait_for(run_dir / STATE_FILE, proc)
        os.kill(workers[1], signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:  # hung: the workers hold the output pipes, so they go first
            for pid in workers:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            proc.kill()
            proc.communicate()
    assert f"stopped by signal {int(signal.SIGTERM)}" in stderr, stderr[-3000:]
    assert not (run_dir / EXPORT_FILE).exists(), "the run finished before it was stopped"
    stopped_at = torch.load(run_dir / STATE_FILE, weights_only=True)["position"]["update"]
    assert 0 < stopped_at < 16

    resumed = subprocess.run(cmd(run_dir), env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming {run_dir} at update {stopped_at}" in resumed.stderr
    a = read_converted(tmp_path / "whole" / EXPORT_FILE)["model_weight"]
    b = read_converted(run_dir / EXPORT_FILE)["model_weight"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_corpus_that_cannot_be_read_stops_with_a_clear_error(tiny_ckpt, tmp_path):
    # Headers that scan fine, audio that does not decode: the loop must not spin forever.
    import numpy as np
    import soundfile

    corpus = tmp_path / "corpus" / "train-clean-100" / "1" / "2"
    corpus.mkdir(parents=True)
    for i in range(3):
        path = corpus / f"1-2-{i:04d}.flac"
        soundfile.write(path, np.random.default_rng(i).uniform(-0.1, 0.1, 32000), 16000)
        path.write_bytes(path.read_bytes()[:200])  # the header survives, the frames do not
    with pytest.warns(UserWarning):
        with pytest.raises(ScoreError, match="no file of a whole epoch could be read"):
            train(tiny_config(tiny_ckpt, tmp_path / "corpus", tmp_path / "run", **{"data.subsets": ["train-clean-100"]}))


def test_s3prl_adamw_numerics_are_the_official_ones():
    """One step of optim.optimizer=s3prl-adamw: eps 1e-7 added to the *uncorrected* sqrt(v),
    the bias corrections folded into the step size (torch's AdamW adds eps to sqrt(v_hat))."""
    from types import SimpleNamespace

    from score_s3prl.train import make_optimizer

    o = SimpleNamespace(optimizer="s3prl-adamw", eps=None, lr=1e-2, weight_decay=0.0)
    p = torch.nn.Parameter(torch.tensor([1.0, -2.0], dtype=torch.float64))
    g = torch.tensor([1e-6, 3.0], dtype=torch.float64)  # a tiny gradient makes the eps placement visible
    opt = make_optimizer([p], o)
    p.grad = g.clone()
    opt.step()
    m, v = 0.1 * g, 0.001 * g**2
    expected = torch.tensor([1.0, -2.0], dtype=torch.float64) - 1e-2 * math.sqrt(0.001) / 0.1 * m / (v.sqrt() + 1e-7)
    torch.testing.assert_close(p.detach(), expected, rtol=1e-12, atol=0)
    q = torch.nn.Parameter(torch.tensor([1.0, -2.0], dtype=torch.float64))
    torch_opt = make_optimizer([q], SimpleNamespace(**{**vars(o), "optimizer": "torch-adamw"}))
    q.grad = g.clone()
    torch_opt.step()
    assert not torch.allclose(p.detach()[0], q.detach()[0], rtol=1e-3)  # the two differ for small gradients
