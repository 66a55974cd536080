"""The model card of an exported transformers directory: Hub metadata and ``README.md`` text.

:func:`card_text` is pure: the export's training record (the ``score`` dict a SCORE/LASER export
carries), the SUPERB result rows and a few names in, the README text out. Its front matter is
written by ``huggingface_hub``'s :class:`~huggingface_hub.ModelCardData` (the Hub's own writer
of ``model-index``), so ``huggingface_hub.ModelCard`` reads it back. :func:`read_results` reads the
rows of one checkpoint from a ``score-s3prl superb`` results CSV, and :func:`shareable_record`
turns the training record into one fit to publish: no path of the machine, only file names and
SHA-256 digests.

Facts about the known bases (Hub id, licence and where the licence is stated) are in
:data:`KNOWN_BASES`; a base outside it gets no ``base_model`` nor ``license`` unless given.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Mapping, Sequence

from . import __version__
from .errors import ScoreError
from .recipes import RECIPES


@dataclass(frozen=True)
class KnownBase:
    """A pretrained base as the Hub names it, with its licence and the source of that licence."""

    hub_id: str  # the transformers port on the Hub (base_model)
    license: str  # Hub licence identifier of the released weights
    license_source: str  # where the release states it
    pretraining_data: str | None  # Hub dataset id of the pre-training audio (None: none on the Hub)
    name: str  # for the card's text


# The weights s3prl's named HuBERT / WavLM bases download are conversions of the original releases:
# fairseq's hubert_base_ls960.pt / hubert_large_ll60k.pt (examples/hubert) and microsoft/unilm's
# WavLM-Base.pt, WavLM-Base+.pt, WavLM-Large.pt. Both repositories are MIT licensed. (The Hub card of
# the transformers port facebook/hubert-base-ls960 declares apache-2.0; the card names the release
# the weights come from.) Keys: names of checkpoints.bases.BASE_URLS. A named base not listed here
# (contentvec, robust or multilingual HuBERTs, ...) gets no base_model nor licence: give them.
_FAIRSEQ = ("fairseq's LICENSE (MIT), the repository that released {} (examples/hubert), which s3prl's "
            "{} converts")
_UNILM = ("microsoft/unilm's LICENSE (MIT), which wavlm/README.md names as the project's licence; it "
          "released {}, which s3prl's {} converts")
_HUBERT_BASE = KnownBase(hub_id="facebook/hubert-base-ls960", license="mit",
                         license_source=_FAIRSEQ.format("hubert_base_ls960.pt", "hubert_base"),
                         pretraining_data="openslr/librispeech_asr", name="HuBERT Base (LibriSpeech 960 h)")
_WAVLM_BASE_PLUS = KnownBase(hub_id="microsoft/wavlm-base-plus", license="mit",
                             license_source=_UNILM.format("WavLM-Base+.pt", "wavlm_base_plus"), pretraining_data=None,
                             name="WavLM Base+ (Libri-Light, GigaSpeech, VoxPopuli: 94k h)")
KNOWN_BASES: dict[str, KnownBase] = {
    "hubert": _HUBERT_BASE,  # s3prl's default HuBERT
    "hubert_base": _HUBERT_BASE,
    "hubert_large_ll60k": KnownBase(
        hub_id="facebook/hubert-large-ll60k", license="mit",
        license_source=_FAIRSEQ.format("hubert_large_ll60k.pt", "hubert_large_ll60k"), pretraining_data=None,
        name="HuBERT Large (Libri-Light 60k h)"),
    "wavlm": _WAVLM_BASE_PLUS,  # s3prl's default WavLM
    "wavlm_base": KnownBase(
        hub_id="microsoft/wavlm-base", license="mit", license_source=_UNILM.format("WavLM-Base.pt", "wavlm_base"),
        pretraining_data="openslr/librispeech_asr", name="WavLM Base (LibriSpeech 960 h)"),
    "wavlm_base_plus": _WAVLM_BASE_PLUS,
    "wavlm_large": KnownBase(
        hub_id="microsoft/wavlm-large", license="mit", license_source=_UNILM.format("WavLM-Large.pt", "wavlm_large"),
        pretraining_data=None, name="WavLM Large (Libri-Light, GigaSpeech, VoxPopuli: 94k h)"),
}
LIBRISPEECH = "openslr/librispeech_asr"  # Hub dataset id
LIBRISPEECH_SPLITS = ("train-clean-100", "train-clean-360", "train-other-500", "dev-clean", "dev-other",
                      "test-clean", "test-other")

# How a SUPERB row of the results CSV reads in model-index: task -> (task type, task name, dataset
# type, dataset name, dataset config, dataset split). Only the reported protocol's split (the
# recipe's test split) is shown: QbE layer sweeps and dev rows stay in the CSV. PR and QbE have no
# Hub task type; theirs are named here (a Hub groups model-index results by task type and dataset,
# so PR under ASR's type would be listed as an ASR result).
SUPERB_TASKS: dict[str, tuple[str, str, str, str, str | None, str]] = {
    "asr": ("automatic-speech-recognition", "SUPERB ASR", LIBRISPEECH, "LibriSpeech test-clean", "clean", "test"),
    "pr": ("phoneme-recognition", "SUPERB PR", LIBRISPEECH,
           "LibriSpeech test-clean", "clean", "test"),
    "qbe": ("query-by-example-spoken-term-detection", "SUPERB QbE", "quesst14", "QUESST 2014 English (eval)",
            None, "eval"),
}
METRIC_NAMES = {"wer": "WER (%)", "per": "PER (%)", "mtwv": "MTWV", "mtwv_official": "MTWV (official scorer)"}
RESULT_COLUMNS = ("task", "metric", "upstream", "checkpoint", "split", "value", "relative_gain_vs_baseline_%")


@dataclass(frozen=True)
class CardResult:
    """One SUPERB measurement of the exported model: its results CSV rows of one task, metric and
    split, one per downstream seed."""

    task: str  # asr, pr, qbe
    metric: str  # wer, per, mtwv, mtwv_official
    split: str  # the CSV's split (the recipe's test split)
    values: tuple[float, ...]  # one per seed, by seed
    gains: tuple[float | None, ...] = ()  # relative gain vs the baseline system, per seed (None: none)
    notes: tuple[tuple[str, str], ...] = ()  # what the run recorded beside the rows (PR: its lexicon)

    @property
    def value(self) -> float:
        """The mean over seeds (the model-index value)."""
        return sum(self.values) / len(self.values)

    @property
    def relative_gain_pct(self) -> float | None:
        """The mean of the per-seed gains (paired by seed in the CSV); None when a seed has none."""
        if not self.gains or any(g is None for g in self.gains):
            return None
        return sum(self.gains) / len(self.gains)  # type: ignore[arg-type]

    def eval_result(self):
        """The model-index entry (``huggingface_hub.EvalResult``)."""
        from huggingface_hub import EvalResult

        task_type, task_name, dataset_type, dataset_name, config, split = SUPERB_TASKS[self.task]
        name = METRIC_NAMES.get(self.metric, self.metric)
        if len(self.values) > 1:
            name += f", mean of {len(self.values)} seeds"
        return EvalResult(task_type=task_type, task_name=task_name, dataset_type=dataset_type,
                          dataset_name=dataset_name, dataset_config=config, dataset_split=split,
                          metric_type=self.metric, metric_name=name, metric_value=self.value)


def read_results(csv_path: str | os.PathLike, checkpoint: str | os.PathLike) -> list[CardResult]:
    """The SUPERB rows of ``checkpoint`` in a ``score-s3prl superb`` results CSV.

    A row belongs to the checkpoint when its ``checkpoint`` column is the same file (the path the
    runner recorded), or, when no row names that path, when exactly one recorded checkpoint has
    the same file name (the CSV of a run on another machine). Only each task's reported split
    counts. Rows of several downstream seeds (the ``seed`` column) make one result; of repeated
    rows of one seed the last is kept.

    Raises:
        ScoreError: one line naming the CSV and the problem: unreadable, not a results CSV, a bad
            value, or no row of this checkpoint.
    """
    path = Path(csv_path)
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            missing = [c for c in RESULT_COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                raise ScoreError(f"{path}: not a SUPERB results CSV (no column {missing[0]!r})")
            rows = [(number, row) for number, row in enumerate(reader, start=2)]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise ScoreError(f"{path}: cannot read the results CSV ({exc})") from exc
    target = Path(checkpoint).resolve()
    recorded = {row["checkpoint"] for _, row in rows if row["checkpoint"]}
    same = {c for c in recorded if Path(c) == target or (os.path.exists(c) and Path(c).resolve() == target)}
    if not same:
        same = {c for c in recorded if PurePosixPath(c).name == target.name}
        if len(same) > 1:
            raise ScoreError(f"{path}: no row names {target}, and {len(same)} recorded checkpoints are named "
                             f"{target.name}; export the checkpoint the runner measured")
    if not same:
        names = ", ".join(sorted(PurePosixPath(c).name for c in recorded)[:5]) or "none"
        raise ScoreError(f"{path}: no SUPERB row of {target.name} (checkpoints in the CSV: {names})")
    kept: dict[tuple[str, str, str], dict[str, tuple[float, float | None]]] = {}  # -> seed -> (value, gain)
    notes: dict[tuple[str, str, str], dict[str, str]] = {}
    for number, row in rows:
        recipe = RECIPES.get(row["task"])
        if row["checkpoint"] not in same or row["task"] not in SUPERB_TASKS or recipe is None \
                or row["split"] != recipe.test_split:
            continue
        gain = row["relative_gain_vs_baseline_%"]
        key = (row["task"], row["metric"], row["split"])
        kept.setdefault(key, {})[row.get("seed") or ""] = (
            _number(row["value"], path, number, "value"),
            _number(gain, path, number, "relative gain") if gain else None)
        notes.setdefault(key, {}).update(_recorded_detail(row["run_dir"], row["split"]))
    if not kept:
        raise ScoreError(f"{path}: rows of {target.name}, but none on a SUPERB test split")
    order = list(SUPERB_TASKS)
    results = []
    for (task, metric, split), by_seed in sorted(kept.items(), key=lambda kv: (order.index(kv[0][0]), kv[0][1])):
        seeds = sorted(by_seed, key=lambda seed: (len(seed), seed))  # numerically, for digit strings
        results.append(CardResult(task=task, metric=metric, split=split, values=tuple(by_seed[k][0] for k in seeds),
                                  gains=tuple(by_seed[k][1] for k in seeds),
                                  notes=tuple(sorted(notes[(task, metric, split)].items()))))
    return results


RECORDED_DETAIL = ("lexicon",)  # what a score stage's detail names that a reader must know (PR: its labels)


def _recorded_detail(run_dir: str | None, split: str) -> dict[str, str]:
    """The :data:`RECORDED_DETAIL` the runner's score marker beside ``run_dir`` holds
    (``<unit>/score-<split>.done.json``), when this machine has it; else nothing."""
    if not run_dir:
        return {}
    marker = Path(run_dir).parent / f"score-{split}.done.json"
    try:
        detail = json.loads(marker.read_text(encoding="utf-8"))["outputs"]["detail"]
    except (OSError, ValueError, KeyError, TypeError):
        return {}
    if not isinstance(detail, dict):
        return {}
    return {k: strip_paths(detail[k]) for k in RECORDED_DETAIL if isinstance(detail.get(k), str)}


def _number(text: str | None, path: Path, line: int, what: str) -> float:
    try:
        value = float(text)  # type: ignore[arg-type]
    except (TypeError, ValueError):  # None: a short row
        value = math.nan
    if not math.isfinite(value):
        raise ScoreError(f"{path}:{line}: {what} {text!r} is not a finite number")
    return value


# ----------------------------------------------------------------------------- no machine paths


# an absolute path (POSIX, home-relative or a Windows drive) at the start of a string or after a
# space, ``=`` or a ``kind:`` prefix; not the ``//`` of a URL
_ABSOLUTE = re.compile(r"(?P<prefix>^|[\s:=])(?P<path>(?:/(?!/)|~/|[A-Za-z]:[\\/])[^\s,;]*)")
RUN_ONLY_KEYS = ("out", "device", "cache_dir")  # where and on what the run happened: not the model's


def strip_paths(value: Any) -> Any:
    """``value`` with every absolute path inside its strings replaced by the file name
    (``local:/data/x/base.pt sha256:..`` -> ``local:base.pt sha256:..``), recursively."""
    if isinstance(value, str):
        return _ABSOLUTE.sub(lambda m: m["prefix"] + (PurePosixPath(m["path"].replace("\\", "/")).name or "/"),
                             value)
    if isinstance(value, Mapping):
        return {key: strip_paths(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [strip_paths(item) for item in value]
    return value


def shareable_record(score: Mapping[str, Any], checkpoint_name: str, checkpoint_sha256: str) -> dict[str, Any]:
    """The export's training record as it may be published: the run-only keys of its config
    (run folder, device, cache folder) dropped, every other path cut to its file name, and the
    exported checkpoint named by file name and SHA-256."""
    record = dict(score)
    config = dict(record.get("config") or {})
    for key in RUN_ONLY_KEYS:
        config.pop(key, None)
    if isinstance(config.get("data"), Mapping):
        config["data"] = {k: v for k, v in config["data"].items() if k not in RUN_ONLY_KEYS}
    if config:
        record["config"] = config
    record = strip_paths(record)
    record["exported_from"] = {"file": PurePosixPath(checkpoint_name).name, "sha256": checkpoint_sha256}
    return record


# ----------------------------------------------------------------------------- the card


def known_base(score: Mapping[str, Any] | None, base_model: str | None = None) -> KnownBase | None:
    """The :data:`KNOWN_BASES` entry of the export: by ``base_model`` (a Hub id) when given, else by
    the base the training record names (``hubert_base sha256:...``)."""
    if base_model:
        return next((b for b in KNOWN_BASES.values() if b.hub_id == base_model), None)
    identity = str((score or {}).get("base_model", ""))
    return KNOWN_BASES.get(identity.split(" ", 1)[0].split(":", 1)[0])


def card_text(
    *,
    architecture: str,
    score: Mapping[str, Any] | None,
    results: Sequence[CardResult] = (),
    model_name: str,
    repo_id: str | None = None,
    base_model: str | None = None,
    license: str | None = None,
) -> str:
    """The README.md of an exported directory: YAML front matter, then the card.

    Args:
        architecture: ``hubert`` or ``wavlm`` (the transformers class).
        score: the export's training record (None for a checkpoint that carries none).
        results: SUPERB rows of this model (:func:`read_results`), for ``model-index``.
        model_name: the name in ``model-index`` and the title.
        repo_id: the Hub repository the card is for (usage snippets); None: a local folder.
        base_model, license: override what :data:`KNOWN_BASES` says (a base it does not know).
    """
    from huggingface_hub import ModelCardData

    base = known_base(score, base_model)
    base_id = base_model or (base.hub_id if base else None)
    method = str((score or {}).get("method", "")).lower() or None
    config = (score or {}).get("config") or {}
    subsets = list((config.get("data") or {}).get("subsets") or [])
    datasets = []
    if any(s in LIBRISPEECH_SPLITS for s in subsets) or (base and base.pretraining_data == LIBRISPEECH):
        datasets.append(LIBRISPEECH)
    if results and any(r.task == "qbe" for r in results):
        datasets.append("quesst14")
    data = ModelCardData(
        library_name="transformers",
        base_model=base_id,
        license=license or (base.license if base else None),
        datasets=datasets or None,
        language="en" if LIBRISPEECH in datasets else None,
        pipeline_tag="feature-extraction",
        tags=["score-s3prl", "s3prl", *([method] if method else []), architecture, "speech",
              "self-supervised-learning", "superb"],
        model_name=model_name if results else None,
        eval_results=[r.eval_result() for r in results] or None,
    )
    where = repo_id or "path/to/this/folder"
    parts = [f"---\n{data.to_yaml()}\n---\n", f"# {model_name}\n", _summary(architecture, method, base, base_id),
             _usage(architecture, where), _training(score, base), _results(results), _provenance(score, license, base)]
    return "\n".join(p for p in parts if p)


_METHODS = {
    "score": "SCORE (self-supervised correspondence fine-tuning; Meghanani & Hain, ICASSP 2024, "
             "arXiv 2403.06260): a frozen teacher and the tuned student see an utterance and its speed- "
             "and pitch-perturbed copy; a soft-DTW divergence pulls their last-layer features together",
    "laser": "LASER (Meghanani & Hain, Interspeech 2024, arXiv 2406.09153): both views pass through the "
             "tuned model; a soft-DTW divergence plus a temporal regulariser",
}


def _summary(architecture: str, method: str | None, base: KnownBase | None, base_id: str | None) -> str:
    cls = "WavLMModel" if architecture == "wavlm" else "HubertModel"
    source = base.name if base else (f"`{base_id}`" if base_id else "a base model named in `score_s3prl.json`")
    how = _METHODS.get(method or "", "fine-tuning with score-s3prl")
    return (f"A transformers `{cls}` fine-tuned from {source} with {how}. Exported by score-s3prl "
            f"{__version__} (`score-s3prl export --format hf`). It is a feature extractor: 16 kHz audio in, "
            "hidden states out; it has no head of its own.\n")


def _usage(architecture: str, where: str) -> str:
    cls = "WavLMModel" if architecture == "wavlm" else "HubertModel"
    text = f"""## Use

With transformers:

```python
import torch
from transformers import AutoFeatureExtractor, {cls}

extractor = AutoFeatureExtractor.from_pretrained("{where}")
model = {cls}.from_pretrained("{where}").eval()
waveform = torch.zeros(16000)  # 1 s of 16 kHz mono audio
inputs = extractor(waveform.numpy(), sampling_rate=16000, return_tensors="pt")
with torch.no_grad():
    hidden_states = model(**inputs, output_hidden_states=True).hidden_states  # input + one per layer
```
"""
    if architecture == "wavlm":
        return text + ("\nWith s3prl: s3prl has no stock entry for transformers WavLM directories; "
                       "score-s3prl reads this folder (`score-s3prl finetune --init FOLDER`), and s3prl's "
                       "`wavlm_local` reads the `.pt` export it was made from.\n")
    return text + f"""
With s3prl (its stock entry for transformers HuBERT directories):

```python
import s3prl.hub

upstream = s3prl.hub.hf_hubert_custom(ckpt="{where}").eval()
hidden_states = upstream([waveform])["hidden_states"]
```

or as a SUPERB upstream: `python run_downstream.py -u hf_hubert_custom -k {where} ...`.
"""


def _training(score: Mapping[str, Any] | None, base: KnownBase | None) -> str:
    if not score:
        return "## Training\n\nThe checkpoint carried no training record.\n"
    config = score.get("config") or {}
    data, optim, model, views = (config.get(k) or {} for k in ("data", "optim", "model", "views"))
    loss = config.get("loss") or {}
    rows = [
        ("method", str(score.get("method", "?"))),
        ("base model", base.name if base else str(strip_paths(score.get("base_model", "?")))),
        ("data", ", ".join(data.get("subsets") or []) or ("a manifest" if data.get("manifest") else "?")),
        ("updates", str(score.get("updates", "?"))),
        ("audio processed", f"{float(score.get('audio_hours', math.nan)):.2f} h"),
        ("utterances per update", str(optim.get("utterances_per_update", "?"))),
        ("optimiser", f"{optim.get('optimizer', '?')}, lr {optim.get('lr', '?')}, linear warm-up over "
                      f"{optim.get('warmup_updates', '?')} updates, linear decay to 0 at update "
                      f"{optim.get('total_updates', '?')}"),
        ("trainable", f"top {model.get('trainable_layers', '?')} transformer layers"),
        ("views", f"speed {views.get('speed_factors', '?')}, pitch {views.get('semitones', '?')} semitones"),
        ("soft-DTW gamma", str(loss.get("gamma", "?"))),
        ("seed", str(config.get("seed", "?"))),
        ("config hash", f"`{score.get('config_hash', '?')}`"),
        ("score-s3prl", str(score.get("score_s3prl_version", "?"))),
    ]
    if str(score.get("method", "")).lower() == "laser":
        rows.insert(-3, ("LASER regulariser", f"alpha {loss.get('alpha')}, sigma {loss.get('sigma')}, "
                                              f"margin {loss.get('margin')}"))
    table = "\n".join(f"| {k} | {v} |" for k, v in rows)
    return f"## Training\n\n| setting | value |\n|---|---|\n{table}\n\nThe full settings are in `score_s3prl.json`.\n"


def _results(results: Sequence[CardResult]) -> str:
    if not results:
        return ""
    lines = ["## SUPERB results", "",
             "From the `score-s3prl superb` results CSV (stock s3prl recipes; PR at lr 5e-4, QbE on the last layer).",
             "", "| task | split | metric | value (mean) | seeds | per seed | relative gain vs the run's baseline |",
             "|---|---|---|---|---|---|---|"]
    for r in results:
        gain = "-" if r.relative_gain_pct is None else f"{r.relative_gain_pct:+.2f} % (mean over seeds)"
        per_seed = ", ".join(f"{v:.6g}" for v in r.values)
        lines.append(f"| {r.task} | {r.split} | {METRIC_NAMES.get(r.metric, r.metric)} | {r.value:.6g} | "
                     f"{len(r.values)} | {per_seed} | {gain} |")
    lines += [""] + [f"{r.task} {key}: {value}" for r in results for key, value in r.notes] + [
        "", "The gains carry no interval here: with few seeds they are no evidence of a difference by themselves.", ""]
    return "\n".join(lines)


def _provenance(score: Mapping[str, Any] | None, license: str | None, base: KnownBase | None) -> str:
    lines = ["## Provenance", "",
             "`score_s3prl.json` holds the training record: the settings, the base model and the exported "
             "checkpoint by file name and SHA-256."]
    if license:
        lines.append(f"\nLicence `{license}` as given at export.")
    elif base:
        lines.append(f"\nLicence `{base.license}`, the base model's: {base.license_source}.")
    else:
        lines.append("\nNo licence is declared: the base model is not one score-s3prl knows; its licence applies.")
    return "\n".join(lines) + "\n"
