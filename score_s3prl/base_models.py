"""Base HuBERT (and WavLM) checkpoints for SCORE fine-tuning, from any of five sources.

``load_base_state(spec)`` accepts

* ``hubert_base``: the checkpoint s3prl's own ``hubert_base`` entry uses, downloaded and
  cached by s3prl's download code (``~/.cache/s3prl/download`` unless s3prl is told otherwise);
* ``wavlm_base``: likewise, s3prl's ``wavlm_base`` checkpoint; a local ``.pt`` in the format
  ``wavlm_local`` reads (``{"cfg", "model"}``) loads too, and stays in that format;
* a path to a ``.pt`` file, recognised by its content: s3prl's converted format, or a fairseq
  HuBERT checkpoint (converted here without fairseq being installed);
* a directory holding a ``transformers`` ``HubertModel`` (``config.json`` and the weights), or a
  ``WavLMModel`` (read into s3prl's WavLM dict).

Every HuBERT source ends as s3prl's converted dict (``task_cfg``, ``model_cfg``, ``model_weight``,
``dictionaries_symbols``), checked by building s3prl's ``HubertModel`` from it, so the export
can merge tuned weights into exactly what was loaded.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from .checkpoint import REQUIRED_KEYS, build_base, is_wavlm_state, rename_weights
from .errors import ScoreError
from .hashing import file_sha256
from .safeload import CheckpointError, load_checkpoint, load_fairseq_checkpoint, plain, resolve_interpolations

# The non-legacy URL in s3prl/upstream/hubert/hubconf.py:hubert_base (s3prl's converted
# format of fairseq's hubert_base_ls960.pt). tests/test_base_models.py checks it is still there.
HUBERT_BASE_URL = "https://huggingface.co/s3prl/converted_ckpts/resolve/main/hubert_base_ls960.pt"
# The URL in s3prl/upstream/wavlm/hubconf.py:wavlm_base (s3prl's {"cfg", "model"} WavLM format).
WAVLM_BASE_URL = "https://huggingface.co/s3prl/converted_ckpts/resolve/main/wavlm_base.pt"

# s3prl HubertConfig requires a label rate; it only matters for pre-training targets.
DEFAULT_LABEL_RATE = 50.0


def load_base_state(spec: str, refresh: bool = False) -> tuple[dict[str, Any], str]:
    """Load a base HuBERT as s3prl's converted dict.

    Args:
        spec: ``hubert_base``, a ``.pt`` checkpoint (converted or fairseq) or a transformers
            ``HubertModel`` directory.
        refresh: re-download ``hubert_base`` even when cached.
    Returns:
        (state, identity): the converted dict, and a string naming the source and the sha256 of
        its weights file, for the export's metadata.
    Raises:
        ScoreError: the source is missing, unreadable, or not a HuBERT of a consistent shape.
    """
    if spec == "hubert_base":
        path = Path(_download(HUBERT_BASE_URL, refresh))
        state, kind = _load_pt(path), "hubert_base"
    elif spec == "wavlm_base":
        path = Path(_download(WAVLM_BASE_URL, refresh, spec))
        state, kind = _load_pt(path), "wavlm_base"
    elif os.path.isdir(spec):
        path = _hf_weights_file(Path(spec))
        state, kind = convert_hf_dir(Path(spec)), f"hf:{Path(spec).resolve()}"
    elif os.path.isfile(spec):
        path = Path(spec)
        state, kind = _load_pt(path), f"local:{path.resolve()}"
    else:
        raise ScoreError(
            f"{spec}: base model not found (expected hubert_base, a .pt checkpoint "
            "or a transformers HubertModel directory)"
        )
    check_base(state, spec)
    return state, f"{kind} sha256:{file_sha256(path)}"


def check_base(state: dict[str, Any], source: str) -> None:
    """Raise a ScoreError naming ``source`` unless ``state`` builds s3prl's HubertModel (or
    WavLM, for a WavLM checkpoint dict) exactly."""
    try:
        build_base(state, source)
    except ScoreError:
        raise
    except Exception as exc:  # bad config values surface as TypeError, AssertionError, ...
        raise ScoreError(f"{source}: not a HuBERT model config ({type(exc).__name__}: {exc})") from exc


def _download(url: str, refresh: bool, name: str = "hubert_base") -> str:
    """A base model (``name``) from s3prl's download cache (see :func:`score_s3prl.download.fetch`);
    only a file that loads as a base model is cached."""
    from .download import fetch

    try:
        return str(fetch(url, refresh=refresh, validate=_load_pt))
    except ScoreError as exc:
        raise ScoreError(f"{name}: {exc}; when offline, pass a local checkpoint") from exc


# ----------------------------------------------------------------------------- .pt files


def _load_pt(path: Path) -> dict[str, Any]:
    """Read a converted or fairseq checkpoint, telling them apart by their keys.

    Both loaders run no code the file names (:mod:`score_s3prl.safeload`): torch's
    weights-only unpickler first, then, for the fairseq objects it refuses, an exact
    allow-list with inert stand-ins.
    """
    try:
        state = load_checkpoint(path)
    except CheckpointError:
        # fairseq checkpoints pickle fairseq objects (label dictionaries, configs, meters)
        state = load_fairseq_checkpoint(path)
    if not isinstance(state, dict):
        raise ScoreError(f"{path}: checkpoint is a {type(state).__name__}, expected a dict")
    if all(key in state for key in REQUIRED_KEYS) or is_wavlm_state(state):
        return state
    if "model" in state and "cfg" in state:
        return convert_fairseq_state(state, str(path))
    raise ScoreError(
        f"{path}: neither an s3prl converted HuBERT checkpoint (keys {', '.join(REQUIRED_KEYS)}) "
        f"nor a fairseq one (keys cfg, model); it has {', '.join(sorted(map(str, state))[:8])}"
    )


def convert_fairseq_state(state: dict[str, Any], source: str) -> dict[str, Any]:
    """Turn a loaded fairseq HuBERT checkpoint into s3prl's converted dict.

    The mapping is s3prl's own (``s3prl.upstream.hubert.convert``): ``cfg.task`` and
    ``cfg.model`` become the configs, ``model`` the weights (s3prl's HubertModel is fairseq's,
    with the same parameter names), and the task's label dictionaries their symbol lists.
    An omegaconf ``cfg`` arrives as stand-ins (see :mod:`score_s3prl.safeload`) and is made
    plain data here, its interpolations resolved.
    """
    cfg = plain(state["cfg"])
    if isinstance(cfg, dict):
        cfg = resolve_interpolations(cfg, source)
    if not isinstance(cfg, dict) or not isinstance(cfg.get("model"), dict):
        raise ScoreError(f"{source}: fairseq checkpoint without a model config (cfg.model)")
    name = str(cfg["model"].get("_name", "hubert"))
    if not name.startswith("hubert"):
        raise ScoreError(f"{source}: a fairseq {name!r} checkpoint, not a HuBERT one")
    dictionaries = (state.get("task_state") or {}).get("dictionaries")
    if dictionaries is None:
        raise ScoreError(f"{source}: fairseq checkpoint without task_state.dictionaries")
    try:
        symbols = [[str(symbol) for symbol in d.symbols] for d in dictionaries]
    except (AttributeError, TypeError) as exc:
        raise ScoreError(f"{source}: unreadable label dictionaries in task_state ({exc})") from exc
    if not isinstance(state["model"], dict):
        raise ScoreError(f"{source}: fairseq checkpoint whose `model` is not a dict of weights")
    return {
        "task_cfg": dict(cfg.get("task") or {}),
        "model_cfg": dict(cfg["model"]),
        "model_weight": state["model"],
        "dictionaries_symbols": symbols,
    }


# ----------------------------------------------------------------------------- transformers

# transformers names -> s3prl names are export's rules read backwards (score_s3prl.export), for
# HuBERT and WavLM alike; transformers' CNN norm name -> s3prl's extractor mode.
_HF_EXTRACTOR_MODE = {"group": "default", "layer": "layer_norm"}
_HF_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def convert_hf_dir(directory: Path) -> dict[str, Any]:
    """Convert a transformers ``HubertModel`` directory into s3prl's converted dict.

    Weights saved from a model with a task head (``HubertForCTC``, ...) keep only the
    ``hubert.`` part. Waveform normalisation comes from ``preprocessor_config.json``
    (``do_normalize``) when present, as the transformers pipeline applies it before the model.
    Weights s3prl keeps but transformers lacks (pre-training ``final_proj``, an absent
    ``masked_spec_embed``) are zeros; they play no part in feature extraction.
    """
    from s3prl.upstream.hubert.hubert_model import HubertConfig, HubertModel, HubertPretrainingConfig

    if _read_json(directory / "config.json", None).get("model_type") == "wavlm":
        return convert_hf_wavlm_dir(directory)
    config = _hf_config(directory)
    model_cfg, task_cfg = _hf_to_s3prl_config(config, _read_json(directory / "preprocessor_config.json", {}), directory)
    from .export import hf_to_s3prl_rules

    rules = hf_to_s3prl_rules(_HF_EXTRACTOR_MODE[config.feat_extract_norm])
    weights = rename_weights(_parametrization_names(_hf_base_weights(directory)), rules,
                             lambda name: f"{directory}: weight {name} has no counterpart in s3prl's HubertModel")
    template = HubertModel(HubertConfig(**model_cfg), HubertPretrainingConfig(**task_cfg), [])
    for name, value in template.state_dict().items():
        weights.setdefault(name, torch.zeros_like(value))
    return {"task_cfg": task_cfg, "model_cfg": model_cfg, "model_weight": weights, "dictionaries_symbols": []}


def convert_hf_wavlm_dir(directory: Path) -> dict[str, Any]:
    """Convert a transformers ``WavLMModel`` directory into s3prl's WavLM dict (``cfg``, ``model``).

    The inverse of ``score_s3prl.export``'s renaming. transformers' WavLM always has the gated
    relative position bias (``gru_rel_pos``) that WavLM Base and Large use.
    """
    from transformers import WavLMConfig as HFWavLMConfig

    from .export import hf_to_s3prl_rules

    config = HFWavLMConfig.from_dict(_read_json(directory / "config.json", None))
    model_cfg, task_cfg = _hf_to_s3prl_config(config, _read_json(directory / "preprocessor_config.json", {}), directory)
    cfg = {key: value for key, value in model_cfg.items() if key != "label_rate"}
    cfg.update(normalize=task_cfg["normalize"], relative_position_embedding=True, gru_rel_pos=True,
               num_buckets=config.num_buckets, max_distance=config.max_bucket_distance)
    inverse = hf_to_s3prl_rules(cfg["extractor_mode"])
    weights = rename_weights(_parametrization_names(_hf_base_weights(directory, prefix="wavlm.")), inverse,
                             lambda name: f"{directory}: weight {name} has no counterpart in s3prl's WavLM")
    return {"cfg": cfg, "model": weights}


def _parametrization_names(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Old-style weight-norm names (``weight_g``, ``weight_v``, older transformers) as the
    parametrization names (``parametrizations.weight.original0/1``) the renaming rules read."""
    return {name.replace("weight_g", "parametrizations.weight.original0").replace(
        "weight_v", "parametrizations.weight.original1"): tensor for name, tensor in weights.items()}


def _hf_config(directory: Path):
    from transformers import HubertConfig as HFHubertConfig

    raw = _read_json(directory / "config.json", None)
    if raw.get("model_type") != "hubert":
        raise ScoreError(f"{directory}/config.json: model_type is {raw.get('model_type')!r}, expected 'hubert'")
    return HFHubertConfig.from_dict(raw)


def _hf_to_s3prl_config(config, preprocessor: dict[str, Any], directory: Path):
    """transformers HubertConfig (+ preprocessor settings) -> s3prl (model_cfg, task_cfg) dicts."""
    unsupported = {
        "conv_pos_batch_norm": getattr(config, "conv_pos_batch_norm", False),
        "feat_proj_layer_norm is false": not getattr(config, "feat_proj_layer_norm", True),  # WavLM: always
        "layer_norm_eps != 1e-5": config.layer_norm_eps != 1e-5,  # s3prl's norms use 1e-5
        "conv_dim[-1] == hidden_size (no projection in s3prl)": config.conv_dim[-1] == config.hidden_size,
        "feat_extract_activation is not gelu": config.feat_extract_activation != "gelu",
        "adapter layers": getattr(config, "adapter_attn_dim", None) is not None,
    }
    problems = [what for what, present in unsupported.items() if present]
    if problems:
        raise ScoreError(f"{directory}/config.json: not convertible to s3prl's HubertModel: {', '.join(problems)}")
    conv = ", ".join(f"({d}, {k}, {s})" for d, k, s in zip(config.conv_dim, config.conv_kernel, config.conv_stride))
    sample_rate = int(preprocessor.get("sampling_rate", 16000))
    model_cfg = {
        "label_rate": DEFAULT_LABEL_RATE,
        "extractor_mode": {"group": "default", "layer": "layer_norm"}[config.feat_extract_norm],
        "encoder_layers": config.num_hidden_layers,
        "encoder_embed_dim": config.hidden_size,
        "encoder_ffn_embed_dim": config.intermediate_size,
        "encoder_attention_heads": config.num_attention_heads,
        "activation_fn": config.hidden_act,
        "dropout": config.hidden_dropout,
        "attention_dropout": config.attention_dropout,
        "activation_dropout": config.activation_dropout,
        "encoder_layerdrop": config.layerdrop,
        "dropout_input": config.feat_proj_dropout,
        "layer_norm_first": config.do_stable_layer_norm,
        "conv_feature_layers": f"[{conv}]",
        "conv_bias": config.conv_bias,
        "conv_pos": config.num_conv_pos_embeddings,
        "conv_pos_groups": config.num_conv_pos_embedding_groups,
    }
    task_cfg = {
        "label_rate": DEFAULT_LABEL_RATE,
        "sample_rate": sample_rate,
        "normalize": bool(preprocessor.get("do_normalize", False)),
    }
    return model_cfg, task_cfg


def _hf_weights_file(directory: Path) -> Path:
    for name in _HF_WEIGHT_FILES:
        if (directory / name).is_file():
            return directory / name
    raise ScoreError(f"{directory}: no transformers weights ({' or '.join(_HF_WEIGHT_FILES)})")


def _hf_base_weights(directory: Path, prefix: str = "hubert.") -> dict[str, torch.Tensor]:
    path = _hf_weights_file(directory)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            weights = load_file(str(path))
        else:
            weights = load_checkpoint(path, "weights file")
    except CheckpointError:
        raise
    except Exception as exc:
        raise ScoreError(f"{path}: cannot read the weights ({exc})") from exc
    if any(name.startswith(prefix) for name in weights):
        # a model with a task head: the base model is under hubert. (wavlm.), the head is dropped
        weights = {name[len(prefix):]: w for name, w in weights.items() if name.startswith(prefix)}
    return weights


def _read_json(path: Path, default: dict[str, Any] | None) -> dict[str, Any]:
    if not path.is_file():
        if default is None:
            raise ScoreError(f"{path}: not found (a transformers model directory needs it)")
        return default
    try:
        with open(path, encoding="utf-8") as f:
            value = json.load(f)
    except (OSError, ValueError) as exc:
        raise ScoreError(f"{path}: not readable JSON ({exc})") from exc
    if not isinstance(value, dict):
        raise ScoreError(f"{path}: expected a JSON object")
    return value
