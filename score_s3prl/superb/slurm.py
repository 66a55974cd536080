"""``run_superb.sh TASK --launcher slurm``: every :class:`~.plan.Unit` one SLURM job, via submitit.

The submitting host (a login node) holds the ``--out`` lock while it

1. runs the shared preparation (:meth:`.plan.Planner.shared_stages`; the demo's data and models)
   with the local :class:`~.stages.Pipeline`;
2. writes the run's :class:`~.settings.Settings` to ``<out>/slurm/settings.json`` (what
   ``run_superb.sh status`` reads back; JSON, validated on load: no pickle from a shared folder);
3. submits each unit that is neither done nor pending/running as one task of a submitit job array
   (``array_parallelism`` at once); ``<out>/slurm/jobs.json`` maps each unit to its job and log;
4. with ``--wait``, polls until every unit has ended, then assembles the results CSV.

Each job (:class:`UnitJob`) records its node, job and device in ``<run_dir>/slurm-node.json``
and runs its unit's stages with the same resumable pipeline as a local run (``--device auto``
stays ``auto`` in the stages' commands and keys: each process resolves it on its node,
:mod:`score_s3prl.runtime`): a unit's score stage writes its rows into its own run folder, and
:func:`.results.assemble` merges them (``score-s3prl results OUT`` does the same), so nothing
depends on a lock across nodes. At SLURM's pre-timeout signal the job requeues itself
(submitit's checkpoint); the requeued job skips finished stages and resumes a training from
s3prl's last ``states-*.ckpt``.

A unit is *done* when each of its stages' done-markers holds its current key;
*pending*/*running* come from ``squeue`` (:func:`unit_states`); a unit whose job SLURM no longer
runs and that is not done is *failed*, with its job's log.
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, TextIO

import submitit
from pydantic import TypeAdapter, ValidationError

from .. import children
from ..errors import ScoreError
from ..fileio import atomic_write_text
from ..runtime import resolve_device
from ..slurm import PRE_TIMEOUT_SIGNALS, SlurmOptions, executor, is_active, job_states
from .plan import Planner, Unit
from .results import utc_now
from .settings import Settings
from .stages import Pipeline, _last_error

LAUNCH_DIR = "slurm"  # <out>/slurm: settings.json, jobs.json, submitit's job files and logs
SETTINGS_FILE = "settings.json"
JOBS_FILE = "jobs.json"
NODE_FILE = "slurm-node.json"  # in a unit's run folder: where its job ran and on which device
POLL_S = 2.0


class UnitJob(submitit.helpers.Checkpointable):
    """A SLURM job's function: run one unit's stages on the node (resumable, requeued on time-out)."""

    def __init__(self, settings: Settings, key: str, force: bool = False) -> None:
        self.settings, self.key, self.force = settings, key, force

    def __call__(self) -> str:
        # SLURM's pre-timeout SIGUSR2 is for this process (submitit requeues); the stage's
        # child would die of it, so children ignore it and are stopped as a group instead
        children.ignore_in_children(*PRE_TIMEOUT_SIGNALS)
        unit = unit_by_key(Planner(self.settings), self.key)
        node = {"device": resolve_device(self.settings.device), "host": socket.gethostname(),
                "job": os.environ.get("SLURM_JOB_ID", ""), "started": utc_now()}
        atomic_write_text(unit.run_dir / NODE_FILE, json.dumps(node, indent=2) + "\n")
        pipeline = Pipeline(force=self.force, terminal=sys.stdout)
        for stage in unit.stages:
            pipeline.run(stage)
        return self.key

    def checkpoint(self, *args, **kwargs) -> submitit.helpers.DelayedSubmission:
        """Requeue: the same unit, resumed (finished stages skipped, not forced again)."""
        return submitit.helpers.DelayedSubmission(UnitJob(self.settings, self.key))


def unit_by_key(planner: Planner, key: str) -> Unit:
    for unit in planner.units():
        if unit.key == key:
            return unit
    raise ScoreError(f"no unit {key!r} in this run's plan (the run's settings changed since submission?)")


# ----------------------------------------------------------------------------- state on disk


def launch_dir(out: Path) -> Path:
    return out / LAUNCH_DIR


def save_settings(settings: Settings) -> None:
    path = launch_dir(settings.out) / SETTINGS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(dataclasses.asdict(settings), indent=2, default=str) + "\n")


def load_settings(out: Path) -> Settings:
    """The settings a ``--launcher slurm`` run saved in ``out``.

    Raises:
        ScoreError: there is none, or it is not a valid settings file (one line naming it).
    """
    path = launch_dir(out) / SETTINGS_FILE
    if not path.is_file():
        raise ScoreError(f"{out}: no SLURM run here ({path.relative_to(out)} not found); "
                         f"status is for runs launched with --launcher slurm")
    try:
        return TypeAdapter(Settings).validate_json(path.read_bytes())
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ScoreError(f"{path}: not a settings file of this program ({where}: {first['msg']})") from None


def read_jobs(out: Path) -> dict[str, dict[str, str]]:
    """unit key -> {"job", "log", "submitted"} of the units' latest submissions."""
    path = launch_dir(out) / JOBS_FILE
    try:
        jobs = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ScoreError(f"{path}: unreadable ({exc}); move it away to resubmit every unfinished unit") from None
    if not isinstance(jobs, dict) or not all(isinstance(v, dict) for v in jobs.values()):
        raise ScoreError(f"{path}: expected a mapping of unit -> job record")
    return jobs


def write_jobs(out: Path, jobs: dict[str, dict[str, str]]) -> None:
    atomic_write_text(launch_dir(out) / JOBS_FILE, json.dumps(jobs, indent=2, sort_keys=True) + "\n")


# ----------------------------------------------------------------------------- unit states


@dataclass
class UnitState:
    """Where one unit stands."""

    key: str
    state: str  # done | pending | running | failed | not submitted
    job: str = ""
    log: str = ""
    detail: str = ""  # a failed unit: the last error line of its log


def unit_states(units: list[Unit], jobs: dict[str, dict[str, str]]) -> list[UnitState]:
    """Each unit's state: squeue for pending and running, its stages' done-markers for done."""
    squeue = job_states([jobs[u.key]["job"] for u in units if u.key in jobs])
    found = []
    for unit in units:
        record = jobs.get(unit.key, {})
        job, log = record.get("job", ""), record.get("log", "")
        slurm_state = squeue.get(job)
        if is_active(slurm_state):
            state = "pending" if slurm_state.startswith(("PENDING", "REQUEUE")) else "running"
            found.append(UnitState(unit.key, state, job, log))
        elif all(stage.done() for stage in unit.stages):
            found.append(UnitState(unit.key, "done", job, log))
        elif job:
            found.append(UnitState(unit.key, "failed", job, log, failure(log, slurm_state)))
        else:
            found.append(UnitState(unit.key, "not submitted"))
    return found


def failure(log: str, slurm_state: str | None) -> str:
    """Why a job ended without finishing its unit: its log's error line, and SLURM's state."""
    try:
        text = Path(log).read_text(encoding="utf-8", errors="replace")
    except OSError:
        text = ""
    why = _last_error(text) if text.strip() else "no log"
    return f"{slurm_state.lower()}: {why}" if slurm_state else why


def format_states(states: list[UnitState]) -> str:
    width = max((len(s.key) for s in states), default=0)
    lines = []
    for s in states:
        line = f"{s.key:<{width}}  {s.state}"
        if s.job:
            line += f"  job {s.job}"
        if s.state == "failed":
            line += f"  log {s.log}" + (f"  ({s.detail})" if s.detail else "")
        lines.append(line)
    counts = {name: sum(s.state == name for s in states) for name in ("done", "running", "pending", "failed")}
    lines.append(", ".join(f"{n} {name}" for name, n in counts.items()))
    return "\n".join(lines)


def wait(units: list[Unit], out: Path, say: Callable[[str], None]) -> list[UnitState]:
    """Poll until no unit is pending or running; report each change of state."""
    seen: dict[str, str] = {}
    while True:
        states = unit_states(units, read_jobs(out))
        for s in states:
            if seen.get(s.key) != s.state:
                seen[s.key] = s.state
                say(f"[{s.key}] {s.state}" + (f" (job {s.job})" if s.job else "") +
                    (f": {s.detail}; log {s.log}" if s.state == "failed" else ""))
        if not any(s.state in ("pending", "running") for s in states):
            return states
        time.sleep(POLL_S)


# ----------------------------------------------------------------------------- submission


def submit(planner: Planner, options: SlurmOptions, pipeline: Pipeline, force: bool = False) -> None:
    """Run the shared preparation here, then submit each unit of ``planner``'s run not done nor
    queued (all of them, but the queued, with ``force``)."""
    settings = planner.settings
    for stage in planner.shared_stages():
        pipeline.run(stage)
    if not pipeline.dry_run:
        save_settings(settings)
    jobs = read_jobs(settings.out)
    units = planner.units()
    chosen = []
    for state, unit in zip(unit_states(units, jobs), units):
        if state.state in ("pending", "running"):
            pipeline.say(f"[{unit.key}] already {state.state} as SLURM job {state.job}")
        elif state.state == "done" and not force:
            pipeline.say(f"[{unit.key}] done before, not submitted (--force redoes it)")
        else:
            chosen.append(unit)
    if pipeline.dry_run:
        for unit in chosen:
            pipeline.say(f"# [{unit.key}] would be submitted: {', '.join(s.name for s in unit.stages)}")
        return
    if chosen:
        ex = executor(options, launch_dir(settings.out) / "jobs", name=f"superb-{settings.out.name}")
        with ex.batch():
            submitted = [(unit, ex.submit(UnitJob(settings, unit.key, force))) for unit in chosen]
        now = utc_now()
        for unit, job in submitted:
            jobs[unit.key] = {"job": str(job.job_id), "log": str(job.paths.stdout), "submitted": now}
            pipeline.say(f"[{unit.key}] submitted as SLURM job {job.job_id}; log {job.paths.stdout}")
        write_jobs(settings.out, jobs)


def active_jobs(out: Path) -> list[str]:
    """Job ids of ``out``'s SLURM units that SLURM still runs or holds (none without a SLURM run)."""
    if not (launch_dir(out) / JOBS_FILE).is_file():
        return []
    ids = [record.get("job", "") for record in read_jobs(out).values()]
    try:
        states = job_states([i for i in ids if i])
    except (OSError, subprocess.SubprocessError):  # squeue missing or hanging: not a SLURM host
        return []
    return sorted(job for job, state in states.items() if is_active(state))


def report(states: list[UnitState], terminal: TextIO) -> None:
    terminal.write(format_states(states) + "\n")
    terminal.flush()
