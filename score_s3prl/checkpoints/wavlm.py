"""WavLM checkpoints in s3prl's format, and a tiny random WavLM for tests and demos.

s3prl's ``wavlm_local -k`` reads a dict ``{"cfg": WavLMConfig fields, "model": strict
state_dict of s3prl.upstream.wavlm.WavLM.WavLM}`` (what ``wavlm_base`` downloads). A SCORE
export of a WavLM base is that dict plus a ``score`` block, which stock s3prl ignores.
"""

from __future__ import annotations

import os
from typing import Any

import torch

from ..errors import ScoreError
from ..fileio import atomic_torch_save
from .common import TINY_CONV_LAYERS, check_state_dict, first_line
from .safeload import load_checkpoint

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


def read_wavlm(path: str | os.PathLike) -> dict[str, Any]:
    """Load a WavLM checkpoint weights-only (:mod:`.safeload`) and check it builds s3prl's
    WavLM strictly.

    Raises:
        ScoreError: one line naming ``path``: missing, not a checkpoint, not a WavLM, or weights
            that do not fit its config.
    """
    state = load_checkpoint(path)
    if not is_wavlm_state(state):
        raise ScoreError(f"{path}: not an s3prl WavLM checkpoint (a dict with a flat `cfg` and `model`)")
    build_wavlm(state, os.fspath(path))
    return state


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
        raise ScoreError(f"{source}: not a WavLM model config ({type(exc).__name__}: {first_line(exc)})") from exc
    check_state_dict(model, state["model"], source)
    model.load_state_dict(state["model"])
    return model.eval(), bool(cfg.normalize)


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
