"""The stages of a ``score-s3prl superb`` run (:class:`Planner`), built from the recipes.

A run is shared preparation (:meth:`Planner.shared_stages`: each task's data, once) and then
independent :class:`Unit` s, one per (task, upstream, seed): the chain of stages one SLURM job
(or one stretch of the local run) executes. Each task's :class:`score_s3prl.recipes.Recipe` names
the :class:`Planner` method that builds a unit (``plan``): :meth:`Planner.trained` (train with
s3prl's ``--seed``, evaluate the best dev checkpoint, score: ASR, PR; one unit per seed),
:meth:`Planner.qbe` (evaluate per layer, score MTWV) or :meth:`Planner.probe` (``score-s3prl
probe`` on held-out audio, score the last layer's view divergence); QbE and the probe train
nothing, so they have one unit per upstream and no seed.

A unit depends on no other unit: its score stage records its result rows, without a gain, in its
done-marker inside the unit's run directory (:func:`scored_rows`), and
:func:`score_s3prl.superb.results.assemble` later collects them from every run directory and pairs
each with the baseline's rows (so jobs on other nodes share no file but their own folder).

The experiment folders are given with ``-p`` (absolute) rather than ``-n``: s3prl stores the
expdir in its checkpoints, and a path relative to one working directory breaks ``-e`` from
another.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
import os
import re
import sys
from pathlib import Path
from typing import Any, Sequence

import yaml

from .. import corpora
from ..errors import ScoreError
from ..hashing import file_sha256, json_hash
from ..recipes import RECIPES, DataPaths
from . import mtwv, results
from .metrics import recipe_error_rate
from .settings import LAST_LAYER, QBE_GROUNDTRUTH, SPLITS, Settings, Upstream
from .stages import Stage


@dataclass(eq=False)
class Unit:
    """One (task, upstream, seed) chain of stages: a SLURM job, or a stretch of the local run.

    Attributes:
        seed: s3prl's ``--seed`` of the downstream training; None for tasks that train nothing
            (QbE and the probe are deterministic given the upstream's features).
        run_dir: ``<out>/<task>/<label>/seed<seed>`` (``<out>/<task>/<label>`` without a seed): the
            unit's stages, logs, markers and result rows all live under it.
        stages: in order (train, evaluate, score; or evaluate, score), without the shared
            preparation, which runs once before every unit.
    """

    task: str
    upstream: Upstream
    seed: int | None
    run_dir: Path
    stages: list[Stage]

    @property
    def key(self) -> str:
        """``task/label/seed<seed>`` (``task/label`` without a seed): unique in a run."""
        base = f"{self.task}/{self.upstream.label}"
        return base if self.seed is None else f"{base}/seed{self.seed}"

    @property
    def score_stages(self) -> list[Stage]:
        """The stages that record result rows."""
        return [stage for stage in self.stages if stage.output_rows]

LAUNCHER = [sys.executable, "-m", "score_s3prl.run_downstream"]  # stock s3prl run_downstream.py, with our recipes
SCORE_CLI = [sys.executable, "-m", "score_s3prl.cli"]  # `score-s3prl`, whatever is on PATH


def override(values: dict[str, Any]) -> list[str]:
    """``["-o", "k=v,,k=v"]``, or nothing for no values."""
    return ["-o", corpora.override(values)] if values else []


class Planner:
    """Builds the stages of a run; shared stages (data preparation) are built once."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.env = dict(settings.env)
        self.digests: dict[str | None, str | None] = {}  # upstream checkpoint -> checkpoint_digest
        self._prepare: dict[str, Stage] = {}  # task -> its preparation stage, shared by the upstreams
        self.probe_csvs: list[Path] = []  # probe.csv of every probe stage, in order
        self._units: list[Unit] | None = None  # built once (stage objects are identities)

    @property
    def prepared(self) -> Path:
        return self.settings.out / "prepared"

    def data_paths(self, task: str) -> DataPaths:
        """Where ``task``'s data is; its preparation writes under ``<out>/prepared/<task>``."""
        s = self.settings
        return DataPaths(prepared=self.prepared / task, libri_root=s.libri_root, quesst_root=s.quesst_root,
                         lexicon=s.lexicon, lexicon_source=s.lexicon_source, splits=SPLITS)

    def prepare_stages(self, task: str) -> list[Stage]:
        """The stage writing ``task``'s prepared files (built once per task), or none when the
        recipe needs none or the user gave what it would write."""
        recipe, paths = RECIPES[task], self.data_paths(task)
        if recipe.prepare is None or (recipe.given_instead and getattr(paths, recipe.given_instead)):
            return []
        if task not in self._prepare:
            prepare, detail = recipe.prepare, self.data_detail(task)

            def action() -> dict[str, Any]:
                prepare(paths)
                return {"overrides": corpora.override(recipe.data_overrides(paths))}

            self._prepare[task] = Stage(
                f"prepare/{task}", self.prepared, task, action=action,
                clean=paths.prepared, describe=f"{recipe.prepare.__doc__ or 'prepare'} ({', '.join(SPLITS)}) -> "
                                               f"{paths.prepared}" + "".join(f"; {k}: {v}" for k, v in detail.items()),
                settings={**{root: str(getattr(paths, root)) for root in recipe.data_roots}, "splits": SPLITS,
                          **detail})
        return [self._prepare[task]]

    def data_detail(self, task: str) -> dict[str, Any]:
        """What defines ``task``'s data beyond its ``-o`` paths (PR: the lexicon), for stage keys,
        row hashes and the score's detail; empty for most tasks."""
        detail = RECIPES[task].data_detail
        return detail(self.data_paths(task)) if detail else {}

    def data_overrides(self, task: str) -> dict[str, Any]:
        """The ``-o`` keys that point ``task``'s recipe at the data (known before preparation
        runs: a dry run prints them)."""
        overrides = RECIPES[task].data_overrides
        assert overrides is not None, f"{task} runs no s3prl downstream"
        return overrides(self.data_paths(task))

    def setting_overrides(self, task: str) -> dict[str, Any]:
        """The ``-o`` keys of the evaluation protocol: paper settings, demo, --steps, --workers."""
        spec, s = RECIPES[task], self.settings
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

    def row_hash(self, task: str, upstream: Upstream, split: str, layer: int | None,
                 extra: dict[str, Any] | None = None) -> str:
        """json_hash of what defines a measurement (data paths aside); ``extra``: a task's own
        settings beyond the ``-o`` keys (the probe's utterance count)."""
        return json_hash({"task": task, "upstream": dataclasses.asdict(upstream), "split": split,
                          "layer": layer, "settings": self.setting_overrides(task), **(extra or {})})

    def shared_stages(self) -> list[Stage]:
        """The data preparation of every task of the run (each once): before any unit."""
        return [stage for task in self.settings.tasks for stage in self.prepare_stages(task)]

    def units(self) -> list[Unit]:
        """Every unit of the run, in order: per task, per upstream (the baseline first), per seed."""
        if self._units is None:
            self._units = []
            for task in self.settings.tasks:
                seeds: tuple[int | None, ...] = self.settings.seeds if RECIPES[task].plan == "trained" else (None,)
                for upstream in self.settings.upstreams:
                    self._units += [getattr(self, RECIPES[task].plan)(task, upstream, seed) for seed in seeds]
        return self._units

    def stages(self) -> list[Stage]:
        """Every stage of the run, in the local order: the shared preparation, then each unit's."""
        return [*self.shared_stages(), *(stage for unit in self.units() for stage in unit.stages)]

    def unit_dir(self, task: str, upstream: Upstream, seed: int | None) -> Path:
        run = self.settings.out / task / upstream.label
        return run if seed is None else run / f"seed{seed}"

    def trained(self, task: str, upstream: Upstream, seed: int | None) -> Unit:
        """ASR / PR: train with ``--seed``, evaluate the best dev checkpoint on the test split, score."""
        spec, s = RECIPES[task], self.settings
        assert seed is not None, "a trained task has a seed"
        run = self.unit_dir(task, upstream, seed)
        name = f"{task}/{upstream.label}/seed{seed}"
        prep = self.prepare_stages(task)
        train_dir, eval_dir = run / "train", run / spec.test_split
        best = train_dir / spec.best_checkpoint

        def train_command() -> list[str]:
            return [*LAUNCHER, "-m", "train", *upstream.flags, "-d", spec.downstream, "-p", str(train_dir),
                    "--device", s.device, "--seed", str(seed),
                    *override({**self.data_overrides(task), **self.setting_overrides(task)})]

        def resume_command() -> list[str] | None:
            # s3prl continues from the folder's newest states-*.ckpt, with the args and config saved in it
            if not any(train_dir.glob("states-*.ckpt")):
                return None
            return [*LAUNCHER, "-m", "train", "-e", str(train_dir), "--device", s.device]

        detail = self.data_detail(task)  # PR: the lexicon, named in the stages' settings and the score
        train = Stage(f"{name}/train", run, "train", command=train_command, deps=tuple(prep),
                      cwd=run, env=self.env, clean=train_dir, action=lambda: {"checkpoint": chosen_checkpoint(best)},
                      describe="pick the checkpoint to evaluate", settings={**self.upstream_digest(upstream), **detail},
                      resume=resume_command)

        # planned with the best dev checkpoint's path (what the dry run prints and the key hashes);
        # at run time -e becomes the checkpoint training chose (a short run may have saved no best)
        eval_command = [*LAUNCHER, "-m", "evaluate", "-e", str(best), "-t", spec.test_split, "--device", s.device,
                        *override({"args.expdir": str(eval_dir)})]

        def chosen(argv: list[str]) -> list[str]:
            ckpt = train.output("checkpoint", str(best))
            return [ckpt if arg == str(best) else arg for arg in argv]

        evaluate = Stage(f"{name}/evaluate", run, f"evaluate-{spec.test_split}",
                         command=lambda: eval_command, at_run=chosen, deps=(train,), cwd=run, env=self.env,
                         clean=eval_dir)

        def score() -> dict[str, Any]:
            rate = recipe_error_rate(eval_dir, task, spec.test_split)
            row = self.row(task, spec.metric, upstream, spec.test_split, rate.percent, eval_dir,
                           self.row_hash(task, upstream, spec.test_split, None, {"seed": seed, **detail}), seed)
            return scored_rows([row], {**dataclasses.asdict(rate), **detail})

        scored = self.score_stage(f"{name}/score", run, f"score-{spec.test_split}", score, (evaluate,),
                                  f"{spec.metric.upper()} from {eval_dir}/*-hyp.ark and *-ref.ark")
        return Unit(task, upstream, seed, run, [train, evaluate, scored])

    def qbe(self, task: str, upstream: Upstream, seed: int | None) -> Unit:
        """QbE: evaluate on test with ``--qbe-layer``, then the dev sweep; score each with MTWV."""
        s = self.settings
        runs = [("test", s.qbe_layer, "test" if s.qbe_layer == LAST_LAYER else f"test-layer{s.qbe_layer}")]
        runs += [("dev", layer, f"dev-layer{layer}") for layer in s.qbe_dev_layers]
        chain = []
        for split, layer, label in runs:
            chain += self.qbe_run(task, upstream, split, layer, label)
        return Unit(task, upstream, seed, self.unit_dir(task, upstream, seed), chain)

    def qbe_run(self, task: str, upstream: Upstream, split: str, layer: int, label: str) -> list[Stage]:
        s, metric = self.settings, RECIPES[task].metric
        run = self.unit_dir(task, upstream, None)
        eval_dir = run / label
        command = [*LAUNCHER, "-m", "evaluate", "-t", split, *upstream.flags, "-d", RECIPES[task].downstream,
                   "-l", str(layer), "-p", str(eval_dir), "--device", s.device,
                   *override({**self.data_overrides(task), **self.setting_overrides(task)})]
        evaluate = Stage(f"{task}/{upstream.label}/evaluate-{label}", run, f"evaluate-{label}",
                         command=lambda: command, cwd=run, env=self.env, clean=eval_dir,
                         settings=self.upstream_digest(upstream))
        stdlist = eval_dir / "benchmark.stdlist.xml"
        truth = QBE_GROUNDTRUTH[split]

        def score() -> dict[str, Any]:
            native = mtwv.qbe_score(stdlist, s.quesst_root / "scoring" / truth)
            official = mtwv.official_mtwv(s.quesst_root, stdlist, truth)
            config = self.row_hash(task, upstream, split, layer)
            rows = [self.row(task, metric, upstream, label, native.max_twv, eval_dir, config)]
            if official is not None:
                rows.append(self.row(task, f"{metric}_official", upstream, label, official, eval_dir, config))
            return scored_rows(rows, {**mtwv.as_json(native), "official_mtwv": official})

        scored = self.score_stage(f"{task}/{upstream.label}/score-{label}", run, f"score-{label}", score, (evaluate,),
                                  f"MTWV of {stdlist} against {truth} (and the official script if present)")
        return [evaluate, scored]

    def probe(self, task: str, upstream: Upstream, seed: int | None) -> Unit:
        """The invariance probe (:mod:`score_s3prl.probe`) of one upstream on the held-out audio,
        then its score: the last layer's value for SCORE's own views (``score``).

        Every upstream is probed by its own ``score-s3prl probe`` run; the views depend only on
        the seed, the perturbation and the audio, so all upstreams meet the same views.
        """
        from ..probe import SCORE  # lazily: importing plan stays light (the probe module loads torch)

        s, spec = self.settings, RECIPES[task]
        assert s.probe_audio is not None, "checks.check_probe_audio refuses a run without it"
        split = s.probe_audio.name  # the results' split: the audio folder's name (dev-clean, test-other)
        run = self.unit_dir(task, upstream, seed)
        probe_dir = run / split
        upstream_arg = f"{upstream.name}={upstream.ckpt}" if upstream.ckpt else upstream.name  # probe's NAME[=CKPT]
        command = [*SCORE_CLI, "probe", "--upstream", upstream_arg, "--audio", str(s.probe_audio),
                   "--max-utterances", str(s.probe_utterances), "--out", str(probe_dir), "--device", s.device,
                   "--no-progress"]
        evaluate = Stage(f"{task}/{upstream.label}/probe-{split}", run, f"probe-{split}",
                         command=lambda: command, cwd=run, env=self.env, clean=probe_dir,
                         settings=self.upstream_digest(upstream))
        csv_path = probe_dir / "probe.csv"
        self.probe_csvs.append(csv_path)

        def score() -> dict[str, Any]:
            from ..probe import last_layer_value, read_csv

            rows = read_csv(csv_path)
            value = last_layer_value(rows, upstream.name, SCORE)
            config = self.row_hash(task, upstream, split, None, {"utterances": s.probe_utterances})
            row = self.row(task, spec.metric, upstream, split, value, probe_dir, config)
            layers = {r.layer: r.value for r in rows if r.perturbation == SCORE}
            return scored_rows([row], {"perturbation": SCORE, "value_per_layer": layers})

        scored = self.score_stage(f"{task}/{upstream.label}/score-{split}", run, f"score-{split}", score, (evaluate,),
                                  f"last layer's view divergence for the {SCORE!r} views from {csv_path}")
        return Unit(task, upstream, seed, run, [evaluate, scored])

    @staticmethod
    def score_stage(name: str, folder: Path, stem: str, action, deps, describe: str) -> Stage:
        return Stage(name, folder, stem, action=action, deps=tuple(deps), describe=describe, output_rows=True)

    def row(self, task: str, metric: str, upstream: Upstream, split: str, value: float, run_dir: Path,
            config: str, seed: int | None = None) -> results.ResultRow:
        """One results row, without a gain: :func:`results.assemble` pairs it with the baseline's."""
        return results.ResultRow(
            task=task, metric=metric, upstream=upstream.name, checkpoint=upstream.ckpt or "", split=split,
            value=float(value), lower_is_better=RECIPES[task].lower_is_better, run_dir=str(run_dir),
            git_commit=results.git_commit(), config_hash=config, seed=seed, label=upstream.label,
            system=upstream.system_name, baseline_system=self.settings.baseline_system,
        )  # fmt: skip


def scored_rows(rows: list[results.ResultRow], detail: dict[str, Any]) -> dict[str, Any]:
    """A score stage's outputs: its result ``rows`` (collected into the results CSV by
    :func:`results.assemble`) and the measurement's ``detail``."""
    return {"rows": [dataclasses.asdict(r) for r in rows], "detail": detail}


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


def main_rows(rows: Sequence[results.ResultRow]) -> list[results.ResultRow]:
    """The rows the gains chart shows: each task's own metric on its test split."""
    def main(row: results.ResultRow) -> bool:
        spec = RECIPES[row.task]
        if spec.test_split is None:  # the split is the measured data's name (the probe)
            return row.metric == spec.metric
        test = row.split == spec.test_split or row.split.startswith(f"{spec.test_split}-layer")
        return row.metric == spec.metric and test

    return [r for r in rows if main(r)]
