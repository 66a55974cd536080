"""Children cannot outlive their runner: process groups, PDEATHSIG, SIGTERM to run_superb.sh."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from score_s3prl import children
from score_s3prl.errors import ScoreError
from score_s3prl.runlock import run_lock

REPO = Path(__file__).resolve().parents[1]


def alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
            return handle.read().rpartition(")")[2].split()[0] != "Z"
    except FileNotFoundError:
        return False


def live_processes() -> dict[int, tuple[int, int]]:
    """pid -> (parent pid, process group) of every process that is not a zombie."""
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rpartition(")")[2].split()
            except (FileNotFoundError, ProcessLookupError):
                continue
            if fields[0] != "Z":
                found[int(entry.name)] = (int(fields[1]), int(fields[2]))
    return found


def group_members(pgid: int) -> list[int]:
    """Live processes of process group ``pgid``."""
    return [pid for pid, (_, group) in live_processes().items() if group == pgid]


def descendants(pid: int) -> list[tuple[int, str]]:
    """(pid, command line) of every live descendant of ``pid``."""
    parents = {child: parent for child, (parent, _) in live_processes().items()}
    found, frontier = [], {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier}
        for child in frontier:
            try:
                found.append((child, (Path("/proc") / str(child) / "cmdline").read_bytes().replace(b"\0", b" ").decode()))
            except FileNotFoundError:
                pass
    return found


def wait_until(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {what}"
        time.sleep(0.05)


def test_stop_ends_the_whole_group():
    process = children.spawn(["sh", "-c", "sleep 60 & sleep 60 & wait"])
    wait_until(lambda: len(group_members(process.pid)) == 3, 10, "the shell and its two sleeps")
    assert os.getpgid(process.pid) == process.pid != os.getpgid(0)  # its own group, not ours
    children.stop(process, grace=5)
    assert group_members(process.pid) == []


def test_stop_kills_a_child_that_ignores_sigterm():
    process = children.spawn([sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, "
                              "signal.SIG_IGN); print('ready', flush=True); time.sleep(60)"], stdout=subprocess.PIPE)
    assert process.stdout.readline() == b"ready\n"
    started = time.monotonic()
    assert children.stop(process, grace=0.5) == -signal.SIGKILL
    assert time.monotonic() - started < 5 and group_members(process.pid) == []
    process.stdout.close()


MIDDLE = """
import sys, time
from score_s3prl import children
child = children.spawn(["sleep", "60"])
print(child.pid, flush=True)
time.sleep(60)
"""


def test_a_child_dies_with_its_killed_parent():
    middle = subprocess.Popen([sys.executable, "-c", MIDDLE], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(REPO)})
    child = int(middle.stdout.readline())
    assert alive(child)
    middle.kill()  # SIGKILL: the parent runs no clean-up
    middle.wait()
    middle.stdout.close()
    wait_until(lambda: not alive(child), 10, "the orphan to get SIGTERM from PR_SET_PDEATHSIG")


def test_signals_as_exceptions():
    with pytest.raises(children.Terminated) as stopped, children.signals_as_exceptions():
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # interrupted by the handler
    assert stopped.value.signum == signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # restored


def start_demo(out: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "SCORE_S3PRL_PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([str(REPO / "run_superb.sh"), "demo", "--out", str(out)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def running_finetune(runner: subprocess.Popen) -> int:
    """The pid of the demo's fine-tuning child, once it runs."""
    found: list[int] = []

    def started() -> bool:
        assert runner.poll() is None, runner.communicate()
        found[:] = [pid for pid, line in descendants(runner.pid) if " finetune " in line]
        return bool(found)

    wait_until(started, 240, "the demo's finetune stage")
    return found[0]


@pytest.mark.slow
def test_sigterm_to_the_local_runner_leaves_no_child(tmp_path):
    out = tmp_path / "demo"
    runner = start_demo(out)
    child = running_finetune(runner)
    time.sleep(1.0)  # inside its loop, not just starting
    runner.send_signal(signal.SIGTERM)
    _, err = runner.communicate(timeout=120)
    assert runner.returncode == 128 + signal.SIGTERM, err
    assert "stopped by SIGTERM" in err
    # by the time the runner has exited, its child and the child's whole group are gone
    assert not alive(child) and group_members(child) == []
    assert descendants(runner.pid) == []
    with run_lock(out):  # released
        pass


@pytest.mark.slow
def test_a_killed_runner_leaves_no_orphan_writing(tmp_path):
    out = tmp_path / "demo"
    runner = start_demo(out)
    child = running_finetune(runner)
    runner.kill()  # kill -9: no clean-up in the runner
    runner.communicate()
    # until the orphan has exited, the --out lock it inherited refuses a new run
    while alive(child):
        try:
            with run_lock(out):
                assert not alive(child), "a new run got the lock while the old run's child lived"
        except ScoreError as refused:
            assert "another run is using this --out" in str(refused)
        time.sleep(0.05)
    assert group_members(child) == []
    with run_lock(out):
        pass
