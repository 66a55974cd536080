"""The one-node SLURM of the tests works as a cluster: dependencies, arrays, scancel."""

from __future__ import annotations

import time

import pytest


@pytest.mark.slow
def test_one_node_cluster_runs_dependent_jobs(slurm_cluster, tmp_path):
    first = slurm_cluster.client("sbatch", "--parsable", "-o", str(tmp_path / "a.out"), "--wrap",
                                 "echo first").strip()
    second = slurm_cluster.client("sbatch", "--parsable", f"--dependency=afterok:{first}", "-o",
                                  str(tmp_path / "b.out"), "--wrap", "echo second").strip()
    assert second in slurm_cluster.jobs()
    slurm_cluster.wait_idle(60)
    assert (tmp_path / "a.out").read_text().strip() == "first"
    assert (tmp_path / "b.out").read_text().strip() == "second"


@pytest.mark.slow
def test_scancel_stops_a_running_job(slurm_cluster, tmp_path):
    marker = tmp_path / "late"
    job = slurm_cluster.client("sbatch", "--parsable", "-o", "/dev/null", "--wrap",
                               f"sleep 30; touch {marker}").strip()
    deadline = time.monotonic() + 30
    while slurm_cluster.client("squeue", "-h", "-j", job, "-o", "%T").strip() != "RUNNING":
        assert time.monotonic() < deadline
        time.sleep(0.2)
    slurm_cluster.client("scancel", job)
    slurm_cluster.wait_idle(30)
    assert not marker.exists()
