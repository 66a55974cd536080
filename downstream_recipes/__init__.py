"""SUPERB recipes the registry's s3prl lacks: configs, vocabularies, the libriphone corpus.

Plain files beside this module, installed with the package so the recipes run from any
directory; :mod:`score_s3prl.recipes` describes each task (:data:`score_s3prl.recipes.RECIPES`)
and plugs them into stock s3prl.

Files: ``asr.yaml`` with ``char.dict`` (28 characters, fairseq format); ``libriphone.yaml`` with
``phonemes.txt`` (69 stressed ARPAbet + SIL, SPN) and the corpus module :mod:`.libriphone`;
``quesst14_dtw.yaml``. Which task and s3prl ``-d`` each config serves is in
:data:`score_s3prl.recipes.RECIPES`, the one recipe table.

The settings are s3prl's published SUPERB ones (PR with learning rate 5e-4, as SCORE evaluated);
``char.dict`` lists LibriSpeech's characters in s3prl's order (``|`` is the word boundary) with
zero counts, which s3prl never reads; ``phonemes.txt`` is CMUdict's stressed phone set, the one
LibriSpeech's lexicon uses, plus ``SIL`` and ``SPN`` (words the lexicon lacks).
"""

from __future__ import annotations

from pathlib import Path

RECIPE_DIR = Path(__file__).resolve().parent
