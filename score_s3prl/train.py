"""``score-s3prl finetune``: SCORE / LASER fine-tuning, pretrained HuBERT or WavLM in, s3prl upstream out.

One file, one loop. Each update draws ``optim.utterances_per_update`` utterances (whole, one
per forward pass, as the official code; or crops in length-bucketed micro-batches), makes an
original and a perturbed view of each, runs the trainable student on one view and the frozen
teacher on the other (LASER: the student on both), and minimises the soft-DTW divergence
between their projected last-layer frames (LASER: plus its temporal regulariser). The run directory holds::

    config.yaml        the resolved config (``--config`` reads it back)
    train_state.pt     resumable state (trainable weights, optimiser, scheduler, RNG, data position)
    train_log.csv      one row per ``log_every`` updates, and one per held-out probe (``monitor``);
                       loss.png plots it at the end
    tensorboard/       TensorBoard scalars (train/*, LASER's loss/* terms, monitor/*), the config
                       as text, hparams with the final loss and probe value
    score_hubert.pt    the export: s3prl's converted HuBERT format plus a ``score`` block
                       (score_wavlm.pt for a WavLM base: the format ``wavlm_local`` reads)

Re-running with the same ``out`` resumes from ``train_state.pt``, also with the data staged at
another path (a SLURM job copying the corpus to its node's disk): a resume compares the settings
and the corpus's content (:func:`data_identity`), not where it sits, and a refusal names the keys
that differ. SIGINT/SIGTERM/SIGHUP, and SLURM's pre-timeout signals SIGUSR1/SIGUSR2, save the
state at the next update boundary before exiting, so a pre-empted job loses nothing
(``score-s3prl finetune --launcher slurm`` then requeues it: :mod:`score_s3prl.slurm_finetune`).
One run holds ``out`` at a time (:mod:`score_s3prl.runlock`), and a base model (``init``) that
is one of the files the run writes is refused before any work.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import io
import math
import os
import random
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from . import __version__
from .checkpoints.hubert import write_converted
from .config import (TrainConfig, config_dict, config_hash, config_yaml, differing_keys, flatten, is_plain,
                     load_config, resume_settings)
from .errors import ArgumentParser, ScoreError
from .fileio import atomic_open, atomic_torch_save, atomic_write_text, remove_stale_temps
from .hashing import json_hash
from .runlock import run_lock
from .runtime import DEVICE_CHOICES, device_name, resolve_device
from .slurm import PRE_TIMEOUT_SIGNALS

SAMPLE_RATE = 16000
STATE_FILE = "train_state.pt"
LOG_FILE = "train_log.csv"
EXPORT_FILE = "score_hubert.pt"
EXPORT_FILES = {"hubert": EXPORT_FILE, "wavlm": "score_wavlm.pt"}  # by base architecture
CONFIG_FILE = "config.yaml"
# divergence, regulariser: LASER's two loss terms (alpha-weighted regulariser; they sum to loss);
# probe: the held-out probe's value (score_s3prl.monitor; NaN: collapsed). Empty where not measured.
LOSS_TERMS = ("divergence", "regulariser")
LOG_FIELDS = ("update", "loss", "lr", "grad_norm", "audio_hours", "skipped_files", "seconds", *LOSS_TERMS, "probe")


@dataclass
class Position:
    """Where the run is: enough to continue exactly where a checkpoint left off."""

    update: int = 0  # optimiser updates done
    epoch: int = 0  # pass over the corpus
    cursor: int = 0  # next batch index within the epoch's batch list
    audio_seconds: float = 0.0  # original-view audio seen by all ranks
    skipped_files: int = 0  # unreadable files met so far (distinct files, not skip events)
    bad_in_a_row: int = 0  # consecutive non-finite losses
    unreadable: list[int] = field(default_factory=list)  # corpus indices of the unreadable files


@dataclass
class Ranks:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


# ----------------------------------------------------------------------------- set-up


def init_distributed(device: str) -> Ranks:
    """Join the torchrun process group when launched by torchrun, else a single process."""
    if "WORLD_SIZE" not in os.environ or int(os.environ["WORLD_SIZE"]) == 1:
        return Ranks()
    # The loop all-reduces small CPU tensors (flags, counts) besides the CUDA gradients, and
    # NCCL takes CUDA tensors only: CPU tensors go through gloo.
    backend = "cpu:gloo,cuda:nccl" if torch.cuda.is_available() and device != "cpu" else "gloo"
    dist.init_process_group(backend)
    return Ranks(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))


def pick_device(name: str, ranks: Ranks) -> torch.device:
    name = resolve_device(name)
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ScoreError(f"device {name!r} asked for, but CUDA is not available")
        if ranks.world > 1:
            device = torch.device("cuda", ranks.local_rank)
        torch.cuda.set_device(device)
    return device


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def update_seed(seed: int, update: int, rank: int) -> int:
    """The seed of one update on one rank. Reseeding every update makes a resumed run draw
    the same crops, views and dropout as an uninterrupted one, with no RNG state to save."""
    return (seed * 1_000_003 + update) * 1024 + rank


def lr_factor(update: int, warmup: int, total: int, shifted: bool = False) -> float:
    """Linear warm-up from 0 over ``warmup`` updates, then linear decay to 0 at ``total``.

    ``update`` counts updates done. The official code (s3prl's linear_schedule_with_warmup)
    uses update / warmup, so the first update has lr 0; ``shifted`` uses (update + 1) / warmup.
    """
    if update < warmup:
        return (update + int(shifted)) / warmup
    return max(0.0, (total - update) / max(1, total - warmup))


def min_input_samples(hubert) -> int:
    """The fewest waveform samples for which the CNN of a HubertModel gives one frame."""
    samples = 1
    for block in reversed(list(hubert.feature_extractor.conv_layers)):
        conv = block[0]
        samples = (samples - 1) * conv.stride[0] + conv.kernel_size[0]
    return samples


def check_split(utterances_per_update: int, processes: int) -> None:
    """Refuse an update size the processes cannot share exactly: each process takes
    ``utterances_per_update / processes`` utterances, and rounding up would silently train on
    more per update than the config says."""
    if utterances_per_update % processes:
        multiples = sorted({processes * max(1, utterances_per_update // processes),
                            processes * (utterances_per_update // processes + 1)})
        raise ScoreError(
            f"config: optim.utterances_per_update = {utterances_per_update} cannot be split evenly over "
            f"{processes} processes (each would take {math.ceil(utterances_per_update / processes)}, "
            f"{math.ceil(utterances_per_update / processes) * processes} per update); use a multiple of "
            f"{processes} ({' or '.join(map(str, multiples))}) or a process count that divides {utterances_per_update}")


def check_min_seconds(cfg: TrainConfig, hubert) -> None:
    """Refuse a ``data.min_seconds`` so short that a kept utterance, once sped up by the
    largest speed factor, is too short for the CNN: found here, before any work, instead of
    as a crash inside the model at the first such file."""
    need = min_input_samples(hubert)
    fastest = max(cfg.views.speed_factors)
    shortest = max(int(cfg.data.min_seconds * SAMPLE_RATE), 1)
    if math.ceil(shortest / fastest) < need:
        enough = math.ceil(need * fastest) / SAMPLE_RATE
        raise ScoreError(
            f"config: data.min_seconds = {cfg.data.min_seconds} is too short for this model: a "
            f"{shortest}-sample utterance sped up x{fastest:g} has {math.ceil(shortest / fastest)} samples "
            f"and the CNN needs {need}; set data.min_seconds >= {math.ceil(enough * 1000) / 1000:g}"
        )


def check_init_is_not_written(cfg: TrainConfig) -> None:
    """Refuse an ``init`` that resolves to a file (or into a folder) this run writes: the export
    would replace its own base, and the resume check would then refuse the run for good."""
    from .checkpoints.bases import BASE_URLS

    if not cfg.init or cfg.init in BASE_URLS:  # a named base: downloaded into s3prl's cache
        return
    out = Path(cfg.out)
    written = [out / name for name in (STATE_FILE, LOG_FILE, "loss.png", *EXPORT_FILES.values())]
    folders = [out / "tensorboard", Path(cfg.data.cache_dir or out / "cache")]
    init = Path(cfg.init).resolve()
    hit = next((p for p in written if p.resolve() == init), None)
    hit = hit or next((f for f in folders if init.is_relative_to(f.resolve())), None)
    if hit is not None:
        raise ScoreError(f"init {cfg.init}: this run writes {hit} (out {cfg.out}), so it would overwrite its "
                         "own base model; copy the base elsewhere or use another --out")


def check_whole_lengths(cfg: TrainConfig, utterances: list, plan) -> None:
    """In whole mode an utterance is one forward pass, uncropped, and the soft-DTW and attention
    memory grow with its length squared: refuse one longer than ``data.batch_seconds`` (read
    from the headers, before any audio is loaded) instead of dying in the allocation."""
    if not len(plan.lengths):
        return
    longest = int(plan.lengths.argmax())
    if plan.lengths[longest] > plan.budget:
        path = utterances[int(plan.indices[longest])].path
        raise ScoreError(
            f"{path}: {plan.lengths[longest] / SAMPLE_RATE:.1f} s is longer than data.batch_seconds = "
            f"{cfg.data.batch_seconds:g} s, the most audio one forward pass takes; in whole mode an utterance is "
            "not cropped and memory grows with its length squared: use data.mode=crops, raise "
            "data.batch_seconds, or leave the file out"
        )


def load_utterances(cfg: TrainConfig, out: Path):
    from .data import read_manifest, scan_librispeech

    if cfg.data.manifest:
        return read_manifest(cfg.data.manifest)
    if not cfg.data.root:
        raise ScoreError("no training data: set data.root (or --data) or data.manifest")
    cache = cfg.data.cache_dir or out / "cache"
    return scan_librispeech(cfg.data.root, cfg.data.subsets, cache_dir=cache)


def batch_stream(plan, position: Position, ranks: Ranks) -> Iterator[list[int]]:
    """This rank's micro-batches from ``position`` on; ranks take turns in the batch list.

    ``position.epoch`` and ``position.cursor`` advance as batches are handed out, so the
    position saved after an update is exactly where the next update starts.
    """
    while True:
        batches = plan.epoch_batches(position.epoch)
        while position.cursor + ranks.world <= len(batches):
            mine = batches[position.cursor + ranks.rank]
            position.cursor += ranks.world
            yield mine
        position.epoch, position.cursor = position.epoch + 1, 0


# ----------------------------------------------------------------------------- state


def data_identity(utterances) -> dict:
    """What the corpus is, wherever it sits: its size and a hash of each file's path relative to
    the files' common folder and its length in samples, in corpus order (the order the batch
    plan indexes). The same files copied to another disk have the same identity."""
    folders = [os.path.dirname(u.path) for u in utterances]
    base = os.path.commonpath(folders) if folders else ""
    listing = [(os.path.relpath(u.path, base), u.num_samples) for u in utterances]
    return {"data.files": len(listing), "data.samples": sum(n for _, n in listing), "data.content": json_hash(listing)}


def save_state(path: Path, model, optimizer, scheduler, position: Position, cfg, base_sha256: str = "",
               data: dict | None = None) -> None:
    """Write the resumable state; it records what it was trained from (the base checkpoint's
    SHA-256, the settings and the corpus's :func:`data_identity`), so a resume with other
    weights, settings or data is refused."""
    trainable = {name: p.detach().cpu() for name, p in model.named_parameters() if p.requires_grad}
    atomic_torch_save(
        {
            "trainable": trainable,
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "position": vars(position),
            "config_hash": config_hash(cfg),
            "settings": {**resume_settings(cfg), **(data or {})},
            "base_sha256": base_sha256,
        },
        path,
    )


def base_sha256(identity: str) -> str:
    """The SHA-256 in a base identity string (``<kind> sha256:<hex>``, see load_base_state)."""
    return identity.rpartition("sha256:")[2]


def load_state(path: Path, model, optimizer, scheduler, cfg, base_sha256: str = "", data: dict | None = None) -> Position:
    """Restore the state at ``path`` into the model, optimiser and scheduler.

    Raises:
        ScoreError: the file is unreadable or refused (it is read weights-only), or it was
            written for another base checkpoint (by content, not path), other settings or another
            corpus (by content, not path: the keys that differ are named), or parameters of other
            names or shapes. Each message says how to start over.
    """
    from .checkpoints.safeload import load_checkpoint

    start_over = f"to start over, delete {path.parent} or use a new --out"
    state = load_checkpoint(path, "training state")
    try:
        if not isinstance(state, dict):
            raise TypeError(f"a {type(state).__name__}, not a dict")
        trainable, saved_hash, saved_base = state["trainable"], state["config_hash"], state.get("base_sha256")
        position = checked_position(state["position"], cfg)
        if "settings" in state and not (isinstance(state["settings"], dict) and is_plain(state["settings"])):
            raise TypeError("its settings record is not a mapping of names to plain values")
    except (KeyError, TypeError, ValueError) as exc:
        raise ScoreError(f"{path}: not a training state of this program ({type(exc).__name__}: {exc}); "
                         f"{start_over}") from exc
    if saved_base != base_sha256:
        raise ScoreError(
            f"{path}: this run was trained from a base checkpoint with sha256 {saved_base or 'unrecorded'}, "
            f"but init {cfg.init!r} now has sha256 {base_sha256}; resuming would mix two models: "
            f"put the original base back, or {start_over}"
        )
    saved_settings = state.get("settings")
    if isinstance(saved_settings, dict):
        differ = differing_keys(saved_settings, {**resume_settings(cfg), **(data or {})})
        if differ:
            raise ScoreError(f"{path}: this run directory was trained with another config: "
                             f"{'; '.join(differ)}; use the same settings and data, or {start_over}")
    elif saved_hash != config_hash(cfg):  # a state written before settings were recorded
        raise ScoreError(
            f"{path}: this run directory was trained with another config "
            f"(hash {saved_hash} != {config_hash(cfg)}); use the same config, or {start_over}"
        )
    params = {name: p for name, p in model.named_parameters() if p.requires_grad}
    if not isinstance(trainable, dict) or set(trainable) != set(params) or any(
        not isinstance(trainable[n], torch.Tensor) or trainable[n].shape != p.shape for n, p in params.items()
    ):
        raise ScoreError(f"{path}: its trainable weights do not fit this model (names or shapes differ); "
                         f"{start_over}")
    if not all(torch.isfinite(value).all() for value in trainable.values()):
        raise ScoreError(f"{path}: its trainable weights hold NaN or inf; {start_over}")
    fresh_groups = [{k: v for k, v in group.items() if k != "params"} for group in optimizer.param_groups]
    try:
        with torch.no_grad():
            for name, value in trainable.items():
                params[name].copy_(value)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise ScoreError(f"{path}: unreadable optimiser or scheduler state ({exc}); {start_over}") from exc
    problem = restored_problem(optimizer, scheduler, fresh_groups, position)
    if problem:
        raise ScoreError(f"{path}: {problem}; {start_over}")
    return position


def checked_position(values, cfg) -> Position:
    """A :class:`Position` from a state file's plain values, each of its type and range.

    Raises:
        TypeError, ValueError: naming the field and the value.
    """
    fields = {f.name: f for f in dataclasses.fields(Position)}
    if not isinstance(values, dict) or not set(values) <= set(fields):
        raise TypeError(f"position {values!r:.80}: expected the fields {', '.join(fields)}")
    for name, value in values.items():
        if name == "audio_seconds":
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value >= 0
        elif name == "unreadable":
            ok = isinstance(value, list) and all(isinstance(i, int) and not isinstance(i, bool) and i >= 0
                                                 for i in value)
        else:
            ok = isinstance(value, int) and not isinstance(value, bool) and value >= 0
        if not ok:
            raise ValueError(f"position.{name} = {value!r:.80}: expected a number >= 0 of its kind")
    position = Position(**values)
    if position.update > cfg.optim.total_updates:
        raise ValueError(f"position.update = {position.update}: beyond optim.total_updates = "
                         f"{cfg.optim.total_updates}")
    return position


def restored_problem(optimizer, scheduler, fresh_groups: list[dict], position: Position) -> str | None:
    """What is wrong with a restored optimiser and scheduler, or None: they must be where
    ``position`` says (the scheduler's step, the learning rate it gives) with the config's
    hyperparameters and per-parameter state of the parameters' shapes, all finite."""
    if scheduler.last_epoch != position.update:
        return f"its scheduler is at step {scheduler.last_epoch!r:.40}, its position at update {position.update}"
    for fresh, group in zip(fresh_groups, optimizer.param_groups):
        for key in ("initial_lr", "betas", "eps", "weight_decay"):
            value = fresh.get(key)
            if group.get(key) != value:
                return f"its optimiser has {key} = {group.get(key)!r:.40}, the config gives {value!r:.40}"
        expected = fresh["initial_lr"] * scheduler.lr_lambdas[0](position.update)
        if not math.isclose(group.get("lr", math.nan), expected, rel_tol=1e-9, abs_tol=1e-30):
            return f"its optimiser has lr = {group.get('lr')!r:.40}, the schedule gives {expected:g} at update {position.update}"
        for param in group["params"]:
            for key, value in optimizer.state.get(param, {}).items():
                if not isinstance(value, torch.Tensor) or not value.is_floating_point():
                    continue
                if value.dim() and value.shape != param.shape:
                    return f"its optimiser state {key} has shape {tuple(value.shape)}, its parameter {tuple(param.shape)}"
                if not torch.isfinite(value).all():
                    return f"its optimiser state {key} holds NaN or inf"
    return None


def export(path: Path, base_state: dict, base_identity: str, model, cfg, position: Position) -> None:
    """Write the tuned student merged into the base checkpoint, in the base's own s3prl format:
    the converted HuBERT dict (stock ``hubert_local``) or the WavLM dict (stock ``wavlm_local``)."""
    from .checkpoints import base_architecture
    from .checkpoints.wavlm import write_wavlm
    from .model import student_state_for_export

    score = {
        "method": cfg.method.upper(),
        "architecture": base_architecture(base_state),
        "config": config_dict(cfg),
        "config_hash": config_hash(cfg),
        "updates": position.update,
        "audio_hours": position.audio_seconds / 3600,
        "base_model": base_identity,
        "score_s3prl_version": __version__,
    }
    if base_architecture(base_state) == "wavlm":
        weights = dict(base_state["model"])
        weights.update(student_state_for_export(model))
        write_wavlm(path, base_state["cfg"], weights, score=score)
        return
    weights = dict(base_state["model_weight"])
    weights.update(student_state_for_export(model))
    write_converted(
        path,
        task_cfg=base_state["task_cfg"],
        model_cfg=base_state["model_cfg"],
        model_weight=weights,
        dictionaries_symbols=base_state["dictionaries_symbols"],
        score=score,
    )


def append_log(path: Path, rows: list[dict], keep_upto: int | None = None) -> None:
    """Append rows to the CSV log atomically; on resume, drop rows past the resumed update."""
    old = []
    if path.exists():
        with open(path, newline="") as handle:
            old = [r for r in csv.DictReader(handle) if keep_upto is None or int(r["update"]) <= keep_upto]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=LOG_FIELDS)
    writer.writeheader()
    writer.writerows(old + rows)
    with atomic_open(path, "w", newline="") as handle:
        handle.write(buffer.getvalue())


def plot_log(csv_path: Path, png_path: Path, method: str = "score") -> None:
    """``loss.png`` (:func:`log_figure`) from the log CSV, written atomically; none for an empty log."""
    with open(csv_path, newline="") as handle:
        fig = log_figure(list(csv.DictReader(handle)), method)
    if fig is not None:
        with atomic_open(png_path, "wb") as handle:
            fig.savefig(handle, format="png", dpi=120)


def log_figure(rows: list[dict[str, str]], method: str = "score"):
    """The loss (LASER: and its two terms) per update, titled with the method, and beside it
    the held-out probe value when the log has one. A matplotlib ``Figure``, or None without rows."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # no pyplot: no global backend
    from matplotlib.figure import Figure

    def series(key: str) -> tuple[list[int], list[float]]:
        kept = [(int(r["update"]), float(r[key])) for r in rows if r.get(key) not in (None, "")]
        return [u for u, _ in kept], [v for _, v in kept]

    probe = series("probe")
    if not series("loss")[0] and not probe[0]:
        return None
    fig = Figure(figsize=(11 if probe[0] else 6, 3.6), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2 if probe[0] else 1, squeeze=False)[0]
    name = method.upper()
    axes[0].plot(*series("loss"), label="loss")
    if method == "laser":
        axes[0].plot(*series("divergence"), label="soft-DTW divergence", lw=0.9)
        axes[0].plot(*series("regulariser"), label="alpha x regulariser", lw=0.9)
        axes[0].legend(fontsize="small")
        axes[0].set_ylabel("divergence + alpha x (R(f1) + R(f2))")
    else:
        axes[0].set_ylabel("soft-DTW divergence / (Tx + Ty)")
    axes[0].set_xlabel("update")
    axes[0].set_title(f"{name} fine-tuning loss")
    if probe[0]:
        from .probe import REFERENCE_LABEL

        axes[1].plot(*probe, marker="o", ms=3, label="student, last layer")
        axes[1].axhline(1.0, color="grey", lw=0.8, ls="--", label=REFERENCE_LABEL)
        axes[1].set_ylim(0, max([1.0, *[v for v in probe[1] if math.isfinite(v)]]) * 1.08)
        axes[1].set_xlabel("update")
        axes[1].set_ylabel("view / other-utterance divergence\n(lower = more invariant)")
        axes[1].set_title(f"{name}: held-out probe (SCORE views; gaps: collapsed)")
        axes[1].legend(fontsize="small", loc="lower left")
    return fig


class StopNow(Exception):
    """A second stop signal: leave the update in progress (its work is dropped, nothing else)."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"signal {signum}")
        self.signum = signum


class StopRequest:
    """Within ``with``: SIGINT/SIGTERM/SIGHUP, and SIGUSR1/SIGUSR2 (SLURM's pre-timeout signals:
    ``sbatch --signal``, submitit's ``USR2@90``), set a flag that the loop checks between updates.
    A second SIGINT/SIGTERM/SIGHUP raises :class:`StopNow` at once, except inside :meth:`hold` (an
    optimiser step, the final save), which it leaves first. After a pre-timeout signal only
    SIGINT does: a repeated pre-timeout signal, or the SIGTERM of the requeue that follows it, is
    the same stop (SLURM signals each process of a job, then its launcher forwards)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, *PRE_TIMEOUT_SIGNALS)

    def __init__(self, linger: bool = False) -> None:
        self.linger = linger  # once stopping, ignore these signals until the process exits (the CLI)
        self.signal: int | None = None
        self._previous: dict = {}
        self._holding = 0
        self._pending = False  # a second signal came while holding

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            self._previous = {sig: signal.signal(sig, self._handle) for sig in self.SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            # a signal after the state is saved must not kill the exit (a second Ctrl-C, a hang-up)
            signal.signal(sig, signal.SIG_IGN if self.linger and self.signal is not None else handler)

    def _handle(self, signum, frame) -> None:
        if self.signal is None:
            self.signal = signum
        elif signum in PRE_TIMEOUT_SIGNALS or (self.signal in PRE_TIMEOUT_SIGNALS and signum != signal.SIGINT):
            # SLURM's pre-timeout stop reaches every process of the job, and the requeue's SIGTERM
            # follows it (slurm_finetune: checkpoint): the same stop, saved at the next boundary
            # (a second stop would drop the update, and under torchrun all progress since the last save)
            return
        elif self._holding:
            self._pending = True
        else:
            raise StopNow(self.signal)

    @contextlib.contextmanager
    def hold(self, then_stop: bool = True) -> Iterator[None]:
        """No :class:`StopNow` inside the block; one that came meanwhile is raised after it
        (``then_stop``) or dropped (the run is stopping anyway)."""
        self._holding += 1
        try:
            yield
        finally:
            self._holding -= 1
        if self._pending and not self._holding and then_stop:
            self._pending = False
            raise StopNow(self.signal or 0)


# ----------------------------------------------------------------------------- the loop


@dataclass
class Run:
    """Everything one training run holds between updates."""

    cfg: TrainConfig
    out: Path
    ranks: Ranks
    device: torch.device
    base_state: dict
    base_identity: str
    model: torch.nn.Module
    params: list
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    views: object  # CorrespondenceViews
    generator: torch.Generator  # crops and views; reseeded every update
    utterances: list
    plan: object  # BatchPlan
    crop: int | None  # samples per crop (None: whole utterances)
    min_len: int
    share: int  # utterances per rank per update
    position: Position
    batches: Iterator[list[int]]
    autocast: object
    writer: object  # TensorBoard SummaryWriter on rank 0, else None
    bar: tqdm
    data: dict  # the corpus's data_identity, recorded in the state
    log_rows: list = field(default_factory=list)  # rows not yet written to train_log.csv
    started: float = 0.0
    unreadable_batches: int = 0
    stop: StopRequest | None = None  # the signal handler, while the loop runs
    boundary: Position | None = None  # the position after the last completed update
    save_due: bool = False  # a state save waits for the next finite loss (see update_step)
    saved_update: int | None = None  # the update of the state on disk (None: none)
    monitor: object = None  # HeldOutProbe on rank 0 (score_s3prl.monitor), None when off
    loss_terms: dict = field(default_factory=dict)  # LASER's terms of the last update, per utterance

    @property
    def state_path(self) -> Path:
        return self.out / STATE_FILE

    @property
    def log_path(self) -> Path:
        return self.out / LOG_FILE


def write_run_config(out: Path, cfg: TrainConfig) -> None:
    """``<out>/config.yaml``: the resolved config, which ``--config`` reads back to the same run."""
    header = (f"# the resolved config of this run (score-s3prl {__version__}); "
              "score-s3prl finetune --config <this file> runs it again (and resumes in its out)\n")
    atomic_write_text(out / CONFIG_FILE, header + config_yaml(cfg))


def make_optimizer(params: list, o) -> torch.optim.Optimizer:
    """s3prl's AdamW (the official code's) or torch's; see ``OptimConfig.optimizer``."""
    extra = {} if o.eps is None else {"eps": o.eps}  # else each optimiser's own default
    if o.optimizer == "s3prl-adamw":
        from s3prl.optimizers import AdamW as S3prlAdamW

        return S3prlAdamW(params, lr=o.lr, weight_decay=o.weight_decay, **extra)
    return torch.optim.AdamW(params, lr=o.lr, weight_decay=o.weight_decay, **extra)


def setup(cfg: TrainConfig) -> Run:
    """Build the model, optimiser, data and logs, and resume from the run directory's state."""
    from tensorboardX import SummaryWriter

    from .augment import CorrespondenceViews
    from .checkpoints import load_base_state
    from .data import BatchPlan
    from .model import ScoreModel, trainable_summary
    from .monitor import HeldOutProbe

    if not cfg.init:
        raise ScoreError("no base model: set `init` (or --init) to a named base (hubert_base, ...), "
                         "a checkpoint or an HF dir")
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    ranks = init_distributed(cfg.device)
    if ranks.main:  # leftovers of writes a kill -9 interrupted (this run dir only)
        remove_stale_temps(out)  # only rank 0 writes here
        if ranks.world == 1:  # every rank writes the scan cache: another host's pids are not ours to judge
            remove_stale_temps(Path(cfg.data.cache_dir or out / "cache"))
    device = pick_device(cfg.device, ranks)
    seed_everything(cfg.seed)  # the same head init on every rank
    utterances = load_utterances(cfg, out)  # a wrong --data stops here, before a model loads or downloads
    if ranks.main:
        write_run_config(out, cfg)

    base_state, base_identity = load_base_state(cfg.init)
    model = ScoreModel(base_state, **vars(cfg.model), method=cfg.method, gamma=cfg.loss.gamma,
                       bandwidth=cfg.loss.bandwidth, alpha=cfg.loss.alpha, sigma=cfg.loss.sigma,
                       margin=cfg.loss.margin, view_batching=cfg.laser.view_batching)
    check_min_seconds(cfg, model.student)
    model.to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    o = cfg.optim
    optimizer = make_optimizer(params, o)
    schedule = partial(lr_factor, warmup=o.warmup_updates, total=o.total_updates, shifted=o.warmup == "shifted")
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    views = CorrespondenceViews(**vars(cfg.views), sample_rate=SAMPLE_RATE)

    whole = cfg.data.mode == "whole"  # the official code: whole utterances, one per forward pass
    crop = None if whole else int(cfg.data.crop_seconds * SAMPLE_RATE)
    min_len = int(cfg.data.min_seconds * SAMPLE_RATE)
    share = o.utterances_per_update // ranks.world  # utterances per rank per update (check_split: exact)
    batch_size = 1 if whole else min(cfg.data.batch_size, share)
    # One utterance per batch: the plan's shuffled batch list is a uniformly random order.
    plan = BatchPlan(utterances, cfg.data.batch_seconds, batch_size, cfg.seed,
                     crop_samples=crop, min_samples=min_len)  # too-short files are left out and counted
    if whole:
        check_whole_lengths(cfg, utterances, plan)
    position = Position()
    state_path = out / STATE_FILE
    data = data_identity(utterances)
    if state_path.exists():
        position = load_state(state_path, model, optimizer, scheduler, cfg, base_sha256(base_identity), data)
        if ranks.main:  # the log is rank 0's file
            append_log(out / LOG_FILE, [], keep_upto=position.update)
            print(f"resuming {out} at update {position.update}", file=sys.stderr)
    if ranks.main:
        print(trainable_summary(model), file=sys.stderr)
    bf16 = cfg.precision == "bf16" and device.type == "cuda"
    return Run(
        cfg=cfg, out=out, ranks=ranks, device=device, base_state=base_state, base_identity=base_identity,
        model=model, params=params, optimizer=optimizer, scheduler=scheduler, views=views, data=data,
        generator=torch.Generator(), utterances=utterances, plan=plan, crop=crop, min_len=min_len,
        share=share, position=position, batches=batch_stream(plan, position, ranks),
        autocast=torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16),
        writer=SummaryWriter(str(out / "tensorboard")) if ranks.main else None,
        bar=tqdm(total=o.total_updates, initial=position.update, disable=not ranks.main, unit="update"),
        log_rows=[], started=time.time(), saved_update=position.update if state_path.exists() else None,
        monitor=HeldOutProbe.from_config(cfg, device) if ranks.main else None,
    )


def train(cfg: TrainConfig, linger: bool = False) -> Path:
    """Run (or resume) SCORE / LASER fine-tuning as ``cfg`` says; returns the export's path.

    With ``linger`` (the CLI, which exits next), a run stopped by a signal ignores further stop
    signals instead of restoring the previous handlers.

    Raises:
        ScoreError: ``init`` is a file this run writes, ``utterances_per_update`` does not split
            evenly over the processes, or another live run holds ``cfg.out`` (its PID and
            command line named); all before any work.
    """
    check_init_is_not_written(cfg)
    check_split(cfg.optim.utterances_per_update, int(os.environ.get("WORLD_SIZE", 1)))
    # rank 0 holds the lock for the whole job (the ranks of one torchrun share the folder)
    with run_lock(Path(cfg.out)) if int(os.environ.get("RANK", 0)) == 0 else contextlib.nullcontext():
        return _train(cfg, linger)


def _train(cfg: TrainConfig, linger: bool = False) -> Path:
    run = setup(cfg)
    stopped = 0  # the signal that stopped the run, agreed by all ranks (0: none)
    with StopRequest(linger) as stop:
        run.stop = stop
        try:
            if run.writer is not None:
                run.writer.add_text("config", "```\n" + config_yaml(cfg) + "```", run.position.update)
            if run.monitor is not None and run.position.update == 0:  # the base model's value: where training starts
                run.log_rows.append({"update": 0, "audio_hours": 0.0, "skipped_files": 0, **probe_now(run)})
            try:
                while run.position.update < cfg.optim.total_updates:
                    stopped = signal_on_any_rank(stop.signal, run.ranks)  # every rank stops at the same update
                    if stopped:
                        break
                    result = update_step(run)
                    if result is not None:
                        log_and_save(run, *result)
            except StopNow as now:  # a second signal: drop the update in progress, keep the rest
                stopped = now.signum
                if run.ranks.world > 1:  # the ranks are mid-update at different points: no agreed state
                    if run.ranks.main:
                        print(f"stopped at once by a second signal {stopped}: the state of update "
                              f"{run.saved_update} in {run.state_path} resumes", file=sys.stderr)
                    raise SystemExit(128 + stopped) from None
                vars(run.position).update(vars(copy_position(run.boundary)))
        except BaseException:
            if run.writer is not None:  # its writer thread must not be left to interpreter shutdown
                run.writer.close()
            raise
        finally:
            run.bar.close()
        with stop.hold(then_stop=False):  # the final save and export finish whatever comes
            return finish(run, stopped)


def copy_position(position: Position) -> Position:
    return dataclasses.replace(position, unreadable=list(position.unreadable))


def update_step(run: Run) -> tuple[float, torch.Tensor, float] | None:
    """One optimiser update from ``utterances_per_update`` utterances.

    A state save that :func:`log_and_save` made due is written here, once the loss of the
    weights it holds is known to be finite: the state on disk is always one that trains on.

    Returns:
        (mean loss, gradient norm, seconds of original-view audio), or None when the loss or
        the gradient was not finite and the update was skipped.
    """
    cfg, position, ranks = run.cfg, run.position, run.ranks
    run.boundary = copy_position(position)  # where this update starts (and a resume would)
    run.optimizer.zero_grad(set_to_none=True)
    seed = update_seed(cfg.seed, position.update, ranks.rank)
    torch.manual_seed(seed)  # dropout, in the teacher too under model.dropout=official
    run.generator.manual_seed(seed)  # crops and views
    count = loss_sum = seconds = 0.0
    terms: dict[str, float] = {}  # LASER's loss terms, summed over utterances
    while not all_ranks_done(count >= run.share, ranks):
        batch = next_batch(run)
        if batch is None:
            continue
        wavs, lengths = batch
        s_wav, s_len, t_wav, t_len = run.views(wavs.to(run.device), lengths.to(run.device), run.generator)
        with run.autocast:
            loss, stats = run.model(s_wav, s_len, t_wav, t_len)
        for key in LOSS_TERMS:
            if key in stats:
                terms[key] = terms.get(key, 0.0) + stats[key].sum().item()
        (loss * len(lengths)).backward()  # a sum over utterances: divided by the count below
        count += len(lengths)
        loss_sum += loss.item() * len(lengths)
        seconds += lengths.sum().item() / SAMPLE_RATE
    count, loss_sum, seconds = reduce_update(run.params, count, loss_sum, seconds, ranks)
    run.loss_terms = {key: value / count for key, value in reduce_sums(terms, ranks).items()}
    grad_norm = torch.nn.utils.clip_grad_norm_(run.params, cfg.optim.grad_clip)
    loss_value = loss_sum / count
    if not (math.isfinite(loss_value) and torch.isfinite(grad_norm)):
        position.bad_in_a_row += 1
        tqdm.write(f"update {position.update + 1}: non-finite loss or gradient ({loss_value}), skipped",
                   file=sys.stderr)
        if position.bad_in_a_row >= cfg.max_bad_losses:
            last = (f"the last state that trained on (update {run.saved_update}) is in {run.state_path}"
                    if run.saved_update is not None else "no state was saved yet")
            raise ScoreError(f"{cfg.max_bad_losses} non-finite losses in a row: stopping ({last}; check "
                             f"optim.lr = {cfg.optim.lr:g} and the warnings above)")
        return None
    if run.save_due:  # these weights gave a finite loss: they are worth keeping
        save_progress(run, run.boundary)
    with run.stop.hold() if run.stop is not None else contextlib.nullcontext():
        run.optimizer.step()  # a second signal waits: half-stepped weights are never saved
        run.scheduler.step()
        position.update, position.bad_in_a_row = position.update + 1, 0
        position.audio_seconds += seconds
        run.boundary = copy_position(position)
    return loss_value, grad_norm, seconds


def save_progress(run: Run, position: Position) -> None:
    """Write the resumable state at ``position`` and the log rows so far (rank 0's files)."""
    run.save_due = False
    if not run.ranks.main:
        return
    save_state(run.state_path, run.model, run.optimizer, run.scheduler, position, run.cfg,
               base_sha256(run.base_identity), run.data)
    append_log(run.log_path, run.log_rows)
    run.log_rows = []
    run.saved_update = position.update


def next_batch(run: Run) -> tuple[torch.Tensor, torch.Tensor] | None:
    """This rank's next micro-batch (wavs (B, L), lengths (B,)), or None if none of it was readable."""
    from .data import load_batch

    position = run.position
    unreadable = set(position.unreadable)  # each unreadable file is counted once, across updates
    wavs, lengths, skipped = load_batch(run.utterances, next(run.batches), run.crop, run.min_len, run.generator,
                                        failed=unreadable)
    position.unreadable, position.skipped_files = sorted(unreadable), len(unreadable)
    if len(lengths) == 0:
        run.unreadable_batches += 1
        if run.unreadable_batches > len(run.utterances):  # more than a whole epoch
            raise ScoreError(f"no file of a whole epoch could be read ({position.skipped_files} "
                             "unreadable files): check the corpus and the warnings above")
        return None
    run.unreadable_batches = 0
    return wavs, lengths


def log_and_save(run: Run, loss_value: float, grad_norm: torch.Tensor, seconds: float) -> None:
    """Progress bar every update; a log row every ``log_every``; every ``save_every`` a state
    save falls due (written by the next update once its loss is finite, :func:`update_step`)."""
    cfg, position = run.cfg, run.position
    hours, lr = position.audio_seconds / 3600, run.scheduler.get_last_lr()[0]
    run.bar.set_postfix(loss=f"{loss_value:.4f}", lr=f"{lr:.2e}", hours=f"{hours:.2f}", refresh=False)
    run.bar.update(1)
    if not run.ranks.main:
        return
    probe_due = run.monitor is not None and (position.update % cfg.monitor.every == 0
                                             or position.update == cfg.optim.total_updates)
    if position.update % cfg.log_every == 0 or probe_due:
        row = dict(update=position.update, loss=loss_value, lr=lr, grad_norm=grad_norm.item(),
                   audio_hours=hours, skipped_files=position.skipped_files,
                   seconds=round(time.time() - run.started, 1), **run.loss_terms)
        for key in ("loss", "lr", "grad_norm", "audio_hours"):
            run.writer.add_scalar(f"train/{key}", row[key], position.update)
        for key, value in run.loss_terms.items():  # LASER: loss = divergence + regulariser
            run.writer.add_scalar(f"loss/{key}", value, position.update)
        if probe_due:
            row.update(probe_now(run))
        run.log_rows.append(row)
    if position.update % cfg.save_every == 0:
        run.save_due = True  # written by the next update once its loss is finite (update_step)


def finish(run: Run, stopped: int) -> Path:
    """Save the state and, unless stopped by a signal, export; leave the process group."""
    cfg, position = run.cfg, run.position
    from .checkpoints import base_architecture

    export_path = run.out / EXPORT_FILES[base_architecture(run.base_state)]
    save_progress(run, position)
    if run.ranks.main:
        if not stopped:
            write_hparams(run)
        run.writer.close()
        if stopped:
            print(f"stopped by signal {stopped} at update {position.update}; re-run to resume",
                  file=sys.stderr)
        else:
            export(export_path, run.base_state, run.base_identity, run.model, cfg, position)
            plot_log(run.log_path, run.out / "loss.png", cfg.method)
            print(f"{position.update} updates, {position.audio_seconds / 3600:.2f} h of audio; skipped "
                  f"{run.plan.num_skipped} too-short and {position.skipped_files} unreadable files",
                  file=sys.stderr)
    if run.ranks.world > 1:  # leave together: a rank exiting alone makes its peers' gloo/NCCL abort
        dist.barrier()
        dist.destroy_process_group()
    if stopped:
        raise SystemExit(128 + stopped)
    return export_path


def probe_now(run: Run) -> dict[str, float]:
    """Run the held-out probe on the student, log it to TensorBoard and say so when the
    representation has collapsed; returns the log row's ``probe`` field."""
    reading = run.monitor(run.model)
    update = run.position.update
    for key in ("value", "same_utterance", "different_utterance", "length_floor"):
        run.writer.add_scalar(f"monitor/probe_{key}", getattr(reading, key), update)
    if reading.collapsed:
        tqdm.write(f"update {update}: held-out probe: the student's last layer has collapsed (different "
                   f"utterances are as alike as identical frames would make them)", file=sys.stderr)
    return {"probe": reading.value}


def write_hparams(run: Run) -> None:
    """The config (flattened, dotted keys) as TensorBoard hparams, with the run's final loss and
    held-out probe value (the log's last) as its metrics."""
    # hparams take bool, str, int, float: lists and None as text
    hparams = {key: value if isinstance(value, (bool, str, int, float)) else str(value)
               for key, value in flatten(config_dict(run.cfg)).items()}
    with open(run.log_path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    metrics = {}
    for key in ("loss", "probe"):
        values = [float(r[key]) for r in rows if r.get(key) not in (None, "")]
        if values:
            metrics[f"hparam/final_{key}"] = values[-1]
    run.writer.add_hparams(hparams, metrics, name="hparams", global_step=run.position.update)


def reduce_sums(values: dict[str, float], ranks: Ranks) -> dict[str, float]:
    """``values`` summed over ranks (every rank holds the same keys)."""
    if ranks.world == 1 or not values:
        return values
    totals = torch.tensor(list(values.values()), dtype=torch.float64)
    dist.all_reduce(totals)
    return dict(zip(values, totals.tolist()))


def all_ranks_done(done: bool, ranks: Ranks) -> bool:
    """True once every rank has its share; keeps ranks in lockstep (no DDP deadlock)."""
    return bool(_reduce_scalar(float(done), dist.ReduceOp.MIN, ranks))


def signal_on_any_rank(signum: int | None, ranks: Ranks) -> int:
    """The signal any rank has received (the highest number if several), 0 if none."""
    return int(_reduce_scalar(float(signum or 0), dist.ReduceOp.MAX, ranks))


def _reduce_scalar(value: float, op, ranks: Ranks) -> float:
    if ranks.world == 1:
        return value
    tensor = torch.tensor([value])
    dist.all_reduce(tensor, op=op)
    return tensor.item()


def reduce_update(params, count: float, loss_sum: float, seconds: float, ranks: Ranks):
    """Sum gradients and counts over ranks, then turn gradient sums into per-utterance means."""
    if ranks.world > 1:
        totals = torch.tensor([count, loss_sum, seconds], dtype=torch.float64)
        dist.all_reduce(totals)
        count, loss_sum, seconds = totals.tolist()
        for p in params:
            if p.grad is not None:
                dist.all_reduce(p.grad)
    for p in params:
        if p.grad is not None:
            p.grad.div_(count)
    return count, loss_sum, seconds


# ----------------------------------------------------------------------------- CLI


# command-line flag -> the config key it sets
FLAG_KEYS = {"init": "init", "data": "data.root", "subsets": "data.subsets", "out": "out",
             "steps": "optim.total_updates", "device": "device"}


def _flag_help(text: str, flag: str) -> str:
    """``text`` with the config key the flag sets and that key's default (the paper's setting)."""
    key, value = FLAG_KEYS[flag], TrainConfig()
    for part in key.split("."):
        value = getattr(value, part)
    shown = ",".join(value) if isinstance(value, list) else "none" if value is None else value
    return f"{text}; sets {key} (default: {shown}, or the --config file's)"


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, dict]:
    parser = ArgumentParser(prog="score-s3prl finetune", description=__doc__.split("\n")[0],
                            epilog="Flags override the --config file; key=value pairs override both.")
    parser.add_argument("--config", help="YAML config (default: the paper's settings, score_s3prl/config.py)")
    parser.add_argument("--init", help=_flag_help(
        "base model: a named base (hubert_base, hubert_large_ll60k, wavlm_large, ...; score-s3prl fetch --help "
        "lists them) | converted .pt | fairseq .pt | HF dir", "init"))
    parser.add_argument("--data", help=_flag_help("LibriSpeech root holding the subsets", "data"))
    parser.add_argument("--subsets", help=_flag_help("comma-separated subsets, e.g. train-clean-100", "subsets"))
    parser.add_argument("--out", help=_flag_help("run directory (re-running resumes)", "out"))
    parser.add_argument("--steps", type=int, help=_flag_help("total optimiser updates", "steps"))
    parser.add_argument("--device", type=device_name, help=_flag_help(DEVICE_CHOICES, "device"))
    parser.add_argument("--print-config", action="store_true",
                        help="print the resolved, validated config as YAML and exit")
    parser.add_argument("--launcher", choices=("local", "slurm"), default="local",
                        help="local: run here; slurm: submit one SLURM job (torchrun across its GPUs and "
                             "nodes) that requeues itself at the time limit and resumes")
    parser.add_argument("--wait", action="store_true", help="slurm: wait for the job to end")
    from .slurm import add_arguments

    add_arguments(parser)
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="any config key, dotted")
    args = parser.parse_args(argv)
    flags = {key: getattr(args, flag) for flag, key in FLAG_KEYS.items()}
    flags["data.subsets"] = args.subsets and args.subsets.split(",")
    return args, {key: value for key, value in flags.items() if value is not None}


def main(argv: list[str] | None = None) -> int:
    args, flags = parse_args(argv)
    cfg = load_config(args.config, args.overrides, flags)
    if args.print_config:
        print(config_yaml(cfg), end="")
        return 0
    if args.launcher == "slurm":
        from .slurm import options_from
        from .slurm_finetune import run as run_on_slurm

        return run_on_slurm(cfg, options_from(args), args.wait)
    try:
        print(train(cfg, linger=True))
        code = 0
    except SystemExit as stop:  # stopped by a signal, state saved: exit 128 + signal
        code = int(stop.code)
    if int(os.environ.get("WORLD_SIZE", 1)) > 1:
        # After a clean destroy_process_group, gloo's C++ threads can still abort the
        # interpreter's final teardown (SIGABRT, "terminate called without an active
        # exception"; seen here in about 1 of 3 two-process test runs). Every file is written
        # and fsynced by now, so a torchrun worker skips that teardown.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code
