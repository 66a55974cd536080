"""Non-interactive data preparation for the SUPERB recipes, with clear errors for bad data roots.

=====  ==============================================================  =======================
task   writes                                                          replaces
=====  ==============================================================  =======================
asr    ``<out>/<split>.csv`` length tables (``file_path,length,label``:  s3prl's interactive
       path relative to the LibriSpeech root, samples; longest first)   ``generate_len_for_bucket.py``
pr     ``--lexicon g2p`` (default): s3prl's two g2p lexicon files, as   nothing: s3prl's recipe
       the authors' PR, fetched once into s3prl's download cache;       names files of its
       ``--lexicon cmudict``: ``<out>/lexicon.txt``, every transcript   repository, which its
       word -> its first CMUdict pronunciation, unknown words -> ``SPN``  pip package lacks
qbe    nothing: checks a QUESST 2014 root (``scoring/language_key_*.lst``  -
       and the audio they list)
=====  ==============================================================  =======================

Each ``prepare_*`` returns the ``-o`` string that points the matching recipe at the data, and
``python -m score_s3prl.superb.prepare {asr,pr,qbe} ...`` prints it::

    score-s3prl downstream -m train -u score_hubert -d asr -n asr_score \\
        -o "$(python -m score_s3prl.superb.prepare asr --libri-root /data/LibriSpeech --out data/asr)"
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Sequence

from ..corpora import SPLITS, check_quesst, override
from ..errors import ScoreError
from ..lexicons import G2P, SOURCES
from ..recipes import RECIPES, DataPaths


def _prepared(task: str, paths: DataPaths) -> str:
    """Run ``task``'s preparation and return its ``-o`` string (both from :data:`RECIPES`)."""
    recipe = RECIPES[task]
    assert recipe.data_overrides is not None, f"{task} runs no s3prl downstream"
    if recipe.prepare is not None:
        recipe.prepare(paths)
    return override(recipe.data_overrides(paths))


def prepare_asr(libri_root: str | os.PathLike, out_dir: str | os.PathLike, splits: Sequence[str] = SPLITS) -> str:
    """Length tables for the ``asr`` recipe; returns its ``-o`` string."""
    return _prepared("asr", DataPaths(libri_root=Path(libri_root).resolve(), prepared=Path(out_dir).resolve(),
                                      splits=tuple(splits)))


def prepare_pr(libri_root: str | os.PathLike, out_dir: str | os.PathLike, splits: Sequence[str] = SPLITS,
               lexicon: str = G2P) -> str:
    """The lexicon for the ``ctc`` (libriphone) recipe (``lexicon``: ``g2p`` or ``cmudict``, see
    :mod:`score_s3prl.lexicons`); returns its ``-o`` string."""
    return _prepared("pr", DataPaths(libri_root=Path(libri_root).resolve(), prepared=Path(out_dir).resolve(),
                                     splits=tuple(splits), lexicon_source=lexicon))


def prepare_qbe(quesst_root: str | os.PathLike) -> str:
    """Check a QUESST 2014 root (dev and eval) for the ``quesst14_dtw`` recipe; returns its ``-o`` string."""
    for split in ("dev", "eval"):
        check_quesst(quesst_root, split)
    root = Path(quesst_root).resolve()
    return _prepared("qbe", DataPaths(quesst_root=root, prepared=root))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m score_s3prl.superb.prepare", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    tasks = parser.add_subparsers(dest="task", required=True)
    for task in ("asr", "pr"):
        sub = tasks.add_parser(task, help=f"prepare LibriSpeech for the {task} recipe")
        sub.add_argument("--libri-root", required=True, help="LibriSpeech folder holding the split folders")
        sub.add_argument("--out", required=True, help="folder for the prepared files")
        sub.add_argument("--splits", nargs="+", default=list(SPLITS), help="split folder names")
        if task == "pr":
            sub.add_argument("--lexicon", choices=SOURCES, default=G2P,
                             help="g2p: s3prl's g2p files, as the authors' PR (default); cmudict: written from CMUdict")
    qbe = tasks.add_parser("qbe", help="check a QUESST 2014 root for the quesst14_dtw recipe")
    qbe.add_argument("--quesst-root", required=True, help="the quesst14Database folder")
    args = parser.parse_args(argv)
    if args.task == "asr":
        print(prepare_asr(args.libri_root, args.out, args.splits))
    elif args.task == "pr":
        print(prepare_pr(args.libri_root, args.out, args.splits, args.lexicon))
    else:
        print(prepare_qbe(args.quesst_root))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except ScoreError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
