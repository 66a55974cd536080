"""How the launcher plugs the recipes of ``downstream_recipes/`` into stock s3prl.

The launcher (:mod:`score_s3prl.run_downstream`) uses this module to

- pass ``-c <our config>`` when ``-d`` names one of these and no ``-c`` is given
  (:func:`with_default_config`);
- make ``s3prl.downstream.ctc.corpus.libriphone`` importable (:func:`install`);
- after s3prl has read the config and applied ``-o``: resolve relative asset paths against the
  config file's folder when they do not exist relative to the working directory, so recipes
  run from any directory, and check data paths with clear errors (:func:`prepare_config`).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import types
from pathlib import Path
from typing import Any, Sequence

from downstream_recipes import config_path

from .errors import ScoreError

# Config keys (under downstream_expert) that name files shipped beside a config.
ASSET_KEYS = {
    "asr": [("datarc", "dict_path")],
    "ctc": [("text", "vocab_file"), ("corpus", "lexicon")],
    "quesst14_dtw": [],
}


def _launcher_flags(argv: Sequence[str]) -> argparse.Namespace:
    # Only the flags that decide the default config; everything else passes through untouched.
    # Abbreviations (--conf) are read as s3prl's own parser reads them.
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("-d", "--downstream")
    parser.add_argument("-c", "--config")
    flags, _ = parser.parse_known_args(list(argv))
    return flags


def with_default_config(argv: Sequence[str]) -> list[str]:
    """``argv`` with ``-c <our config>`` appended when ``-d`` names a recipe and no ``-c`` is given.

    With ``-e`` s3prl takes the config from the checkpoint and ignores ``-c``, so appending it
    there changes nothing.
    """
    argv = list(argv)
    flags = _launcher_flags(argv)
    path = config_path(flags.downstream) if flags.downstream else None
    if flags.config is None and path is not None:
        argv += ["-c", str(path)]
    return argv


def install() -> None:
    """Make ``s3prl.downstream.ctc.corpus.libriphone`` our corpus module, if s3prl lacks the package."""
    name = "s3prl.downstream.ctc.corpus"
    if name in sys.modules or importlib.util.find_spec(name) is not None:
        return
    from downstream_recipes import libriphone

    package = types.ModuleType(name, "score_s3prl stand-in: the libriphone corpus")
    package.__path__ = []  # a package with no files of its own: only the alias below
    package.libriphone = libriphone
    sys.modules[name] = package
    sys.modules[f"{name}.libriphone"] = libriphone


def _key(*parts: str) -> str:
    return ".".join(("config", "downstream_expert") + parts)


def resolve_assets(downstream: str, config: dict[str, Any], config_file: str | None) -> None:
    """Make relative asset paths absolute against ``config_file``'s folder, in place.

    A path is only rewritten when it does not exist relative to the working directory (s3prl's
    own convention) but does beside the config file; anything else is left for the checks.
    """
    if not config_file:
        return
    base = Path(config_file).resolve().parent
    expert = config.get("downstream_expert", {})

    def resolve(value: str) -> str:
        if os.path.isabs(value) or os.path.exists(value) or not (base / value).exists():
            return value
        return str(base / value)

    for section, key in ASSET_KEYS.get(downstream, []):
        block = expert.get(section, {})
        value = block.get(key)
        if isinstance(value, str):
            block[key] = resolve(value)
        elif isinstance(value, list):
            block[key] = [resolve(v) if isinstance(v, str) else v for v in value]


def _need_dir(value: Any, key: str, example: str) -> Path:
    if not isinstance(value, str) or not os.path.isdir(value):
        raise ScoreError(f"{key}: {value} is not a directory; set it with -o \"{key}='{example}'\"")
    return Path(value)


def _need_file(value: Any, key: str) -> Path:
    if not isinstance(value, str) or not os.path.isfile(value):
        raise ScoreError(f"{key}: {value}: file not found")
    return Path(value)


def _splits(args: argparse.Namespace, config: dict[str, Any]) -> list[str]:
    """The dataloader names this run will build."""
    if args.mode == "train":
        return ["train", *config.get("runner", {}).get("eval_dataloaders", [])]
    if args.mode == "evaluate":
        return [args.evaluate_split]
    return []


def _split_names(block: dict[str, Any], split: str, section: str) -> list[str]:
    names = block.get(split)
    if not isinstance(names, list) or not names:
        assets = {key for keys in ASSET_KEYS.values() for _, key in keys}
        keys = [k for k, v in block.items() if isinstance(v, list) and k not in assets]
        raise ScoreError(
            f"{_key(section, split)}: no such split in the config (splits: {', '.join(keys)})"
        )
    return names


def _check_asr(args: argparse.Namespace, config: dict[str, Any]) -> None:
    datarc = config["downstream_expert"]["datarc"]
    _need_dir(datarc.get("libri_root"), _key("datarc", "libri_root"), "/data/LibriSpeech")
    buckets = _need_dir(datarc.get("bucket_file"), _key("datarc", "bucket_file"), "/data/len_for_bucket")
    _need_file(datarc.get("dict_path"), _key("datarc", "dict_path"))
    for split in _splits(args, config):
        for name in _split_names(datarc, split, "datarc"):
            if not (buckets / f"{name}.csv").is_file():
                raise ScoreError(
                    f"{buckets / (name + '.csv')}: length table not found; write it with "
                    f"`python -m score_s3prl.superb.prepare asr --libri-root ROOT --out {buckets} --splits {name}`"
                )


def _check_ctc(args: argparse.Namespace, config: dict[str, Any]) -> None:
    expert = config["downstream_expert"]
    corpus = expert["corpus"]
    if str(corpus.get("name", "")).lower() != "libriphone":
        raise ScoreError(
            f"{_key('corpus', 'name')}: {corpus.get('name')!r}: s3prl's package ships no ctc corpus "
            "modules and score-s3prl adds only 'libriphone'"
        )
    root = _need_dir(corpus.get("path"), _key("corpus", "path"), "/data/LibriSpeech")
    _need_file(expert["text"].get("vocab_file"), _key("text", "vocab_file"))
    lexicon = corpus.get("lexicon")
    if not isinstance(lexicon, list) or not lexicon:
        raise ScoreError(f"{_key('corpus', 'lexicon')}: expected a list of lexicon files, got {lexicon!r}")
    for path in lexicon:
        _need_file(path, _key("corpus", "lexicon"))
    for split in _splits(args, config):
        for name in _split_names(corpus, split, "corpus"):
            if not (root / name).is_dir():
                raise ScoreError(f"{root / name}: split folder not found ({_key('corpus', split)} names it)")


def _check_quesst(args: argparse.Namespace, config: dict[str, Any]) -> None:
    from .superb.prepare import check_quesst

    datarc = config["downstream_expert"]["datarc"]
    root = _need_dir(datarc.get("dataset_root"), _key("datarc", "dataset_root"), "/data/quesst14Database")
    # the expert reads the dev queries for -t dev and the eval queries for anything else
    check_quesst(root, "dev" if args.evaluate_split == "dev" else "eval")


_CHECKS = {"asr": _check_asr, "ctc": _check_ctc, "quesst14_dtw": _check_quesst}


def prepare_config(args: argparse.Namespace, config: dict[str, Any]) -> None:
    """Resolve asset paths and check data paths of a parsed s3prl run (``args``, ``config``).

    Only the recipes in :data:`downstream_recipes.RECIPES` are checked; other downstreams pass through unchanged.

    Raises:
        ScoreError: naming the config key and the path at fault, and how to set it.
    """
    downstream = args.downstream
    if downstream not in _CHECKS:
        return
    resolve_assets(downstream, config, getattr(args, "config", None))
    _CHECKS[downstream](args, config)
