"""``score-s3prl make-tiny OUT``: write a tiny random HuBERT (s3prl's converted format) or WavLM
(``--arch wavlm``: the format s3prl's ``wavlm_local`` reads)."""

from __future__ import annotations

import argparse

from .checkpoint import tiny_hubert_state, tiny_wavlm_state, write_converted, write_wavlm


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="score-s3prl make-tiny", description=__doc__)
    parser.add_argument("out", help="where to write the checkpoint (.pt)")
    parser.add_argument("--seed", type=int, default=0, help="initialisation seed")
    parser.add_argument("--layers", type=int, default=4, help="transformer layers")
    parser.add_argument("--dim", type=int, default=32, help="model width")
    parser.add_argument("--arch", choices=["hubert", "wavlm"], default="hubert", help="architecture")
    args = parser.parse_args(argv)
    if args.arch == "wavlm":
        write_wavlm(args.out, **tiny_wavlm_state(seed=args.seed, layers=args.layers, dim=args.dim))
    else:
        write_converted(args.out, **tiny_hubert_state(seed=args.seed, layers=args.layers, dim=args.dim))
    print(args.out)
    return 0
