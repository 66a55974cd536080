"""``score-s3prl finetune``: SCORE / LASER fine-tuning, pretrained HuBERT in, s3prl upstream out.

One file, one loop. Each update draws ``optim.utterances_per_update`` utterances (whole, one
per forward pass, as the official code; or crops in length-bucketed micro-batches), makes an
original and a perturbed view of each, runs the trainable student on one view and the frozen
teacher on the other (LASER: the student on both), and minimises the soft-DTW divergence
between their projected last-layer frames (LASER: plus its temporal regulariser). The run directory holds::

    train_state.pt     resumable state (trainable weights, optimiser, scheduler, RNG, data position)
    train_log.csv      one row per ``log_every`` updates; loss.png plots it at the end
    tensorboard/       TensorBoard scalars
    score_hubert.pt    the export: s3prl's converted HuBERT format plus a ``score`` block
                       (score_wavlm.pt for a WavLM base: the format ``wavlm_local`` reads)

Re-running with the same ``out`` resumes from ``train_state.pt``, also with the data staged at
another path (a SLURM job copying the corpus to its node's disk): a resume compares the settings
and the corpus's content (:func:`data_identity`), not where it sits, and a refusal names the keys
that differ. SIGINT/SIGTERM, and SLURM's pre-timeout signals SIGUSR1/SIGUSR2, save the state at
the next update boundary before exiting, so a pre-empted job loses nothing
(``score-s3prl finetune --launcher slurm`` then requeues it: :mod:`score_s3prl.slurm_finetune`).
"""

from __future__ import annotations

import argparse
import csv
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
from .config import TrainConfig, config_dict, config_hash, differing_keys, load_config, resume_settings
from .errors import ArgumentParser, ScoreError
from .fileio import atomic_open, atomic_torch_save, remove_stale_temps
from .hashing import json_hash

SAMPLE_RATE = 16000
STATE_FILE = "train_state.pt"
LOG_FILE = "train_log.csv"
EXPORT_FILE = "score_hubert.pt"
EXPORT_FILES = {"hubert": EXPORT_FILE, "wavlm": "score_wavlm.pt"}  # by base architecture
LOG_FIELDS = ("update", "loss", "lr", "grad_norm", "audio_hours", "skipped_files", "seconds")


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
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
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
        trainable, saved_hash, saved_base = state["trainable"], state["config_hash"], state.get("base_sha256")
        position = Position(**state["position"])
    except (KeyError, TypeError) as exc:
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
    try:
        with torch.no_grad():
            for name, value in trainable.items():
                params[name].copy_(value)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise ScoreError(f"{path}: unreadable optimiser or scheduler state ({exc}); {start_over}") from exc
    return position


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


def plot_log(csv_path: Path, png_path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(csv_path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    if not rows:
        return
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot([int(r["update"]) for r in rows], [float(r["loss"]) for r in rows])
    ax.set_xlabel("update")
    ax.set_ylabel("soft-DTW divergence / (Tx + Ty)")
    ax.set_title("SCORE fine-tuning loss")
    fig.tight_layout()
    with atomic_open(png_path, "wb") as handle:
        fig.savefig(handle, format="png", dpi=120)
    plt.close(fig)


class StopRequest:
    """Within ``with``: SIGINT/SIGTERM, and SIGUSR1/SIGUSR2 (SLURM's pre-timeout signals:
    ``sbatch --signal``, submitit's ``USR2@90``), set a flag that the loop checks between updates."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)

    def __init__(self) -> None:
        self.signal: int | None = None
        self._previous: dict = {}

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            self._previous = {sig: signal.signal(sig, self._handle) for sig in self.SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum, frame) -> None:
        if self.signal is not None:
            if signum == signal.SIGINT:  # a second Ctrl-C stops at once
                raise KeyboardInterrupt
            return  # SLURM signals each process of a job, then its launcher forwards: one stop is enough
        self.signal = signum


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

    @property
    def state_path(self) -> Path:
        return self.out / STATE_FILE

    @property
    def log_path(self) -> Path:
        return self.out / LOG_FILE


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

    if not cfg.init:
        raise ScoreError("no base model: set `init` (or --init) to a named base (hubert_base, ...), "
                         "a checkpoint or an HF dir")
    out = Path(cfg.out)
    check_split(cfg.optim.utterances_per_update, int(os.environ.get("WORLD_SIZE", 1)))
    out.mkdir(parents=True, exist_ok=True)
    ranks = init_distributed(cfg.device)
    if ranks.main:  # leftovers of writes a kill -9 interrupted (this run dir only)
        remove_stale_temps(out)  # only rank 0 writes here
        if ranks.world == 1:  # every rank writes the scan cache: another host's pids are not ours to judge
            remove_stale_temps(Path(cfg.data.cache_dir or out / "cache"))
    device = pick_device(cfg.device, ranks)
    seed_everything(cfg.seed)  # the same head init on every rank

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

    utterances = load_utterances(cfg, out)
    whole = cfg.data.mode == "whole"  # the official code: whole utterances, one per forward pass
    crop = None if whole else int(cfg.data.crop_seconds * SAMPLE_RATE)
    min_len = int(cfg.data.min_seconds * SAMPLE_RATE)
    share = o.utterances_per_update // ranks.world  # utterances per rank per update (check_split: exact)
    batch_size = 1 if whole else min(cfg.data.batch_size, share)
    # One utterance per batch: the plan's shuffled batch list is a uniformly random order.
    plan = BatchPlan(utterances, cfg.data.batch_seconds, batch_size, cfg.seed,
                     crop_samples=crop, min_samples=min_len)  # too-short files are left out and counted
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
        log_rows=[], started=time.time(),
    )


def train(cfg: TrainConfig) -> Path:
    """Run (or resume) SCORE / LASER fine-tuning as ``cfg`` says; returns the export's path."""
    run = setup(cfg)
    stopped = 0  # the signal that stopped the run, agreed by all ranks (0: none)
    try:
        with StopRequest() as stop:
            while run.position.update < cfg.optim.total_updates:
                stopped = signal_on_any_rank(stop.signal, run.ranks)  # every rank stops at the same update
                if stopped:
                    break
                result = update_step(run)
                if result is not None:
                    log_and_save(run, *result)
    except BaseException:
        if run.writer is not None:  # its writer thread must not be left to interpreter shutdown
            run.writer.close()
        raise
    finally:
        run.bar.close()
    return finish(run, stopped)


def update_step(run: Run) -> tuple[float, torch.Tensor, float] | None:
    """One optimiser update from ``utterances_per_update`` utterances.

    Returns:
        (mean loss, gradient norm, seconds of original-view audio), or None when the loss or
        the gradient was not finite and the update was skipped.
    """
    cfg, position, ranks = run.cfg, run.position, run.ranks
    run.optimizer.zero_grad(set_to_none=True)
    seed = update_seed(cfg.seed, position.update, ranks.rank)
    torch.manual_seed(seed)  # dropout, in the teacher too under model.dropout=official
    run.generator.manual_seed(seed)  # crops and views
    count = loss_sum = seconds = 0.0
    while not all_ranks_done(count >= run.share, ranks):
        batch = next_batch(run)
        if batch is None:
            continue
        wavs, lengths = batch
        s_wav, s_len, t_wav, t_len = run.views(wavs.to(run.device), lengths.to(run.device), run.generator)
        with run.autocast:
            loss, _ = run.model(s_wav, s_len, t_wav, t_len)
        (loss * len(lengths)).backward()  # a sum over utterances: divided by the count below
        count += len(lengths)
        loss_sum += loss.item() * len(lengths)
        seconds += lengths.sum().item() / SAMPLE_RATE
    count, loss_sum, seconds = reduce_update(run.params, count, loss_sum, seconds, ranks)
    grad_norm = torch.nn.utils.clip_grad_norm_(run.params, cfg.optim.grad_clip)
    loss_value = loss_sum / count
    if not (math.isfinite(loss_value) and torch.isfinite(grad_norm)):
        position.bad_in_a_row += 1
        tqdm.write(f"update {position.update + 1}: non-finite loss or gradient ({loss_value}), skipped",
                   file=sys.stderr)
        if position.bad_in_a_row >= cfg.max_bad_losses:
            raise ScoreError(f"{cfg.max_bad_losses} non-finite losses in a row: stopping "
                             f"(the last good state is in {run.state_path})")
        return None
    run.optimizer.step()
    run.scheduler.step()
    position.update, position.bad_in_a_row = position.update + 1, 0
    position.audio_seconds += seconds
    return loss_value, grad_norm, seconds


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
    """Progress bar every update; a log row every ``log_every``; the state every ``save_every``."""
    cfg, position = run.cfg, run.position
    hours, lr = position.audio_seconds / 3600, run.scheduler.get_last_lr()[0]
    run.bar.set_postfix(loss=f"{loss_value:.4f}", lr=f"{lr:.2e}", hours=f"{hours:.2f}", refresh=False)
    run.bar.update(1)
    if not run.ranks.main:
        return
    if position.update % cfg.log_every == 0:
        row = dict(update=position.update, loss=loss_value, lr=lr, grad_norm=grad_norm.item(),
                   audio_hours=hours, skipped_files=position.skipped_files,
                   seconds=round(time.time() - run.started, 1))
        run.log_rows.append(row)
        for key in ("loss", "lr", "grad_norm", "audio_hours"):
            run.writer.add_scalar(f"train/{key}", row[key], position.update)
    if position.update % cfg.save_every == 0:
        save_state(run.state_path, run.model, run.optimizer, run.scheduler, position, cfg,
                   base_sha256(run.base_identity), run.data)
        append_log(run.log_path, run.log_rows)
        run.log_rows = []


def finish(run: Run, stopped: int) -> Path:
    """Save the state and, unless stopped by a signal, export; leave the process group."""
    cfg, position = run.cfg, run.position
    from .checkpoints import base_architecture

    export_path = run.out / EXPORT_FILES[base_architecture(run.base_state)]
    if run.ranks.main:
        save_state(run.state_path, run.model, run.optimizer, run.scheduler, position, cfg,
                   base_sha256(run.base_identity), run.data)
        append_log(run.log_path, run.log_rows)
        run.writer.close()
        if stopped:
            print(f"stopped by signal {stopped} at update {position.update}; re-run to resume",
                  file=sys.stderr)
        else:
            export(export_path, run.base_state, run.base_identity, run.model, cfg, position)
            plot_log(run.log_path, run.out / "loss.png")
            print(f"{position.update} updates, {position.audio_seconds / 3600:.2f} h of audio; skipped "
                  f"{run.plan.num_skipped} too-short and {position.skipped_files} unreadable files",
                  file=sys.stderr)
    if run.ranks.world > 1:  # leave together: a rank exiting alone makes its peers' gloo/NCCL abort
        dist.barrier()
        dist.destroy_process_group()
    if stopped:
        raise SystemExit(128 + stopped)
    return export_path


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


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, dict]:
    parser = ArgumentParser(prog="score-s3prl finetune", description=__doc__.split("\n")[0])
    parser.add_argument("--config", help="YAML config (default: the paper's settings)")
    parser.add_argument("--init", help="base model: a named base (hubert_base, hubert_large_ll60k, wavlm_large, ...; "
                                       "`score-s3prl fetch --help` lists them) | converted .pt | fairseq .pt | HF dir")
    parser.add_argument("--data", help="LibriSpeech root holding the subsets")
    parser.add_argument("--subsets", help="comma-separated subsets, e.g. train-clean-100")
    parser.add_argument("--out", help="run directory (re-running resumes)")
    parser.add_argument("--steps", type=int, help="total optimiser updates")
    parser.add_argument("--device", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--launcher", choices=("local", "slurm"), default="local",
                        help="local: run here (default); slurm: submit one SLURM job (torchrun across "
                             "its GPUs and nodes) that requeues itself at the time limit and resumes")
    parser.add_argument("--wait", action="store_true", help="slurm: wait for the job to end")
    from .slurm import add_arguments

    add_arguments(parser)
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="any config key, dotted")
    args = parser.parse_args(argv)
    flags = {"init": args.init, "data.root": args.data, "out": args.out, "optim.total_updates": args.steps,
             "device": args.device, "data.subsets": args.subsets and args.subsets.split(",")}
    return args, {key: value for key, value in flags.items() if value is not None}


def main(argv: list[str] | None = None) -> int:
    args, flags = parse_args(argv)
    cfg = load_config(args.config, args.overrides, flags)
    if args.launcher == "slurm":
        from .slurm import options_from
        from .slurm_finetune import run as run_on_slurm

        return run_on_slurm(cfg, options_from(args), args.wait)
    try:
        print(train(cfg))
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
