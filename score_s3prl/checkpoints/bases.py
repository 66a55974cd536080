"""Base HuBERT (and WavLM) checkpoints for SCORE fine-tuning, from any of five sources.

``load_base_state(spec)`` accepts

* a name in :data:`BASE_URLS`: every HuBERT and WavLM checkpoint s3prl's hub serves, under
  the hub entry's name (``hubert_base``, ``hubert_large_ll60k``, ``wavlm_base_plus``,
  ``wavlm_large``, ...), downloaded and cached by :func:`.download.fetch` in s3prl's download
  cache (``~/.cache/s3prl/download`` unless s3prl is told otherwise), where stock s3prl's
  ``-u NAME`` finds the same file (:func:`fetch_base` fills it ahead);
* a path to a ``.pt`` file, recognised by its content: s3prl's converted format, s3prl's WavLM
  format (``{"cfg", "model"}``, as ``wavlm_local`` reads; it stays in that format), or a fairseq
  HuBERT checkpoint (converted here without fairseq being installed);
* a directory holding a ``transformers`` ``HubertModel`` (``config.json`` and the weights), or a
  ``WavLMModel`` (read into s3prl's WavLM dict).

Every HuBERT source ends as s3prl's converted dict (``task_cfg``, ``model_cfg``, ``model_weight``,
``dictionaries_symbols``), checked by building s3prl's ``HubertModel`` from it, so the export
can merge tuned weights into exactly what was loaded.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..errors import ScoreError
from ..hashing import file_sha256
from .fairseq import convert_fairseq_state, is_fairseq_state
from .hubert import REQUIRED_KEYS
from .models import build_base
from .safeload import CheckpointError, load_checkpoint, load_fairseq_checkpoint
from .transformers_dirs import convert_hf_dir, weights_file
from .wavlm import is_wavlm_state

# The non-legacy URL in s3prl/upstream/hubert/hubconf.py:hubert_base (s3prl's converted
# format of fairseq's hubert_base_ls960.pt). tests/test_checkpoints_bases.py checks it is still there.
HUBERT_BASE_URL = "https://huggingface.co/s3prl/converted_ckpts/resolve/main/hubert_base_ls960.pt"
# The URL in s3prl/upstream/wavlm/hubconf.py:wavlm_base (s3prl's {"cfg", "model"} WavLM format).
WAVLM_BASE_URL = "https://huggingface.co/s3prl/converted_ckpts/resolve/main/wavlm_base.pt"

# Bases known by name: s3prl hub entry -> the URL of the checkpoint it loads, for every entry of
# s3prl/upstream/hubert/hubconf.py and s3prl/upstream/wavlm/hubconf.py that names one (the
# non-legacy URL: s3prl's converted HuBERT format, or its {"cfg", "model"} WavLM format), s3prl's
# aliases included. tests/test_checkpoints_bases.py calls every entry of both hubconfs and checks
# that this table holds exactly the URLs they ask for.
BASE_URLS: dict[str, str] = {
    "hubert": HUBERT_BASE_URL,  # s3prl's default HuBERT: Base
    "hubert_base": HUBERT_BASE_URL,
    "hubert_large_ll60k": "https://huggingface.co/s3prl/converted_ckpts/resolve/main/hubert_large_ll60k.pt",
    "hubert_base_robust_mgr":
        "https://huggingface.co/s3prl/converted_ckpts/resolve/main/HuBERT_base_robust_mgr_best_loss_2.7821.pt",
    "mhubert_base_vp_en_es_fr_it3":
        "https://huggingface.co/s3prl/converted_ckpts/resolve/main/mhubert_base_vp_en_es_fr_it3.pt",
    "contentvec": "https://huggingface.co/s3prl/converted_ckpts/resolve/main/contentvec_km100.pt",
    "contentvec_km100": "https://huggingface.co/s3prl/converted_ckpts/resolve/main/contentvec_km100.pt",
    "contentvec_km500": "https://huggingface.co/s3prl/converted_ckpts/resolve/main/contentvec_km500.pt",
    "ms_hubert": "https://huggingface.co/s3prl/MS-HuBERT/resolve/main/iter3.pt",
    "wavlm": "https://huggingface.co/s3prl/converted_ckpts/resolve/main/wavlm_base_plus.pt",  # s3prl's default: Base+
    "wavlm_base": WAVLM_BASE_URL,
    "wavlm_base_plus": "https://huggingface.co/s3prl/converted_ckpts/resolve/main/wavlm_base_plus.pt",
    "wavlm_large": "https://huggingface.co/s3prl/converted_ckpts/resolve/main/wavlm_large.pt",
}


def load_base_state(spec: str, refresh: bool = False) -> tuple[dict[str, Any], str]:
    """Load a base HuBERT as s3prl's converted dict (a WavLM as s3prl's WavLM dict).

    Args:
        spec: a name in :data:`BASE_URLS`, a ``.pt`` checkpoint (converted, WavLM or fairseq)
            or a transformers ``HubertModel``/``WavLMModel`` directory.
        refresh: re-download a named base even when cached.
    Returns:
        (state, identity): the state dict, and a string naming the source and the sha256 of
        its weights file, for the export's metadata.
    Raises:
        ScoreError: the source is missing, unreadable, or not a HuBERT of a consistent shape.
    """
    if spec in BASE_URLS:
        path = fetch_base(spec, refresh)
        state, kind = _load_pt(path), spec
    elif os.path.isdir(spec):
        path = weights_file(Path(spec))
        state, kind = convert_hf_dir(Path(spec)), f"hf:{Path(spec).resolve()}"
    elif os.path.isfile(spec):
        path = Path(spec)
        state, kind = _load_pt(path), f"local:{path.resolve()}"
    else:
        raise ScoreError(
            f"{spec}: base model not found (expected a named base such as hubert_base, "
            "hubert_large_ll60k or wavlm_large, a .pt checkpoint or a transformers directory)"
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


def base_url(name: str) -> str:
    """The URL of the named base.

    Raises:
        ScoreError: ``name`` is not in :data:`BASE_URLS`; the message lists the names.
    """
    if name not in BASE_URLS:
        import difflib

        close = difflib.get_close_matches(name, BASE_URLS, n=3)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise ScoreError(f"{name}: not a named base ({hint}known: {', '.join(BASE_URLS)})")
    return BASE_URLS[name]


def fetch_base(name: str, refresh: bool = False) -> Path:
    """The cached checkpoint file of the named base, downloaded first if absent (or ``refresh``).

    Raises:
        ScoreError: an unknown name (see :func:`base_url`), or the download failed or gave a
            file that does not load as a base model.
    """
    return Path(_download(base_url(name), refresh, name))


def _download(url: str, refresh: bool, name: str) -> str:
    """A base model (``name``) from s3prl's download cache (see :func:`.download.fetch`);
    only a file that loads as a base model is cached."""
    from .download import fetch

    try:
        return str(fetch(url, refresh=refresh, validate=_load_pt))
    except ScoreError as exc:
        raise ScoreError(f"{name}: {exc}; when offline, pass a local checkpoint") from exc


def _load_pt(path: Path) -> dict[str, Any]:
    """Read a converted, WavLM or fairseq checkpoint, telling them apart by their keys.

    Both loaders run no code the file names (:mod:`.safeload`): torch's weights-only
    unpickler first, then, for the fairseq objects it refuses, an exact allow-list with
    inert stand-ins.
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
    if is_fairseq_state(state):
        return convert_fairseq_state(state, str(path))
    raise ScoreError(
        f"{path}: neither an s3prl converted HuBERT checkpoint (keys {', '.join(REQUIRED_KEYS)}) "
        f"nor a fairseq one (keys cfg, model); it has {', '.join(sorted(map(str, state))[:8])}"
    )
