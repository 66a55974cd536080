"""``score-s3prl superb TASK`` (``run_superb.sh TASK``): SUPERB ASR, PR and QbE, baseline vs SCORE.

TASK is ``asr``, ``pr``, ``qbe``, ``probe``, ``all`` (the four in turn) or ``demo``.

For each upstream (``--upstream [SYSTEM:]NAME[=CKPT]``, repeatable, the first is the baseline;
default ``hubert_base`` and ``score_hubert=$SCORE_HUBERT_CKPT``; upstreams given the same SYSTEM,
e.g. several fine-tuning seeds, are one system in the summary) and, for the trained tasks, each
downstream seed (``--seeds 1,2,3``; default s3prl's 1337), the stock s3prl recipe runs through
``python -m score_s3prl.run_downstream``, one subprocess per stage, in
``<out>/<task>/<label>/seed<seed>/`` (``<out>/<task>/<label>/`` for QbE and the probe, which train
nothing and are deterministic given the features):

- ``asr``: train ``-d asr`` (stock settings), evaluate ``-e <train>/dev-clean-best.ckpt -t test-clean``,
  WER recomputed from the hyp/ref files s3prl writes;
- ``pr``: train ``-d ctc`` (libriphone, lr 5e-4 as the paper), evaluate ``-e <train>/dev-best.ckpt
  -t test``, PER from the hyp/ref files;
- ``qbe``: no training; ``-m evaluate -d quesst14_dtw -t test -l -1`` (the last layer, as the
  paper), MTWV computed natively from ``benchmark.stdlist.xml`` (and by the official script when
  the QUESST 2014 root has it); ``--qbe-dev-layers`` adds a dev sweep over layers;
- ``probe``: no s3prl downstream; ``score-s3prl probe`` on held-out audio (``--probe-audio``, default
  the LibriSpeech root's dev-clean; ``--probe-utterances``), metric ``view_divergence``: the last
  layer's view / other-utterance divergence for SCORE's own views (lower is better).

Each task is a :class:`score_s3prl.recipes.Recipe` (``RECIPES``). The runner is split by job:
this module parses the command line and runs the loop (shared preparation, then every
:class:`~.plan.Unit`; at the end :func:`.results.assemble` collects the rows each unit's score stage
recorded in its run directory into the results CSV), :mod:`.checks` checks the inputs, :mod:`.plan` builds the stages,
:mod:`.demo` the demo's, :mod:`.stages` runs them resumably, :mod:`.settings` holds what a run is.

Data roots come from ``--libri-root`` / ``$LIBRISPEECH_ROOT``, ``--quesst-root`` /
``$QUESST14_ROOT`` and, optionally, ``--lexicon`` / ``$LIBRISPEECH_LEXICON``: PR's word -> phones
lexicon, ``g2p`` (default: s3prl's g2p files as the authors' PR, fetched once), ``cmudict`` (written
from CMUdict; the demo's) or a file; all of them are checked, and the upstream checkpoints opened, before
any stage starts. One run at a time per ``--out``: a second stops at once, naming the first
(:mod:`.lock`). Finished stages are skipped on a re-run unless their settings or the content of their
upstream checkpoint changed (``--force`` redoes them all), and a training that died resumes from its
last ``states-*.ckpt``; ``--dry-run``
prints the commands. Each measurement is a row of the results CSV (``--results``; a rerun replaces
its rows); the run ends with :func:`.summary.report` over every finished unit under ``--out``:
``superb_summary.csv`` beside the CSV (per task, split and system: mean ± sd over seeds, the relative
gain, its 95 % paired-bootstrap interval, P(better), a verdict, the paper's gain for the same method
and base), its table and a bar chart (``--plot``). ``score-s3prl results OUT`` rebuilds them.

``demo`` needs no data and no weights (:mod:`.demo`): tiny models, bundled audio, the four
tasks on the CPU in about 5 minutes on 2 cores; its numbers are not SUPERB numbers.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import re
import signal
import sys
from pathlib import Path

from .. import children
from ..errors import ArgumentParser, ScoreError
from ..lexicons import CMUDICT, G2P, Lexicon, parse_lexicon
from ..runtime import device_name
from ..recipes import RECIPES
from ..runlock import run_lock
from ..slurm import add_arguments as add_slurm_arguments
from . import results, summary
from .checks import check_inputs
from .demo import DEMO_FINETUNE_STEPS, DEMO_NOTICE, DEMO_STEPS, DEMO_TASK_SEEDS, PROBE_AUDIO, demo_stages
from .plan import Planner
from .settings import (DEFAULT_SEED, DEFAULT_UPSTREAMS, ENV, LAST_LAYER, PROBE_SPLIT, PROBE_UTTERANCES, Settings,
                       Upstream, distinct_labels, parse_upstream)
from .stages import Pipeline

TASK_CHOICES = (*RECIPES, "all", "demo", "status")
PROBE_TITLE = ("invariance probe, SCORE's views ('score'): value = view / other-utterance soft-DTW divergence "
               "per layer; lower is more invariant")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = ArgumentParser(prog="score-s3prl superb",
                                     description="SUPERB ASR, PR and QbE through stock s3prl, baseline vs SCORE.",
                                     epilog="Environment: " + ", ".join(f"${v} (--{k.replace('_', '-')})"
                                                                       for k, v in ENV.items()))
    parser.add_argument("task", choices=TASK_CHOICES, help="asr, pr, qbe, probe, all (the four) or demo; "
                                                           "status: each unit's state of a --launcher slurm run in --out")
    parser.add_argument("--upstream", action="append", metavar="[SYSTEM:]NAME[=CKPT]",
                        help="s3prl upstream, repeatable, the first is the baseline; upstreams given the same "
                             "SYSTEM (e.g. fine-tuning seeds) are one system in the summary "
                             "(default: hubert_base, score_hubert=$SCORE_HUBERT_CKPT)")
    parser.add_argument("--seeds", metavar="S[,S...]",
                        help=f"s3prl --seed of each ASR/PR downstream training, the same for every upstream "
                             f"so that runs pair up (default: {DEFAULT_SEED}, s3prl's own; demo: "
                             + "; ".join(f"{t} {','.join(map(str, seeds))}" for t, seeds in DEMO_TASK_SEEDS)
                             + f", else {DEFAULT_SEED})")
    parser.add_argument("--libri-root", type=Path, metavar="DIR", help="LibriSpeech folder with train-clean-100, dev-clean, test-clean")
    parser.add_argument("--quesst-root", type=Path, metavar="DIR", help="the quesst14Database folder")
    parser.add_argument("--lexicon", metavar="g2p|cmudict|FILE",
                        help="PR's word -> phones lexicon: g2p (default: s3prl's g2p files, as the authors' PR; "
                             "fetched once), cmudict (written from CMUdict, offline; PER not comparable with "
                             "published numbers) or a file")
    parser.add_argument("--out", type=Path, metavar="DIR", help="run folder (default: exp/superb; demo: demo)")
    parser.add_argument("--results", type=Path, metavar="CSV", help="results CSV (default: results/superb_results.csv; "
                                                     "demo: <out>/superb_results.csv)")
    parser.add_argument("--plot", type=Path, metavar="PNG", help="gains chart PNG (default: superb_gains.png beside the CSV)")
    parser.add_argument("--device", default="auto", type=device_name,
                        help="s3prl --device: auto (cuda if available where the command runs), cpu, cuda, cuda:N "
                             "(demo: cpu)")
    parser.add_argument("--steps", type=int, help="ASR/PR training updates (default: the recipe's; demo: 20)")
    parser.add_argument("--workers", type=int, help="dataloader workers (default: the recipe's; demo: 0)")
    parser.add_argument("--qbe-layer", type=int, default=LAST_LAYER, help="QbE layer on test (default: -1, the last)")
    parser.add_argument("--qbe-dev-layers", default="", metavar="LAYERS",
                        help="QbE dev sweep over layers, e.g. 0-12 or 3,6,9 (default: none)")
    parser.add_argument("--probe-audio", type=Path, metavar="DIR",
                        help=f"probe: held-out audio folder (default: <libri-root>/{PROBE_SPLIT})")
    parser.add_argument("--probe-utterances", type=int, default=PROBE_UTTERANCES, metavar="N",
                        help=f"probe: the first N files of the audio, sorted by path (default: {PROBE_UTTERANCES})")
    parser.add_argument("--finetune-steps", type=int, default=DEMO_FINETUNE_STEPS,
                        help=f"demo: SCORE updates of the tiny model (default: {DEMO_FINETUNE_STEPS})")
    parser.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    parser.add_argument("--force", action="store_true", help="redo finished stages")
    parser.add_argument("--launcher", choices=("local", "slurm"), default="local",
                        help="local: every stage here, in turn (default); slurm: shared preparation here, then "
                             "each (task, upstream, seed) unit as one SLURM job (submitit job arrays)")
    parser.add_argument("--wait", action="store_true",
                        help="slurm and status: wait until every job has ended, then write the results CSV")
    add_slurm_arguments(parser, " (demo defaults: gpus-per-node 0, cpus-per-task 1)", hidden=("nodes",))
    args = parser.parse_args(argv)
    for name in ("steps", "finetune_steps"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.workers is not None and args.workers < 0:
        parser.error("--workers must be 0 or more")
    if args.probe_utterances < 2:
        parser.error("--probe-utterances must be at least 2 (the probe compares different utterances)")
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


def parse_seeds(text: str) -> tuple[int, ...]:
    """``"1,2,3"`` -> (1, 2, 3): distinct seeds in the range s3prl (numpy) accepts."""
    seeds = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        if not re.fullmatch(r"\d+", part) or int(part) >= 2**32:
            raise ScoreError(f"--seeds {text!r}: {part!r} is not a seed (a whole number from 0 to 2**32-1)")
        seeds.append(int(part))
    if not seeds:
        raise ScoreError(f"--seeds {text!r}: expected seeds like 1,2,3")
    return tuple(dict.fromkeys(seeds))


def _env_path(value: Path | None, setting: str) -> Path | None:
    if value is None and os.environ.get(ENV[setting]):
        value = Path(os.environ[ENV[setting]])
    return value.expanduser().resolve() if value is not None else None


def _lexicon(value: str | None) -> Lexicon:
    """``--lexicon`` / ``$LIBRISPEECH_LEXICON``: a source name or a file."""
    value = value or os.environ.get(ENV["lexicon"]) or G2P
    return parse_lexicon(value)


def settings_from(args: argparse.Namespace) -> Settings:
    demo = args.task == "demo"
    out = (args.out or Path("demo" if demo else "exp/superb")).expanduser().resolve()
    csv = (args.results or (out / "superb_results.csv" if demo else Path("results/superb_results.csv")))
    csv = csv.expanduser().resolve()
    if demo:
        given = [f"--{name.replace('_', '-')}" for name in ("upstream", "libri_root", "quesst_root", "lexicon",
                                                             "probe_audio") if getattr(args, name)]
        if given:
            raise ScoreError(f"demo: {', '.join(given)} not taken; the demo builds its own data and models")
    libri_root = _env_path(args.libri_root, "libri_root")
    lexicon = Lexicon(source=CMUDICT) if demo else _lexicon(args.lexicon)  # the demo runs offline
    probe_audio = args.probe_audio or (libri_root / PROBE_SPLIT if libri_root else None)
    return Settings(
        tasks=tuple(RECIPES) if args.task in ("all", "demo") else (args.task,),
        upstreams=() if demo else distinct_labels(tuple(parse_upstream(u) for u in (args.upstream or DEFAULT_UPSTREAMS))),
        out=out, results=csv, plot=(args.plot or csv.with_name("superb_gains.png")).expanduser().resolve(),
        libri_root=libri_root, quesst_root=_env_path(args.quesst_root, "quesst_root"),
        # auto stays auto: each process resolves it where it computes (a SLURM job on its node)
        lexicon=lexicon.file, lexicon_source=lexicon.source, device="cpu" if demo else args.device,
        steps=args.steps or (DEMO_STEPS if demo else None), workers=0 if demo and args.workers is None else args.workers,
        qbe_layer=args.qbe_layer, qbe_dev_layers=parse_layers(args.qbe_dev_layers), demo=demo,
        # tiny models gain nothing from more threads, and spinning OpenMP threads slow a shared CPU
        env=(("OMP_NUM_THREADS", "1"),) if demo else (),
        probe_audio=probe_audio.expanduser().resolve() if probe_audio else None, probe_utterances=args.probe_utterances,
        seeds=parse_seeds(args.seeds) if args.seeds is not None else (DEFAULT_SEED,),
        task_seeds=DEMO_TASK_SEEDS if demo and args.seeds is None else (),
    )  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        # SIGTERM/SIGHUP raise Terminated, as SIGINT raises KeyboardInterrupt: a running stage's
        # process group is stopped first (stages.run_command), then the run lock is released
        with children.signals_as_exceptions(), contextlib.ExitStack() as lock:
            return run(args, lock)
    except (children.Terminated, KeyboardInterrupt) as stop:
        signum = stop.signum if isinstance(stop, children.Terminated) else signal.SIGINT
        print(f"stopped by {signal.Signals(signum).name}: a running stage was stopped with it (submitted SLURM "
              f"jobs go on), the run lock released; re-run to resume", file=sys.stderr)
        return 128 + signum


def slurm_options(args: argparse.Namespace, settings: Settings):
    """The SLURM options: defaults for this run's device, then --slurm-config, then --slurm-* flags."""
    from ..slurm import options_from, require_slurm

    defaults = {"gpus_per_node": 0, "cpus_per_task": 1} if settings.demo else (
        {"gpus_per_node": 0} if settings.device == "cpu" else {})
    options = options_from(args, defaults)
    if options.nodes != 1:
        raise ScoreError(f"SLURM options: nodes = {options.nodes}: a SUPERB unit is a one-node job (nodes is for "
                         f"score-s3prl finetune --launcher slurm)")
    if not args.dry_run:
        require_slurm()
    return options


def run_on_slurm(args: argparse.Namespace, settings: Settings, options, pipeline: Pipeline) -> int:
    """Shared preparation here, each unit a SLURM job; with --wait, the results once all ended."""
    from . import slurm

    planner = Planner(settings)
    slurm.submit(planner, options, pipeline, force=args.force)
    if args.dry_run:
        return 0
    if not args.wait:
        pipeline.say(f"\n{slurm.format_states(slurm.unit_states(planner.units(), slurm.read_jobs(settings.out)))}\n"
                     f"follow with `run_superb.sh status --out {settings.out}` (--wait: until all end, then the "
                     f"results CSV), or `score-s3prl results {settings.out}` once they are done")
        return 0
    return finish_slurm_run(settings, planner, pipeline)


def finish_slurm_run(settings: Settings, planner: Planner, pipeline: Pipeline) -> int:
    """Wait for every unit's job, then assemble the results CSV from the finished ones."""
    from . import slurm

    units = planner.units()
    states = slurm.wait(units, settings.out, pipeline.say)
    pipeline.say("\n" + slurm.format_states(states))
    score_stages = [stage for unit in units for stage in unit.score_stages]
    rows = results.assemble(settings.out, settings.results, score_stages)
    end_report(settings, planner, pipeline)
    pipeline.say(f"{len(rows)} rows of this run in {settings.results}")
    failed = [s for s in states if s.state != "done"]
    if failed:
        pipeline.say(f"{len(failed)} units did not finish; re-run the same command to resubmit them")
        return 1
    if settings.demo:
        pipeline.say(DEMO_NOTICE)
    return 0


def show_status(args: argparse.Namespace) -> int:
    """``status --out DIR``: each unit's state; with --wait, until all end, then the results CSV."""
    from . import slurm

    out = (args.out or Path("exp/superb")).expanduser().resolve()
    settings = slurm.load_settings(out)
    planner = Planner(settings)
    pipeline = Pipeline(terminal=sys.stdout)
    if args.wait:
        return finish_slurm_run(settings, planner, pipeline)
    pipeline.say(slurm.format_states(slurm.unit_states(planner.units(), slurm.read_jobs(out))))
    return 0


def refuse_beside_slurm_jobs(out: Path) -> None:
    """A local run would run the same units as SLURM jobs still queued or running in ``out``."""
    from .slurm import active_jobs

    running = active_jobs(out)
    if running:
        raise ScoreError(f"{out}: SLURM jobs of this run are still queued or running ({', '.join(running)}); "
                         f"wait for them (run_superb.sh status --out {out} --wait) or scancel them")


def end_report(settings: Settings, planner: Planner, pipeline: Pipeline) -> None:
    """What a run prints at its end, local or on SLURM: PR's lexicon, the runs' and summary tables
    of every finished unit under --out (this invocation's and earlier ones'), the probe's table
    and figures."""
    if "pr" in settings.tasks:  # the lexicon decides PR's labels: a PER is comparable only under the same one
        cmudict = settings.lexicon_source == CMUDICT and not settings.lexicon
        caveat = "; not comparable with published PER" if cmudict else ""
        pipeline.say(f"pr lexicon: {planner.data_detail('pr')['lexicon']}{caveat}")
    pipeline.say("\n" + summary.report(settings.out, settings.results, settings.plot, merge=False))
    probe_csvs = [path for path in planner.probe_csvs if Path(path).is_file()]  # a failed unit wrote none
    if probe_csvs:
        from .. import probe

        pipeline.say(f"\n{PROBE_TITLE}\n" + probe.format_table(
            [r for path in probe_csvs for r in probe.read_csv(path) if r.perturbation == probe.SCORE]))
        for figure in probe.plot_by_folder(probe_csvs, settings.out / "probe"):  # every upstream in one
            pipeline.say(f"probe figure: {figure}")


def run(args: argparse.Namespace, lock: contextlib.ExitStack) -> int:
    """The run loop; takes the run lock of ``--out`` into ``lock`` before its first stage, unless
    it is a dry run (which runs nothing)."""
    if args.task == "status":
        return show_status(args)
    settings = settings_from(args)
    options = slurm_options(args, settings) if args.launcher == "slurm" else None  # checked before any stage
    pipeline = Pipeline(force=args.force, dry_run=args.dry_run, terminal=sys.stdout)
    if settings.demo:
        if not args.dry_run:  # the demo writes into --out before the input checks
            lock.enter_context(run_lock(settings.out))
        pipeline.say(DEMO_NOTICE)
        stages, data, base, export = demo_stages(settings, args.finetune_steps)
        for stage in stages:
            pipeline.run(stage)
        settings = dataclasses.replace(
            settings, libri_root=data / "LibriSpeech", quesst_root=data / "quesst14Database", probe_audio=PROBE_AUDIO,
            upstreams=(Upstream("hubert_local", str(base)), Upstream("score_hubert_local", str(export))))
    if not (settings.demo and args.dry_run):  # a demo dry run has not built what it would check
        check_inputs(settings)
    if not (settings.demo or args.dry_run):  # after the checks, so that bad input leaves no --out behind
        lock.enter_context(run_lock(settings.out))
    if options is not None:
        return run_on_slurm(args, settings, options, pipeline)
    refuse_beside_slurm_jobs(settings.out)
    planner = Planner(settings)
    score_stages = [stage for unit in planner.units() for stage in unit.score_stages]
    for stage in planner.stages():
        # each new measurement reaches the CSV at once: a run that dies later loses nothing
        if pipeline.run(stage) and stage.output_rows:
            results.assemble(settings.out, settings.results, score_stages)
    if args.dry_run:
        return 0
    rows = results.assemble(settings.out, settings.results, score_stages)
    end_report(settings, planner, pipeline)
    pipeline.say(f"{len(rows)} rows of this run in {settings.results}")
    if settings.demo:
        pipeline.say(DEMO_NOTICE)
    return 0
