"""The SUPERB recipes we run (one :class:`Recipe` per task, in :data:`RECIPES`), and how the
launcher plugs the recipes of ``downstream_recipes/`` into stock s3prl.

:data:`RECIPES` is the one description of a task: s3prl downstream and config, metric and its
direction, test split, config assets, the ``-o`` keys that point it at the data and the
preparation that writes them, the launcher's config checks, the paper's settings and gain, the
demo's settings, and the name of the :class:`score_s3prl.superb.plan.Planner` method that builds
its stages. The SUPERB runner, the data preparation CLI, the results table and the launcher all
read it; adding a task is adding an entry here plus its planner method.

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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from downstream_recipes import RECIPE_DIR

from .corpora import SPLITS, check_quesst, write_bucket_files, write_lexicon
from .errors import ScoreError
from .lexicons import CMUDICT, G2P, Lexicon

EXPERT = "config.downstream_expert"  # -o prefix of the downstream expert's config block


@dataclass(frozen=True)
class DataPaths:
    """Where one task's data lives (absolute paths).

    Attributes:
        libri_root: LibriSpeech folder holding the split folders (None: not given).
        quesst_root: the quesst14Database folder (None: not given).
        prepared: folder of the files the task's preparation writes.
        lexicon: a word -> phones lexicon the user gave (None: ``lexicon_source``'s).
        lexicon_source: without a file, :mod:`score_s3prl.lexicons`' ``g2p`` (s3prl's files, as
            the authors' PR; the preparation fetches them) or ``cmudict`` (the preparation writes it).
        splits: LibriSpeech split folders the recipes read.
    """

    prepared: Path
    libri_root: Path | None = None
    quesst_root: Path | None = None
    lexicon: Path | None = None
    lexicon_source: str = G2P
    splits: tuple[str, ...] = SPLITS

    @property
    def pr_lexicon(self) -> Lexicon:
        """The PR recipe's lexicon: the given file, else the source's."""
        return Lexicon(source=self.lexicon_source, file=self.lexicon)


@dataclass(frozen=True, kw_only=True)
class Recipe:
    """How one SUPERB task runs on stock s3prl, and how we measure it.

    A label-free task that runs no s3prl downstream (the invariance probe) has no ``downstream``,
    ``config``, ``check_config`` nor ``data_overrides``: the launcher never sees it.

    Attributes:
        task: our name (results CSV ``task``, ``score-s3prl superb TASK``).
        downstream: s3prl ``-d``; None: the task runs no s3prl downstream.
        config: our config file in ``downstream_recipes/`` (relative to :data:`RECIPE_DIR`);
            None with ``downstream``.
        metric: results CSV metric of the reported number.
        lower_is_better: direction of ``metric``.
        test_split: s3prl ``-t`` of the reported evaluation; None: the split is named by the data
            measured (the probe: its audio folder's name).
        best_checkpoint: what training saves for the best dev score; None: no training.
        assets: config keys (section, key under ``downstream_expert``) naming files shipped beside
            the config; relative paths are resolved against its folder.
        data_roots: the :class:`DataPaths` roots the task reads (``libri_root``, ``quesst_root``),
            checked before a run starts.
        data_overrides: the ``-o`` keys that point the recipe at the data (None: no downstream).
        prepare: writes the files ``data_overrides`` names under ``DataPaths.prepared``
            (None: nothing to write); prints what it wrote to stderr.
        given_instead: a :class:`DataPaths` field that, when given, replaces what ``prepare``
            writes (PR: a lexicon), so no preparation runs.
        data_detail: what else defines the data the task reads beyond the ``-o`` paths (PR: which
            lexicon, by name and version): part of the keys of its preparation and training
            stages, of its rows' ``config_hash`` and of its score's recorded detail (None: nothing).
        check_config: the launcher's check of a parsed s3prl run (args, config), raising
            :class:`ScoreError` that names the key at fault (None: no downstream).
        paper_settings: ``-o`` values of the SCORE paper's evaluation beyond the config.
        worker_keys: config keys of dataloader worker counts (``--workers``).
        demo_settings: ``-o`` values of the tiny-model demo.
        paper_gain_pct: the SCORE paper's relative gain over HuBERT Base, percent.
        plan: the ``Planner`` method (:mod:`score_s3prl.superb.plan`) that builds the task's stages.
    """

    task: str
    downstream: str | None = None
    config: str | None = None
    metric: str
    lower_is_better: bool
    test_split: str | None
    best_checkpoint: str | None = None
    assets: tuple[tuple[str, str], ...] = ()
    data_roots: tuple[str, ...] = ()
    data_overrides: Callable[[DataPaths], dict[str, Any]] | None = None
    prepare: Callable[[DataPaths], None] | None = None
    given_instead: str | None = None
    data_detail: Callable[[DataPaths], dict[str, Any]] | None = None
    check_config: Callable[[argparse.Namespace, dict[str, Any]], None] | None = None
    paper_settings: Mapping[str, Any] = field(default_factory=dict)
    worker_keys: tuple[str, ...] = ()
    demo_settings: Mapping[str, Any] = field(default_factory=dict)
    paper_gain_pct: float | None = None
    plan: str

    def __post_init__(self) -> None:
        # the s3prl fields come together: a downstream needs its config, check and data keys
        s3prl = (self.downstream, self.config, self.check_config, self.data_overrides)
        if any(v is None for v in s3prl) and any(v is not None for v in s3prl):
            raise ValueError(f"recipe {self.task}: downstream, config, check_config and data_overrides "
                             "are given together or not at all")

    @property
    def config_path(self) -> Path | None:
        """Our config file for the downstream; None for a task with no downstream."""
        return RECIPE_DIR / self.config if self.config is not None else None


def config_path(downstream: str) -> Path | None:
    """Our config for ``-d downstream``, or None when we ship none."""
    recipe = by_downstream(downstream)
    return recipe.config_path if recipe else None


def by_downstream(downstream: str | None) -> Recipe | None:
    """The recipe run by s3prl's ``-d downstream``, or None for a downstream we do not ship (and
    for None: a task without a downstream is never s3prl's)."""
    if downstream is None:
        return None
    return next((r for r in RECIPES.values() if r.downstream == downstream), None)


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

    recipe = by_downstream(downstream)
    for section, key in recipe.assets if recipe else ():
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
        assets = {key for recipe in RECIPES.values() for _, key in recipe.assets}
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
    datarc = config["downstream_expert"]["datarc"]
    root = _need_dir(datarc.get("dataset_root"), _key("datarc", "dataset_root"), "/data/quesst14Database")
    # the expert reads the dev queries for -t dev and the eval queries for anything else
    check_quesst(root, "dev" if args.evaluate_split == "dev" else "eval")


# -- the recipes ------------------------------------------------------------------------------


def _asr_overrides(paths: DataPaths) -> dict[str, Any]:
    return {f"{EXPERT}.datarc.libri_root": str(paths.libri_root),
            f"{EXPERT}.datarc.bucket_file": str(paths.prepared)}


def _prepare_asr(paths: DataPaths) -> None:
    """length tables of the splits"""
    assert paths.libri_root is not None
    write_bucket_files(paths.libri_root, paths.prepared, paths.splits)


def _pr_overrides(paths: DataPaths) -> dict[str, Any]:
    return {f"{EXPERT}.corpus.path": str(paths.libri_root),
            f"{EXPERT}.corpus.lexicon": [str(p) for p in paths.pr_lexicon.files(paths.prepared)]}


def _pr_detail(paths: DataPaths) -> dict[str, Any]:
    return {"lexicon": paths.pr_lexicon.label}


def _prepare_pr(paths: DataPaths) -> None:
    """lexicon: s3prl's g2p files (fetched once), or written from CMUdict"""
    from .corpora import OOV_PHONE, split_files, transcripts
    from .lexicons import fetch_g2p, uncovered

    assert paths.libri_root is not None
    if paths.lexicon_source == CMUDICT:
        (written,) = paths.pr_lexicon.files(paths.prepared)
        stats = write_lexicon(paths.libri_root, written, paths.splits)
        print(f"{written}: {stats.words} words, {stats.oov_words} not in CMUdict -> {OOV_PHONE} "
              f"({stats.oov_tokens} of {stats.tokens} running words)", file=sys.stderr)
        return
    files = fetch_g2p()
    words = {w for split in paths.splits for t in transcripts(split_files(paths.libri_root, split)).values() for w in t}
    missing = uncovered(files, words)
    if missing:
        raise ScoreError(f"{files[0].name}: s3prl's g2p lexicon has no entry for {len(missing)} transcript words "
                         f"(first: {missing[0]!r}); is {paths.libri_root} LibriSpeech? Pass --lexicon FILE or "
                         f"--lexicon {CMUDICT}")
    print(f"{', '.join(str(f) for f in files)}: s3prl's g2p lexicon, all {len(words)} transcript words covered",
          file=sys.stderr)


def _qbe_overrides(paths: DataPaths) -> dict[str, Any]:
    return {f"{EXPERT}.datarc.dataset_root": str(paths.quesst_root)}


RECIPES: dict[str, Recipe] = {
    "asr": Recipe(
        task="asr", downstream="asr", config="asr.yaml", metric="wer", lower_is_better=True,
        test_split="test-clean", best_checkpoint="dev-clean-best.ckpt", assets=(("datarc", "dict_path"),),
        data_roots=("libri_root",), data_overrides=_asr_overrides, prepare=_prepare_asr,
        check_config=_check_asr, worker_keys=(f"{EXPERT}.datarc.num_workers",),
        demo_settings={f"{EXPERT}.datarc.batch_size": 4, f"{EXPERT}.modelrc.project_dim": 16,
                       f"{EXPERT}.modelrc.RNNs.dim": [16, 16]},
        paper_gain_pct=1.09, plan="trained",
    ),
    "pr": Recipe(
        task="pr", downstream="ctc", config="libriphone.yaml", metric="per", lower_is_better=True,
        test_split="test", best_checkpoint="dev-best.ckpt", assets=(("text", "vocab_file"), ("corpus", "lexicon")),
        data_roots=("libri_root",), data_overrides=_pr_overrides, prepare=_prepare_pr, given_instead="lexicon",
        data_detail=_pr_detail,
        check_config=_check_ctc, paper_settings={"config.optimizer.lr": 5.0e-4},
        worker_keys=(f"{EXPERT}.corpus.num_workers",),
        demo_settings={"config.runner.gradient_accumulate_steps": 1, f"{EXPERT}.corpus.batch_size": 2},
        paper_gain_pct=3.58, plan="trained",
    ),
    "qbe": Recipe(
        task="qbe", downstream="quesst14_dtw", config="quesst14_dtw.yaml", metric="mtwv", lower_is_better=False,
        test_split="test", best_checkpoint=None, data_roots=("quesst_root",), data_overrides=_qbe_overrides,
        check_config=_check_quesst, worker_keys=(f"{EXPERT}.datarc.num_workers",),
        demo_settings={f"{EXPERT}.max_workers": 1}, paper_gain_pct=12.65, plan="qbe",
    ),
    # label-free: the layer-wise invariance probe (score_s3prl/probe.py) on held-out audio, the last
    # layer's value for SCORE's own views; its audio (dev-clean or --probe-audio) is checked by
    # superb/checks.py. The paper reports no such number.
    "probe": Recipe(
        task="probe", metric="view_divergence", lower_is_better=True, test_split=None, plan="probe",
    ),
}  # fmt: skip


def prepare_config(args: argparse.Namespace, config: dict[str, Any]) -> None:
    """Resolve asset paths and check data paths of a parsed s3prl run (``args``, ``config``).

    Only the downstreams of :data:`RECIPES` are checked; other downstreams pass through unchanged.

    Raises:
        ScoreError: naming the config key and the path at fault, and how to set it.
    """
    recipe = by_downstream(args.downstream)
    if recipe is None:
        return
    resolve_assets(args.downstream, config, getattr(args, "config", None))
    assert recipe.check_config is not None  # a recipe with a downstream has its check (__post_init__)
    recipe.check_config(args, config)
