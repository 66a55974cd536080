"""``score-s3prl finetune --launcher slurm`` on a real one-node SLURM: pre-empted, requeued, resumed."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from score_s3prl.checkpoints.hubert import read_converted
from score_s3prl.errors import ScoreError
from score_s3prl.train import EXPORT_FILE, STATE_FILE

REPO = Path(__file__).resolve().parents[1]
TINY_CONFIG = REPO / "upstream_configs" / "score_tiny.yaml"
STEPS = ["--steps", "30", "--device", "cpu"]
OVERRIDES = ["save_every=2", "log_every=2"]
SLURM = ["--launcher", "slurm", "--slurm-gpus-per-node", "0", "--slurm-cpus-per-task", "1", "--slurm-time-min", "30"]


def finetune(tiny_ckpt, assets_dir, out, *extra) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    overrides = [arg for arg in extra if "=" in arg and not arg.startswith("-")]  # positionals go last
    flags = [arg for arg in extra if arg not in overrides]
    return subprocess.run([sys.executable, "-m", "score_s3prl.cli", "finetune", "--config", str(TINY_CONFIG),
                           "--init", str(tiny_ckpt), "--data", str(assets_dir), "--out", str(out), *STEPS, *flags,
                           *OVERRIDES, *overrides],
                          env=env, capture_output=True, text=True, timeout=600)


def restarts(cluster, job: str) -> int:
    text = cluster.client("scontrol", "show", "job", job)
    return int(re.search(r"Restarts=(\d+)", text)[1])


@pytest.mark.slow
def test_a_preempted_finetune_job_requeues_and_resumes_bit_identically(slurm_cluster, tiny_ckpt, assets_dir, tmp_path):
    local = finetune(tiny_ckpt, assets_dir, tmp_path / "local")
    assert local.returncode == 0, local.stderr

    out = tmp_path / "on-slurm"
    submitted = finetune(tiny_ckpt, assets_dir, out, *SLURM)
    assert submitted.returncode == 0, submitted.stderr
    job = re.search(r"submitted SLURM job (\d+)", submitted.stderr)[1]
    assert (out / "slurm" / "finetune.yaml").is_file()

    deadline = time.monotonic() + 300
    while not (out / STATE_FILE).exists():  # saving every 2 updates: the trainer is in its loop
        assert time.monotonic() < deadline and job in slurm_cluster.jobs(), list((out / "slurm").iterdir())
        time.sleep(0.1)
    # what SLURM sends signal_delay_s before the time limit (submitit's --signal=USR2@...)
    slurm_cluster.client("scancel", "--signal=USR2", job)
    slurm_cluster.start_requeued_now(job)
    slurm_cluster.wait_idle(timeout=300)

    log = next((out / "slurm").glob(f"{job}_0_log.out")).read_text(errors="replace")
    assert restarts(slurm_cluster, job) == 1, log
    stopped = re.search(r"stopped by signal \d+ at update (\d+)", log)
    assert stopped and 0 < int(stopped[1]) < 30, log
    assert f"resuming {out} at update {stopped[1]}" in log, log
    a = read_converted(tmp_path / "local" / EXPORT_FILE)["model_weight"]
    b = read_converted(out / EXPORT_FILE)["model_weight"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_slurm_options_are_checked_before_submitting(tiny_ckpt, assets_dir, tmp_path):
    bad = tmp_path / "slurm.yaml"
    bad.write_text("gpus_per_node: two\n")
    result = finetune(tiny_ckpt, assets_dir, tmp_path / "out", "--launcher", "slurm", "--slurm-config", str(bad))
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert f"SLURM options ({bad} and overrides): gpus_per_node = 'two': expected a valid integer" in result.stderr
    result = finetune(tiny_ckpt, assets_dir, tmp_path / "out", "--launcher", "slurm", "--slurm-gpus-per-node", "3",
                      "optim.utterances_per_update=4")
    assert result.returncode == 2 and "cannot be split evenly over 3 processes" in result.stderr, result.stderr
    assert not (tmp_path / "out").exists()


def test_sbatch_lines():
    from score_s3prl.slurm import sbatch_parameters

    assert sbatch_parameters(["--account=speech", "#SBATCH --exclusive", "--qos=high"]) == {
        "account": "speech", "exclusive": True, "qos": "high"}
    from score_s3prl.config import validate
    from score_s3prl.slurm import SlurmOptions

    with pytest.raises(ScoreError, match=r"sbatch\[0\] = 'account=x'"):
        validate({"sbatch": ["account=x"]}, cls=SlurmOptions)
