"""SLURM through submitit: the job options, the executor, and what SLURM says about jobs.

Both launchers build on this: ``run_superb.sh --launcher slurm`` (one job per (task, upstream,
seed) unit, :mod:`score_s3prl.superb.slurm`) and ``score-s3prl finetune --launcher slurm``
(:mod:`score_s3prl.slurm_finetune`). Options come from a YAML file (``--slurm-config``), then
from ``--slurm-*`` flags; both are validated when they load (one error line naming the key).

Job state comes from ``squeue`` (pending, running, and recently ended jobs), never from
``sacct``: accounting is often off on small clusters, and whether a run is finished is known
from its own done-markers, not from SLURM.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field

from .config import NonNegativeInt, PositiveFloat, PositiveInt, parse_yaml, validate, yaml_problem
from .errors import ScoreError

# SLURM's pre-timeout signals (``sbatch --signal``; submitit asks for SIGUSR2): save, then requeue
PRE_TIMEOUT_SIGNALS = (signal.SIGUSR1, signal.SIGUSR2)
SbatchLine = Annotated[str, Field(pattern=r"^(#SBATCH\s+)?--[a-z][a-z0-9-]*(=\S.*)?$")]
ShellLine = Annotated[str, Field(min_length=1)]
ACTIVE = ("PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED",
          "RESIZING", "SIGNALING", "STAGE_OUT", "SUSPENDED", "STOPPED", "PREEMPTED")


@dataclass
class SlurmOptions:
    """What each SLURM job asks for. Every key can be set in the YAML file or as ``--slurm-KEY``."""

    partition: str | None = None  # -p; null: the cluster's default partition
    gpus_per_node: NonNegativeInt = 1  # GPUs per job (per node); 0 for CPU-only jobs
    cpus_per_task: PositiveInt = 8  # CPU cores per job: s3prl's DataLoader workers need them
    mem_gb: PositiveFloat | None = None  # memory per node in GB; null: the partition's default
    time_min: PositiveInt = 240  # wall-clock limit per job; a longer run is requeued (see max_requeues)
    array_parallelism: PositiveInt = 16  # jobs of one array running at once
    nodes: PositiveInt = 1  # nodes per job (fine-tuning only: torchrun across them)
    signal_delay_s: PositiveInt = 120  # SIGUSR2 this long before the time limit: save, then requeue
    max_requeues: NonNegativeInt = 10  # requeues after reaching the time limit (a 20 h run on a 4 h partition: 5)
    sbatch: list[SbatchLine] = field(default_factory=list)  # extra #SBATCH lines: "--account=speech", "--qos=high"
    setup: list[ShellLine] = field(default_factory=list)  # shell lines run before the job: "module load cuda"


OPTION_HELP = {f.name: f.name.replace("_", "-") for f in fields(SlurmOptions)}


def add_arguments(parser: argparse.ArgumentParser, defaults: str = "", hidden: tuple[str, ...] = ()) -> None:
    """``--slurm-config FILE`` and one ``--slurm-KEY`` flag per :class:`SlurmOptions` key
    (``hidden`` keys take no flag: they do not apply to this command)."""
    group = parser.add_argument_group("SLURM (with --launcher slurm)")
    group.add_argument("--slurm-config", type=Path, metavar="YAML",
                       help="SLURM options in a YAML file (keys: " + ", ".join(OPTION_HELP) + ")" + defaults)
    for name, flag in OPTION_HELP.items():
        if name in hidden:
            continue
        if name in ("sbatch", "setup"):
            group.add_argument(f"--slurm-{flag}", action="append", metavar="LINE",
                               help=f"repeatable: {'an extra #SBATCH line, e.g. --account=speech' if name == 'sbatch' else 'a shell line run first in each job'}")
        else:
            group.add_argument(f"--slurm-{flag}", metavar="VALUE")


def options_from(args: argparse.Namespace, defaults: dict[str, Any] | None = None) -> SlurmOptions:
    """The options: ``defaults``, then the YAML file, then the flags (values parsed as YAML).

    Raises:
        ScoreError: one line naming the file or flag, the key and what is expected.
    """
    values: dict[str, Any] = dict(defaults or {})
    path = args.slurm_config
    if path is not None:
        if not path.is_file():
            raise ScoreError(f"{path}: SLURM config file not found")
        try:
            loaded = parse_yaml(path.read_text(encoding="utf-8")) or {}
        except Exception as exc:  # yaml.YAMLError, UnicodeDecodeError
            raise ScoreError(f"{path}: {yaml_problem(exc)}") from None
        if not isinstance(loaded, dict):
            raise ScoreError(f"{path}: expected a mapping of SLURM options, got a {type(loaded).__name__}")
        values.update(loaded)
    for name, flag in OPTION_HELP.items():
        given = getattr(args, f"slurm_{name}", None)
        if given is None:
            continue
        values[name] = list(given) if name in ("sbatch", "setup") else _flag_value(given)
    try:
        return validate(values, where=str(path) if path else None, cls=SlurmOptions)
    except ScoreError as exc:
        raise ScoreError(str(exc).replace("config", "SLURM options", 1)) from None


def _flag_value(text: str) -> Any:
    try:
        return parse_yaml(text)
    except Exception:
        return text


def sbatch_parameters(lines: list[str]) -> dict[str, Any]:
    """``["--account=x", "#SBATCH --exclusive"]`` -> ``{"account": "x", "exclusive": True}``
    (submitit's ``slurm_additional_parameters``)."""
    parameters: dict[str, Any] = {}
    for line in lines:
        key, _, value = re.sub(r"^#SBATCH\s+", "", line).removeprefix("--").partition("=")
        parameters[key.replace("-", "_")] = value if value else True
    return parameters


def require_slurm() -> None:
    """Refuse at once where SLURM's client commands are missing."""
    missing = [name for name in ("sbatch", "squeue", "scancel") if shutil.which(name) is None]
    if missing:
        raise ScoreError(f"--launcher slurm: {', '.join(missing)} not found on PATH (run on a SLURM login node)")


def executor(options: SlurmOptions, folder: Path, name: str, cpus: int | None = None):
    """A submitit executor for jobs with ``options``; logs and job files under ``folder``."""
    import submitit

    require_slurm()
    ex = submitit.AutoExecutor(folder=str(folder), cluster="slurm", slurm_max_num_timeout=options.max_requeues)
    parameters: dict[str, Any] = {
        "name": name, "timeout_min": options.time_min, "nodes": options.nodes, "tasks_per_node": 1,
        "cpus_per_task": cpus or options.cpus_per_task, "slurm_array_parallelism": options.array_parallelism,
        "slurm_signal_delay_s": options.signal_delay_s,
        "slurm_stderr_to_stdout": True,  # one log per job: what status names for a failed unit
    }
    if options.gpus_per_node:
        parameters["gpus_per_node"] = options.gpus_per_node
    if options.partition:
        parameters["slurm_partition"] = options.partition
    if options.mem_gb:
        parameters["mem_gb"] = options.mem_gb
    if options.sbatch:
        parameters["slurm_additional_parameters"] = sbatch_parameters(options.sbatch)
    if options.setup:
        parameters["slurm_setup"] = list(options.setup)
    ex.update_parameters(**parameters)
    return ex


def job_states(job_ids: list[str]) -> dict[str, str]:
    """SLURM's state of each job SLURM still knows (``squeue -r --states=all``, one line per array task: pending, running and
    recently ended jobs); a job it has forgotten is absent."""
    if not job_ids:
        return {}
    done = subprocess.run(["squeue", "-h", "-r", "--states=all", "-o", "%i %T", "-j", ",".join(job_ids)],
                          capture_output=True, text=True, timeout=60, env=os.environ)
    # squeue exits 1 when every id is unknown (ended long ago): nothing to report
    states = {}
    for line in done.stdout.splitlines():
        parts = line.split()
        if len(parts) == 2:
            states[parts[0]] = parts[1]
    return states


def is_active(state: str | None) -> bool:
    """True for a job SLURM will still run or is running."""
    return state is not None and state.split()[0].rstrip("+") in ACTIVE
