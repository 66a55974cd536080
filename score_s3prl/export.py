"""``score-s3prl export CKPT --format hf OUT_DIR``: a tuned model as a transformers directory.

CKPT is a SCORE/LASER export (or any base): s3prl's converted HuBERT dict, or the WavLM dict
stock ``wavlm_local`` reads. OUT_DIR receives a transformers ``HubertModel`` or ``WavLMModel``
directory (:func:`score_s3prl.checkpoints.transformers_dirs.export_hf` says what is in it).
Needs ``transformers`` and ``safetensors`` (``pip install score-s3prl[hf]``).
"""

from __future__ import annotations

import argparse

from .checkpoints.transformers_dirs import export_hf


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="score-s3prl export", description=__doc__.split("\n")[0])
    parser.add_argument("ckpt", help="a SCORE/LASER export (converted HuBERT or WavLM .pt)")
    parser.add_argument("out_dir", help="directory to write")
    parser.add_argument("--format", choices=["hf"], default="hf", help="hf: a transformers model directory")
    args = parser.parse_args(argv)
    print(export_hf(args.ckpt, args.out_dir))
    return 0
