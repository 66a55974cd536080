"""A real one-node SLURM cluster for the tests (no mock): munged, slurmctld and slurmd on this host.

Debian's packages ``slurmctld``, ``slurmd``, ``slurm-client`` and ``munge`` (``.ci/run`` installs
them) run a one-node cluster as root. Everything lives in one temporary folder, so the cluster
touches nothing of the machine's own set-up and several can run side by side: its own munge key
and socket (``AuthInfo=socket=...``), state, spool, pid and log files, and two free TCP ports.
``ProctrackType=proctrack/linuxproc`` and ``TaskPlugin=task/none`` need no cgroups;
accounting is off (``sacct`` has nothing to say; the launcher under test does not need it).

The session fixture :func:`slurm_cluster` starts it once, sets ``$SLURM_CONF`` for the
session (every ``sbatch``/``squeue``/``scancel``, submitit's included, reads it), and stops it
at the end; it skips, with the reason, where it cannot start (not root, packages missing).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Iterator

import pytest

DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "squeue", "scancel", "scontrol", "sinfo")
PACKAGES = "slurmctld slurmd slurm-client munge"
UP_TIMEOUT_S = 30.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _memory_mb() -> int:
    with open("/proc/meminfo", encoding="ascii") as handle:
        total_kb = next(int(line.split()[1]) for line in handle if line.startswith("MemTotal:"))
    return max(total_kb // 1024 - 256, 256)  # a little under the total, as slurmd measures it


def _which(name: str) -> str | None:
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")


class OneNodeSlurm:
    """A one-node SLURM cluster under ``root``; :meth:`start`, then :meth:`stop`."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.host = socket.gethostname().split(".")[0]  # `hostname -s`: slurmd's node name
        self.conf = root / "slurm.conf"
        self.munge_socket = root / "munge" / "munge.socket"
        self.startup_seconds: float | None = None
        self.partition = "debug"

    @staticmethod
    def unavailable() -> str | None:
        """Why a cluster cannot start here, or None."""
        if os.geteuid() != 0:
            return "a one-node SLURM needs root (munged and slurmd run as root)"
        missing = [name for name in (*DAEMONS, *CLIENTS) if _which(name) is None]
        if missing:
            return f"SLURM not installed ({', '.join(missing)} missing): apt-get install -y {PACKAGES}"
        return None

    @property
    def env(self) -> dict[str, str]:
        """The environment a SLURM client command needs to reach this cluster."""
        return {**os.environ, "SLURM_CONF": str(self.conf)}

    def _write_config(self) -> None:
        r = self.root
        for folder in ("state", "spool", "log"):
            (r / folder).mkdir(parents=True, exist_ok=True)
        self.conf.write_text("\n".join([
            "ClusterName=scoretest",
            f"SlurmctldHost={self.host}(127.0.0.1)",
            f"SlurmctldPort={_free_port()}",
            f"SlurmdPort={_free_port()}",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            f"AuthInfo=socket={self.munge_socket}",
            "SlurmUser=root",
            "SlurmdUser=root",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_CPU",
            "SchedulerType=sched/backfill",
            "MpiDefault=none",
            "ReturnToService=2",
            "AccountingStorageType=accounting_storage/none",
            "JobAcctGatherType=jobacct_gather/none",
            "JobCompType=jobcomp/none",
            f"StateSaveLocation={r / 'state'}",
            f"SlurmdSpoolDir={r / 'spool'}",
            f"SlurmctldPidFile={r / 'slurmctld.pid'}",
            f"SlurmdPidFile={r / 'slurmd.pid'}",
            f"SlurmctldLogFile={r / 'log' / 'slurmctld.log'}",
            f"SlurmdLogFile={r / 'log' / 'slurmd.log'}",
            "SchedulerParameters=sched_interval=1",  # the tests wait on the scheduler: tick fast
            "InactiveLimit=0",
            "KillWait=5",  # seconds between SIGTERM and SIGKILL at a job's end or scancel
            "MinJobAge=600",  # finished jobs stay visible to squeue/scontrol for the session
            f"NodeName={self.host} NodeAddr=127.0.0.1 CPUs={os.cpu_count() or 1} "
            f"RealMemory={_memory_mb()} State=UNKNOWN",
            f"PartitionName={self.partition} Nodes={self.host} Default=YES MaxTime=INFINITE State=UP",
        ]) + "\n")  # fmt: skip

    def _start_munge(self) -> None:
        folder = self.munge_socket.parent
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        key = self.root / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o600)
        # --force: munged refuses a socket folder under the world-writable /tmp otherwise
        subprocess.run(["munged", "--force", f"--socket={self.munge_socket}", f"--key-file={key}",
                        f"--pid-file={folder / 'munged.pid'}", f"--log-file={folder / 'munged.log'}",
                        f"--seed-file={folder / 'munged.seed'}"], check=True, capture_output=True)

    def start(self) -> None:
        """Start munged, slurmctld and slurmd; return when the node is idle.

        Raises:
            RuntimeError: the node is not idle within UP_TIMEOUT_S (the message has the logs' tails).
        """
        started = time.monotonic()
        self.root.mkdir(parents=True, exist_ok=True)
        self._write_config()
        self._start_munge()
        env = self.env
        subprocess.run([_which("slurmctld"), "-f", str(self.conf)], check=True, env=env, capture_output=True)
        subprocess.run([_which("slurmd"), "-f", str(self.conf), "-N", self.host], check=True, env=env,
                       capture_output=True)
        state = ""
        while time.monotonic() - started < UP_TIMEOUT_S:
            state = self.client("sinfo", "-h", "-n", self.host, "-o", "%T", check=False).strip()
            if state == "idle":
                self.startup_seconds = time.monotonic() - started
                return
            time.sleep(0.1)
        tails = "\n".join(f"--- {log.name}\n" + "\n".join(log.read_text(errors="replace").splitlines()[-10:])
                          for log in sorted((self.root / "log").glob("*.log")))
        self.stop()
        raise RuntimeError(f"one-node SLURM: node state {state!r} after {UP_TIMEOUT_S:.0f} s\n{tails}")

    def client(self, *argv: str, check: bool = True) -> str:
        """Run a SLURM client command against this cluster; its stdout."""
        done = subprocess.run(list(argv), env=self.env, capture_output=True, text=True, timeout=60)
        if check and done.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)}: exit {done.returncode}: {done.stderr.strip()}")
        return done.stdout

    def jobs(self) -> list[str]:
        """Ids of the jobs SLURM still runs or holds (pending, running, completing)."""
        out = self.client("squeue", "-h", "-o", "%i", check=False)
        return out.split()

    def start_requeued_now(self, job: str, timeout: float = 60.0) -> None:
        """Wait until ``job`` is back in the queue after a requeue, then let it start at once.

        SLURM holds a requeued batch job for 120 s (its BeginTime); the tests need not wait.
        """
        deadline = time.monotonic() + timeout
        while self.client("squeue", "-h", "-j", job, "-o", "%T %r", check=False).split() != ["PENDING", "BeginTime"]:
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job} was not requeued within {timeout:.0f} s")
            time.sleep(0.1)
        self.client("scontrol", "update", f"JobId={job}", "StartTime=now")

    def wait_idle(self, timeout: float = 60.0) -> None:
        """Wait until no job is pending or running."""
        deadline = time.monotonic() + timeout
        while self.jobs():
            if time.monotonic() > deadline:
                raise TimeoutError(f"jobs still queued after {timeout:.0f} s: {self.jobs()}")
            time.sleep(0.2)

    def stop(self) -> None:
        """Cancel every job, then stop slurmd, slurmctld and munged (by their pid files)."""
        if self.jobs():
            self.client("scancel", "--user", "root", check=False)
            try:
                self.wait_idle(30.0)
            except TimeoutError:
                pass
        for pid_file in ("slurmd.pid", "slurmctld.pid", "munge/munged.pid"):
            path = self.root / pid_file
            try:
                pid = int(path.read_text().strip())
            except (FileNotFoundError, ValueError):
                continue
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                continue
            for _ in range(100):  # up to 10 s for it to exit
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.1)


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OneNodeSlurm]:
    """A running one-node SLURM; ``$SLURM_CONF`` points at it for the session."""
    reason = OneNodeSlurm.unavailable()
    if reason:
        pytest.skip(reason)
    cluster = OneNodeSlurm(tmp_path_factory.mktemp("slurm"))
    cluster.start()
    previous = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = str(cluster.conf)
    print(f"\none-node SLURM up in {cluster.startup_seconds:.2f} s ({cluster.root})")
    try:
        yield cluster
    finally:
        cluster.stop()
        if previous is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = previous
