"""``score-s3prl make-tiny OUT``: write a tiny random HuBERT in s3prl's converted format."""

from __future__ import annotations

import argparse

from .checkpoint import tiny_hubert_state, write_converted


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="score-s3prl make-tiny", description=__doc__)
    parser.add_argument("out", help="where to write the checkpoint (.pt)")
    parser.add_argument("--seed", type=int, default=0, help="initialisation seed")
    parser.add_argument("--layers", type=int, default=4, help="transformer layers")
    parser.add_argument("--dim", type=int, default=32, help="model width")
    args = parser.parse_args(argv)
    write_converted(args.out, **tiny_hubert_state(seed=args.seed, layers=args.layers, dim=args.dim))
    print(args.out)
    return 0
