"""Input checks of ``score-s3prl superb``, run before any stage starts: data roots, the PR
lexicon, the QUESST ground truth, the upstreams and the results CSV.

Which roots a task reads comes from its :class:`score_s3prl.recipes.Recipe` (``data_roots``,
``given_instead``), so a new task is checked without code here.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from typing import Sequence

import yaml

from .. import corpora
from ..errors import ScoreError
from ..recipes import RECIPES
from . import mtwv, results
from .settings import ENV, PROBE_SPLIT, QBE_GROUNDTRUTH, QBE_LANGUAGE_KEY, SPLITS, Settings, Upstream, qbe_splits


def check_upstreams(upstreams: Sequence[Upstream]) -> None:
    """Every upstream names an s3prl hub entry and an existing local checkpoint (when it has one),
    and every checkpoint in the converted HuBERT format loads into its model (:func:`open_checkpoint`).

    Raises:
        ScoreError: naming the upstream and the problem.
    """
    import difflib

    from ..hub import CKPT_ENV, MAKE_ONE, register

    # s3prl's hub warns about optional upstreams whose packages are missing; not our concern here
    logging.getLogger("s3prl.upstream.espnet_hubert.expert").setLevel(logging.ERROR)
    register()
    import s3prl.hub

    for upstream in upstreams:  # labels are unique already (settings.distinct_labels)
        if not callable(getattr(s3prl.hub, upstream.name, None)):
            close = difflib.get_close_matches(upstream.name, dir(s3prl.hub), n=3)
            hint = f" (close: {', '.join(close)})" if close else ""
            raise ScoreError(f"--upstream {upstream.name}: no such s3prl upstream{hint}")
        if upstream.name.endswith(("_local", "_url")) and not upstream.ckpt:
            raise ScoreError(f"--upstream {upstream.name}: needs a checkpoint: {upstream.name}=CKPT")
        if upstream.ckpt and "://" not in upstream.ckpt and not os.path.exists(upstream.ckpt):
            hint = f" (${CKPT_ENV} or the default path); {MAKE_ONE}" if upstream.name == "score_hubert" else ""
            raise ScoreError(f"{upstream.ckpt}: checkpoint of --upstream {upstream.name} not found{hint}")
    for upstream in upstreams:
        open_checkpoint(upstream)


# Entries whose -k is a local file in a format we read: s3prl's converted HuBERT (ours, and s3prl's
# own hubert_local / hubert_custom: same format, same HubertModel) and s3prl's WavLM format (ours
# and stock wavlm_local). Not opened here: URLs (*_url: downloaded by the stage itself), names
# without a checkpoint (hubert_base, wavlm_base: s3prl downloads their weights) and other entries'
# files, whose formats only their s3prl loaders know (some download, some need fairseq or espnet);
# their stage reports them.
CONVERTED_HUBERT_ENTRIES = ("score_hubert", "score_hubert_local", "hubert_local", "hubert_custom")
WAVLM_ENTRIES = ("score_wavlm", "score_wavlm_local", "wavlm_local")
MAX_PROBLEM_CHARS = 300  # torch's messages run to paragraphs; the error stays one readable line


def open_checkpoint(upstream: Upstream) -> None:
    """Load ``upstream``'s checkpoint as its hub entry will and build the model on the CPU, so that
    a corrupt file stops the run before the baseline's stages (hours on real ASR), not after them.

    Raises:
        ScoreError: one line naming the upstream, the file and the problem.
    """
    if not upstream.ckpt or "://" in upstream.ckpt:
        return
    from ..checkpoints.wavlm import read_wavlm
    from ..hub import ScoreHubertExpert

    if upstream.name in CONVERTED_HUBERT_ENTRIES:
        # the hub entry's own path: read_converted, build_hubert, s3prl's HuBERT expert around it
        open_as = ScoreHubertExpert
    elif upstream.name in WAVLM_ENTRIES:
        open_as = read_wavlm  # score_wavlm_local's reader: loads and builds s3prl's WavLM strictly
    else:
        return
    try:
        with warnings.catch_warnings():  # torch's deprecation notices about the models' layers: not the user's
            warnings.simplefilter("ignore")
            open_as(upstream.ckpt)
    except Exception as exc:  # a ScoreError from the reader, or whatever a nonsense config raises
        problem = " ".join(str(exc).split()) or type(exc).__name__
        if not isinstance(exc, ScoreError):
            problem = f"{upstream.ckpt}: model does not build ({type(exc).__name__}: {problem})"
        if len(problem) > MAX_PROBLEM_CHARS:
            problem = problem[:MAX_PROBLEM_CHARS] + "..."
        raise ScoreError(f"--upstream {upstream.name}: {problem}") from exc


def _root(value: Path | None, option: str, setting: str, what: str) -> Path:
    if value is None:
        raise ScoreError(f"{what} not given: pass {option} DIR or set ${ENV[setting]}")
    if not value.is_dir():
        raise ScoreError(f"{value}: {what} not found (from {option} or ${ENV[setting]})")
    return value


def check_lexicon(lexicon: Path, words: dict[str, dict[str, list[str]]]) -> None:
    """Every transcript word has an entry in ``lexicon`` whose phones the PR recipe knows.

    Args:
        words: split -> utterance id -> transcript words.
    Raises:
        ScoreError: naming the lexicon and the first missing word (or bad line).
    """
    if not lexicon.is_file():
        raise ScoreError(f"{lexicon}: lexicon file not found (from --lexicon or ${ENV['lexicon']})")
    # the same reader and phone vocabulary the PR recipe's corpus uses; s3prl's text module
    # imports nothing that needs the compat patches
    from s3prl.downstream.ctc.text import load_text_encoder

    from downstream_recipes.libriphone import read_lexicon

    config = RECIPES["pr"].config_path
    vocab = config.parent / yaml.safe_load(config.read_text())["downstream_expert"]["text"]["vocab_file"]
    entries = read_lexicon([lexicon], load_text_encoder("word", str(vocab)))
    for split, utterances in words.items():
        for utterance, transcript in utterances.items():
            missing = [w for w in transcript if w not in entries]
            if missing:
                raise ScoreError(
                    f"{lexicon}: no entry for the word {missing[0]!r} (utterance {utterance} in {split}); "
                    f"add it, or pass --lexicon g2p (s3prl's g2p files, the default) or --lexicon cmudict "
                    f"(written from CMUdict, unknown words -> {corpora.OOV_PHONE})"
                )


def check_inputs(settings: Settings) -> None:
    """Check data roots, the lexicon, the upstreams and the results CSV before anything starts.

    Raises:
        ScoreError: naming the option or file at fault.
    """
    results.check_results_file(settings.results)
    roots = {root for task in settings.tasks for root in RECIPES[task].data_roots}
    if "libri_root" in roots:
        libri = _root(settings.libri_root, "--libri-root", "libri_root", "LibriSpeech root")
        words = {split: corpora.transcripts(corpora.split_files(libri, split)) for split in SPLITS}
        if settings.lexicon is not None and any(RECIPES[t].given_instead == "lexicon" for t in settings.tasks):
            check_lexicon(settings.lexicon, words)
    if "quesst_root" in roots:
        quesst = _root(settings.quesst_root, "--quesst-root", "quesst_root", "QUESST 2014 root")
        for split in qbe_splits(settings):
            corpora.check_quesst(quesst, QBE_LANGUAGE_KEY[split])
            # parsed now: a bad ground truth must not wait until the (long) evaluation is over
            mtwv.scored_queries(mtwv.load_groundtruth(quesst / "scoring" / QBE_GROUNDTRUTH[split]))
    if "probe" in settings.tasks:
        check_probe_audio(settings)
    check_upstreams(settings.upstreams)


def check_probe_audio(settings: Settings) -> None:
    """The probe's held-out audio folder exists and holds at least 2 audio files.

    Raises:
        ScoreError: naming the folder, or how to give one.
    """
    from ..probe import find_audio

    if settings.probe_audio is None:
        raise ScoreError("probe: no held-out audio: pass --probe-audio DIR, or --libri-root DIR "
                         f"(or ${ENV['libri_root']}) to probe its {PROBE_SPLIT}")
    if len(find_audio(settings.probe_audio, settings.probe_utterances)) < 2:
        raise ScoreError(f"{settings.probe_audio}: the probe needs at least 2 audio files")
