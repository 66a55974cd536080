"""SCORE fine-tuning configuration: typed defaults, YAML files and ``key=value`` overrides.

Every key has a default here (the paper's setting where the paper has one); a YAML file
overrides some of them and command-line ``section.key=value`` pairs override the file.

Validation is driven by the field annotations, so a field added to these dataclasses is
checked with no further code: pydantic (v2) validates the merged values against them in strict
mode (no bool for an int, no number for a str, no 2.5 for an int, only finite floats,
``Literal[...]`` choices, nested sections as mappings, unknown keys refused). Ranges are
``Annotated`` metadata (``PositiveInt``, ``Probability``, ... below, or any
``Annotated[T, Field(ge=...)]``). Any fault is one :class:`ScoreError` naming the key, the
value and what is expected, raised before any work starts.

Two YAML details are settled here rather than left to the user: ``1e-5`` is a float (YAML 1.1
reads it as a string; YAML 1.2 and every reader of the README read it as a number), and a single
string for a ``list[str]`` key is a one-element list (``data.subsets=train-clean-100`` on the
command line, where a YAML list is awkward to type; a string is never meant as a list of its
characters here).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import types
import typing
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

import yaml
from pydantic import ConfigDict, Field, TypeAdapter, ValidationError

from .errors import ScoreError
from .hashing import json_hash
from .runtime import DEVICE_PATTERN

# Range types for the fields below (pydantic reads the Field constraints from the annotation).
PositiveInt = Annotated[int, Field(ge=1)]
NonNegativeInt = Annotated[int, Field(ge=0)]
PositiveFloat = Annotated[float, Field(gt=0)]
NonNegativeFloat = Annotated[float, Field(ge=0)]
Probability = Annotated[float, Field(ge=0, le=1)]
NonEmptyStr = Annotated[str, Field(min_length=1)]
Device = Annotated[str, Field(pattern=DEVICE_PATTERN)]
# numpy's seed range; the per-update seeds derived from it (train.update_seed) then fit torch's
Seed = Annotated[int, Field(ge=0, lt=2**32)]
# augment.MIN_RATIO: speed factors and pitch ratios 2**(semitones/12) within [0.1, 10]
SpeedFactor = Annotated[float, Field(ge=0.1, le=10.0)]
Semitones = Annotated[float, Field(ge=-39.8, le=39.8)]


@dataclass
class DataConfig:
    # whole: whole utterances one per forward pass in a random order, as the official code
    # (batch_size, crop_seconds unused; a file longer than batch_seconds is refused before
    # training); crops: length-bucketed batches of crops, faster (deviation from the official code)
    mode: Literal["whole", "crops"] = "whole"
    root: NonEmptyStr | None = None  # LibriSpeech root holding the subsets (or use `manifest`)
    subsets: Annotated[list[NonEmptyStr], Field(min_length=1)] = field(default_factory=lambda: ["train-clean-100"])  # subsets under root
    manifest: NonEmptyStr | None = None  # TSV of `path<TAB>num_samples` used instead of root/subsets
    cache_dir: NonEmptyStr | None = None  # where the file scan is cached (default: <out>/cache)
    batch_size: PositiveInt = 8  # utterances per forward pass at most
    batch_seconds: PositiveFloat = 160.0  # padded seconds per forward pass (>= batch_size x crop_seconds: exact updates; whole mode: the longest file)
    crop_seconds: PositiveFloat = 20.0  # longer utterances are randomly cropped to this
    min_seconds: NonNegativeFloat = 1.0  # shorter utterances are skipped and counted


@dataclass
class ViewsConfig:
    speed_factors: Annotated[list[SpeedFactor], Field(min_length=1)] = field(default_factory=lambda: [0.9, 1.0, 1.1])  # speed perturbation
    semitones: Annotated[list[Semitones], Field(min_length=1)] = field(default_factory=lambda: [-2.0, 2.0])  # pitch shift, equal odds
    swap_prob: Probability = 0.5  # chance that the perturbed view goes to the student branch


@dataclass
class ModelConfig:
    # official: the whole model (teacher too) in train mode, dropout from the base config, as
    # the official code; frozen-eval: frozen modules and the teacher in eval mode (deviation)
    dropout: Literal["official", "frozen-eval"] = "official"
    head_dim: PositiveInt = 256  # output size of the shared head
    # linear: Linear(D -> head_dim) (official SCORE HuBERT, LASER); mlp: Linear, ReLU,
    # Linear(head_dim -> head_dim) (official SCORE WavLM, content_preserving_wavlm/expert.py)
    head: Literal["linear", "mlp"] = "linear"
    trainable_layers: NonNegativeInt = 2  # top transformer layers that train (paper: 11-12 of 12)
    train_final_norm: bool = True  # the model-level norms the official code trains: SCORE both encoder.layer_norm and layer_norm, LASER encoder.layer_norm only (Base: before layer 1)


@dataclass
class LossConfig:
    gamma: PositiveFloat = 0.1  # soft-DTW smoothing
    bandwidth: PositiveInt | None = None  # optional Sakoe-Chiba band in frames (null: none)
    alpha: NonNegativeFloat = 0.4  # LASER only: weight of the temporal regulariser (paper, HuBERT)
    sigma: NonNegativeInt = 0  # LASER only: pairs with |i - j| <= sigma are pulled together (paper, HuBERT)
    margin: NonNegativeFloat = 1.1  # LASER only: hinge margin for the other pairs (paper, HuBERT)


@dataclass
class LaserConfig:
    # official: both views of an utterance through the model as one zero-padded batch of 2, as
    # the official collate_fn does (the shorter view's CNN sees the padding, HuBERT's chunk rule
    # masks its frames, round(samples / 320) frames are kept); separate: each view alone,
    # independent of the other's length (deviation). LASER only.
    view_batching: Literal["official", "separate"] = "official"


@dataclass
class OptimConfig:
    # s3prl-adamw: s3prl's AdamW (eps added to the uncorrected sqrt(v)), as the official code;
    # torch-adamw: torch.optim.AdamW (deviation)
    optimizer: Literal["s3prl-adamw", "torch-adamw"] = "s3prl-adamw"
    eps: PositiveFloat | None = None  # null: the optimiser's own default (s3prl 1e-7, torch 1e-8)
    # official: warm-up factor k / warmup_updates (lr 0 at the first update, s3prl's
    # linear_schedule_with_warmup); shifted: (k + 1) / warmup_updates (deviation)
    warmup: Literal["official", "shifted"] = "official"
    lr: PositiveFloat = 2.0e-5  # AdamW peak learning rate
    weight_decay: NonNegativeFloat = 0.0  # AdamW weight decay
    warmup_updates: NonNegativeInt = 1000  # linear warm-up from 0 to lr
    total_updates: PositiveInt = 3600  # then linear decay to 0 at this many updates
    utterances_per_update: PositiveInt = 8  # batch x accumulation (the paper: 8)
    grad_clip: PositiveFloat = 1.0  # max global gradient norm


@dataclass
class MonitorConfig:
    # A held-out signal while fine-tuning: score_s3prl/probe.py's last-layer value for SCORE's
    # views (view / other-utterance divergence) on a few fixed utterances, logged to TensorBoard
    # and train_log.csv, so that a collapse shows while it happens. Not part of the config hash:
    # changing it never blocks a resume.
    every: NonNegativeInt = 200  # updates between probes (0: off); also probed at update 0 and at the end
    audio: NonEmptyStr | None = None  # folder of held-out audio (null: the bundled test-other clips of this checkout)
    utterances: Annotated[int, Field(ge=2)] = 8  # the first N audio files, sorted by path (the probe pairs them)
    max_seconds: Annotated[float, Field(ge=0.5)] = 6.0  # each file cut to its first seconds (bounds the probe's time)


@dataclass
class TrainConfig:
    seed: Seed = 0  # seeds model head, batch order, crops and views: same seed, same run
    init: NonEmptyStr | None = "hubert_base"  # base: a name in checkpoints.bases.BASE_URLS | converted .pt | fairseq .pt | HF directory
    out: NonEmptyStr = "exp/score_hubert_base"  # run directory: checkpoints, logs, TensorBoard, export
    device: Device = "auto"  # auto (cuda if available) | cpu | cuda | cuda:N
    method: Literal["score", "laser"] = "score"  # score: frozen teacher; laser: both views through the student + regulariser
    precision: Literal["fp32", "bf16"] = "fp32"  # fp32 as the official code; bf16: autocast on CUDA (faster; ignored on CPU)
    log_every: PositiveInt = 10  # updates between TensorBoard/CSV log rows
    save_every: PositiveInt = 200  # updates between resumable checkpoints
    max_bad_losses: PositiveInt = 10  # abort after this many non-finite losses in a row
    data: DataConfig = field(default_factory=DataConfig)
    views: ViewsConfig = field(default_factory=ViewsConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    laser: LaserConfig = field(default_factory=LaserConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    monitor: MonitorConfig = field(default_factory=MonitorConfig)


# ----------------------------------------------------------------------------- loading


class _YamlLoader(yaml.SafeLoader):
    """PyYAML's safe loader, reading ``1e-5`` / ``3E4`` (no dot) as floats, as YAML 1.2 does,
    and refusing a key given twice in one mapping (PyYAML keeps the last one silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                continue  # a merge (<<) may be overridden; a complex key is PyYAML's to refuse
            key = self.construct_object(key_node)
            line = key_node.start_mark.line + 1
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (first on line {seen[key]})",
                    key_node.start_mark)
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


_YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def parse_yaml(text: str) -> Any:
    """Parse YAML text as plain data (a SafeLoader subclass: no object construction)."""
    return yaml.load(text, Loader=_YamlLoader)  # noqa: S506


def load_config(
    path: str | os.PathLike | None,
    overrides: list[str] = (),
    values_set: dict[str, Any] | None = None,
) -> TrainConfig:
    """Defaults, then the YAML file at ``path`` (if any), then dotted ``key=value`` overrides
    (values parsed as YAML), then ``values_set`` (dotted key -> value, taken as given).

    Raises:
        ScoreError: one line naming the file, or the key, its value and what is expected.
    """
    values: dict[str, Any] = {}
    if path is not None:
        if not os.path.isfile(path):
            raise ScoreError(f"{path}: config file not found")
        try:
            with open(path, encoding="utf-8") as handle:
                values = parse_yaml(handle.read()) or {}
        except (yaml.YAMLError, UnicodeDecodeError) as exc:
            raise ScoreError(f"{path}: {yaml_problem(exc)}") from exc
        if not isinstance(values, dict):
            raise ScoreError(f"{path}: expected a mapping of config keys, got a {type(values).__name__}")
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key or any(not part for part in key.split(".")):
            raise ScoreError(f"override {item!r}: expected key=value (e.g. optim.lr=1e-5)")
        try:
            value = parse_yaml(raw)
        except yaml.YAMLError:
            raise ScoreError(f"override {item!r}: the value is not valid YAML") from None
        _set_dotted(values, key.split("."), value, f"override {item!r}")
    for key, value in (values_set or {}).items():
        _set_dotted(values, key.split("."), value, f"option {key}")
    return validate(values, where=str(path) if path is not None else None)


def yaml_problem(exc: Exception) -> str:
    """A YAML error as ``invalid YAML at line L, column C: problem`` (1-based, where PyYAML
    knows the place; its ``str`` puts the place on a later line, lost in a one-line error)."""
    if isinstance(exc, UnicodeDecodeError):
        return f"not UTF-8 text (byte {exc.start})"
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    problem = getattr(exc, "problem", None) or (str(exc).splitlines() or [type(exc).__name__])[0]
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    context = getattr(exc, "context", None)
    return f"invalid YAML{where}: {problem}" + (f" ({context})" if context else "")


def config_yaml(cfg: TrainConfig) -> str:
    """The config as YAML that :func:`load_config` reads back to the same config (every key,
    sections in block style, lists inline)."""
    return yaml.dump(config_dict(cfg), Dumper=_YamlDumper, sort_keys=False, allow_unicode=True)


class _YamlDumper(yaml.SafeDumper):
    """PyYAML's safe dumper, writing lists inline (``[0.9, 1.0, 1.1]``) and mappings as blocks."""


_YamlDumper.add_representer(
    list, lambda dumper, data: dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=True))


def _set_dotted(values: dict[str, Any], keys: list[str], value: Any, what: str) -> None:
    for depth, key in enumerate(keys[:-1]):
        values = values.setdefault(key, {})
        if not isinstance(values, dict):
            raise ScoreError(f"{what}: {'.'.join(keys[:depth + 1])} is not a section of the config")
    values[keys[-1]] = value


def _strip(annotation: Any) -> Any:
    """``Annotated[T, ...]`` -> T and ``T | None`` -> T, repeatedly."""
    while True:
        if typing.get_origin(annotation) is Annotated:
            annotation = typing.get_args(annotation)[0]
            continue
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if typing.get_origin(annotation) in (typing.Union, types.UnionType) and len(args) == 1:
            annotation = args[0]
            continue
        return annotation


def _lists_of_one(cls: type, values: dict[str, Any]) -> dict[str, Any]:
    """A single string given for a ``list[str]`` field becomes a one-element list (recursively)."""
    hints = typing.get_type_hints(cls, include_extras=True)
    out = dict(values)
    for name, value in values.items():
        kind = _strip(hints.get(name))
        if dataclasses.is_dataclass(kind) and isinstance(value, dict):
            out[name] = _lists_of_one(kind, value)
        elif typing.get_origin(kind) is list and isinstance(value, str):
            item = (typing.get_args(kind) or (Any,))[0]
            if _strip(item) is str:
                out[name] = [value]
    return out


def _configure(cls: type) -> None:
    """Give ``cls`` and every dataclass section below it the pydantic settings used here."""
    cls.__pydantic_config__ = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False)  # type: ignore[attr-defined]
    for hint in typing.get_type_hints(cls, include_extras=True).values():
        if dataclasses.is_dataclass(_strip(hint)):
            _configure(_strip(hint))


_adapters: dict[type, TypeAdapter] = {}


def _adapter(cls: type) -> TypeAdapter:
    if cls not in _adapters:
        _configure(cls)
        _adapters[cls] = TypeAdapter(cls)
    return _adapters[cls]


def validate(values: dict[str, Any], where: str | None = None, cls: type | None = None) -> Any:
    """Build ``cls`` (default :class:`TrainConfig`) from nested plain ``values``, validated.

    The values pass through JSON: pydantic's strict mode then takes mappings for the nested
    dataclasses (strict Python input would want instances) while scalars stay strict.

    Raises:
        ScoreError: naming the key, the value and what is expected (up to three problems).
    """
    cls = cls or TrainConfig
    source = f" ({where} and overrides)" if where else ""
    try:
        text = json.dumps(_lists_of_one(cls, values), default=str)
        cfg = _adapter(cls).validate_json(text)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        more = f" (+{len(errors) - 3} more)" if len(errors) > 3 else ""
        raise ScoreError(f"config{source}: {'; '.join(_describe(e) for e in errors[:3])}{more}") from None
    if cls is TrainConfig and cfg.data.crop_seconds < cfg.data.min_seconds:
        raise ScoreError(f"config{source}: data.crop_seconds = {cfg.data.crop_seconds} is below "
                         f"data.min_seconds = {cfg.data.min_seconds}: expected crop_seconds >= min_seconds")
    return cfg


# pydantic's wording -> "expected ..."
_PHRASES = (
    (r"^Input should be ", "expected "),
    (r"^String should match pattern ", "expected a string matching "),
    (r"a valid array", "a list ([a, b, ...])"),
    (r"^(List|String) should have at least (\d+) (item|character).*", r"expected at least \2 \3(s)"),
)


def _describe(error: dict[str, Any]) -> str:
    """``key = value: what is expected`` for one pydantic error."""
    key = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in error["loc"]).lstrip(".")
    if error["type"] == "unexpected_keyword_argument":
        return f"unknown config key {key}{_did_you_mean(key)}"
    if error["type"] in ("dataclass_type", "dataclass_exact_type", "dict_type"):
        expected = "expected a mapping of keys (a config section)"
    else:
        expected = error["msg"]
        for pattern, replacement in _PHRASES:
            expected = re.sub(pattern, replacement, expected)
    value = repr(error.get("input"))
    value = value if len(value) <= 60 else value[:57] + "..."  # a whole section given as a value
    return f"{key or 'config'} = {value}: {expected}"


def config_keys(cls: type = TrainConfig, prefix: str = "") -> list[str]:
    """Every dotted key of ``cls``: sections and the keys within them, in declaration order."""
    keys = []
    for name, hint in typing.get_type_hints(cls, include_extras=True).items():
        keys.append(prefix + name)
        if dataclasses.is_dataclass(_strip(hint)):
            keys += config_keys(_strip(hint), f"{prefix}{name}.")
    return keys


def _did_you_mean(key: str) -> str:
    """`` (did you mean K?)`` for an unknown dotted key: the same name in another section, else
    the closest known key (difflib), else nothing."""
    import difflib

    known = config_keys()
    section, _, leaf = key.rpartition(".")
    leaves = {k.rpartition(".")[2] for k in known}
    for name in [leaf] * (leaf in leaves) + difflib.get_close_matches(leaf, leaves, n=3, cutoff=0.6):
        # the same (or a close) name, in the section given first, else in any other
        matches = sorted((k for k in known if k.rpartition(".")[2] == name and k != key),
                         key=lambda k: k.rpartition(".")[0] != section)
        if matches:
            return f" (did you mean {matches[0]}?)"
    return ""


def config_dict(cfg: TrainConfig) -> dict[str, Any]:
    """The config as plain data (for checkpoints, exports and hashing)."""
    return dataclasses.asdict(cfg)


VOLATILE_KEYS = ("out", "device", "log_every", "save_every", "monitor")  # shape no trained weight
# where the corpus sits, not what it is: a resume compares the corpus's content instead
# (train.data_identity), so a run whose data was copied to another disk resumes
DATA_LOCATION_KEYS = ("root", "manifest", "cache_dir")


def config_hash(cfg: TrainConfig) -> str:
    """A short stable hash of everything that shapes the trained weights."""
    data = config_dict(cfg)
    for volatile in VOLATILE_KEYS:
        data.pop(volatile)
    if cfg.method != "laser":  # no effect on SCORE: its runs keep the hash they had before the key
        data.pop("laser")
    return json_hash(data)


def resume_settings(cfg: TrainConfig) -> dict[str, Any]:
    """The settings a resumed run must share with the run it continues, as flat dotted keys:
    everything that shapes the weights except where the data sits."""
    data = config_dict(cfg)
    for volatile in VOLATILE_KEYS:
        data.pop(volatile)
    for key in DATA_LOCATION_KEYS:
        data["data"].pop(key)
    return flatten(data)


def flatten(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def differing_keys(saved: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """``key (saved -> now)`` for each flat key whose value differs (or is on one side only);
    values shown up to 60 characters (a saved file's values may be anything)."""
    def shown(value: Any) -> str:
        text = repr(value)
        return text if len(text) <= 60 else text[:57] + "..."

    missing = object()
    return [f"{key} ({shown(saved.get(key, 'unset'))} -> {shown(now.get(key, 'unset'))})"
            for key in sorted(set(saved) | set(now)) if saved.get(key, missing) != now.get(key, missing)]


def is_plain(value: Any) -> bool:
    """True for JSON-like data (str, int, float, bool, None, and lists / str-keyed dicts of them):
    what a saved settings record may hold before it is compared."""
    if value is None or isinstance(value, (str, int, float, bool)):
        return True
    if isinstance(value, (list, tuple)):
        return all(is_plain(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and is_plain(v) for k, v in value.items())
    return False
