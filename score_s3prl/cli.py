"""``score-s3prl``: one console entry, one subcommand per job.

Each subcommand lives in its own module as ``main(argv) -> int``; this file only dispatches,
checks that torch and torchaudio load (:mod:`score_s3prl.stack`), and turns a
:class:`~score_s3prl.errors.ScoreError` into one ``error: ...`` line.
"""

from __future__ import annotations

import importlib
import sys

from .errors import ScoreError
from .stack import require_loadable

# name -> (module, one-line help)
SUBCOMMANDS = {
    "downstream": ("score_s3prl.run_downstream", "run s3prl's run_downstream.py with SCORE upstreams"),
    "export": ("score_s3prl.export", "write a tuned checkpoint as a transformers directory (--format hf)"),
    "fetch": ("score_s3prl.fetch", "download named bases (hubert_large_ll60k, ...) into s3prl's cache ahead"),
    "finetune": ("score_s3prl.train", "SCORE / LASER fine-tuning: pretrained HuBERT or WavLM in, s3prl upstream out"),
    "make-tiny": ("score_s3prl.tiny", "write a tiny random HuBERT checkpoint (tests, demos)"),
    "probe": ("score_s3prl.probe", "layer-wise invariance of any upstream to speed and pitch (no labels)"),
    "qbe-score": ("score_s3prl.superb.mtwv", "MTWV of a QbE stdlist against QUESST14 ground truth"),
    "superb": ("score_s3prl.superb.cli", "SUPERB ASR / PR / QbE, baseline vs SCORE (run_superb.sh)"),
}


def usage() -> str:
    lines = ["usage: score-s3prl <command> [args ...]", "", "commands:"]
    lines += [f"  {name:<12} {help_}" for name, (_, help_) in SUBCOMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in SUBCOMMANDS:
        print(f"error: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    try:
        require_loadable()  # before any import of torchaudio: one line, not a traceback
        module = importlib.import_module(SUBCOMMANDS[name][0])
        return int(module.main(rest) or 0)
    except ScoreError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        # a file system refusal (permissions, full disk, a directory where a file goes):
        # the user's to fix, and its message names the path
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
