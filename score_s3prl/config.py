"""SCORE fine-tuning configuration: typed defaults, YAML files and ``key=value`` overrides.

Every key has a default here (the paper's setting where the paper has one); a YAML file
overrides some of them and command-line ``section.key=value`` pairs override the file.
Unknown keys are errors, so a typo never silently trains with a default.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any, Literal

import yaml

from .errors import ScoreError
from .hashing import json_hash


@dataclass
class DataConfig:
    # whole: whole utterances one per forward pass in a random order, as the official code
    # (batch_size, batch_seconds, crop_seconds unused); crops: length-bucketed batches of
    # crops, faster (deviation from the official code)
    mode: Literal["whole", "crops"] = "whole"
    root: str | None = None  # LibriSpeech root holding the subsets (or use `manifest`)
    subsets: list[str] = field(default_factory=lambda: ["train-clean-100"])  # subsets under root
    manifest: str | None = None  # TSV of `path<TAB>num_samples` used instead of root/subsets
    cache_dir: str | None = None  # where the file scan is cached (default: <out>/cache)
    batch_size: int = 8  # utterances per forward pass at most
    batch_seconds: float = 160.0  # padded seconds per forward pass (>= batch_size x crop_seconds: exact updates)
    crop_seconds: float = 20.0  # longer utterances are randomly cropped to this
    min_seconds: float = 1.0  # shorter utterances are skipped and counted


@dataclass
class ViewsConfig:
    speed_factors: list[float] = field(default_factory=lambda: [0.9, 1.0, 1.1])  # speed perturbation
    semitones: list[float] = field(default_factory=lambda: [-2.0, 2.0])  # pitch shift, equal odds
    swap_prob: float = 0.5  # chance that the perturbed view goes to the student branch


@dataclass
class ModelConfig:
    # official: the whole model (teacher too) in train mode, dropout from the base config, as
    # the official code; frozen-eval: frozen modules and the teacher in eval mode (deviation)
    dropout: Literal["official", "frozen-eval"] = "official"
    head_dim: int = 256  # output size of the shared head
    # linear: Linear(D -> head_dim) (official SCORE HuBERT, LASER); mlp: Linear, ReLU,
    # Linear(head_dim -> head_dim) (official SCORE WavLM, content_preserving_wavlm/expert.py)
    head: Literal["linear", "mlp"] = "linear"
    trainable_layers: int = 2  # top transformer layers that train (paper: 11-12 of 12)
    train_final_norm: bool = True  # the model-level norms the official code trains: SCORE both encoder.layer_norm and layer_norm, LASER encoder.layer_norm only (Base: before layer 1)


@dataclass
class LossConfig:
    gamma: float = 0.1  # soft-DTW smoothing
    bandwidth: int | None = None  # optional Sakoe-Chiba band in frames (null: none)
    alpha: float = 0.4  # LASER only: weight of the temporal regulariser (paper, HuBERT)
    sigma: int = 0  # LASER only: pairs with |i - j| <= sigma are pulled together (paper, HuBERT)
    margin: float = 1.1  # LASER only: hinge margin for the other pairs (paper, HuBERT)


@dataclass
class OptimConfig:
    # s3prl-adamw: s3prl's AdamW (eps added to the uncorrected sqrt(v)), as the official code;
    # torch-adamw: torch.optim.AdamW (deviation)
    optimizer: Literal["s3prl-adamw", "torch-adamw"] = "s3prl-adamw"
    eps: float | None = None  # null: the optimiser's own default (s3prl 1e-7, torch 1e-8)
    # official: warm-up factor k / warmup_updates (lr 0 at the first update, s3prl's
    # linear_schedule_with_warmup); shifted: (k + 1) / warmup_updates (deviation)
    warmup: Literal["official", "shifted"] = "official"
    lr: float = 2.0e-5  # AdamW peak learning rate
    weight_decay: float = 0.0  # AdamW weight decay
    warmup_updates: int = 1000  # linear warm-up from 0 to lr
    total_updates: int = 3600  # then linear decay to 0 at this many updates
    utterances_per_update: int = 8  # batch x accumulation (the paper: 8)
    grad_clip: float = 1.0  # max global gradient norm


@dataclass
class TrainConfig:
    seed: int = 0  # seeds model head, batch order, crops and views: same seed, same run
    init: str = "hubert_base"  # base: hubert_base | converted .pt | fairseq .pt | HF directory
    out: str = "exp/score_hubert_base"  # run directory: checkpoints, logs, TensorBoard, export
    device: str = "auto"  # auto (cuda if available) | cpu | cuda | cuda:N
    method: Literal["score", "laser"] = "score"  # score: frozen teacher; laser: both views through the student + regulariser
    precision: Literal["fp32", "bf16"] = "fp32"  # fp32 as the official code; bf16: autocast on CUDA (faster; ignored on CPU)
    log_every: int = 10  # updates between TensorBoard/CSV log rows
    save_every: int = 200  # updates between resumable checkpoints
    max_bad_losses: int = 10  # abort after this many non-finite losses in a row
    data: DataConfig = field(default_factory=DataConfig)
    views: ViewsConfig = field(default_factory=ViewsConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)


def load_config(
    path: str | os.PathLike | None,
    overrides: list[str] = (),
    values_set: dict[str, Any] | None = None,
) -> TrainConfig:
    """Defaults, then the YAML file at ``path`` (if any), then dotted ``key=value`` overrides
    (values parsed as YAML), then ``values_set`` (dotted key -> value, taken as given)."""
    values: dict[str, Any] = {}
    if path is not None:
        if not os.path.isfile(path):
            raise ScoreError(f"{path}: config file not found")
        with open(path, encoding="utf-8") as handle:
            try:
                values = yaml.safe_load(handle) or {}
            except yaml.YAMLError as exc:
                raise ScoreError(f"{path}: invalid YAML ({exc})") from exc
        if not isinstance(values, dict):
            raise ScoreError(f"{path}: expected a mapping of config keys")
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ScoreError(f"override {item!r}: expected key=value (e.g. optim.lr=1e-5)")
        _set_dotted(values, key.split("."), yaml.safe_load(raw))
    for key, value in (values_set or {}).items():
        _set_dotted(values, key.split("."), value)
    return _build(TrainConfig, values, where=str(path or "config"))


def _set_dotted(values: dict[str, Any], keys: list[str], value: Any) -> None:
    for key in keys[:-1]:
        values = values.setdefault(key, {})
    values[keys[-1]] = value


def _build(cls: type, values: dict[str, Any], where: str):
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ScoreError(f"{where}: unknown config key(s) {', '.join(unknown)}")
    kwargs = {}
    for name, value in values.items():
        default = getattr(cls(), name)
        if dataclasses.is_dataclass(default):
            if not isinstance(value, dict):
                raise ScoreError(f"{where}: `{name}` must be a mapping")
            value = _build(type(default), value, f"{where}: {name}")
        kwargs[name] = value
    return cls(**kwargs)


def config_dict(cfg: TrainConfig) -> dict[str, Any]:
    """The config as plain data (for checkpoints, exports and hashing)."""
    return dataclasses.asdict(cfg)


def config_hash(cfg: TrainConfig) -> str:
    """A short stable hash of everything that shapes the trained weights."""
    data = config_dict(cfg)
    for volatile in ("out", "device", "log_every", "save_every"):
        data.pop(volatile)
    return json_hash(data)
