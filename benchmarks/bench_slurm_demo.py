"""The full demo run locally and on a one-node SLURM: wall time of each, and whether the values match.

    sudo python benchmarks/bench_slurm_demo.py          # root, with slurmctld slurmd slurm-client munge

Starts the tests' one-node cluster (tests/slurm_cluster.py) in a temporary folder, runs
``run_superb.sh demo`` (``OMP_NUM_THREADS=1``) locally and then with ``--launcher slurm --wait``,
watches ``squeue`` while the SLURM run goes on, and prints both times, their ratio, the jobs seen
running and each value of the two results CSVs side by side.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from slurm_cluster import OneNodeSlurm  # noqa: E402


def values(out: Path) -> dict[tuple[str, ...], str]:
    with open(out / "superb_results.csv", newline="") as handle:
        return {(r["task"], r["metric"], r["split"], r["upstream"], r["seed"]): r["value"]
                for r in csv.DictReader(handle)}


def main() -> int:
    reason = OneNodeSlurm.unavailable()
    if reason:
        print(f"cannot start a one-node SLURM here: {reason}", file=sys.stderr)
        return 2
    root = Path(tempfile.mkdtemp(prefix="bench-slurm-demo-"))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "SCORE_S3PRL_PYTHON": sys.executable}
    demo = [str(REPO / "run_superb.sh"), "demo"]

    started = time.monotonic()
    local = subprocess.run([*demo, "--out", str(root / "local")], env=env, capture_output=True, text=True)
    local_s = time.monotonic() - started
    print(f"local demo: exit {local.returncode}, {local_s:.1f} s (load {os.getloadavg()[0]:.1f} at the end)")

    cluster = OneNodeSlurm(root / "cluster")
    cluster.start()
    try:
        started = time.monotonic()
        runner = subprocess.Popen([*demo, "--out", str(root / "slurm"), "--launcher", "slurm", "--wait"],
                                  env={**env, "SLURM_CONF": str(cluster.conf)}, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True)
        running: set[str] = set()
        while runner.poll() is None:
            for line in cluster.client("squeue", "-h", "-r", "-o", "%i %T", check=False).splitlines():
                job, state = line.split()
                if state == "RUNNING":
                    running.add(job)
            time.sleep(0.5)
        runner.stdout.read()
        slurm_s = time.monotonic() - started
    finally:
        cluster.stop()
    print(f"SLURM demo: exit {runner.returncode}, {slurm_s:.1f} s (load {os.getloadavg()[0]:.1f} at the end); "
          f"{len(running)} jobs seen RUNNING in squeue")
    print(f"SLURM / local time: {slurm_s / local_s:.2f}")
    if local.returncode or runner.returncode:
        return 1
    here, there = values(root / "local"), values(root / "slurm")
    print(f"values: {len(here)} local, {len(there)} SLURM, identical: {here == there}")
    for key in sorted(here):
        print(f"  {' '.join(key):55s} {here[key]:>22s} {there.get(key, '-'):>22s}")
    return 0 if here == there else 1


if __name__ == "__main__":
    sys.exit(main())
