"""``score-s3prl``: one console entry, one subcommand per job.

Each subcommand lives in its own module as ``main(argv) -> int``; this file only dispatches,
sets the CPU thread defaults (:mod:`score_s3prl.runtime`), checks that torch and torchaudio
load (:mod:`score_s3prl.stack`), runs every command under one load guard
(:func:`~score_s3prl.checkpoints.safeload.weights_only_torch_load`), and turns a
:class:`~score_s3prl.errors.ScoreError` into one ``error: ...`` line.
"""

from __future__ import annotations

import importlib
import sys

from . import __version__
from .errors import ScoreError
from .runtime import configure_threads
from .stack import require_loadable

# name -> (module, one-line help)
SUBCOMMANDS = {
    "compare": ("score_s3prl.superb.compare", "a tuned s3prl run vs a baseline run: gain, 95% paired-bootstrap CI, verdict"),
    "downstream": ("score_s3prl.run_downstream", "run s3prl's run_downstream.py with SCORE upstreams"),
    "export": ("score_s3prl.export", "write a tuned checkpoint as a transformers directory (--format hf)"),
    "fetch": ("score_s3prl.fetch", "download named bases (hubert_large_ll60k, ...) into s3prl's cache ahead"),
    "finetune": ("score_s3prl.train", "SCORE / LASER fine-tuning: pretrained HuBERT or WavLM in, s3prl upstream out"),
    "make-tiny": ("score_s3prl.tiny", "write a tiny random HuBERT checkpoint (tests, demos)"),
    "probe": ("score_s3prl.probe", "layer-wise invariance of any upstream to speed and pitch (no labels)"),
    "qbe-score": ("score_s3prl.superb.mtwv", "MTWV of a QbE stdlist against QUESST14 ground truth"),
    "results": ("score_s3prl.superb.summary", "rebuild a SUPERB run folder's CSV, superb_summary.csv, tables and chart"),
    "superb": ("score_s3prl.superb.cli", "SUPERB ASR / PR / QbE, baseline vs SCORE (run_superb.sh)"),
}


def usage() -> str:
    lines = ["usage: score-s3prl <command> [args ...]   (score-s3prl <command> -h: its options)",
             "       score-s3prl --version", "", "commands:"]
    lines += [f"  {name:<12} {help_}" for name, (_, help_) in SUBCOMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    if argv[0] == "--version":
        print(f"score-s3prl {__version__}")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in SUBCOMMANDS:
        print(f"error: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    if "torch" not in sys.modules:  # a process of its own (not a caller's library call)
        configure_threads()  # before torch loads: OpenMP reads its settings once
    try:
        require_loadable()  # before any import of torchaudio: one line, not a traceback
        from .checkpoints.safeload import weights_only_torch_load

        module = importlib.import_module(SUBCOMMANDS[name][0])
        with weights_only_torch_load():  # no loader of any command unpickles freely, ours or stock
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
