"""``score-s3prl export CKPT --format hf OUT_DIR``: a tuned model as a transformers directory, with
its model card.

CKPT is a SCORE/LASER export (or any base): s3prl's converted HuBERT dict, or the WavLM dict
stock ``wavlm_local`` reads. OUT_DIR receives a transformers ``HubertModel`` or ``WavLMModel``
directory (:func:`score_s3prl.checkpoints.transformers_dirs.write_hf_dir` says what is in it), and
``README.md``, a model card with the Hub's metadata (:mod:`score_s3prl.model_card`; ``--results
CSV`` adds the model's SUPERB rows as ``model-index``), and ``score_s3prl.json``, the training
record with no path of this machine (file names and SHA-256 digests instead). ``--push-to-hub
REPO_ID`` uploads those files with ``huggingface_hub`` (its token: ``HF_TOKEN`` or
``huggingface-cli login``). Needs ``transformers``, ``safetensors`` and ``huggingface_hub``
(``pip install -e '.[hf]'``).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from . import __version__, model_card
from .checkpoints.models import base_architecture, read_checkpoint
from .checkpoints.transformers_dirs import HF_FILES, write_hf_dir
from .errors import ScoreError
from .fileio import atomic_write_text
from .hashing import file_sha256

CARD = "README.md"
RECORD = "score_s3prl.json"


def export_model(ckpt: str | os.PathLike, out_dir: str | os.PathLike, *, results: str | os.PathLike | None = None,
                 model_name: str | None = None, repo_id: str | None = None, base_model: str | None = None,
                 license: str | None = None) -> Path:
    """Write CKPT as a transformers directory in OUT_DIR, with its model card; returns OUT_DIR.

    Args:
        results: a ``score-s3prl superb`` results CSV; its rows of CKPT become the card's
            ``model-index`` (read before anything is written: a bad CSV leaves OUT_DIR alone).
        model_name: the card's title and ``model-index`` name (default: ``repo_id``'s name, else
            OUT_DIR's).
        repo_id: the Hub repository the card's usage snippets load from.
        base_model, license: the card's ``base_model`` / ``license`` for a base
            :data:`score_s3prl.model_card.KNOWN_BASES` does not know.
    """
    rows = model_card.read_results(results, ckpt) if results is not None else []
    state = read_checkpoint(ckpt)
    out = write_hf_dir(state, out_dir, str(ckpt))
    score = state.get("score")
    if score is not None:  # the provenance next to the weights, without this machine's paths
        record = model_card.shareable_record(score, Path(ckpt).name, file_sha256(ckpt))
        atomic_write_text(out / RECORD, json.dumps(record, indent=2, default=str) + "\n")
    name = model_name or (repo_id.rsplit("/", 1)[-1] if repo_id else out.resolve().name)
    atomic_write_text(out / CARD, model_card.card_text(
        architecture=base_architecture(state), score=score, results=rows, model_name=name, repo_id=repo_id,
        base_model=base_model, license=license))
    return out


def exported_files(out_dir: Path) -> list[str]:
    """The files :func:`export_model` writes (what a push uploads; nothing else in OUT_DIR)."""
    return [name for name in (*HF_FILES, CARD, RECORD) if (out_dir / name).is_file()]


def push_to_hub(out_dir: str | os.PathLike, repo_id: str, private: bool = False) -> str:
    """Upload the exported files of OUT_DIR to the Hub model repository ``repo_id`` (created if
    absent); returns the commit URL.

    Raises:
        ScoreError: one line naming the repository and why the upload failed (no token, offline
            (``HF_HUB_OFFLINE=1``), refused, network).
    """
    from huggingface_hub import HfApi

    out = Path(out_dir)
    api = HfApi()
    try:
        api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        commit = api.upload_folder(repo_id=repo_id, repo_type="model", folder_path=out,
                                   allow_patterns=exported_files(out),
                                   commit_message=f"score-s3prl {__version__} export")
    except Exception as exc:  # auth, offline, HTTP and transport errors come in many library types
        problem = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ScoreError(f"{repo_id}: upload to the Hugging Face Hub failed ({problem})") from exc
    return str(getattr(commit, "commit_url", commit))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="score-s3prl export", description=__doc__.split("\n")[0])
    parser.add_argument("ckpt", help="a SCORE/LASER export (converted HuBERT or WavLM .pt)")
    parser.add_argument("out_dir", help="directory to write")
    parser.add_argument("--format", choices=["hf"], default="hf", help="hf: a transformers model directory")
    parser.add_argument("--results", metavar="CSV",
                        help="a `score-s3prl superb` results CSV: the checkpoint's SUPERB rows go into the card")
    parser.add_argument("--name", help="model name in the card (default: the repository's or OUT_DIR's name)")
    parser.add_argument("--base-model", metavar="HUB_ID",
                        help="the card's base_model, for a base score-s3prl does not recognise")
    parser.add_argument("--license", metavar="ID", help="the card's licence (default: the known base's)")
    parser.add_argument("--push-to-hub", metavar="REPO_ID", help="upload the export to this Hub model repository")
    parser.add_argument("--private", action="store_true", help="with --push-to-hub: create the repository private")
    args = parser.parse_args(argv)
    if args.push_to_hub:
        from huggingface_hub.utils import HFValidationError, validate_repo_id

        try:  # before the export's work, not after it
            validate_repo_id(args.push_to_hub)
        except HFValidationError as exc:
            problem = (str(exc).strip().splitlines() or ["invalid"])[0]
            raise ScoreError(f"--push-to-hub {args.push_to_hub}: not a Hub repository id ({problem})") from None
    out = export_model(args.ckpt, args.out_dir, results=args.results, model_name=args.name,
                       repo_id=args.push_to_hub, base_model=args.base_model, license=args.license)
    print(out)
    if args.push_to_hub:
        print(push_to_hub(out, args.push_to_hub, private=args.private))
    return 0
