"""``score-s3prl finetune --launcher slurm``: the fine-tuning as one SLURM job that survives time limits.

The config is resolved and checked on the submitting host (a bad key fails there, not in the
queue), written to ``<out>/slurm/finetune.yaml`` with absolute paths, and the job runs
``score-s3prl finetune --config`` that file on the node:

- one process, or ``torch.distributed.run`` (torchrun) with ``gpus_per_node`` processes per node,
  across ``nodes`` nodes (rendezvous on the job's first node);
- SLURM sends SIGUSR2 ``signal_delay_s`` before the time limit (submitit's ``--signal``); the
  trainer saves its state at the next update boundary (:class:`score_s3prl.train.StopRequest`),
  :meth:`FinetuneJob.checkpoint` waits for it to exit and submitit requeues the job, which
  resumes from ``train_state.pt``, bit for bit as an uninterrupted run, up to ``max_requeues`` times.

The trainer runs as a :func:`score_s3prl.children.spawn` child that ignores SIGUSR1/SIGUSR2 until
it installs its own handlers: torchrun, which has none, is not killed by SLURM's signal.
"""

from __future__ import annotations

import sys
from pathlib import Path

import submitit
import yaml

from . import children
from .config import TrainConfig, config_dict
from .errors import ScoreError
from .fileio import atomic_write_text
from .slurm import PRE_TIMEOUT_SIGNALS, SlurmOptions, executor

CONFIG_NAME = "finetune.yaml"
RENDEZVOUS_PORT = 29500
class FinetuneJob(submitit.helpers.Checkpointable):
    """The job's function: run the trainer on ``config``; requeued by SLURM's pre-timeout signal."""

    def __init__(self, config: str, processes_per_node: int, grace_s: float) -> None:
        self.config = config
        self.processes_per_node = processes_per_node
        self.grace_s = grace_s
        self._process = None

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "_process"}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, _process=None)

    def command(self) -> list[str]:
        """The trainer's command line on this node."""
        finetune = ["-m", "score_s3prl.cli", "finetune", "--config", self.config]
        env = submitit.JobEnvironment()
        if env.num_nodes == 1 and self.processes_per_node == 1:
            return [sys.executable, *finetune]
        rendezvous = (["--standalone"] if env.num_nodes == 1 else
                      [f"--nnodes={env.num_nodes}", f"--node_rank={env.node}", "--rdzv_backend=c10d",
                       f"--rdzv_id={env.job_id}", f"--rdzv_endpoint={env.hostnames[0]}:{RENDEZVOUS_PORT}"])
        return [sys.executable, "-m", "torch.distributed.run", *rendezvous,
                f"--nproc_per_node={self.processes_per_node}", *finetune]

    def __call__(self) -> str:
        argv = self.command()
        print("$ " + " ".join(argv), flush=True)
        children.ignore_in_children(*PRE_TIMEOUT_SIGNALS)  # the pre-timeout signal is for this process
        self._process = children.spawn(argv)
        code = self._process.wait()
        if code != 0:
            raise ScoreError(f"fine-tuning exited with status {code} (its output is above in this log)")
        from .train import EXPORT_FILES

        out = Path(yaml.safe_load(Path(self.config).read_text())["out"])
        return str(next((out / name for name in EXPORT_FILES.values() if (out / name).is_file()), out))

    def checkpoint(self, *args, **kwargs) -> submitit.helpers.DelayedSubmission:
        """SLURM's pre-timeout signal: let the trainer save and exit, then requeue this job."""
        if self._process is not None:
            children.stop(self._process, grace=self.grace_s)  # SIGTERM: the trainer saves at its next update
        return submitit.helpers.DelayedSubmission(FinetuneJob(self.config, self.processes_per_node, self.grace_s))


def _absolute(value: str | None) -> str | None:
    """A local path made absolute (the job may start in another folder); a name kept."""
    if value is None or "://" in value or not Path(value).expanduser().exists():
        return value
    return str(Path(value).expanduser().resolve())


def submit(cfg: TrainConfig, options: SlurmOptions) -> submitit.Job:
    """Write the resolved config under ``<out>/slurm/`` and submit the fine-tuning job."""
    from .train import check_split

    processes = options.nodes * max(options.gpus_per_node, 1)
    check_split(cfg.optim.utterances_per_update, processes)
    values = config_dict(cfg)
    out = Path(cfg.out).expanduser().resolve()
    values["out"] = str(out)
    values["init"] = _absolute(values["init"])
    for key in ("root", "manifest", "cache_dir"):
        values["data"][key] = _absolute(values["data"][key])
    folder = out / "slurm"
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / CONFIG_NAME
    atomic_write_text(config, "# written by score-s3prl finetune --launcher slurm; the job reads it\n"
                      + yaml.safe_dump(values, sort_keys=False))
    ex = executor(options, folder, name=f"finetune-{out.name}", cpus=options.cpus_per_task)
    grace = max(10.0, options.signal_delay_s - 30.0)  # leave SLURM time to requeue before its SIGKILL
    job = ex.submit(FinetuneJob(str(config), max(options.gpus_per_node, 1), grace))
    if cfg.device == "auto" and not options.gpus_per_node:
        print("note: --slurm-gpus-per-node 0: device auto runs on the node's CPU", file=sys.stderr)
    return job


def run(cfg: TrainConfig, options: SlurmOptions, wait: bool) -> int:
    """Submit; with ``wait``, block until the job (and its requeues) ends."""
    job = submit(cfg, options)
    print(f"submitted SLURM job {job.job_id}: fine-tuning into {Path(cfg.out).resolve()}; log {job.paths.stdout}",
          file=sys.stderr)
    if not wait:
        print(f"squeue -j {job.job_id} shows it; re-submitting the same command resumes a run that stopped",
              file=sys.stderr)
        return 0
    try:
        print(job.result())
    except submitit.core.utils.UncompletedJobError as exc:
        raise ScoreError(f"SLURM job {job.job_id} did not finish: {str(exc).splitlines()[0]}; log {job.paths.stdout}") from None
    except submitit.core.utils.FailedJobError:
        raise ScoreError(f"SLURM job {job.job_id} failed; log {job.paths.stdout}") from None
    return 0
