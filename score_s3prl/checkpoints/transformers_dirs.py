"""transformers ``HubertModel`` / ``WavLMModel`` directories: read into s3prl's dicts, and written
from them.

Reading (:func:`convert_hf_dir`): ``config.json`` and the weights (``model.safetensors`` or
``pytorch_model.bin``) become s3prl's converted HuBERT dict or its WavLM dict.

Writing (:func:`write_hf_dir`, behind ``score-s3prl export --format hf``): a converted HuBERT or
WavLM checkpoint becomes a directory with ``config.json``, ``model.safetensors`` and
``preprocessor_config.json`` (a ``Wav2Vec2FeatureExtractor`` with the model's waveform
normalisation), so the model loads with ``transformers.HubertModel.from_pretrained(OUT_DIR)`` (or
``WavLMModel``) and with s3prl's stock ``-u hf_hubert_custom -k OUT_DIR``. Its hidden states equal
the s3prl upstream's to float32 rounding (tests: within 1e-4 absolute on real speech, the HuBERT
directory reader's tolerance).

The weights are renamed from s3prl's (fairseq's) names to transformers' (:mod:`.renaming`) and
loaded strictly into a freshly built transformers model before it is saved, so a name or shape
that does not fit stops the export. Pre-training-only weights (``final_proj``,
``label_embs_concat``) are dropped: transformers' base models have no place for them and feature
extraction never uses them. Needs ``transformers`` and ``safetensors`` (``pip install
-e '.[hf]'`` in a checkout: the package is not on an index).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from ..errors import ScoreError
from ..fileio import give_umask_mode
from .models import base_architecture, build_base, read_checkpoint
from .renaming import hf_to_s3prl_rules, rename_weights, s3prl_to_hf_rules
from .safeload import load_checkpoint, load_safetensors

# s3prl HubertConfig requires a label rate; it only matters for pre-training targets.
DEFAULT_LABEL_RATE = 50.0

# transformers' CNN norm name -> s3prl's extractor mode.
_HF_EXTRACTOR_MODE = {"group": "default", "layer": "layer_norm"}
_HF_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
_PRETRAINING_ONLY = ("final_proj.", "label_embs_concat", "target_glu.")


# ----------------------------------------------------------------------------- reading


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
    rules = hf_to_s3prl_rules(_HF_EXTRACTOR_MODE[config.feat_extract_norm])
    weights = rename_weights(_parametrization_names(_hf_base_weights(directory)), rules,
                             lambda name: f"{directory}: weight {name} has no counterpart in s3prl's HubertModel")
    template = HubertModel(HubertConfig(**model_cfg), HubertPretrainingConfig(**task_cfg), [])
    for name, value in template.state_dict().items():
        weights.setdefault(name, torch.zeros_like(value))
    return {"task_cfg": task_cfg, "model_cfg": model_cfg, "model_weight": weights, "dictionaries_symbols": []}


def convert_hf_wavlm_dir(directory: Path) -> dict[str, Any]:
    """Convert a transformers ``WavLMModel`` directory into s3prl's WavLM dict (``cfg``, ``model``).

    The inverse of :func:`export_hf`'s renaming. transformers' WavLM always has the gated
    relative position bias (``gru_rel_pos``) that WavLM Base and Large use.
    """
    from transformers import WavLMConfig as HFWavLMConfig

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
        "extractor_mode": _HF_EXTRACTOR_MODE[config.feat_extract_norm],
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


def weights_file(directory: Path) -> Path:
    """The weights file of a transformers directory (safetensors first), for reading and hashing."""
    for name in _HF_WEIGHT_FILES:
        if (directory / name).is_file():
            return directory / name
    raise ScoreError(f"{directory}: no transformers weights ({' or '.join(_HF_WEIGHT_FILES)})")


def _hf_base_weights(directory: Path, prefix: str = "hubert.") -> dict[str, torch.Tensor]:
    path = weights_file(directory)
    if path.suffix == ".safetensors":
        weights = load_safetensors(path)
    else:
        weights = load_checkpoint(path, "weights file")
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


# ----------------------------------------------------------------------------- writing


def hf_config(state: dict[str, Any]):
    """The transformers ``HubertConfig`` / ``WavLMConfig`` of an s3prl checkpoint dict.

    The CNN's layout is read from the built s3prl model (not by evaluating the config string).
    """
    import transformers

    model, normalize = build_base(state, "checkpoint")
    arch = base_architecture(state)
    cfg = dict(state["cfg"]) if arch == "wavlm" else dict(state["model_cfg"])
    convs = [block[0] for block in model.feature_extractor.conv_layers]
    encoder = model.encoder
    if model.post_extract_proj is None:
        raise ScoreError("checkpoint: a model without a feature projection has no transformers counterpart")
    mode = cfg.get("extractor_mode", "default")
    common = dict(
        hidden_size=encoder.embedding_dim,
        num_hidden_layers=len(encoder.layers),
        num_attention_heads=cfg.get("encoder_attention_heads", 12),
        intermediate_size=encoder.layers[0].fc1.out_features,
        hidden_act=cfg.get("activation_fn", "gelu"),
        hidden_dropout=cfg.get("dropout", 0.1),
        attention_dropout=cfg.get("attention_dropout", 0.1),
        activation_dropout=cfg.get("activation_dropout", 0.0),
        feat_proj_dropout=cfg.get("dropout_input", 0.0),
        layerdrop=cfg.get("encoder_layerdrop", 0.0),
        do_stable_layer_norm=bool(encoder.layer_norm_first),
        feat_extract_norm={"default": "group", "layer_norm": "layer"}[mode],
        feat_extract_activation="gelu",
        conv_dim=[c.out_channels for c in convs],
        conv_kernel=[c.kernel_size[0] for c in convs],
        conv_stride=[c.stride[0] for c in convs],
        conv_bias=convs[0].bias is not None,
        num_conv_pos_embeddings=encoder.pos_conv[0].kernel_size[0],
        num_conv_pos_embedding_groups=encoder.pos_conv[0].groups,
        layer_norm_eps=1e-5,
    )
    if arch == "wavlm":
        if not cfg.get("relative_position_embedding", False) or not cfg.get("gru_rel_pos", False):
            raise ScoreError("checkpoint: transformers' WavLM needs the gated relative position bias")
        config = transformers.WavLMConfig(**common, num_buckets=cfg["num_buckets"], max_bucket_distance=cfg["max_distance"])
    else:
        config = transformers.HubertConfig(**common, feat_proj_layer_norm=True)
    return config, normalize, mode


def hf_weights(state: dict[str, Any], mode: str) -> dict[str, torch.Tensor]:
    """The checkpoint's weights under transformers' names (pre-training-only ones dropped)."""
    weights = state["model"] if base_architecture(state) == "wavlm" else state["model_weight"]
    kept = {name: tensor for name, tensor in weights.items() if not name.startswith(_PRETRAINING_ONLY)}
    return rename_weights(kept, s3prl_to_hf_rules(mode),
                          lambda name: f"checkpoint: weight {name} has no transformers counterpart")


HF_FILES = ("config.json", "model.safetensors", "preprocessor_config.json")  # what write_hf_dir writes


def export_hf(ckpt: str | os.PathLike, out_dir: str | os.PathLike) -> Path:
    """Write CKPT as a transformers directory in OUT_DIR (:func:`write_hf_dir`); returns OUT_DIR."""
    return write_hf_dir(read_checkpoint(ckpt), out_dir, str(ckpt))


def write_hf_dir(state: dict[str, Any], out_dir: str | os.PathLike, source: str) -> Path:
    """Write a checked checkpoint dict (``source`` names it in errors) as the :data:`HF_FILES` of
    a transformers directory in OUT_DIR; returns OUT_DIR. Its training record is the caller's
    (``score-s3prl export`` writes it without machine paths, beside a model card)."""
    import transformers

    config, normalize, mode = hf_config(state)
    cls = transformers.WavLMModel if base_architecture(state) == "wavlm" else transformers.HubertModel
    model = cls(config)
    weights = hf_weights(state, mode)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    wrong = [k for k in expected if k in weights and weights[k].shape != expected[k].shape]
    if missing or unexpected or wrong:
        raise ScoreError(f"{source}: does not map onto transformers' {cls.__name__}: missing {missing[:3]}, "
                         f"unexpected {unexpected[:3]}, wrong shapes {wrong[:3]}")
    model.load_state_dict(weights, strict=True)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    # safetensors writes through a 0600 temporary file: give the weights the mode of every other file
    give_umask_mode(*out.glob("*.safetensors"))
    # The feature extractor is what transformers pipelines and s3prl's hf_hubert_custom apply
    # before the model: normalisation as the s3prl task config says; attention masks only for
    # layer-norm CNNs (transformers' advice for group-norm models such as HuBERT Base).
    extractor = transformers.Wav2Vec2FeatureExtractor(
        feature_size=1, sampling_rate=16000, padding_value=0.0, do_normalize=normalize,
        return_attention_mask=mode == "layer_norm",
    )
    extractor.save_pretrained(out)
    return out
