"""Child processes that cannot outlive the run that started them.

Every command a run starts (an s3prl training, a fine-tuning, a ``torchrun``) is a child
:func:`spawn` makes:

- in its **own process group** (the child is the group's leader): :func:`stop` signals the
  child and everything it started (DataLoader workers, torchrun's workers) at once, and a
  terminal's Ctrl-C reaches only the runner, which then stops the group itself, in order;
- with ``PR_SET_PDEATHSIG`` = SIGTERM: when the runner dies without a chance to clean up
  (``kill -9``, an out-of-memory kill), the kernel sends the child SIGTERM, so no orphan goes on
  writing into the run folder (Linux only; elsewhere the child has no such guard).

:func:`signals_as_exceptions` turns SIGTERM and SIGHUP into :class:`Terminated` in the runner,
as SIGINT is KeyboardInterrupt, so the same ``except BaseException`` path stops the children
before the runner exits and before its run lock is released.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import time
from typing import Any, Iterator

PR_SET_PDEATHSIG = 1  # <sys/prctl.h>
STOP_GRACE_S = 30.0  # SIGTERM -> SIGKILL: time for a trainer to reach an update boundary and save
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

__all__ = ["Terminated", "spawn", "stop", "end_group", "ignore_in_children", "signals_as_exceptions", "STOP_GRACE_S"]


class Terminated(BaseException):
    """The runner received SIGTERM or SIGHUP (a BaseException, as KeyboardInterrupt for SIGINT:
    no ``except Exception`` swallows it)."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"stopped by signal {signal.Signals(signum).name}")
        self.signum = signum


def _die_with_parent(parent: int) -> None:
    """preexec_fn: in the child, between fork and exec. SIGTERM when the parent dies."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(143)


def spawn(argv: list[str], **popen: Any) -> subprocess.Popen:
    """``subprocess.Popen(argv, **popen)`` in a new process group that dies with this process,
    ignoring the signals :func:`ignore_in_children` named (an ignored signal stays ignored
    across exec until the program installs a handler)."""
    me = os.getpid()
    ignored = tuple(_ignored)

    def preexec() -> None:
        _die_with_parent(me)
        for sig in ignored:
            signal.signal(sig, signal.SIG_IGN)

    return subprocess.Popen(argv, process_group=0, preexec_fn=preexec, **popen)


_ignored: set[int] = set()  # signals every later child starts with ignored


def ignore_in_children(*signals: int) -> None:
    """Every child :func:`spawn` starts from now on ignores ``signals`` (until it installs its
    own handler): a SLURM job's pre-timeout signal is for the job's own process, not its children."""
    _ignored.update(signals)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stop(process: subprocess.Popen, grace: float = STOP_GRACE_S) -> int | None:
    """Stop ``process`` and its whole process group: SIGTERM, then SIGKILL after ``grace`` s.

    Signals to this process are held back while it waits (a second Ctrl-C cannot leave the
    group running). Returns the child's exit status.
    """
    pgid = process.pid  # spawn made the child its group's leader
    held = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            if _reaped(process) and not _group_alive(pgid):
                break
            time.sleep(0.05)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
        while not _reaped(process) or _group_alive(pgid):  # the killed members are being reaped
            time.sleep(0.01)
        return process.returncode
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, held)


def _reaped(process: subprocess.Popen) -> bool:
    """Reap ``process`` if it has exited, without Popen's wait lock: stop() may run in a signal
    handler that interrupted a ``process.wait()`` holding that lock."""
    if process.returncode is not None:
        return True
    try:
        pid, status = os.waitpid(process.pid, os.WNOHANG)
    except ChildProcessError:  # reaped by someone else
        return True
    if pid == 0:
        return False
    process.returncode = os.waitstatus_to_exitcode(status)
    return True


def end_group(process: subprocess.Popen) -> None:
    """After ``process`` exited by itself: stop what it left behind in its group, if anything."""
    if _group_alive(process.pid):
        stop(process, grace=5.0)


@contextlib.contextmanager
def signals_as_exceptions() -> Iterator[None]:
    """Within the block, SIGTERM and SIGHUP raise :class:`Terminated` in the main thread."""

    def handle(signum: int, frame: object) -> None:
        raise Terminated(signum)

    previous = {sig: signal.signal(sig, handle) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
