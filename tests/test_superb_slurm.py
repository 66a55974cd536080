"""``run_superb.sh --launcher slurm`` on a real one-node SLURM (tests/slurm_cluster.py), against the local run."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DEMO = ["demo", "--steps", "2", "--finetune-steps", "4"]  # the short demo of tests/test_demo.py
# the demo's units, one value each: ASR, QbE and probe once per upstream (2), PR with 2 seeds each
UNITS = 3 * 2 + 2 * 2


def superb(*args: str) -> list[str]:
    return [str(REPO / "run_superb.sh"), *args]


def env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "SCORE_S3PRL_PYTHON": sys.executable, "PYTHONPATH": str(REPO)}


def run_superb(*args: str, code: int = 0) -> subprocess.CompletedProcess:
    result = subprocess.run(superb(*args), capture_output=True, text=True, timeout=900, env=env())
    assert result.returncode == code, result.stdout[-4000:] + result.stderr[-3000:]
    return result


def rows(out: Path) -> list[dict[str, str]]:
    with open(out / "superb_results.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def values(out: Path) -> dict[tuple[str, ...], str]:
    """(task, metric, split, upstream, seed) -> value (as written: bit-exact comparison)."""
    return {(r["task"], r["metric"], r["split"], r["upstream"], r["seed"]): r["value"] for r in rows(out)}


@pytest.fixture(scope="module")
def local_demo(tmp_path_factory) -> dict[tuple[str, ...], str]:
    out = tmp_path_factory.mktemp("local") / "demo"
    started = time.monotonic()
    run_superb(*DEMO, "--out", str(out))
    print(f"\nlocal short demo: {time.monotonic() - started:.1f} s")
    found = values(out)
    assert len(found) == UNITS
    return found


@pytest.mark.slow
def test_demo_on_slurm_gives_the_local_values(slurm_cluster, local_demo, tmp_path):
    out = tmp_path / "demo"
    started = time.monotonic()
    runner = subprocess.Popen(superb(*DEMO, "--out", str(out), "--launcher", "slurm", "--wait"), env=env(),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen: set[tuple[str, str]] = set()
    while runner.poll() is None:  # the units are SLURM jobs, visible to squeue while they run
        seen |= {tuple(line.split()) for line in slurm_cluster.client("squeue", "-h", "-r", "-o", "%j %T",
                                                                       check=False).splitlines()}
        time.sleep(0.2)
    output = runner.stdout.read()
    runner.stdout.close()
    print(f"\nSLURM short demo: {time.monotonic() - started:.1f} s")
    assert runner.returncode == 0, output[-4000:]
    assert ("superb-demo", "RUNNING") in seen, seen
    assert output.count("submitted as SLURM job") == UNITS
    assert f"{UNITS} done, 0 running, 0 pending, 0 failed" in output
    assert values(out) == local_demo
    nodes = [json.loads(p.read_text()) for p in out.rglob("slurm-node.json")]
    assert len(nodes) == UNITS and {n["device"] for n in nodes} == {"cpu"}  # as each job resolved it on its node


@pytest.mark.slow
def test_a_cancelled_job_is_resubmitted_by_a_rerun_without_duplicate_rows(slurm_cluster, local_demo, tmp_path):
    out = tmp_path / "demo"
    run_superb(*DEMO, "--out", str(out), "--launcher", "slurm")  # submits and returns
    jobs = json.loads((out / "slurm" / "jobs.json").read_text())
    assert len(jobs) == UNITS
    by_job = {record["job"]: key for key, record in jobs.items()}
    deadline = time.monotonic() + 300
    while True:  # the first unit to run is cancelled mid-run
        running = [job for job, state in (line.split() for line in slurm_cluster.client(
            "squeue", "-h", "-r", "-o", "%i %T").splitlines()) if state == "RUNNING" and job in by_job]
        if running:
            break
        assert time.monotonic() < deadline
        time.sleep(0.1)
    victim = running[0]
    slurm_cluster.client("scancel", victim)
    slurm_cluster.wait_idle(timeout=600)

    status = run_superb("status", "--out", str(out)).stdout
    line = next(line for line in status.splitlines() if line.startswith(by_job[victim] + " "))
    assert f"failed  job {victim}  log {jobs[by_job[victim]]['log']}" in line, status
    assert f"{UNITS - 1} done, 0 running, 0 pending, 1 failed" in status

    rerun = run_superb(*DEMO, "--out", str(out), "--launcher", "slurm", "--wait").stdout
    assert rerun.count("submitted as SLURM job") == 1 and f"[{by_job[victim]}] submitted" in rerun, rerun
    assert rerun.count("done before, not submitted") == UNITS - 1
    written = rows(out)
    assert not [key for key, n in Counter((r["run_dir"], r["metric"], r["split"]) for r in written).items() if n > 1]
    assert values(out) == local_demo


def test_status_of_a_folder_without_a_slurm_run_is_one_error_line(tmp_path):
    result = run_superb("status", "--out", str(tmp_path), code=2)
    assert result.stderr == (f"error: {tmp_path}: no SLURM run here (slurm/settings.json not found); "
                             "status is for runs launched with --launcher slurm\n")


def test_slurm_options_file_is_validated_before_anything_runs(tmp_path):
    options = tmp_path / "slurm.yaml"
    options.write_text("partition: gpu\ntime_min: -5\n")
    result = run_superb(*DEMO, "--out", str(tmp_path / "demo"), "--launcher", "slurm", "--slurm-config", str(options),
                        code=2)
    assert result.stderr.count("\n") == 1, result.stderr
    assert f"SLURM options ({options} and overrides): time_min = -5: expected greater than or equal to 1" in result.stderr
    assert not (tmp_path / "demo").exists()


def test_a_superb_unit_is_a_one_node_job(tmp_path):
    result = run_superb(*DEMO, "--out", str(tmp_path / "demo"), "--launcher", "slurm", "--slurm-config",
                        str(write(tmp_path / "slurm.yaml", "nodes: 2\n")), code=2)
    assert result.stderr == ("error: SLURM options: nodes = 2: a SUPERB unit is a one-node job (nodes is for "
                             "score-s3prl finetune --launcher slurm)\n")
    assert not (tmp_path / "demo").exists()


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path
