"""``score-s3prl make-tiny OUT``: write a tiny random HuBERT (s3prl's converted format) or WavLM
(``--arch wavlm``: the format s3prl's ``wavlm_local`` reads)."""

from __future__ import annotations

import argparse

from .checkpoints.hubert import tiny_hubert_state, write_converted
from .checkpoints.wavlm import tiny_wavlm_state, write_wavlm
from .errors import ArgumentParser, ScoreError


def _int_at_least(minimum: int, multiple: int = 1):
    """An argparse type: an int >= ``minimum`` and a multiple of ``multiple``."""

    def parse(text: str) -> int:
        value = int(text)  # a ValueError is argparse's "invalid int value"
        if value < minimum or value % multiple:
            extra = f" and a multiple of {multiple}" if multiple > 1 else ""
            raise argparse.ArgumentTypeError(f"{text!r}: expected an integer >= {minimum}{extra}")
        return value

    parse.__name__ = "int"
    return parse


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="score-s3prl make-tiny", description=__doc__)
    parser.add_argument("out", help="where to write the checkpoint (.pt)")
    parser.add_argument("--seed", type=_int_at_least(0), default=0, help="initialisation seed")
    parser.add_argument("--layers", type=_int_at_least(1), default=4, help="transformer layers")
    # two attention heads and a final projection of dim / 2: an even width
    parser.add_argument("--dim", type=_int_at_least(2, multiple=2), default=32, help="model width (even)")
    parser.add_argument("--arch", choices=["hubert", "wavlm"], default="hubert", help="architecture")
    args = parser.parse_args(argv)
    if not args.out.strip():
        raise ScoreError("score-s3prl make-tiny: the output path is empty")
    try:
        if args.arch == "wavlm":
            write_wavlm(args.out, **tiny_wavlm_state(seed=args.seed, layers=args.layers, dim=args.dim))
        else:
            write_converted(args.out, **tiny_hubert_state(seed=args.seed, layers=args.layers, dim=args.dim))
    except OSError as exc:
        raise ScoreError(f"{args.out}: cannot write the checkpoint ({exc.strerror or exc})") from exc
    print(args.out)
    return 0
