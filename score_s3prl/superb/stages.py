"""Resumable pipeline stages: a command and/or a Python step, a log file and a done-marker.

A :class:`Stage` is finished when its done-marker ``<folder>/<name>.done.json`` exists and
records the same key: a hash of the stage's settings, its command line and the stamps of the
stages it depends on. The marker is written atomically after the stage's outputs, with a fresh
random stamp, so

- a re-run skips finished stages (:class:`Pipeline` with ``force=False``);
- a stage whose settings changed, or one of whose dependencies ran again (new stamp), runs
  again, even across invocations (a run that died between two stages resumes correctly);
- a stage that died midway has no marker and runs again from scratch (its ``clean`` folder
  is emptied first, so stale files of the failed attempt cannot be mistaken for results),
  unless it can ``resume``: then an attempt marker ``<name>.attempt.json`` holding the key of
  the died attempt lets a re-run with the same key continue where it stopped (``--force`` and
  changed settings still start afresh).

Commands run as subprocesses with their output streamed to ``<folder>/<name>.log``; the
terminal gets the shell-quoted command before it runs and, on a terminal, one progress line.
Each is a :func:`score_s3prl.children.spawn` child: its own process group, SIGTERM when the
runner dies; when the runner stops (Ctrl-C, SIGTERM: :class:`~score_s3prl.children.Terminated`)
the whole group is stopped before the exception goes on, and the child inherits the runner's
``--out`` lock (:func:`score_s3prl.runlock.held_lock_fds`), so a new run cannot start while it lives.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, TextIO

from .. import children
from ..errors import ScoreError
from ..fileio import atomic_write_text
from ..hashing import json_hash
from ..runlock import held_lock_fds
from .results import utc_now

LOG_TAIL_LINES = 15  # lines of a failed command's log shown on the terminal


@dataclass(eq=False)
class Stage:
    """One resumable step.

    Attributes:
        name: shown on the terminal, e.g. ``asr/hubert_base/train``.
        folder: where the marker and log live.
        stem: file stem of the marker (``<stem>.done.json``) and log (``<stem>.log``).
        command: builds the argv when the stage is about to run (or be printed): later stages
            can name outputs of earlier ones.
        action: Python step run after the command (if any); returns the outputs to record.
        describe: what the Python step does, for the terminal and ``--dry-run``.
        settings: anything else that defines the stage (hashed into the key; JSON-able).
        deps: stages whose results this one reads.
        cwd: working directory of the command.
        env: extra environment variables of the command.
        clean: a folder the stage owns; emptied before the stage runs (unless it resumes).
        resume: builds the argv that continues a died attempt of the same key, or returns None
            when that attempt left nothing to continue from (a long training's checkpoints).
        at_run: completes the planned argv just before it runs with what only the outputs of
            earlier stages tell (the checkpoint a training chose). Not part of the key: a
            stage's key depends on its settings, its planned command and its dependencies'
            stamps, never on reading another stage's output files.
        output_rows: a score stage, whose outputs hold result rows (``outputs.rows``) that
            :func:`score_s3prl.superb.results.collect_rows` finds by its marker.
    """

    name: str
    folder: Path
    stem: str
    command: Callable[[], list[str]] | None = None
    action: Callable[[], dict[str, Any]] | None = None
    describe: str = ""
    settings: Any = None
    deps: tuple[Stage, ...] = ()
    cwd: Path | None = None
    env: dict[str, str] = field(default_factory=dict)
    clean: Path | None = None
    resume: Callable[[], list[str] | None] | None = None
    at_run: Callable[[list[str]], list[str]] | None = None
    output_rows: bool = False  # a score stage: its outputs hold result rows (``outputs.rows``)

    @property
    def marker(self) -> Path:
        return self.folder / f"{self.stem}.done.json"

    @property
    def log(self) -> Path:
        return self.folder / f"{self.stem}.log"

    @property
    def attempt(self) -> Path:
        return self.folder / f"{self.stem}.attempt.json"

    def marker_content(self) -> dict[str, Any] | None:
        """The done-marker's content, or None when there is none (or it is unreadable)."""
        try:
            return json.loads(self.marker.read_text(encoding="utf-8"))
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def key(self) -> str:
        deps = [(d.marker_content() or {}).get("stamp") for d in self.deps]
        argv = self.command() if self.command else None
        return json_hash({"settings": self.settings, "command": argv, "deps": deps})

    def done(self) -> bool:
        record = self.marker_content()
        return record is not None and record.get("key") == self.key()

    def output(self, name: str, default: Any = None) -> Any:
        """One recorded output of a finished stage, else ``default``."""
        return ((self.marker_content() or {}).get("outputs") or {}).get(name, default)

    def shell_line(self, argv: list[str] | None = None) -> str:
        """``argv`` (default: the command) as one line a shell would run the same way (cwd and
        env included)."""
        argv = argv if argv is not None else self.command() if self.command else []
        env = " ".join(f"{k}={shlex.quote(v)}" for k, v in sorted(self.env.items()))
        line = " ".join(part for part in (env, shlex.join(argv)) if part)
        return f"cd {shlex.quote(str(self.cwd))} && {line}" if self.cwd else line


class StageError(ScoreError):
    """A stage's command failed; the message names the stage, the error and the log file."""


def _last_error(text: str) -> str:
    """The most telling line of a failed command's output: its ``error:`` line, else the
    exception line of its last traceback, else its last line."""
    lines = [line.strip() for line in re.split(r"[\r\n]+", text) if line.strip()]
    for line in reversed(lines):
        if line.startswith("error:"):
            return line[len("error:"):].strip()
    for line in reversed(lines):
        if re.match(r"^[\w.]+(Error|Exception|Interrupt)\b", line):
            return line
    return lines[-1] if lines else "no output"


def run_command(stage: Stage, terminal: TextIO, argv: list[str] | None = None) -> None:
    """Run ``argv`` (default: ``stage``'s command), streaming its output into ``stage.log``.

    Raises:
        StageError: the command exited with a non-zero status.
    """
    argv = argv if argv is not None else stage.command() if stage.command else []
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **stage.env}
    live = terminal.isatty()
    started = time.monotonic()
    for folder in (stage.log.parent, stage.cwd):
        if folder is not None:
            folder.mkdir(parents=True, exist_ok=True)
    with open(stage.log, "wb") as log:
        log.write(f"$ {stage.shell_line(argv)}\n".encode())
        log.flush()
        process = children.spawn(argv, cwd=stage.cwd, env=env, stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, pass_fds=held_lock_fds())
        assert process.stdout is not None
        last, shown = "", 0.0
        try:
            while chunk := os.read(process.stdout.fileno(), 1 << 16):
                log.write(chunk)
                log.flush()
                if live:
                    parts = [p for p in re.split(r"[\r\n]+", chunk.decode(errors="replace")) if p.strip()]
                    last = parts[-1].strip() if parts else last
                    now = time.monotonic()
                    if now - shown > 0.2:
                        shown = now
                        terminal.write(f"\r\x1b[K[{stage.name}] {now - started:5.0f} s  {last[:90]}")
                        terminal.flush()
            code = process.wait()
            children.end_group(process)  # anything it left running in its group
        except BaseException:
            children.stop(process)  # the whole group, before the run (and its lock) ends
            raise
        finally:
            process.stdout.close()
            if live:
                terminal.write("\r\x1b[K")
    if code != 0:
        text = stage.log.read_text(encoding="utf-8", errors="replace")
        tail = [line for line in re.split(r"[\r\n]+", text) if line.strip()][-LOG_TAIL_LINES:]
        terminal.write("".join(f"    | {line}\n" for line in tail))
        raise StageError(f"stage {stage.name} failed (exit {code}): {_last_error(text)}; "
                         f"full output in {stage.log}")


class Pipeline:
    """Runs stages in order, skipping finished ones.

    Args:
        force: run every stage again (once per invocation).
        dry_run: print what would run, run nothing, write nothing.
        terminal: where commands and progress go.
    """

    def __init__(self, force: bool = False, dry_run: bool = False, terminal: TextIO = sys.stderr) -> None:
        self.force = force
        self.dry_run = dry_run
        self.terminal = terminal
        self._handled: set[Path] = set()  # markers of stages run or skipped in this invocation
        self._would_run: set[Path] = set()  # dry run: stages that would run

    def say(self, text: str) -> None:
        self.terminal.write(text + "\n")
        self.terminal.flush()

    def _pending(self, stage: Stage) -> bool:
        if stage.marker in self._handled:
            return False
        if self.force or any(d.marker in self._would_run for d in stage.deps):
            return True
        return not stage.done()

    def run(self, stage: Stage) -> bool:
        """Run ``stage`` unless it is finished (or already handled in this invocation).

        Returns:
            True when the stage ran now (its outputs are new), False when it was skipped or
            only printed (dry run).
        """
        if not self._pending(stage):
            if stage.marker not in self._handled:
                self.say(f"[{stage.name}] done before, skipped (--force redoes it)")
                self._handled.add(stage.marker)
            return False
        self._handled.add(stage.marker)
        if self.dry_run:
            self._would_run.add(stage.marker)
            # a command stage's Python step only checks the command's outputs: the command says it all
            self.say(f"$ {stage.shell_line()}" if stage.command else f"# [{stage.name}] {stage.describe}")
            return False
        started = time.monotonic()
        key = stage.key()
        argv = self._resumption(stage, key)
        if argv is None and stage.clean is not None and stage.clean.exists():
            shutil.rmtree(stage.clean)
        stage.marker.unlink(missing_ok=True)
        if stage.command:
            if stage.resume:
                atomic_write_text(stage.attempt, json.dumps({"key": key}) + "\n")
            if argv is None:
                argv = stage.command()
                argv = stage.at_run(argv) if stage.at_run else argv
            self.say(f"$ {stage.shell_line(argv)}")
            self.say(f"[{stage.name}] running; output in {stage.log}")
            run_command(stage, self.terminal, argv)
        if stage.action:
            self.say(f"[{stage.name}] {stage.describe}")
            outputs = stage.action()
        else:
            outputs = {}
        # the settings in words beside their hash: what the run was (e.g. PR's lexicon), readable
        record = {"key": stage.key(), "stamp": uuid.uuid4().hex, "finished": utc_now(),
                  "seconds": round(time.monotonic() - started, 1), "outputs": outputs, "settings": stage.settings}
        atomic_write_text(stage.marker, json.dumps(record, indent=2, sort_keys=True) + "\n")
        stage.attempt.unlink(missing_ok=True)
        self.say(f"[{stage.name}] done in {record['seconds']:.1f} s")
        return True

    def _resumption(self, stage: Stage, key: str) -> list[str] | None:
        """The argv continuing a died attempt of ``stage`` that had this same ``key``, if any."""
        if self.force or stage.resume is None:
            return None
        try:
            attempt = json.loads(stage.attempt.read_text(encoding="utf-8"))
        except (FileNotFoundError, json.JSONDecodeError):
            return None
        argv = stage.resume() if attempt.get("key") == key else None
        if argv is not None:
            self.say(f"[{stage.name}] resuming the attempt that stopped (--force starts afresh)")
        return argv
