"""One run per ``--out``: an exclusive ``flock`` on ``<out>/.run.lock`` for the life of the process.

Shared by ``run_superb.sh`` (``score-s3prl superb --out``) and ``score-s3prl finetune --out``:
two runs into one folder would run every stage twice, overwrite each other's logs, append every
results row twice, or replace each other's export. The lock file holds the holder's PID and
command line so that the second run can name it. The kernel drops a ``flock`` when its
process dies, ``kill -9`` included, so a dead run never blocks the next one and there is no
stale-lock cleanup.

The stages' commands inherit the lock's file descriptor (:func:`held_lock_fds`, passed by
:func:`score_s3prl.superb.stages.run_command`): a ``flock`` lasts until every descriptor of it is closed, so the
folder stays locked while a child of a killed runner still lives. With ``PR_SET_PDEATHSIG``
(:mod:`score_s3prl.children`) such a child gets SIGTERM at once; until it has exited, a new run
is refused instead of running beside it. Over NFS between nodes ``flock`` is not reliable: the
SLURM launcher (:mod:`score_s3prl.superb.slurm`) takes this lock only on the submitting host and depends on no
lock across nodes.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shlex
import sys
from pathlib import Path
from typing import Iterator

from .errors import ScoreError

LOCK_NAME = ".run.lock"

__all__ = ["LOCK_NAME", "run_lock", "held_lock_fds"]

_held: set[int] = set()  # descriptors of the run locks this process holds


def held_lock_fds() -> tuple[int, ...]:
    """File descriptors of the run locks this process holds (for a child to inherit)."""
    return tuple(sorted(_held))


def _command_line() -> str:
    # orig_argv has the interpreter and -m: what `ps` shows, what the user can recognise
    return shlex.join(getattr(sys, "orig_argv", sys.argv))


@contextlib.contextmanager
def run_lock(out: Path) -> Iterator[Path]:
    """Hold the run lock of ``out`` (created if need be) until the block ends; yields the lock file.

    Raises:
        ScoreError: another live process holds it; names its PID and command line.
    """
    out.mkdir(parents=True, exist_ok=True)
    path = out / LOCK_NAME
    # not O_TRUNC: until the lock is ours, the file says who holds it
    # mode 0666: the umask decides, as for every file we write; not inherited by the stages' subprocesses
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 4096, 0).decode(errors="replace").strip()
            # the holder writes its line just after locking: it can be empty for a moment
            who = " ".join(holder.split()) or "a process that has not written its PID yet"
            raise ScoreError(f"{out}: another run is using this --out ({who}, or a process it started that "
                             f"is still ending); wait for it to end or pass another --out") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"PID {os.getpid()}: {_command_line()}\n".encode(), 0)
        _held.add(fd)
        yield path
    finally:
        _held.discard(fd)
        os.close(fd)  # releases the lock; the file stays (unlinking a flock file races with its next taker)
