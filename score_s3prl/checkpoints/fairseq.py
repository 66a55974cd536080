"""fairseq HuBERT checkpoints, converted into s3prl's converted dict without fairseq installed.

The file itself is read by :func:`.safeload.load_fairseq_checkpoint` (fairseq and omegaconf
classes become inert stand-ins); this module turns what it returns into the converted format.
"""

from __future__ import annotations

from typing import Any

from ..errors import ScoreError
from .safeload import plain, resolve_interpolations


def is_fairseq_state(state: dict[str, Any]) -> bool:
    """True for a loaded dict with fairseq's top-level keys (``cfg`` and ``model``)."""
    return "model" in state and "cfg" in state


def convert_fairseq_state(state: dict[str, Any], source: str) -> dict[str, Any]:
    """Turn a loaded fairseq HuBERT checkpoint into s3prl's converted dict.

    The mapping is s3prl's own (``s3prl.upstream.hubert.convert``): ``cfg.task`` and
    ``cfg.model`` become the configs, ``model`` the weights (s3prl's HubertModel is fairseq's,
    with the same parameter names), and the task's label dictionaries their symbol lists.
    An omegaconf ``cfg`` arrives as stand-ins (see :mod:`.safeload`) and is made
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
