"""What stock s3prl would ``eval()``, import, download or write to, checked before s3prl sees it.

Stock s3prl 0.4.18 turns strings of a run's arguments and config into code, modules, downloads
and places. A downstream checkpoint (``-e``/``--past_exp``) is plain data that passes
``weights_only``, yet its saved ``Args`` and ``Config`` replace the command line's, so without
this module such a file chooses the code that runs, where the run writes and what it downloads.
The launcher (:mod:`score_s3prl.run_downstream`) checks every one of these values against an
allow-list (never a denylist) wherever they enter: the ``-e`` checkpoint as it loads, ``-c``
(read as plain YAML), ``-o`` (read as Python literals, never ``eval``), and the final run.

=================================================  ==============================================
stock site                                         value and its allow-list
=================================================  ==============================================
``run_downstream.main``: ``eval("runner." + m)``   ``args.mode``: :data:`MODES`
``utility.helper.override``: ``eval(value)``       every ``-o`` value: Python literals only
``runner``: ``import s3prl.downstream.<d>``         ``args.downstream``: the recipes' downstreams
``runner``: ``getattr(s3prl.hub, name)``           ``args.upstream``: the hub's entry names
``runner``: Hugging Face download + ``import``     ``args.hub`` ``torch``; ``from_hf_hub`` false
``runner.train``: upload to the Hugging Face Hub   ``args.push_to_hf_hub``: false
``torch.hub.set_dir``, ``os.makedirs(expdir)``     ``args.cache_dir``, ``args.expdir``: see below
upstream entries: download or read                 ``args.upstream_ckpt``: see below
``optimizers``: ``eval("get_" + name)``            ``config.optimizer.name``: :data:`OPTIMIZERS`
``optimizers``: ``getattr(torch.optim, name)``     ``torch_optim_name``: torch's optimiser classes
``schedulers``: ``eval("get_" + name)``            ``config.scheduler.name``: :data:`SCHEDULERS`
``asr``/``ctc`` experts: ``eval(select)``          the head: :data:`HEADS`
``asr`` expert: ``eval(unk_weight)`` (kenlm)        ``decoder_args.decoder_type``: none only
``asr.model``: ``getattr(nn, module.upper())``     ``RNNs.module``: LSTM, GRU
``model.FrameLevel``: ``getattr(nn, activation)``  :data:`ACTIVATIONS`
``ctc`` expert: ``eval(metric)``                   ``metric``: :data:`CTC_METRICS`
``ctc.text``: ``bert-*`` downloads a tokenizer     ``text.mode``: :data:`TEXT_MODES`
split names, joined to data folders                one path component of letters, digits, ``_-``
``run_downstream``: ``yaml.load(FullLoader)``      ``-c``: plain YAML (safe loader)
=================================================  ==============================================

A value that a checkpoint's saved ``Args`` chooses about where the run writes or what it
fetches (:data:`PLACES`) is allowed only as the checkpoint's own folder (``expdir``), nothing
(``cache_dir``), or nothing or a local file (``upstream_ckpt``, ``upstream_model_config``); the
user overrides any of them with ``-o "args.KEY=..."``, which then replaces the saved value
before s3prl uses it. Data paths (``libri_root``, ...) are checked by :mod:`score_s3prl.recipes`
to be local folders and files.

Every refusal is one :class:`RefusedValue` line naming the file (or ``-o``), the key, the value
and what is allowed.
"""

from __future__ import annotations

import argparse
import ast
import os
import re
import sys
import types
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import yaml

from .errors import ScoreError

MODES = ("train", "evaluate")  # the runner methods our recipes call (eval("runner." + mode))
# s3prl.optimizers.get_<name>, as config.optimizer.name (our recipes: TorchOptim)
OPTIMIZERS = ("TorchOptim", "Adam", "AdamW", "AdamW_with_schedule", "BertAdam_with_schedule",
              "Lamb_with_schedule")
# s3prl.schedulers.get_<name>, as config.scheduler.name (our recipes use none)
SCHEDULERS = ("linear_schedule_with_warmup", "cosine_schedule_with_warmup",
              "cosine_with_hard_restarts_schedule_with_warmup", "sqrt_decay_schedule_with_warmup",
              "constant_decay_schedule_with_warmup", "noam_decay_schedule_with_warmup",
              "polynomial_decay_schedule_with_warmup")
# the heads each expert's eval(select) may name: classes whose constructor fits its call
HEADS = {"asr": ("RNNs", "Wav2Letter"), "ctc": ("FrameLevel", "RNNs", "Wav2Letter")}
RNN_MODULES = ("LSTM", "GRU")  # getattr(nn, module.upper())
SAMPLE_STYLES = ("drop", "concat")
ACTIVATIONS = ("ReLU", "GELU", "Tanh", "Sigmoid", "LeakyReLU", "ELU", "SiLU")  # FrameLevel hiddens
CTC_METRICS = ("per", "wer", "cer")  # functions of s3prl.downstream.ctc.metric taking (hypothesis, groundtruth)
TEXT_MODES = ("word", "character", "subword")  # encoders that read only the local vocab_file
NO_DECODER = (None, "None")  # the asr expert's greedy decoding (kenlm would eval unk_weight)
DTW_DISTANCES = ("cosine_exp", "cosine_neg_log", "cosine", "euclidean", "sqeuclidean", "cityblock")
DTW_STEP_PATTERNS = ("asymmetric", "symmetric1", "symmetric2")
CONFIG_SECTIONS = ("runner", "optimizer", "scheduler", "specaug", "downstream_expert")
SPLIT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")  # one path component, no dots or separators
NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
SEED_LIMIT = 2**32  # numpy's seed range (s3prl seeds random, numpy and torch with args.seed)

# The arguments of s3prl 0.4.18's run_downstream.py, the only keys a saved or overridden Args may have.
ARGS = ("mode", "evaluate_split", "override", "backend", "local_rank", "past_exp", "init_ckpt", "config",
        "downstream", "downstream_variant", "hub", "upstream", "upstream_ckpt", "upstream_model_config",
        "upstream_refresh", "upstream_trainable", "upstream_feature_selection", "upstream_layer_selection",
        "upstream_feature_normalize", "upstream_model_name", "upstream_revision", "expname", "expdir",
        "auto_resume", "push_to_hf_hub", "hf_hub_org", "seed", "device", "cache_dir", "verbose",
        "disable_cudnn")
FLAGS = ("upstream_refresh", "upstream_trainable", "upstream_feature_normalize", "auto_resume", "verbose",
         "disable_cudnn")
# saved Args that choose where the run writes or what it reads or downloads
PLACES = ("expdir", "cache_dir", "upstream_ckpt", "upstream_model_config")


class RefusedValue(ScoreError):
    """A value stock s3prl would run, import, fetch or write to, and that no allow-list holds."""


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _refuse(source: str, key: str, value: Any, allowed: str) -> RefusedValue:
    return RefusedValue(f"{source}: {key} = {_shown(value)}: refused for safety, nothing was run "
                        f"(allowed: {allowed})")


def _one_of(source: str, key: str, value: Any, allowed: Sequence[Any]) -> None:
    if not isinstance(value, (str, type(None))) or value not in allowed:
        raise _refuse(source, key, value, ", ".join(map(str, allowed)))


# ----------------------------------------------------------------------------- -o


def parse_override(text: str, source: str = "-o") -> list[tuple[str, Any]]:
    """s3prl's ``-o "key=value,,key=value"`` as (key, value) pairs, values read as Python literals.

    Stock s3prl ``eval()``s each value and keeps the text when that fails; here a value that is
    not a literal (number, string, list, dict, True, None, ...) is kept as text and never run.
    A key is ``args.NAME`` (an s3prl argument) or ``config.a.b...``.

    Raises:
        RefusedValue: a malformed option or an unknown key, naming it.
    """
    pairs = []
    for option in text.split(",,"):
        key, sep, raw = option.strip().partition("=")
        key, raw = key.strip(), raw.strip()
        first, *rest = key.split(".")
        if not sep or "=" in raw:
            raise RefusedValue(f"{source}: {_shown(option.strip())}: expected key=value (one '=', "
                               "options separated by ',,')")
        if first == "args" and len(rest) == 1 and rest[0] in ARGS:
            pass
        elif first == "config" and rest and all(NAME.fullmatch(part) or SPLIT_NAME.fullmatch(part) for part in rest):
            pass
        else:
            raise RefusedValue(f"{source}: {_shown(key)}: expected args.NAME (an s3prl argument) or "
                               "config.SECTION.KEY")
        try:
            value = ast.literal_eval(raw)
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
            value = raw  # stock s3prl keeps such a value as text too (after trying to run it)
        pairs.append((key, value))
    return pairs


def literal_override(text: str, args: argparse.Namespace, config: dict) -> None:
    """Drop-in for ``s3prl.utility.helper.override`` that runs nothing (see :func:`parse_override`)."""
    for key, value in parse_override(text):
        print(f"[Override] - {key} = {value}", file=sys.stderr)
        first, *rest = key.split(".")
        if first == "args":
            setattr(args, rest[0], value)
            continue
        target = config
        for name in rest[:-1]:
            if not isinstance(target.setdefault(name, {}), dict):
                raise RefusedValue(f"-o: {key}: {name} is not a section of the config")
            target = target[name]
        target[rest[-1]] = value


def user_args(argv: Sequence[str]) -> dict[str, Any]:
    """The ``args.NAME`` values the command line's ``-o`` sets (they win over a checkpoint's)."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("-o", "--override")
    flags, _ = parser.parse_known_args(list(argv))
    if flags.override is None or flags.override.lower() == "none":
        return {}
    return {key.split(".", 1)[1]: value for key, value in parse_override(flags.override)
            if key.startswith("args.")}


# ----------------------------------------------------------------------------- -c


def _safe_load(stream: Any, Loader: Any = None) -> Any:  # noqa: N803 - yaml.load's own name
    """``yaml.load`` with any loader asked for read as plain YAML (no Python objects, no
    duplicated keys: :func:`score_s3prl.config.parse_yaml`), errors as one line naming the file."""
    from .config import parse_yaml, yaml_problem

    name = getattr(stream, "name", "-c")
    try:
        return parse_yaml(stream if isinstance(stream, str) else stream.read())
    except (yaml.YAMLError, UnicodeDecodeError, ScoreError) as exc:
        raise ScoreError(f"{name}: {yaml_problem(exc)}") from None


# stands in for the yaml module inside s3prl's run_downstream: -c is read as plain data
SAFE_YAML = types.SimpleNamespace(load=_safe_load, safe_load=yaml.safe_load, dump=yaml.dump,
                                  FullLoader=yaml.SafeLoader, SafeLoader=yaml.SafeLoader)


# ----------------------------------------------------------------------------- -e


def check_past_exp(argv: Sequence[str]) -> None:
    """``-e DIR`` must hold ``states-<update>.ckpt`` files, as s3prl picks the newest by that number.

    Raises:
        ScoreError: the folder holds none, or a name s3prl's sort cannot read.
    """
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("-e", "--past_exp")
    flags, _ = parser.parse_known_args(list(argv))
    if not flags.past_exp or not os.path.isdir(flags.past_exp):
        return  # a file (or nothing): torch.load names a missing one
    names = [p.name for p in Path(flags.past_exp).glob("states-*.ckpt")]
    if not names:
        raise ScoreError(f"{flags.past_exp}: no states-*.ckpt to resume from (-e takes a checkpoint file "
                         "or a folder of s3prl's states-<update>.ckpt)")
    odd = [n for n in names if not re.fullmatch(r"states-[0-9]+\.ckpt", n)]
    if odd:
        raise ScoreError(f"{flags.past_exp}/{odd[0]}: not a states-<update>.ckpt name; s3prl picks the "
                         "newest by that number: rename or remove it")


def _is_url(value: str) -> bool:
    return "://" in value


def check_saved_args(path: str | os.PathLike, state: Mapping[str, Any], user: Mapping[str, Any]) -> None:
    """Check the ``Args`` and ``Config`` an s3prl checkpoint carries, as it loads; in place.

    ``user`` holds the ``args.NAME`` values the command line sets with ``-o``: those replace
    the saved ones here, so s3prl never acts on the saved value (it would create the saved
    ``expdir`` before applying ``-o``).

    Raises:
        RefusedValue: naming ``path``, the key and its value.
    """
    source = os.fspath(path)
    saved = state.get("Args")
    if not isinstance(saved, argparse.Namespace):
        raise RefusedValue(f"{source}: Args = {_shown(type(saved).__name__)}: refused for safety, nothing "
                           "was run (allowed: the argparse.Namespace s3prl saves)")
    for key in vars(saved):
        if key not in ARGS:
            raise _refuse(source, f"Args.{key}", getattr(saved, key), "the arguments of s3prl's run_downstream.py")
    for key, value in user.items():
        setattr(saved, key, value)
    own = os.path.realpath(os.path.dirname(os.path.abspath(source)))
    expdir = getattr(saved, "expdir", None)
    if "expdir" not in user and (not isinstance(expdir, str) or os.path.realpath(expdir) != own):
        raise _refuse(source, "Args.expdir", expdir,
                      f"the checkpoint's own folder {own}; to write elsewhere pass -o \"args.expdir='DIR'\"")
    if "cache_dir" not in user and getattr(saved, "cache_dir", None) is not None:
        raise _refuse(source, "Args.cache_dir", saved.cache_dir,
                      "None; to download elsewhere pass -o \"args.cache_dir='DIR'\"")
    for key in ("upstream_ckpt", "upstream_model_config"):
        value = getattr(saved, key, None)
        if key not in user and value is not None and (not isinstance(value, str) or _is_url(value)):
            raise _refuse(source, f"Args.{key}", value,
                          f"None or a local path; to fetch a URL pass it yourself: -o \"args.{key}='URL'\"")
    check_args(saved, source, prefix="Args")
    config = state.get("Config")
    if not isinstance(config, dict):
        raise RefusedValue(f"{source}: Config = {_shown(type(config).__name__)}: refused for safety, nothing "
                           "was run (allowed: the config dict s3prl saves)")
    check_config(saved.downstream, config, source)


def saved_state_check(user: Mapping[str, Any]) -> Callable[[Any, Any], None]:
    """For :func:`score_s3prl.checkpoints.safeload.weights_only_torch_load`'s ``inspect``: every
    loaded s3prl state (a dict with ``Args``) is checked by :func:`check_saved_args` before its
    caller sees it."""

    def check(f: Any, state: Any) -> None:
        if isinstance(state, dict) and "Args" in state:
            check_saved_args(f if isinstance(f, (str, os.PathLike)) else "-e checkpoint", state, user)

    return check


# ----------------------------------------------------------------------------- the run


def hub_names() -> tuple[str, ...]:
    """The upstream names ``getattr(s3prl.hub, name)`` may take: the hub's public entries."""
    from s3prl import hub

    return tuple(sorted(n for n in dir(hub) if not n.startswith("_") and callable(getattr(hub, n))))


def downstreams() -> tuple[str, ...]:
    """The s3prl downstreams the launcher runs: those of :data:`score_s3prl.recipes.RECIPES`."""
    from .recipes import RECIPES

    return tuple(r.downstream for r in RECIPES.values() if r.downstream is not None)


def _typed(source: str, key: str, value: Any, kinds: tuple[type, ...], allowed: str) -> None:
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        raise _refuse(source, key, value, allowed)


def check_args(args: argparse.Namespace, source: str, prefix: str = "args") -> None:
    """Every argument s3prl will act on, against its allow-list (see the module's table).

    Raises:
        RefusedValue: naming ``source``, the argument (``prefix.NAME``) and its value.
    """
    a = vars(args)
    for key in a:
        if key not in ARGS:
            raise _refuse(source, f"{prefix}.{key}", a[key], "the arguments of s3prl's run_downstream.py")
    _one_of(source, f"{prefix}.downstream", a.get("downstream"), downstreams())
    if "mode" in a:
        _one_of(source, f"{prefix}.mode", a["mode"], MODES)
    _one_of(source, f"{prefix}.hub", a.get("hub", "torch"), ("torch",))
    _one_of(source, f"{prefix}.upstream", a.get("upstream"), hub_names())
    if a.get("push_to_hf_hub") not in (False, None):
        raise _refuse(source, f"{prefix}.push_to_hf_hub", a["push_to_hf_hub"], "False")
    seed = a.get("seed", 0)
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < SEED_LIMIT:
        raise _refuse(source, f"{prefix}.seed", seed, "an integer in [0, 2**32)")
    for key in FLAGS:
        _typed(source, f"{prefix}.{key}", a.get(key, False), (bool,), "True or False")
    _typed(source, f"{prefix}.upstream_layer_selection", a.get("upstream_layer_selection"), (int, type(None)),
           "None or an integer")
    feature = a.get("upstream_feature_selection", "hidden_states")
    if not isinstance(feature, str) or not NAME.fullmatch(feature):
        raise _refuse(source, f"{prefix}.upstream_feature_selection", feature, "a feature name")
    split = a.get("evaluate_split", "test")
    if not isinstance(split, str) or not SPLIT_NAME.fullmatch(split):
        raise _refuse(source, f"{prefix}.evaluate_split", split, "a split name of letters, digits, '_' and '-'")
    for key in ("expdir", "config", "upstream_ckpt", "upstream_model_config", "cache_dir", "init_ckpt",
                "past_exp", "expname", "upstream_model_name", "upstream_revision", "hf_hub_org",
                "downstream_variant", "override", "backend", "device"):
        _typed(source, f"{prefix}.{key}", a.get(key), (str, type(None)), "None or a string")
    for key in ("expdir", "cache_dir"):
        if isinstance(a.get(key), str) and (not a[key] or _is_url(a[key]) or "\0" in a[key]):
            raise _refuse(source, f"{prefix}.{key}", a[key], "a local folder")


def _split_lists(block: Mapping[str, Any], source: str, where: str, keys: Sequence[str]) -> None:
    for key in keys:
        names = block.get(key)
        if not isinstance(names, list) or not all(isinstance(n, str) and SPLIT_NAME.fullmatch(n) for n in names):
            raise _refuse(source, f"{where}.{key}", names, "a list of split names of letters, digits, '_' and '-'")


def _section(config: Mapping[str, Any], path: str, source: str) -> dict:
    block: Any = config
    for part in path.split("."):
        block = block.get(part) if isinstance(block, dict) else None
    if not isinstance(block, dict):
        raise _refuse(source, f"config.{path}", block, "a mapping of keys (a config section)")
    return block


def _check_common(config: dict, source: str) -> None:
    for key in config:
        if key not in CONFIG_SECTIONS:
            raise _refuse(source, f"config.{key}", config[key], "the sections " + ", ".join(CONFIG_SECTIONS))
    runner = config.get("runner", {})
    if not isinstance(runner, dict):
        raise _refuse(source, "config.runner", runner, "a mapping of keys (a config section)")
    if "eval_dataloaders" in runner:
        _split_lists(runner, source, "config.runner", ["eval_dataloaders"])
    if "optimizer" in config:
        optimizer = _section(config, "optimizer", source)
        _one_of(source, "config.optimizer.name", optimizer.get("name"), OPTIMIZERS)
        if optimizer.get("name") == "TorchOptim":
            import torch

            names = tuple(sorted(n for n, v in vars(torch.optim).items() if isinstance(v, type)
                                 and issubclass(v, torch.optim.Optimizer) and v is not torch.optim.Optimizer))
            _one_of(source, "config.optimizer.torch_optim_name", optimizer.get("torch_optim_name"), names)
    if config.get("scheduler"):
        _one_of(source, "config.scheduler.name", _section(config, "scheduler", source).get("name"), SCHEDULERS)


def _check_asr(expert: dict, source: str) -> None:
    datarc = _section(expert, "datarc", source)
    model = _section(expert, "modelrc", source)
    where = "config.downstream_expert"
    _one_of(source, f"{where}.modelrc.select", model.get("select"), HEADS["asr"])
    head = _section(model, model["select"], f"{source}: {where}.modelrc")
    if model["select"] == "RNNs":
        module = head.get("module")
        _one_of(source, f"{where}.modelrc.RNNs.module", module.upper() if isinstance(module, str) else module,
                RNN_MODULES)
        _one_of(source, f"{where}.modelrc.RNNs.sample_style", head.get("sample_style"), SAMPLE_STYLES)
    decoder = datarc.get("decoder_args")
    if not isinstance(decoder, dict):
        raise _refuse(source, f"{where}.datarc.decoder_args", decoder, "a mapping with decoder_type: None")
    _one_of(source, f"{where}.datarc.decoder_args.decoder_type", decoder.get("decoder_type"), NO_DECODER)
    splits = [k for k, v in datarc.items() if isinstance(v, list)]
    _split_lists(datarc, source, f"{where}.datarc", splits)


def _check_ctc(expert: dict, source: str) -> None:
    where = "config.downstream_expert"
    model = _section(expert, "model", source)
    _one_of(source, f"{where}.model.select", model.get("select"), HEADS["ctc"])
    head = model.get(model["select"], {})
    if not isinstance(head, dict):
        raise _refuse(source, f"{where}.model.{model['select']}", head, "a mapping of the head's settings")
    if model["select"] == "FrameLevel":
        _one_of(source, f"{where}.model.FrameLevel.activation", head.get("activation", "ReLU"), ACTIVATIONS)
    elif model["select"] == "RNNs":
        module = head.get("module")
        _one_of(source, f"{where}.model.RNNs.module", module.upper() if isinstance(module, str) else module,
                RNN_MODULES)
    metrics = expert.get("metric")
    if not isinstance(metrics, list) or not metrics or not all(isinstance(m, str) and m in CTC_METRICS for m in metrics):
        raise _refuse(source, f"{where}.metric", metrics, "a list of " + ", ".join(CTC_METRICS))
    _one_of(source, f"{where}.text.mode", _section(expert, "text", source).get("mode"), TEXT_MODES)
    corpus = _section(expert, "corpus", source)
    _one_of(source, f"{where}.corpus.name", corpus.get("name"), ("libriphone",))
    splits = [k for k, v in corpus.items() if isinstance(v, list) and k != "lexicon"]
    _split_lists(corpus, source, f"{where}.corpus", splits)
    if "save_best_on" in expert:
        _split_lists(expert, source, where, ["save_best_on"])


def _check_quesst(expert: dict, source: str) -> None:
    where = "config.downstream_expert"
    dtwrc = _section(expert, "dtwrc", source)
    _one_of(source, f"{where}.dtwrc.dist_method", dtwrc.get("dist_method"), DTW_DISTANCES)
    _one_of(source, f"{where}.dtwrc.step_pattern", dtwrc.get("step_pattern"), DTW_STEP_PATTERNS)
    workers = expert.get("max_workers", 1)
    _typed(source, f"{where}.max_workers", workers, (int,), "a positive integer")
    if workers < 1:
        raise _refuse(source, f"{where}.max_workers", workers, "a positive integer")


_EXPERTS: dict[str, Callable[[dict, str], None]] = {"asr": _check_asr, "ctc": _check_ctc,
                                                     "quesst14_dtw": _check_quesst}


def check_config(downstream: Any, config: Any, source: str) -> None:
    """Every config value the ``downstream``'s stock code will eval, import or use as a name.

    Raises:
        RefusedValue: naming ``source``, the key and its value.
    """
    _one_of(source, "args.downstream", downstream, downstreams())
    if not isinstance(config, dict):
        raise _refuse(source, "config", type(config).__name__, "a mapping of config sections")
    _check_common(config, source)
    _EXPERTS[downstream](_section(config, "downstream_expert", source), source)


def check_run(args: argparse.Namespace, config: dict) -> None:
    """The final ``args`` and ``config`` of a run (``-c``, ``-e`` and ``-o`` applied), before the
    runner is built: every value of the module's table against its allow-list.

    Raises:
        RefusedValue: naming where the values came from, the key and its value.
    """
    if getattr(args, "past_exp", None):
        source = f"{args.init_ckpt} and -o"
    else:
        source = f"{getattr(args, 'config', None) or 'the config'} and -o"
    check_args(args, source)
    check_config(args.downstream, config, source)
