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
from typing import Any

import torch

from ..errors import ScoreError
from ..fileio import atomic_torch_save
from .common import TINY_CONV_LAYERS, check_state_dict, first_line
from .safeload import load_checkpoint

REQUIRED_KEYS = ("task_cfg", "model_cfg", "model_weight", "dictionaries_symbols")


def read_converted(path: str | os.PathLike) -> dict[str, Any]:
    """Load and check a converted checkpoint file.

    Raises:
        ScoreError: the file is missing, is not a torch file, or lacks a required key.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ScoreError(f"{path}: checkpoint not found")
    state = load_checkpoint(path)  # weights only: a checkpoint cannot choose code to run
    if not isinstance(state, dict):
        raise ScoreError(f"{path}: checkpoint is a {type(state).__name__}, expected a dict")
    missing = [key for key in REQUIRED_KEYS if key not in state]
    if missing:
        raise ScoreError(
            f"{path}: not an s3prl converted HuBERT checkpoint (missing {', '.join(missing)})"
        )
    return state


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
        raise ScoreError(f"{source}: not a HuBERT model config ({type(exc).__name__}: {first_line(exc)})") from exc
    check_state_dict(model, state["model_weight"], source)
    model.load_state_dict(state["model_weight"])
    return model.eval(), task_cfg


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
