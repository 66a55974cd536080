"""s3prl hub entries for SCORE-tuned HuBERT checkpoints.

=======================  ================================================================
entry                    checkpoint
=======================  ================================================================
``score_hubert_local``   ``-k PATH``: a converted HuBERT checkpoint file
``score_hubert_url``     ``-k URL``: downloaded once into s3prl's download cache (``-r``
                         downloads again), like s3prl's own ``*_url`` entries
``score_hubert``         ``-k PATH`` if given, else ``$SCORE_HUBERT_CKPT``, else
                         ``exp/score_hubert_base/score_hubert.pt`` (relative to the working
                         directory: where ``score-s3prl finetune`` writes with its default ``out``)
``score_wavlm_local``    ``-k PATH``: a tuned WavLM (s3prl's ``{"cfg", "model"}`` format)
``score_wavlm_url``      ``-k URL``: the same, downloaded into s3prl's cache
``score_wavlm``          ``-k PATH`` if given, else ``$SCORE_WAVLM_CKPT``, else
                         ``exp/score_wavlm_base/score_wavlm.pt``
=======================  ================================================================

WavLM has entries of its own, beside the HuBERT ones, rather than one entry that detects the
architecture: s3prl names upstreams by architecture (``hubert_local``, ``wavlm_local``), the
SUPERB results are keyed by the entry name, and an entry called ``score_hubert`` returning a
WavLM would mislabel every result. The WavLM entries check the file (weights only, strict
shapes) and then hand it to s3prl's own ``wavlm_local`` expert, so features are stock WavLM's.

A checkpoint is s3prl's converted HuBERT format (``task_cfg``, ``model_cfg``, ``model_weight``,
``dictionaries_symbols``) with an optional ``score`` metadata block; a plain converted HuBERT
loads too. The upstream is s3prl's own HuBERT expert, so it has the same contract: one hidden
state per transformer layer plus the input to the first, 320 samples per frame, s3prl's hooks
and featurizer. Only loading differs: a bad file is reported as one
:class:`~score_s3prl.errors.ScoreError` naming the file and the problem.

:func:`register` attaches the entries to ``s3prl.hub`` (after :func:`score_s3prl.compat.apply`),
which is where s3prl's runner looks up ``-u``.
"""

from __future__ import annotations

import contextlib
import os
import threading
from typing import Any, Iterator

from .stack import require_loadable

require_loadable()  # s3prl imports torchaudio: a broken pair stops here with one line

from s3prl.upstream.hubert import expert as hubert_expert  # noqa: E402
from s3prl.upstream.hubert.expert import UpstreamExpert  # noqa: E402

from . import compat  # noqa: E402
from .checkpoints.hubert import build_hubert, read_converted  # noqa: E402
from .checkpoints.wavlm import read_wavlm  # noqa: E402
from .errors import ScoreError  # noqa: E402

CKPT_ENV = "SCORE_HUBERT_CKPT"
DEFAULT_CKPT = os.path.join("exp", "score_hubert_base", "score_hubert.pt")
MAKE_ONE = (
    "make one with `score-s3prl finetune --config upstream_configs/score_hubert_base.yaml` "
    "(it writes <out>/score_hubert.pt), or name one with -k PATH or $" + CKPT_ENV
)

_loader_lock = threading.Lock()


@contextlib.contextmanager
def _preloaded(model: Any, task_cfg: Any) -> Iterator[None]:
    """Let s3prl's HuBERT expert take an already checked model instead of loading ``ckpt``.

    The expert's constructor loads through the module-level ``load_converted_model``; swapping
    it for the duration of one constructor call reuses all of the expert (hooks, forward,
    downsample rate) without loading the file twice or copying its code.
    """
    with _loader_lock:
        original = hubert_expert.load_converted_model
        hubert_expert.load_converted_model = lambda ckpt: (model, task_cfg)
        try:
            yield
        finally:
            hubert_expert.load_converted_model = original


class ScoreHubertExpert(UpstreamExpert):
    """s3prl's HuBERT upstream built from a checked converted checkpoint.

    Attributes:
        score_metadata: the checkpoint's ``score`` block (dict), or None for a plain HuBERT.
    """

    def __init__(self, ckpt: str | os.PathLike, **kwargs: Any) -> None:
        ckpt = os.fspath(ckpt)
        state = read_converted(ckpt)
        model, task_cfg = build_hubert(state, ckpt)
        with _preloaded(model, task_cfg):
            super().__init__(ckpt, **kwargs)
        self.score_metadata = state.get("score")


def score_hubert_local(ckpt: str | None = None, model_config: str | None = None, refresh: bool = False,
                       **kwargs: Any):
    """The upstream for the converted checkpoint file ``ckpt`` (``-u score_hubert_local -k PATH``).

    ``model_config`` (``-g``) and ``refresh`` (``-r``) are accepted because s3prl's runner
    passes them to every entry; a converted checkpoint carries its own config.
    """
    if not ckpt:
        raise ScoreError("score_hubert_local needs a checkpoint file: -k PATH")
    return ScoreHubertExpert(ckpt, **kwargs)


def score_hubert_url(ckpt: str | None = None, model_config: str | None = None, refresh: bool = False,
                     **kwargs: Any):
    """The upstream for a checkpoint URL (``-u score_hubert_url -k URL``), cached like s3prl's downloads.

    ``refresh`` (``-r``) downloads again. ``http``, ``https`` and ``file`` URLs work; a
    download has timeouts, its HTTP status checked, and enters s3prl's cache only once it
    loads as a converted checkpoint (:func:`score_s3prl.checkpoints.download.fetch`).
    """
    if not ckpt:
        raise ScoreError("score_hubert_url needs a checkpoint URL: -k https://...")
    from .checkpoints.download import fetch

    path = fetch(ckpt, refresh=refresh, validate=read_converted)
    return ScoreHubertExpert(path, **kwargs)


def default_checkpoint() -> str:
    """The checkpoint ``score_hubert`` loads without ``-k``: ``$SCORE_HUBERT_CKPT`` or :data:`DEFAULT_CKPT`."""
    return os.environ.get(CKPT_ENV) or DEFAULT_CKPT


def score_hubert(ckpt: str | None = None, model_config: str | None = None, refresh: bool = False,
                 **kwargs: Any):
    """The SCORE-tuned HuBERT (``-u score_hubert``): ``-k`` if given, else :func:`default_checkpoint`."""
    if ckpt:
        return score_hubert_local(ckpt, **kwargs)
    path = default_checkpoint()
    if not os.path.isfile(path):
        source = f"named by ${CKPT_ENV}" if os.environ.get(CKPT_ENV) else f"the default path; ${CKPT_ENV} is not set"
        raise ScoreError(f"{path}: score_hubert checkpoint not found ({source}); {MAKE_ONE}")
    return score_hubert_local(path, **kwargs)


WAVLM_CKPT_ENV = "SCORE_WAVLM_CKPT"
DEFAULT_WAVLM_CKPT = os.path.join("exp", "score_wavlm_base", "score_wavlm.pt")


def score_wavlm_local(ckpt: str | None = None, model_config: str | None = None, refresh: bool = False,
                      **kwargs: Any):
    """The upstream for a tuned WavLM file (``-u score_wavlm_local -k PATH``): s3prl's WavLM expert."""
    if not ckpt:
        raise ScoreError("score_wavlm_local needs a checkpoint file: -k PATH")
    from s3prl.upstream.wavlm.expert import UpstreamExpert as WavLMExpert

    ckpt = os.fspath(ckpt)
    state = read_wavlm(ckpt)
    expert = WavLMExpert(ckpt, **kwargs)
    expert.score_metadata = state.get("score")
    return expert


def score_wavlm_url(ckpt: str | None = None, model_config: str | None = None, refresh: bool = False,
                    **kwargs: Any):
    """``-u score_wavlm_url -k URL``: downloaded once into s3prl's cache (``-r`` again), with
    the same timeouts and checks as :func:`score_hubert_url`; only a loadable WavLM is cached."""
    if not ckpt:
        raise ScoreError("score_wavlm_url needs a checkpoint URL: -k https://...")
    from .checkpoints.download import fetch

    path = fetch(ckpt, refresh=refresh, validate=read_wavlm)
    return score_wavlm_local(path, **kwargs)


def score_wavlm(ckpt: str | None = None, model_config: str | None = None, refresh: bool = False,
                **kwargs: Any):
    """The tuned WavLM (``-u score_wavlm``): ``-k`` if given, else ``$SCORE_WAVLM_CKPT``, else
    :data:`DEFAULT_WAVLM_CKPT`."""
    path = ckpt or os.environ.get(WAVLM_CKPT_ENV) or DEFAULT_WAVLM_CKPT
    if not os.path.isfile(path):
        raise ScoreError(f"{path}: score_wavlm checkpoint not found; make one with `score-s3prl finetune "
                         f"--config upstream_configs/score_wavlm_base.yaml`, or name one with -k or ${WAVLM_CKPT_ENV}")
    return score_wavlm_local(path, **kwargs)


ENTRIES = {
    "score_hubert": score_hubert,
    "score_hubert_local": score_hubert_local,
    "score_hubert_url": score_hubert_url,
    "score_wavlm": score_wavlm,
    "score_wavlm_local": score_wavlm_local,
    "score_wavlm_url": score_wavlm_url,
}


def register() -> None:
    """Apply :mod:`score_s3prl.compat` and attach :data:`ENTRIES` to ``s3prl.hub`` (idempotent)."""
    compat.apply()
    import s3prl.hub

    for name, entry in ENTRIES.items():
        setattr(s3prl.hub, name, entry)
