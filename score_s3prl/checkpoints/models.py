"""Either architecture a base state can hold: which one it is, its s3prl model, its file read
and checked."""

from __future__ import annotations

import os
from typing import Any

from ..errors import ScoreError
from .hubert import build_hubert
from .safeload import load_checkpoint
from .wavlm import build_wavlm, is_wavlm_state


def base_architecture(state: dict[str, Any]) -> str:
    """``"wavlm"`` or ``"hubert"``: which s3prl model a base state dict builds."""
    return "wavlm" if is_wavlm_state(state) else "hubert"


def build_base(state: dict[str, Any], source: str = "<checkpoint>"):
    """Build the s3prl model of either format: (model in eval mode, normalize)."""
    if base_architecture(state) == "wavlm":
        return build_wavlm(state, source)
    model, task_cfg = build_hubert(state, source)
    return model, bool(task_cfg.normalize)


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """A converted HuBERT or WavLM checkpoint, loaded weights-only (:mod:`.safeload`) and checked
    by building its model.

    Raises:
        ScoreError: one line naming ``path``: missing, refused, not a dict, or not a model.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ScoreError(f"{path}: checkpoint not found")
    state = load_checkpoint(path)
    if not isinstance(state, dict):
        raise ScoreError(f"{path}: checkpoint is a {type(state).__name__}, expected a dict")
    build_base(state, path)  # raises a ScoreError naming the problem
    return state
