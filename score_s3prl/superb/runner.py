"""``score-s3prl superb TASK`` (``run_superb.sh TASK``): SUPERB ASR, PR and QbE, baseline vs SCORE.

TASK is ``asr``, ``pr``, ``qbe``, ``all`` (the three in turn) or ``demo``.

For each upstream (``--upstream NAME[=CKPT]``, repeatable, the first is the baseline; default
``hubert_base`` and ``score_hubert=$SCORE_HUBERT_CKPT``) the stock s3prl recipe runs through
``python -m score_s3prl.run_downstream``, one subprocess per stage, in ``<out>/<task>/<upstream>/``:

- ``asr``: train ``-d asr`` (stock settings), evaluate ``-e <train>/dev-clean-best.ckpt -t test-clean``,
  WER recomputed from the hyp/ref files s3prl writes;
- ``pr``: train ``-d ctc`` (libriphone, lr 5e-4 as the paper), evaluate ``-e <train>/dev-best.ckpt
  -t test``, PER from the hyp/ref files;
- ``qbe``: no training; ``-m evaluate -d quesst14_dtw -t test -l -1`` (the last layer, as the
  paper), MTWV computed natively from ``benchmark.stdlist.xml`` (and by the official script when
  the QUESST 2014 root has it); ``--qbe-dev-layers`` adds a dev sweep over layers.

The experiment folders are given with ``-p`` (absolute) rather than ``-n``: s3prl stores the
expdir in its checkpoints, and a path relative to one working directory breaks ``-e`` from
another.

Data roots come from ``--libri-root`` / ``$LIBRISPEECH_ROOT``, ``--quesst-root`` /
``$QUESST14_ROOT`` and, optionally, ``--lexicon`` / ``$LIBRISPEECH_LEXICON`` (without it a lexicon
is written from CMUdict); all of them, and the upstream checkpoints, are checked before any
stage starts. Finished stages are skipped on a re-run unless their settings or the content of their
upstream checkpoint changed (``--force`` redoes them all), and a training that died resumes from its
last ``states-*.ckpt``; ``--dry-run``
prints the commands. Each measurement is appended to the results CSV (``--results``), and a
summary table (our relative gains beside the paper's) and a bar chart (``--plot``) end the run.

``demo`` needs no data and no weights: it builds a tiny LibriSpeech-layout corpus and a tiny
QUESST-layout set from the bundled audio, makes a tiny random HuBERT (``make-tiny``),
SCORE-fine-tunes it (``finetune``, ``upstream_configs/score_tiny.yaml``) and runs the three tasks
for both on the CPU, in about a minute on 2 cores. The baseline is stock s3prl's
``hubert_local -k <tiny base>``: like the real baseline ``hubert_base`` it loads through s3prl's
own code, none of ours, so a loader of ours cannot flatter or handicap the baseline; the SCORE side
is ``score_hubert_local -k <export>``. Both build s3prl's HuBERT expert, so they differ only in
weights. The demo's numbers show that the pipeline works end to end; they are not SUPERB numbers.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import re
import sys
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Sequence

import yaml

from .. import corpora, recipes
from ..errors import ScoreError
from ..hashing import file_sha256, json_hash
from ..recipes import RECIPES, DataPaths
from . import demo_data, mtwv, results
from .metrics import recipe_error_rate
from .stages import Pipeline, Stage

REPO = Path(__file__).resolve().parents[2]
LAUNCHER = [sys.executable, "-m", "score_s3prl.run_downstream"]  # stock s3prl run_downstream.py, with our recipes
SCORE_CLI = [sys.executable, "-m", "score_s3prl.cli"]
SPLITS = corpora.SPLITS  # LibriSpeech splits the ASR and PR recipes read
LAST_LAYER = -1  # QbE layer the SCORE paper evaluated
ENV = {"libri_root": "LIBRISPEECH_ROOT", "quesst_root": "QUESST14_ROOT", "lexicon": "LIBRISPEECH_LEXICON"}
DEFAULT_UPSTREAMS = ("hubert_base", "score_hubert")  # score_hubert: -k from $SCORE_HUBERT_CKPT


TASKS = RECIPES  # task name -> its Recipe (score_s3prl.recipes, the one recipe table)
TASK_CHOICES = (*TASKS, "all", "demo")

# QbE: s3prl's -t dev reads the dev queries, any other split the eval queries
QBE_GROUNDTRUTH = {"dev": "groundtruth_quesst14_dev", "test": "groundtruth_quesst14_eval"}
QBE_LANGUAGE_KEY = {"dev": "dev", "test": "eval"}

DEMO_STEPS = 20  # downstream updates per ASR/PR training in the demo
DEMO_FINETUNE_STEPS = 40  # SCORE updates of the tiny model in the demo
DEMO_NOTICE = "demo: tiny random models on 6 utterances; these numbers are NOT SUPERB numbers"


# -- upstreams --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Upstream:
    """An s3prl upstream: hub entry name and optional ``-k`` checkpoint (absolute path or URL)."""

    name: str
    ckpt: str | None = None

    @property
    def label(self) -> str:
        """Folder name of this upstream's runs."""
        if not self.ckpt:
            return self.name
        stem = re.sub(r"[^\w.-]+", "_", Path(self.ckpt.rstrip("/")).stem)
        return f"{self.name}--{stem}"

    @property
    def flags(self) -> list[str]:
        return ["-u", self.name, *(["-k", self.ckpt] if self.ckpt else [])]


def parse_upstream(text: str) -> Upstream:
    """``NAME[=CKPT]`` -> :class:`Upstream`; a local CKPT becomes absolute, ``score_hubert`` without
    one gets the checkpoint its hub entry would load (``$SCORE_HUBERT_CKPT`` or the default path)."""
    name, _, ckpt = text.partition("=")
    if not re.fullmatch(r"[A-Za-z_]\w*", name):
        raise ScoreError(f"--upstream {text!r}: expected NAME or NAME=CKPT with an s3prl upstream NAME")
    if not ckpt and name == "score_hubert":
        from ..hub import default_checkpoint

        ckpt = default_checkpoint()
    if ckpt and "://" not in ckpt:
        ckpt = str(Path(ckpt).expanduser().resolve())
    return Upstream(name, ckpt or None)


def check_upstreams(upstreams: Sequence[Upstream]) -> None:
    """Every upstream names an s3prl hub entry and an existing local checkpoint (when it has one).

    Raises:
        ScoreError: naming the upstream and the problem.
    """
    import difflib

    from ..hub import CKPT_ENV, MAKE_ONE, register

    # s3prl's hub warns about optional upstreams whose packages are missing; not our concern here
    logging.getLogger("s3prl.upstream.espnet_hubert.expert").setLevel(logging.ERROR)
    register()
    import s3prl.hub

    labels = [u.label for u in upstreams]
    for upstream in upstreams:
        if labels.count(upstream.label) > 1:
            raise ScoreError(f"--upstream {upstream.name}: given twice with the same checkpoint file name; "
                             f"both would run in <out>/<task>/{upstream.label}: rename one checkpoint")
        if not callable(getattr(s3prl.hub, upstream.name, None)):
            close = difflib.get_close_matches(upstream.name, dir(s3prl.hub), n=3)
            hint = f" (close: {', '.join(close)})" if close else ""
            raise ScoreError(f"--upstream {upstream.name}: no such s3prl upstream{hint}")
        if upstream.name.endswith(("_local", "_url")) and not upstream.ckpt:
            raise ScoreError(f"--upstream {upstream.name}: needs a checkpoint: {upstream.name}=CKPT")
        if upstream.ckpt and "://" not in upstream.ckpt and not os.path.exists(upstream.ckpt):
            hint = f" (${CKPT_ENV} or the default path); {MAKE_ONE}" if upstream.name == "score_hubert" else ""
            raise ScoreError(f"{upstream.ckpt}: checkpoint of --upstream {upstream.name} not found{hint}")


# -- settings and input checks ----------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    """One invocation of the runner."""

    tasks: tuple[str, ...]  # keys of TASKS, in order
    upstreams: tuple[Upstream, ...]  # the first is the baseline
    out: Path  # run folder
    results: Path  # results CSV
    plot: Path  # gains bar chart (PNG)
    libri_root: Path | None
    quesst_root: Path | None
    lexicon: Path | None  # None: written from CMUdict
    device: str  # s3prl --device
    steps: int | None  # ASR/PR training updates (None: the recipe's)
    workers: int | None  # dataloader workers (None: the recipe's)
    qbe_layer: int  # -l of the QbE test evaluation
    qbe_dev_layers: tuple[int, ...]  # -l of the QbE dev sweep
    demo: bool = False
    env: tuple[tuple[str, str], ...] = ()  # extra environment of every command


def _root(value: Path | None, option: str, setting: str, what: str) -> Path:
    if value is None:
        raise ScoreError(f"{what} not given: pass {option} DIR or set ${ENV[setting]}")
    if not value.is_dir():
        raise ScoreError(f"{value}: {what} not found (from {option} or ${ENV[setting]})")
    return value


def check_lexicon(lexicon: Path, words: dict[str, dict[str, list[str]]]) -> None:
    """Every transcript word has an entry in ``lexicon`` whose phones the PR recipe knows.

    Args:
        words: split -> utterance id -> transcript words.
    Raises:
        ScoreError: naming the lexicon and the first missing word (or bad line).
    """
    if not lexicon.is_file():
        raise ScoreError(f"{lexicon}: lexicon file not found (from --lexicon or ${ENV['lexicon']})")
    from .. import compat

    compat.apply()
    recipes.install()
    from s3prl.downstream.ctc.corpus.libriphone import read_lexicon
    from s3prl.downstream.ctc.text import load_text_encoder

    config = RECIPES["pr"].config_path
    vocab = config.parent / yaml.safe_load(config.read_text())["downstream_expert"]["text"]["vocab_file"]
    entries = read_lexicon([lexicon], load_text_encoder("word", str(vocab)))
    for split, utterances in words.items():
        for utterance, transcript in utterances.items():
            missing = [w for w in transcript if w not in entries]
            if missing:
                raise ScoreError(
                    f"{lexicon}: no entry for the word {missing[0]!r} (utterance {utterance} in {split}); "
                    f"add it, or leave out --lexicon and ${ENV['lexicon']} to have a lexicon written "
                    f"from CMUdict (unknown words -> {corpora.OOV_PHONE})"
                )


def qbe_splits(settings: Settings) -> list[str]:
    return ["test"] + (["dev"] if settings.qbe_dev_layers else [])


def check_inputs(settings: Settings) -> None:
    """Check data roots, the lexicon, the upstreams and the results CSV before anything starts.

    Raises:
        ScoreError: naming the option or file at fault.
    """
    results.check_results_file(settings.results)
    roots = {root for task in settings.tasks for root in RECIPES[task].data_roots}
    if "libri_root" in roots:
        libri = _root(settings.libri_root, "--libri-root", "libri_root", "LibriSpeech root")
        words = {split: corpora.transcripts(corpora.split_files(libri, split)) for split in SPLITS}
        if settings.lexicon is not None and any(RECIPES[t].given_instead == "lexicon" for t in settings.tasks):
            check_lexicon(settings.lexicon, words)
    if "quesst_root" in roots:
        quesst = _root(settings.quesst_root, "--quesst-root", "quesst_root", "QUESST 2014 root")
        for split in qbe_splits(settings):
            corpora.check_quesst(quesst, QBE_LANGUAGE_KEY[split])
            # parsed now: a bad ground truth must not wait until the (long) evaluation is over
            mtwv.scored_queries(mtwv.load_groundtruth(quesst / "scoring" / QBE_GROUNDTRUTH[split]))
    check_upstreams(settings.upstreams)


# -- the plan ---------------------------------------------------------------------------------


def override(values: dict[str, Any]) -> list[str]:
    """``["-o", "k=v,,k=v"]``, or nothing for no values."""
    return ["-o", corpora.override(values)] if values else []


class Planner:
    """Builds the stages of a run; shared stages (data preparation) are built once."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.env = dict(settings.env)
        self.score_stages: list[Stage] = []  # every stage that yields result rows, in order
        self.digests: dict[str | None, str | None] = {}  # upstream checkpoint -> checkpoint_digest
        self._prepare: dict[str, Stage] = {}  # task -> its preparation stage, shared by the upstreams

    @property
    def prepared(self) -> Path:
        return self.settings.out / "prepared"

    def data_paths(self, task: str) -> DataPaths:
        """Where ``task``'s data is; its preparation writes under ``<out>/prepared/<task>``."""
        s = self.settings
        return DataPaths(prepared=self.prepared / task, libri_root=s.libri_root, quesst_root=s.quesst_root,
                         lexicon=s.lexicon, splits=SPLITS)

    def prepare_stages(self, task: str) -> list[Stage]:
        """The stage writing ``task``'s prepared files (built once per task), or none when the
        recipe needs none or the user gave what it would write."""
        recipe, paths = RECIPES[task], self.data_paths(task)
        if recipe.prepare is None or (recipe.given_instead and getattr(paths, recipe.given_instead)):
            return []
        if task not in self._prepare:
            prepare = recipe.prepare

            def action() -> dict[str, Any]:
                prepare(paths)
                return {"overrides": corpora.override(recipe.data_overrides(paths))}

            self._prepare[task] = Stage(
                f"prepare/{task}", self.prepared, task, action=action,
                clean=paths.prepared, describe=f"{recipe.prepare.__doc__ or 'prepare'} ({', '.join(SPLITS)}) -> "
                                               f"{paths.prepared}",
                settings={**{root: str(getattr(paths, root)) for root in recipe.data_roots}, "splits": SPLITS})
        return [self._prepare[task]]

    def data_overrides(self, task: str) -> dict[str, Any]:
        """The ``-o`` keys that point ``task``'s recipe at the data (known before preparation
        runs: a dry run prints them)."""
        return RECIPES[task].data_overrides(self.data_paths(task))

    def setting_overrides(self, task: str) -> dict[str, Any]:
        """The ``-o`` keys of the evaluation protocol: paper settings, demo, --steps, --workers."""
        spec, s = TASKS[task], self.settings
        values = {**spec.paper_settings, **(spec.demo_settings if s.demo else {})}
        if s.workers is not None:
            values.update(dict.fromkeys(spec.worker_keys, s.workers))
        if s.steps is not None and spec.best_checkpoint:
            runner = yaml.safe_load(spec.config_path.read_text())["runner"]
            values["config.runner.total_steps"] = s.steps
            for key in ("eval_step", "save_step", "log_step"):  # so that a short run still saves
                values[f"config.runner.{key}"] = min(runner[key], s.steps)
        return values

    def upstream_digest(self, upstream: Upstream) -> dict[str, str | None]:
        """Stage settings naming the upstream's weights by content, so that new weights saved at
        the same path (a re-run fine-tuning) are trained on and evaluated again, not skipped."""
        if upstream.ckpt not in self.digests:
            self.digests[upstream.ckpt] = checkpoint_digest(upstream.ckpt)
        return {"upstream_sha256": self.digests[upstream.ckpt]}

    def row_hash(self, task: str, upstream: Upstream, split: str, layer: int | None) -> str:
        """json_hash of what defines a measurement (data paths aside)."""
        return json_hash({"task": task, "upstream": dataclasses.asdict(upstream), "split": split,
                                    "layer": layer, "settings": self.setting_overrides(task)})

    def stages(self) -> list[Stage]:
        """Every stage of the run, in order: per task, the baseline first."""
        out = []
        for task in self.settings.tasks:
            baseline_score = None
            for upstream in self.settings.upstreams:
                chain = getattr(self, RECIPES[task].plan)(task, upstream, baseline_score)
                baseline_score = baseline_score or [s for s in chain if s in self.score_stages]
                out += chain
        return out

    def trained(self, task: str, upstream: Upstream, baseline: list[Stage] | None) -> list[Stage]:
        """ASR / PR: prepare, train, evaluate the best dev checkpoint on the test split, score."""
        spec, s = TASKS[task], self.settings
        run = s.out / task / upstream.label
        prep = self.prepare_stages(task)
        train_dir, eval_dir = run / "train", run / spec.test_split
        best = train_dir / spec.best_checkpoint

        def train_command() -> list[str]:
            return [*LAUNCHER, "-m", "train", *upstream.flags, "-d", spec.downstream, "-p", str(train_dir),
                    "--device", s.device,
                    *override({**self.data_overrides(task), **self.setting_overrides(task)})]

        def resume_command() -> list[str] | None:
            # s3prl continues from the folder's newest states-*.ckpt, with the args and config saved in it
            if not any(train_dir.glob("states-*.ckpt")):
                return None
            return [*LAUNCHER, "-m", "train", "-e", str(train_dir), "--device", s.device]

        train = Stage(f"{task}/{upstream.label}/train", run, "train", command=train_command, deps=tuple(prep),
                      cwd=run, env=self.env, clean=train_dir, action=lambda: {"checkpoint": chosen_checkpoint(best)},
                      describe="pick the checkpoint to evaluate", settings=self.upstream_digest(upstream),
                      resume=resume_command)

        def eval_command() -> list[str]:
            ckpt = train.output("checkpoint", str(best))  # before training: where the best one will be
            return [*LAUNCHER, "-m", "evaluate", "-e", ckpt, "-t", spec.test_split, "--device", s.device,
                    *override({"args.expdir": str(eval_dir)})]

        evaluate = Stage(f"{task}/{upstream.label}/evaluate", run, f"evaluate-{spec.test_split}",
                         command=eval_command, deps=(train,), cwd=run, env=self.env, clean=eval_dir)

        def score() -> dict[str, Any]:
            rate = recipe_error_rate(eval_dir, task, spec.test_split)
            row = self.row(task, spec.metric, upstream, spec.test_split, rate.percent, eval_dir,
                           self.row_hash(task, upstream, spec.test_split, None), baseline)
            return scored_rows([row], dataclasses.asdict(rate))

        scored = self.score_stage(f"{task}/{upstream.label}/score", run, f"score-{spec.test_split}", score,
                                  (evaluate, *(baseline or ())),
                                  f"{spec.metric.upper()} from {eval_dir}/*-hyp.ark and *-ref.ark")
        return [*prep, train, evaluate, scored]

    def qbe(self, task: str, upstream: Upstream, baseline: list[Stage] | None) -> list[Stage]:
        """QbE: evaluate on test with ``--qbe-layer``, then the dev sweep; score each with MTWV."""
        s = self.settings
        runs = [("test", s.qbe_layer, "test" if s.qbe_layer == LAST_LAYER else f"test-layer{s.qbe_layer}")]
        runs += [("dev", layer, f"dev-layer{layer}") for layer in s.qbe_dev_layers]
        chain = []
        for split, layer, label in runs:
            chain += self.qbe_run(upstream, split, layer, label, baseline)
        return chain

    def qbe_run(self, upstream: Upstream, split: str, layer: int, label: str,
                baseline: list[Stage] | None) -> list[Stage]:
        s = self.settings
        run = s.out / "qbe" / upstream.label
        eval_dir = run / label
        command = [*LAUNCHER, "-m", "evaluate", "-t", split, *upstream.flags, "-d", TASKS["qbe"].downstream,
                   "-l", str(layer), "-p", str(eval_dir), "--device", s.device,
                   *override({**self.data_overrides("qbe"), **self.setting_overrides("qbe")})]
        evaluate = Stage(f"qbe/{upstream.label}/evaluate-{label}", run, f"evaluate-{label}",
                         command=lambda: command, cwd=run, env=self.env, clean=eval_dir,
                         settings=self.upstream_digest(upstream))
        stdlist = eval_dir / "benchmark.stdlist.xml"
        truth = QBE_GROUNDTRUTH[split]

        def score() -> dict[str, Any]:
            native = mtwv.qbe_score(stdlist, s.quesst_root / "scoring" / truth)
            official = mtwv.official_mtwv(s.quesst_root, stdlist, truth)
            config = self.row_hash("qbe", upstream, split, layer)
            rows = [self.row("qbe", "mtwv", upstream, label, native.max_twv, eval_dir, config, baseline)]
            if official is not None:
                rows.append(self.row("qbe", "mtwv_official", upstream, label, official, eval_dir, config, baseline))
            return scored_rows(rows, {**mtwv.as_json(native), "official_mtwv": official})

        scored = self.score_stage(f"qbe/{upstream.label}/score-{label}", run, f"score-{label}", score,
                                  (evaluate, *(baseline or ())),
                                  f"MTWV of {stdlist} against {truth} (and the official script if present)")
        return [evaluate, scored]

    def score_stage(self, name: str, folder: Path, stem: str, action, deps, describe: str) -> Stage:
        stage = Stage(name, folder, stem, action=action, deps=tuple(deps), describe=describe,
                      settings={"results": str(self.settings.results)})
        self.score_stages.append(stage)
        return stage

    def row(self, task: str, metric: str, upstream: Upstream, split: str, value: float, run_dir: Path,
            config: str, baseline: list[Stage] | None) -> results.ResultRow:
        """One results row; the gain is against the baseline's row of the same metric and split."""
        gain = None
        if baseline is not None:
            base = [r for r in rows_of(baseline) if (r.metric, r.split) == (metric, split)]
            if not base:
                raise ScoreError(f"{task}: the baseline has no {metric} on {split} to compare {upstream.name} with")
            gain = results.relative_gain(value, base[-1].value, TASKS[task].lower_is_better)
        return results.ResultRow(
            task=task, metric=metric, upstream=upstream.name, checkpoint=upstream.ckpt or "", split=split,
            value=float(value), lower_is_better=TASKS[task].lower_is_better, run_dir=str(run_dir),
            git_commit=results.git_commit(), config_hash=config, relative_gain_pct=gain,
        )  # fmt: skip


def scored_rows(rows: list[results.ResultRow], detail: dict[str, Any]) -> dict[str, Any]:
    """A score stage's outputs: its result ``rows`` (appended to the results CSV by the caller,
    :func:`record_results`) and the measurement's ``detail``."""
    return {"rows": [dataclasses.asdict(r) for r in rows], "detail": detail}


def record_results(csv_path: Path, stage: Stage) -> int:
    """Append the rows a score stage just produced to the results CSV; returns how many."""
    rows = rows_of([stage])
    results.append_results(csv_path, rows)
    return len(rows)


def checkpoint_digest(ckpt: str | None) -> str | None:
    """SHA-256 of a local upstream checkpoint's bytes; None without one, for a URL, or for a file
    not written yet (a demo dry run)."""
    if not ckpt or "://" in ckpt or not os.path.isfile(ckpt):
        return None
    return file_sha256(ckpt)


def chosen_checkpoint(best: Path) -> str:
    """``best`` if training saved it, else its newest ``states-*.ckpt`` (with a warning).

    s3prl saves the best-dev checkpoint only when a dev score beats the expert's start value
    (ASR: a WER under 100 %), which a very short run may never reach.

    Raises:
        ScoreError: training left no checkpoint at all.
    """
    if best.is_file():
        return str(best)
    states = sorted(best.parent.glob("states-*.ckpt"), key=lambda p: int(re.sub(r"\D", "", p.stem) or 0))
    if not states:
        raise ScoreError(f"{best.parent}: training saved no checkpoint (neither {best.name} nor states-*.ckpt)")
    print(f"warning: {best} was not saved (no dev score beat the start value); evaluating {states[-1].name}")
    return str(states[-1])


def rows_of(stages: Sequence[Stage]) -> list[results.ResultRow]:
    """The result rows recorded by finished score stages."""
    return [results.ResultRow(**row) for stage in stages for row in stage.output("rows", [])]


def main_rows(rows: Sequence[results.ResultRow]) -> list[results.ResultRow]:
    """The rows the gains chart shows: each task's own metric on its test split."""
    def main(row: results.ResultRow) -> bool:
        spec = TASKS[row.task]
        test = row.split == spec.test_split or row.split.startswith(f"{spec.test_split}-layer")
        return row.metric == spec.metric and test

    return [r for r in rows if main(r)]


# -- the demo ---------------------------------------------------------------------------------


def demo_stages(settings: Settings, finetune_steps: int) -> tuple[list[Stage], Path, Path, Path]:
    """Data, tiny base model and its SCORE fine-tuning; returns (stages, data root, base, export)."""
    out, env = settings.out, dict(settings.env)
    data = out / "data"

    def build() -> dict[str, Any]:
        return {"librispeech": str(demo_data.build_librispeech(data)), "quesst": str(demo_data.build_quesst(data))}

    corpora = Stage("demo/data", out, "data", action=build, clean=data,
                    describe=f"LibriSpeech- and QUESST-layout corpora from {demo_data.ASSETS} -> {data}")
    base = out / "models" / "tiny_base.pt"
    tiny = Stage("demo/make-tiny", out, "make-tiny", command=lambda: [*SCORE_CLI, "make-tiny", str(base), "--seed", "0"],
                 env=env)
    tuned = out / "score_tiny"
    finetune = Stage(
        "demo/finetune", out, "finetune", deps=(tiny,), env=env, clean=tuned,
        command=lambda: [*SCORE_CLI, "finetune", "--config", str(REPO / "upstream_configs" / "score_tiny.yaml"),
                         "--init", str(base), "--data", str(demo_data.ASSETS), "--out", str(tuned),
                         "--steps", str(finetune_steps), "--device", "cpu"],
    )  # fmt: skip
    from ..train import EXPORT_FILE

    return [corpora, tiny, finetune], data, base, tuned / EXPORT_FILE


# -- CLI --------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="score-s3prl superb",
                                     description="SUPERB ASR, PR and QbE through stock s3prl, baseline vs SCORE.",
                                     epilog="Environment: " + ", ".join(f"${v} (--{k.replace('_', '-')})"
                                                                       for k, v in ENV.items()))
    parser.add_argument("task", choices=TASK_CHOICES, help="asr, pr, qbe, all (the three) or demo")
    parser.add_argument("--upstream", action="append", metavar="NAME[=CKPT]",
                        help="s3prl upstream, repeatable, the first is the baseline "
                             "(default: hubert_base, score_hubert=$SCORE_HUBERT_CKPT)")
    parser.add_argument("--libri-root", type=Path, metavar="DIR", help="LibriSpeech folder with train-clean-100, dev-clean, test-clean")
    parser.add_argument("--quesst-root", type=Path, metavar="DIR", help="the quesst14Database folder")
    parser.add_argument("--lexicon", type=Path, metavar="FILE", help="word -> phones lexicon for PR (default: written from CMUdict)")
    parser.add_argument("--out", type=Path, metavar="DIR", help="run folder (default: exp/superb; demo: demo)")
    parser.add_argument("--results", type=Path, metavar="CSV", help="results CSV (default: results/superb_results.csv; "
                                                     "demo: <out>/superb_results.csv)")
    parser.add_argument("--plot", type=Path, metavar="PNG", help="gains chart PNG (default: superb_gains.png beside the CSV)")
    parser.add_argument("--device", default="auto", help="s3prl --device: auto (cuda if available), cpu, cuda (demo: cpu)")
    parser.add_argument("--steps", type=int, help="ASR/PR training updates (default: the recipe's; demo: 20)")
    parser.add_argument("--workers", type=int, help="dataloader workers (default: the recipe's; demo: 0)")
    parser.add_argument("--qbe-layer", type=int, default=LAST_LAYER, help="QbE layer on test (default: -1, the last)")
    parser.add_argument("--qbe-dev-layers", default="", metavar="LAYERS",
                        help="QbE dev sweep over layers, e.g. 0-12 or 3,6,9 (default: none)")
    parser.add_argument("--finetune-steps", type=int, default=DEMO_FINETUNE_STEPS,
                        help=f"demo: SCORE updates of the tiny model (default: {DEMO_FINETUNE_STEPS})")
    parser.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    parser.add_argument("--force", action="store_true", help="redo finished stages")
    args = parser.parse_args(argv)
    for name in ("steps", "finetune_steps"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.workers is not None and args.workers < 0:
        parser.error("--workers must be 0 or more")
    return args


def parse_layers(text: str) -> tuple[int, ...]:
    """``"0-3,6"`` -> (0, 1, 2, 3, 6)."""
    layers: list[int] = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        match = re.fullmatch(r"(-?\d+)(?:-(\d+))?", part)
        if not match:
            raise ScoreError(f"--qbe-dev-layers {text!r}: expected layers like 0-12 or 3,6,9")
        first, last = int(match[1]), int(match[2] if match[2] is not None else match[1])
        if last < first:
            raise ScoreError(f"--qbe-dev-layers {text!r}: {part} is an empty range (write {last}-{first})")
        layers += range(first, last + 1)
    return tuple(dict.fromkeys(layers))


def _env_path(value: Path | None, setting: str) -> Path | None:
    if value is None and os.environ.get(ENV[setting]):
        value = Path(os.environ[ENV[setting]])
    return value.expanduser().resolve() if value is not None else None


def resolve_device(name: str) -> str:
    if name != "auto":
        return name
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def settings_from(args: argparse.Namespace) -> Settings:
    demo = args.task == "demo"
    out = (args.out or Path("demo" if demo else "exp/superb")).expanduser().resolve()
    csv = (args.results or (out / "superb_results.csv" if demo else Path("results/superb_results.csv")))
    csv = csv.expanduser().resolve()
    if demo:
        given = [f"--{name.replace('_', '-')}" for name in ("upstream", "libri_root", "quesst_root", "lexicon")
                 if getattr(args, name)]
        if given:
            raise ScoreError(f"demo: {', '.join(given)} not taken; the demo builds its own data and models")
    return Settings(
        tasks=tuple(TASKS) if args.task in ("all", "demo") else (args.task,),
        upstreams=() if demo else tuple(parse_upstream(u) for u in (args.upstream or DEFAULT_UPSTREAMS)),
        out=out, results=csv, plot=(args.plot or csv.with_name("superb_gains.png")).expanduser().resolve(),
        libri_root=_env_path(args.libri_root, "libri_root"), quesst_root=_env_path(args.quesst_root, "quesst_root"),
        lexicon=_env_path(args.lexicon, "lexicon"), device="cpu" if demo else resolve_device(args.device),
        steps=args.steps or (DEMO_STEPS if demo else None), workers=0 if demo and args.workers is None else args.workers,
        qbe_layer=args.qbe_layer, qbe_dev_layers=parse_layers(args.qbe_dev_layers), demo=demo,
        # tiny models gain nothing from more threads, and spinning OpenMP threads slow a shared CPU
        env=(("OMP_NUM_THREADS", "1"),) if demo else (),
    )  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    settings = settings_from(args)
    pipeline = Pipeline(force=args.force, dry_run=args.dry_run, terminal=sys.stdout)
    if settings.demo:
        pipeline.say(DEMO_NOTICE)
        stages, data, base, export = demo_stages(settings, args.finetune_steps)
        for stage in stages:
            pipeline.run(stage)
        settings = dataclasses.replace(
            settings, libri_root=data / "LibriSpeech", quesst_root=data / "quesst14Database",
            upstreams=(Upstream("hubert_local", str(base)), Upstream("score_hubert_local", str(export))))
    if not (settings.demo and args.dry_run):  # a demo dry run has not built what it would check
        check_inputs(settings)
    planner = Planner(settings)
    appended = 0  # rows appended to the results CSV by this invocation
    for stage in planner.stages():
        # a score stage that ran now has new rows; one done before recorded its rows then
        if pipeline.run(stage) and stage in planner.score_stages:
            appended += record_results(settings.results, stage)
    if args.dry_run:
        return 0
    rows = rows_of(planner.score_stages)
    pipeline.say("\n" + results.summary_table(rows))
    if any(r.relative_gain_pct is not None for r in main_rows(rows)):
        results.plot_gains(main_rows(rows), settings.plot)
        pipeline.say(f"gains chart: {settings.plot}")
    pipeline.say(f"{appended} rows appended to {settings.results}")
    if settings.demo:
        pipeline.say(DEMO_NOTICE)
    return 0
