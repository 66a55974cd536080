"""HuBERT checkpoints in s3prl's converted format, and a tiny random HuBERT for tests and demos.

The converted format (what s3prl's ``hubert_base`` downloads and ``hubert_local -k`` reads) is
a dict::

    task_cfg              dict of HubertPretrainingConfig fields
    model_cfg             dict of HubertConfig fields
    model_weight          strict state_dict of s3prl.upstream.hubert.hubert_model.HubertModel
    dictionaries_symbols  list of label vocabularies (lists of str)
    score                 optional: metadata written by SCORE fine-tuning (ignored by s3prl)
"""

from __future__ import annotations

import os
import re
from typing import Any, Callable, Sequence

import torch

from .errors import ScoreError
from .fileio import atomic_torch_save

REQUIRED_KEYS = ("task_cfg", "model_cfg", "model_weight", "dictionaries_symbols")

# 7 conv layers with HuBERT's strides (5*2*2*2*2*2*2 = 320 samples per frame), 8 channels.
TINY_CONV_LAYERS = "[(8, 10, 5)] + [(8, 3, 2)] * 4 + [(8, 2, 2)] * 2"


def read_converted(path: str | os.PathLike) -> dict[str, Any]:
    """Load and check a converted checkpoint file.

    Raises:
        ScoreError: the file is missing, is not a torch file, or lacks a required key.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ScoreError(f"{path}: checkpoint not found")
    from .safeload import load_checkpoint

    state = load_checkpoint(path)  # weights only: a checkpoint cannot choose code to run
    if not isinstance(state, dict):
        raise ScoreError(f"{path}: checkpoint is a {type(state).__name__}, expected a dict")
    missing = [key for key in REQUIRED_KEYS if key not in state]
    if missing:
        raise ScoreError(
            f"{path}: not an s3prl converted HuBERT checkpoint (missing {', '.join(missing)})"
        )
    return state


def _first_line(exc: BaseException) -> str:
    """The first line of an error's message: a ScoreError stays one line."""
    return (str(exc).splitlines() or [""])[0]


def build_hubert(state: dict[str, Any], source: str = "<checkpoint>"):
    """Build s3prl's ``HubertModel`` from a converted checkpoint dict and load its weights.

    Returns:
        (model, task_cfg): the model in eval mode and its ``HubertPretrainingConfig``.
    Raises:
        ScoreError: naming ``source``, when weights are missing, unexpected or of the wrong shape.
    """
    from s3prl.upstream.hubert.hubert_model import (
        HubertConfig,
        HubertModel,
        HubertPretrainingConfig,
    )
    from s3prl.upstream.utils import merge_with_parent

    weights = state["model_weight"]
    if not isinstance(weights, dict) or not all(isinstance(w, torch.Tensor) for w in weights.values()):
        raise ScoreError(f"{source}: model_weight is not a dict of tensors")
    try:
        task_cfg = merge_with_parent(HubertPretrainingConfig, dict(state["task_cfg"]))
        model_cfg = merge_with_parent(HubertConfig, dict(state["model_cfg"]))
        model = HubertModel(model_cfg, task_cfg, state["dictionaries_symbols"])
    except Exception as exc:  # a crafted config surfaces as TypeError, ValueError, AssertionError, ...
        raise ScoreError(f"{source}: not a HuBERT model config ({type(exc).__name__}: {_first_line(exc)})") from exc
    check_state_dict(model, state["model_weight"], source)
    model.load_state_dict(state["model_weight"])
    return model.eval(), task_cfg


def check_state_dict(model: torch.nn.Module, weights: dict[str, torch.Tensor], source: str) -> None:
    """Raise a ScoreError naming ``source`` if ``weights`` does not fit ``model`` exactly."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    wrong = [
        f"{key} {tuple(weights[key].shape)} != {tuple(expected[key].shape)}"
        for key in expected
        if key in weights and weights[key].shape != expected[key].shape
    ]
    problems = []
    if missing:
        problems.append(f"missing weights {_first(missing)}")
    if unexpected:
        problems.append(f"unexpected weights {_first(unexpected)}")
    if wrong:
        problems.append(f"wrong shapes {_first(wrong)}")
    if problems:
        raise ScoreError(f"{source}: weights do not fit the model config: {'; '.join(problems)}")


def _first(items: list[str], n: int = 3) -> str:
    more = f" (+{len(items) - n} more)" if len(items) > n else ""
    return ", ".join(items[:n]) + more


def write_converted(
    path: str | os.PathLike,
    task_cfg: dict[str, Any],
    model_cfg: dict[str, Any],
    model_weight: dict[str, torch.Tensor],
    dictionaries_symbols: list[list[str]],
    score: dict[str, Any] | None = None,
) -> None:
    """Write a converted checkpoint atomically (a killed write leaves the old file intact)."""
    state: dict[str, Any] = {
        "task_cfg": dict(task_cfg),
        "model_cfg": dict(model_cfg),
        "model_weight": {k: v.detach().cpu().contiguous() for k, v in model_weight.items()},
        "dictionaries_symbols": [list(symbols) for symbols in dictionaries_symbols],
    }
    if score is not None:
        state["score"] = score
    atomic_torch_save(state, path)


def tiny_hubert_state(
    seed: int = 0,
    layers: int = 4,
    dim: int = 32,
    heads: int = 2,
    ffn_dim: int = 64,
) -> dict[str, Any]:
    """A randomly initialised HuBERT with the real architecture at toy width, as a converted dict.

    The frame rate is HuBERT's (320 samples per frame at 16 kHz), so everything downstream
    (s3prl hooks, featurizer, downsample rates) behaves as with HuBERT Base.
    """
    model_cfg = {
        "encoder_layers": layers,
        "encoder_embed_dim": dim,
        "encoder_ffn_embed_dim": ffn_dim,
        "encoder_attention_heads": heads,
        "final_dim": dim // 2,
        "conv_feature_layers": TINY_CONV_LAYERS,
        "conv_pos": 16,
        "conv_pos_groups": 4,
    }
    return random_hubert_state(model_cfg, seed)


def random_hubert_state(model_cfg: dict[str, Any] | None = None, seed: int = 0) -> dict[str, Any]:
    """A randomly initialised HuBERT as a converted dict; ``model_cfg`` entries override
    HubertConfig's defaults, which are HuBERT Base's (12 x 768, 512-channel CNN): the default
    is HuBERT Base with random weights, for speed benchmarks."""
    from s3prl.upstream.hubert.hubert_model import (
        HubertConfig,
        HubertModel,
        HubertPretrainingConfig,
    )

    task_cfg = {"label_rate": 50.0, "sample_rate": 16000, "normalize": False}
    model_cfg = {"label_rate": 50.0, **(model_cfg or {})}
    dictionaries = [[f"c{i}" for i in range(8)]]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = HubertModel(
            HubertConfig(**model_cfg), HubertPretrainingConfig(**task_cfg), dictionaries
        )
    return {
        "task_cfg": task_cfg,
        "model_cfg": model_cfg,
        "model_weight": model.state_dict(),
        "dictionaries_symbols": dictionaries,
    }


# ----------------------------------------------------------------------------- WavLM
#
# s3prl's ``wavlm_local -k`` reads a dict ``{"cfg": WavLMConfig fields, "model": strict
# state_dict of s3prl.upstream.wavlm.WavLM.WavLM}`` (what ``wavlm_base`` downloads). A SCORE
# export of a WavLM base is that dict plus a ``score`` block, which stock s3prl ignores.

WAVLM_KEYS = ("cfg", "model")


def is_wavlm_state(state: Any) -> bool:
    """True for s3prl's WavLM checkpoint dict. A fairseq checkpoint also has ``cfg`` and
    ``model``, but its ``cfg`` holds ``model``/``task`` sections and WavLM's is flat."""
    return (
        isinstance(state, dict)
        and all(key in state for key in WAVLM_KEYS)
        and isinstance(state["cfg"], dict)
        and "model" not in state["cfg"]
        and "encoder_layers" in state["cfg"]
    )


def base_architecture(state: dict[str, Any]) -> str:
    """``"wavlm"`` or ``"hubert"``: which s3prl model a base state dict builds."""
    return "wavlm" if is_wavlm_state(state) else "hubert"


def build_wavlm(state: dict[str, Any], source: str = "<checkpoint>"):
    """Build s3prl's ``WavLM`` from its checkpoint dict and load the weights strictly.

    Returns:
        (model, normalize): the model in eval mode, and whether waveforms are normalised first.
    Raises:
        ScoreError: naming ``source``, when the config or the weights do not fit.
    """
    from s3prl.upstream.wavlm.WavLM import WavLM, WavLMConfig

    try:
        cfg = WavLMConfig(dict(state["cfg"]))
        model = WavLM(cfg)
    except Exception as exc:  # bad config values surface as TypeError, AssertionError, ...
        raise ScoreError(f"{source}: not a WavLM model config ({type(exc).__name__}: {_first_line(exc)})") from exc
    check_state_dict(model, state["model"], source)
    model.load_state_dict(state["model"])
    return model.eval(), bool(cfg.normalize)


def build_base(state: dict[str, Any], source: str = "<checkpoint>"):
    """Build the s3prl model of either format: (model in eval mode, normalize)."""
    if base_architecture(state) == "wavlm":
        return build_wavlm(state, source)
    model, task_cfg = build_hubert(state, source)
    return model, bool(task_cfg.normalize)


def write_wavlm(path: str | os.PathLike, cfg: dict[str, Any], model: dict[str, torch.Tensor],
                score: dict[str, Any] | None = None) -> None:
    """Write a WavLM checkpoint in the format stock ``wavlm_local`` reads, atomically."""
    state: dict[str, Any] = {
        "cfg": dict(cfg),
        "model": {k: v.detach().cpu().contiguous() for k, v in model.items()},
    }
    if score is not None:
        state["score"] = score
    atomic_torch_save(state, path)


def tiny_wavlm_state(seed: int = 0, layers: int = 4, dim: int = 32, heads: int = 2,
                     ffn_dim: int = 64) -> dict[str, Any]:
    """A randomly initialised WavLM with WavLM Base's structure at toy width, as s3prl's dict.

    Like WavLM Base: post-LN, group-norm CNN with HuBERT's strides (320 samples per frame),
    gated relative position bias (held by layer 1, shared by all layers).
    """
    from s3prl.upstream.wavlm.WavLM import WavLM, WavLMConfig

    cfg = {
        "extractor_mode": "default",
        "encoder_layers": layers,
        "encoder_embed_dim": dim,
        "encoder_ffn_embed_dim": ffn_dim,
        "encoder_attention_heads": heads,
        "activation_fn": "gelu",
        "layer_norm_first": False,
        "conv_feature_layers": TINY_CONV_LAYERS,
        "conv_bias": False,
        "feature_grad_mult": 0.1,
        "normalize": False,
        "dropout": 0.1,
        "attention_dropout": 0.1,
        "activation_dropout": 0.0,
        "encoder_layerdrop": 0.05,
        "dropout_input": 0.1,
        "conv_pos": 16,
        "conv_pos_groups": 4,
        "relative_position_embedding": True,
        "num_buckets": 32,
        "max_distance": 64,
        "gru_rel_pos": True,
    }
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = WavLM(WavLMConfig(cfg))
    return {"cfg": cfg, "model": model.state_dict()}


def rename_weights(weights: dict[str, torch.Tensor], rules: Sequence[tuple[str, str]],
                   unmatched: Callable[[str], str]) -> dict[str, torch.Tensor]:
    """Each weight renamed by the first rule whose regex ``pattern`` matches the start of its name.

    Args:
        rules: (pattern, replacement) pairs for ``re.subn`` (``\\1`` refers to a group).
        unmatched: the error message for a name no rule matches.
    Raises:
        ScoreError: ``unmatched(name)`` for the first weight no rule renames.
    """
    renamed = {}
    for name, tensor in weights.items():
        for pattern, replacement in rules:
            new_name, hits = re.subn(f"^{pattern}", replacement, name)
            if hits:
                renamed[new_name] = tensor
                break
        else:
            raise ScoreError(unmatched(name))
    return renamed
