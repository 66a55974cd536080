"""The SUPERB task runner (``score-s3prl superb``, ``run_superb.sh``): plans, commands, checks, rows.

Most tests swap s3prl for a fake launcher (a script that writes the files the real recipes write:
best checkpoints, hyp/ref transcripts, a QbE stdlist) so that stages, markers, skipping and the
results CSV are tested in seconds; the demo test (test_demo.py) runs the real thing.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

from score_s3prl.checkpoints.hubert import tiny_hubert_state, write_converted
from score_s3prl.errors import ScoreError
from score_s3prl.lexicons import Lexicon, g2p_paths
from score_s3prl.superb import cli, demo_data, plan, settings
from score_s3prl.superb.stages import StageError

REPO = Path(__file__).resolve().parents[1]
SPLITS = ("train-clean-100", "dev-clean", "test-clean")
WORDS = "A B C D E F G H I J".split()

FAKE_LAUNCHER = textwrap.dedent('''
    """Stands in for `python -m score_s3prl.run_downstream`; logs its argv to $FAKE_LAUNCHER_LOG.

    The upstream checkpoint (-k) is a tiny HuBERT (the input checks open it); the JSON file beside
    it, <ckpt>.quality.json, says how good the fake upstream is: "errors" (wrong words out of 10 in
    every ASR/PR hypothesis) and "hits" (QbE queries found).
    """
    import ast, json, os, sys
    from pathlib import Path
    from score_s3prl.superb import mtwv

    argv = sys.argv[1:]
    with open(os.environ["FAKE_LAUNCHER_LOG"], "a") as log:
        log.write(json.dumps(argv) + "\\n")
    flag = lambda name: argv[argv.index(name) + 1] if name in argv else None
    if os.environ.get("FAKE_FAIL") and os.environ["FAKE_FAIL"] in " ".join(argv):
        print("training...\\nerror: boom", file=sys.stderr)
        sys.exit(1)
    overrides = dict(o.split("=", 1) for o in (flag("-o") or "").split(",,") if o)
    if flag("-m") == "train":
        if flag("-e"):  # resuming: s3prl reads everything from the newest states-*.ckpt
            expdir = Path(flag("-e"))
            state = json.loads(max(expdir.glob("states-*.ckpt")).read_text())
        else:
            expdir = Path(flag("-p"))
            expdir.mkdir(parents=True)
            state = {**json.loads(Path(flag("-k") + ".quality.json").read_text()), "downstream": flag("-d")}
            (expdir / "states-5.ckpt").write_text(json.dumps(state))
            if os.environ.get("FAKE_DIE") and os.environ["FAKE_DIE"] in " ".join(argv):
                sys.exit("error: killed after saving states-5.ckpt")
        best = {"asr": "dev-clean-best.ckpt", "ctc": "dev-best.ckpt"}[state["downstream"]]
        (expdir / best).write_text(json.dumps(state))
    elif flag("-e"):
        expdir = Path(ast.literal_eval(overrides["args.expdir"]))
        expdir.mkdir(parents=True)
        state = json.loads(Path(flag("-e")).read_text())
        split = flag("-t")
        stem = f"{split}-noLM" if state["downstream"] == "asr" else split
        ref = "A B C D E F G H I J".split()
        hyp = ["X"] * state["errors"] + ref[state["errors"]:]
        (expdir / f"{stem}-ref.ark").write_text("utt1 " + " ".join(ref) + "\\n")
        (expdir / f"{stem}-hyp.ark").write_text("utt1 " + " ".join(hyp) + "\\n")
    else:  # QbE
        expdir = Path(flag("-p"))
        expdir.mkdir(parents=True)
        quality = json.loads(Path(flag("-k") + ".quality.json").read_text())
        root = Path(ast.literal_eval(overrides["config.downstream_expert.datarc.dataset_root"]))
        name = "dev" if flag("-t") == "dev" else "eval"
        truth = mtwv.load_groundtruth(root / "scoring" / f"groundtruth_quesst14_{name}")
        lines = ["<stdlist>"]
        for number, query in enumerate(truth.queries):
            lines.append(f'<detected_termlist termid="{query}">')
            for doc in truth.files:
                hit = number < quality["hits"] and doc in truth.occurrences.get(query, ())
                lines.append(f'<term file="{doc}" channel="1" tbeg="0" dur="0" '
                             f'score="{1.0 if hit else 0.0}" decision="NO"/>')
            lines.append("</detected_termlist>")
        (expdir / "benchmark.stdlist.xml").write_text("\\n".join(lines + ["</stdlist>"]))
''')

FAKE_PROBE = textwrap.dedent('''
    """Stands in for `python -m score_s3prl.cli` (only `probe`); logs its argv to $FAKE_PROBE_LOG.

    The upstream checkpoint's <ckpt>.quality.json (as the fake launcher's); its "view" is the last layer's
    probe value for the "score" views (earlier layers get twice that, other views 0.9). Writes
    probe.csv as score_s3prl.probe.write_csv does, without importing torch (fast).
    """
    import csv, json, os, sys
    from pathlib import Path

    argv = sys.argv[1:]
    with open(os.environ["FAKE_PROBE_LOG"], "a") as log:
        log.write(json.dumps(argv) + "\\n")
    assert argv[0] == "probe", argv
    flag = lambda name: argv[argv.index(name) + 1]
    name, _, ckpt = flag("--upstream").partition("=")
    view = json.loads(Path(ckpt + ".quality.json").read_text())["view"]
    out = Path(flag("--out"))
    out.mkdir(parents=True)
    with open(out / "probe.csv", "w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\\n")
        writer.writerow(["upstream", "checkpoint", "layer", "perturbation", "value", "same_utterance",
                         "different_utterance", "length_floor", "collapsed", "n", "n_pairs"])
        for layer in range(3):
            for pert in ("speed0.9", "score"):
                value = (view if layer == 2 else 2 * view) if pert == "score" else 0.9
                writer.writerow([name, ckpt, layer, pert, value, 0.1, 0.2, 0.01, 0, 2, 1])
    (out / "probe.png").write_bytes(b"\\x89PNG fake")
''')


def fake_upstream(path: Path, errors: int, hits: int, seed: int = 0, view: float = 0.5) -> Path:
    """A tiny HuBERT checkpoint (other ``seed``: other weights) and the quality the fake launcher
    and the fake probe give it."""
    write_converted(path, **tiny_hubert_state(seed=seed))
    Path(f"{path}.quality.json").write_text(json.dumps({"errors": errors, "hits": hits, "view": view}))
    return path


def write_libri(root: Path) -> Path:
    """A LibriSpeech-layout corpus: two 0.1 s utterances per split with 5-word transcripts."""
    for split in SPLITS:
        chapter = root / split / "19" / "198"
        chapter.mkdir(parents=True)
        lines = []
        for number in range(2):
            utt = f"19-198-{number:04d}"
            soundfile.write(chapter / f"{utt}.flac", np.zeros(1600, dtype=np.float32), 16000)
            lines.append(f"{utt} {' '.join(WORDS[5 * number:5 * number + 5])}\n")
        (chapter / "19-198.trans.txt").write_text("".join(lines))
    return root


def fake_g2p(root: Path, monkeypatch) -> None:
    """PR's default lexicon source (s3prl's g2p files) served from a local mirror of two files covering
    WORDS, pinned by their git blob ids, into a download cache of the test's own: no network."""
    from s3prl.util import download

    from score_s3prl import lexicons

    mirror = root / "g2p-mirror"
    mirror.mkdir()
    pinned = []
    for (name, _), words in zip(lexicons.G2P_FILES, (WORDS[:6], WORDS[6:])):
        (mirror / name).write_text("".join(f"{w}\tAH0 B\n" for w in words))
        pinned.append((name, lexicons.git_blob_id(mirror / name)))
    monkeypatch.setattr(lexicons, "G2P_FILES", tuple(pinned))
    monkeypatch.setenv(lexicons.URL_ENV, mirror.as_uri())
    monkeypatch.setattr(download, "_download_dir", root / "s3prl-cache")


@pytest.fixture(scope="module")
def quesst_root(tmp_path_factory) -> Path:
    return demo_data.build_quesst(tmp_path_factory.mktemp("quesst"))


@pytest.fixture
def env(tmp_path, quesst_root, monkeypatch) -> dict[str, Path]:
    """Data roots in the environment, the fake launcher in place, two fake upstream checkpoints."""
    libri = write_libri(tmp_path / "LibriSpeech")
    monkeypatch.setenv("LIBRISPEECH_ROOT", str(libri))
    monkeypatch.setenv("QUESST14_ROOT", str(quesst_root))
    monkeypatch.delenv("LIBRISPEECH_LEXICON", raising=False)
    fake_g2p(tmp_path, monkeypatch)
    script = tmp_path / "fake_launcher.py"
    script.write_text(FAKE_LAUNCHER)
    monkeypatch.setattr(plan, "LAUNCHER", [sys.executable, str(script)])
    monkeypatch.setenv("FAKE_LAUNCHER_LOG", str(tmp_path / "launches.jsonl"))
    probe_script = tmp_path / "fake_probe.py"
    probe_script.write_text(FAKE_PROBE)
    monkeypatch.setattr(plan, "SCORE_CLI", [sys.executable, str(probe_script)])
    monkeypatch.setenv("FAKE_PROBE_LOG", str(tmp_path / "probes.jsonl"))
    base = fake_upstream(tmp_path / "base.pt", errors=2, hits=2, view=0.5)  # WER/PER 20 %, MTWV 2/3, probe 0.5
    score = fake_upstream(tmp_path / "score.pt", errors=1, hits=1, seed=1, view=0.4)  # WER/PER 10 %, MTWV 1/3, probe 0.4
    return {"root": tmp_path, "libri": libri, "quesst": quesst_root, "base": base, "score": score,
            "out": tmp_path / "exp", "csv": tmp_path / "results" / "superb.csv"}


def launches(env, log: str = "launches.jsonl") -> list[list[str]]:
    path = env["root"] / log
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def run(env, task: str, *extra: str, upstreams=("hubert_local={base}", "score_hubert_local={score}")) -> int:
    argv = [task, "--out", str(env["out"]), "--results", str(env["csv"]), "--device", "cpu", *extra]
    for upstream in upstreams:
        argv += ["--upstream", upstream.format(**{k: str(v) for k, v in env.items()})]
    return cli.main(argv)


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


# --- results rows, skipping, --force ----------------------------------------------------------


@pytest.mark.slow
def test_rows_gains_and_plot(env, capsys):
    assert run(env, "all") == 0
    assert f"pr lexicon: {Lexicon().label}\n" in capsys.readouterr().out  # the run's end names it
    rows = read_rows(env["csv"])
    got = [(r["task"], r["metric"], r["split"], r["upstream"]) for r in rows]
    assert got == [(task, metric, split, up) for task, metric, split in
                   [("asr", "wer", "test-clean"), ("pr", "per", "test"), ("qbe", "mtwv", "test"),
                    ("probe", "view_divergence", "dev-clean")]
                   for up in ("hubert_local", "score_hubert_local")]
    base, score = rows[0::2], rows[1::2]
    assert [r["relative_gain_vs_baseline_%"] for r in base] == ["", "", "", ""]
    assert [float(r["value"]) for r in base] == pytest.approx([20.0, 20.0, 2 / 3, 0.5])
    assert [float(r["value"]) for r in score] == pytest.approx([10.0, 10.0, 1 / 3, 0.4])
    # error rates halved: +50 %; MTWV halved: -50 % (higher is better); probe 0.5 -> 0.4: +20 %
    assert [float(r["relative_gain_vs_baseline_%"]) for r in score] == pytest.approx([50.0, 50.0, -50.0, 20.0])
    assert [r["lower_is_better"] for r in rows] == ["true", "true"] * 2 + ["false", "false"] + ["true", "true"]
    assert rows[1]["checkpoint"] == str(env["score"])
    assert rows[1]["run_dir"] == str(env["out"] / "asr" / "score_hubert_local--score" / "seed1337" / "test-clean")
    assert all(len(r["config_hash"]) == 12 and r["git_commit"] and r["date"] for r in rows)
    assert (env["csv"].parent / "superb_gains.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the data settings in the commands are what the preparation functions return
    for name, downstream in (("asr", "asr"), ("pr", "ctc")):
        marker = json.loads((env["out"] / "prepared" / f"{name}.done.json").read_text())
        train = next(a for a in launches(env) if "train" in a and a[a.index("-d") + 1] == downstream)
        assert overrides(marker["outputs"]["overrides"]).items() <= overrides(train[-1]).items()
    # PR's lexicon (s3prl's g2p files, here from the test's mirror) is named in the run's settings
    label = Lexicon().label
    assert label.startswith("s3prl 0.4.18 g2p: librispeech-lexicon-200k-g2p.txt")
    for upstream in ("hubert_local--base", "score_hubert_local--score"):
        (folder,) = (env["out"] / "pr" / upstream).glob("seed*")
        assert json.loads((folder / "train.done.json").read_text())["settings"]["lexicon"] == label
        assert json.loads((folder / "score-test.done.json").read_text())["outputs"]["detail"]["lexicon"] == label


@pytest.mark.slow
def test_rerun_skips_finished_stages_and_force_redoes_them(env, capsys):
    run(env, "asr")
    first = len(launches(env))
    assert first == 4  # train + evaluate per upstream
    csv_bytes = env["csv"].read_bytes()
    capsys.readouterr()
    run(env, "asr")
    out = capsys.readouterr().out
    assert len(launches(env)) == first and env["csv"].read_bytes() == csv_bytes
    assert out.count("done before, skipped") == 7  # prepare + 2 x (train, evaluate, score)
    assert "+50.00%" in out  # the summary still shows the results
    run(env, "asr", "--force")
    assert len(launches(env)) == 2 * first
    assert len(read_rows(env["csv"])) == 2  # the rerun's rows replaced the first run's: no duplicates
    assert [r["value"] for r in read_rows(env["csv"])] == [r["value"] for r in csv.DictReader(io.StringIO(csv_bytes.decode()))]


@pytest.mark.slow
def test_changed_or_broken_stages_rerun_with_what_depends_on_them(env):
    run(env, "pr")
    assert len(launches(env)) == 4
    # a new upstream runs alone; the finished baseline is reused for its gain
    third = fake_upstream(env["root"] / "third.pt", errors=4, hits=0, seed=2)
    run(env, "pr", upstreams=("hubert_local={base}", "score_hubert_local={score}", f"hubert_local={third}"))
    assert len(launches(env)) == 6
    assert float(read_rows(env["csv"])[-1]["relative_gain_vs_baseline_%"]) == pytest.approx(-100.0)
    # a run that died after training: evaluation and scoring run again, training does not
    (env["out"] / "pr" / "score_hubert_local--score" / "seed1337" / "evaluate-test.done.json").unlink()
    run(env, "pr")
    new = launches(env)[6:]
    assert [argv[argv.index("-m") + 1] for argv in new] == ["evaluate"]
    # a changed setting (the step count) retrains
    run(env, "pr", "--steps", "7")
    assert [argv[argv.index("-m") + 1] for argv in launches(env)[7:]] == ["train", "evaluate"] * 2


@pytest.mark.slow
def test_new_weights_at_the_same_path_are_evaluated_again(env):
    run(env, "all")
    assert len(launches(env)) == 10  # per upstream: ASR and PR train + evaluate, QbE evaluate
    # fine-tuning again overwrites the SCORE checkpoint in place: its runs redo, the baseline's do not
    assert len(launches(env, "probes.jsonl")) == 2
    fake_upstream(env["score"], errors=3, hits=2, seed=3, view=0.6)
    run(env, "all")
    again = launches(env)[10:]
    assert [a[a.index("-m") + 1] for a in again] == ["train", "evaluate", "train", "evaluate", "evaluate"]
    assert all(str(env["score"]) in " ".join(a) or "-e" in a for a in again)
    assert [a[a.index("--upstream") + 1] for a in launches(env, "probes.jsonl")[2:]] == [
        f"score_hubert_local={env['score']}"]
    rows = read_rows(env["csv"])
    assert len(rows) == 8  # the new measurements replaced the old ones of the same run folders
    rows = [r for r in rows if r["upstream"] == "score_hubert_local"]
    assert [(r["task"], r["upstream"], float(r["value"])) for r in rows] == [
        ("asr", "score_hubert_local", 30.0), ("pr", "score_hubert_local", 30.0),
        ("qbe", "score_hubert_local", pytest.approx(2 / 3)), ("probe", "score_hubert_local", 0.6)]


def test_probe_task_probes_each_upstream_and_records_view_divergence(env, capsys):
    audio = env["libri"] / "test-clean"
    assert run(env, "probe", "--probe-audio", str(audio), "--probe-utterances", "2") == 0
    out = capsys.readouterr().out
    probes = launches(env, "probes.jsonl")
    assert [a[a.index("--upstream") + 1] for a in probes] == [f"hubert_local={env['base']}",
                                                               f"score_hubert_local={env['score']}"]
    assert all(a[a.index("--audio") + 1] == str(audio) and a[a.index("--max-utterances") + 1] == "2"
               for a in probes)
    assert launches(env) == []  # no s3prl downstream runs
    rows = read_rows(env["csv"])
    assert [(r["task"], r["metric"], r["split"], r["upstream"], r["lower_is_better"]) for r in rows] == [
        ("probe", "view_divergence", "test-clean", up, "true") for up in ("hubert_local", "score_hubert_local")]
    # the last layer's "score" value (layer 2), not an earlier layer's nor another perturbation's
    assert [float(r["value"]) for r in rows] == pytest.approx([0.5, 0.4])
    assert rows[0]["relative_gain_vs_baseline_%"] == ""
    assert float(rows[1]["relative_gain_vs_baseline_%"]) == pytest.approx(20.0)
    folder = env["out"] / "probe" / "score_hubert_local--score" / "test-clean"
    assert rows[1]["run_dir"] == str(folder) and (folder / "probe.csv").is_file()
    # the probe table (every layer of the "score" views) follows the summary; the chart has the gain
    table = out[out.index("invariance probe"):]
    assert table.count(" score ") == 6 and "0.8000" in table and "0.4000" in table
    assert (env["csv"].parent / "superb_gains.png").read_bytes()[:4] == b"\x89PNG"
    # a re-run probes nothing again
    run(env, "probe", "--probe-audio", str(audio), "--probe-utterances", "2")
    assert len(launches(env, "probes.jsonl")) == 2 and len(read_rows(env["csv"])) == 2


def test_probe_needs_held_out_audio(env, monkeypatch):
    monkeypatch.delenv("LIBRISPEECH_ROOT")
    with pytest.raises(ScoreError, match="probe: no held-out audio: pass --probe-audio DIR"):
        run(env, "probe")
    with pytest.raises(ScoreError, match="audio folder not found"):
        run(env, "probe", "--probe-audio", str(env["root"] / "nowhere"))
    assert launches(env, "probes.jsonl") == []


@pytest.mark.slow
def test_failed_stage_names_itself_and_its_log(env, monkeypatch):
    monkeypatch.setenv("FAKE_FAIL", "score_hubert_local -k")
    with pytest.raises(StageError) as error:
        run(env, "asr")
    log = env["out"] / "asr" / "score_hubert_local--score" / "seed1337" / "train.log"
    assert str(error.value) == f"stage asr/score_hubert_local--score/seed1337/train failed (exit 1): boom; full output in {log}"
    assert "error: boom" in log.read_text()
    assert not log.with_name("train.done.json").exists()
    # the baseline finished and was recorded; the re-run resumes at the failed stage
    assert len(read_rows(env["csv"])) == 1
    monkeypatch.delenv("FAKE_FAIL")
    run(env, "asr")
    assert [argv[argv.index("-m") + 1] for argv in launches(env)[3:]] == ["train", "evaluate"]


@pytest.mark.slow
def test_died_training_resumes_from_its_states_checkpoint(env, monkeypatch):
    monkeypatch.setenv("FAKE_DIE", "score_hubert_local -k")
    with pytest.raises(StageError, match="killed after saving states-5.ckpt"):
        run(env, "pr")
    train_dir = env["out"] / "pr" / "score_hubert_local--score" / "seed1337" / "train"
    monkeypatch.delenv("FAKE_DIE")
    run(env, "pr")  # same settings: continue from states-5.ckpt, not from scratch
    resumed, evaluate = launches(env)[3:]
    assert resumed == ["-m", "train", "-e", str(train_dir), "--device", "cpu"]
    assert evaluate[evaluate.index("-e") + 1] == str(train_dir / "dev-best.ckpt")
    assert float(read_rows(env["csv"])[-1]["value"]) == pytest.approx(10.0)
    assert not (train_dir.parent / "train.attempt.json").exists()
    # a died attempt with other settings, or --force, starts afresh in an emptied folder
    for extra in (("--steps", "7"), ("--force",)):
        monkeypatch.setenv("FAKE_DIE", "score_hubert_local -k")
        with pytest.raises(StageError):
            run(env, "pr", "--force")  # the default settings' training dies after saving states
        monkeypatch.delenv("FAKE_DIE")
        (train_dir / "stale.txt").touch()
        count = len(launches(env))
        run(env, "pr", *extra)
        trains = [a for a in launches(env)[count:] if "train" in a and str(train_dir) in " ".join(a)]
        assert trains and all("-p" in a and "-e" not in a for a in trains)
        assert not (train_dir / "stale.txt").exists()


def test_missing_best_checkpoint_falls_back_to_the_last_states(tmp_path, capsys):
    best = tmp_path / "dev-clean-best.ckpt"
    with pytest.raises(ScoreError, match="training saved no checkpoint"):
        plan.chosen_checkpoint(best)
    for step in (5, 40, 10):
        (tmp_path / f"states-{step}.ckpt").touch()
    assert plan.chosen_checkpoint(best) == str(tmp_path / "states-40.ckpt")
    assert "dev-clean-best.ckpt was not saved" in capsys.readouterr().out
    best.touch()
    assert plan.chosen_checkpoint(best) == str(best)


# --- --dry-run: the commands for real data ----------------------------------------------------


def parse_command(line: str) -> tuple[Path, list[str]]:
    """``$ cd DIR && <launcher> ARGS`` -> (DIR, ARGS)."""
    words = shlex.split(line[2:])
    assert words[0] == "cd" and words[2] == "&&", line
    end = 3 + len(plan.LAUNCHER)
    assert words[3:end] == plan.LAUNCHER, line
    return Path(words[1]), words[end:]


def flags(args: list[str]) -> dict[str, str]:
    """``["-m", "train", "-l", "-1"]`` -> ``{"-m": "train", "-l": "-1"}`` (every flag takes a value here)."""
    assert len(args) % 2 == 0 and all(a.startswith("-") for a in args[::2]), args
    return dict(zip(args[::2], args[1::2]))


def overrides(text: str) -> dict:
    """What s3prl's own -o parser makes of ``text``, as a flat {key: value}."""
    from s3prl.utility.helper import override

    config: dict = {}
    namespace = argparse.Namespace()
    override(text, namespace, config)

    def flat(block: dict, prefix: str) -> dict:
        out = {}
        for key, value in block.items():
            out.update(flat(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value})
        return out

    return {**flat(config, "config."), **{f"args.{k}": v for k, v in vars(namespace).items()}}


def test_dry_run_prints_the_s3prl_commands(env, capsys, monkeypatch):
    monkeypatch.setattr(plan, "LAUNCHER", [sys.executable, "-m", "score_s3prl.run_downstream"])
    monkeypatch.setattr(plan, "SCORE_CLI", [sys.executable, "-m", "score_s3prl.cli"])
    ckpt = Path(shutil.copy(env["score"], env["root"] / "score_hubert.pt"))
    monkeypatch.setenv("SCORE_HUBERT_CKPT", str(ckpt))
    assert cli.main(["all", "--dry-run", "--out", str(env["out"]), "--device", "cpu",
                        "--results", str(env["csv"]), "--qbe-dev-layers", "0-1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert not env["out"].exists() and not env["csv"].exists()  # a dry run writes nothing
    probes = [line for line in lines if line.startswith("$ ") and " probe " in line]
    commands = [parse_command(line) for line in lines if line.startswith("$ ") and line not in probes]
    assert len(commands) == 2 * (2 + 2 + 3)  # per upstream: ASR and PR train + evaluate, QbE test + 2 dev layers
    out, libri, quesst = env["out"], str(env["libri"]), str(env["quesst"])
    data = {
        "asr": {"config.downstream_expert.datarc.libri_root": libri,
                "config.downstream_expert.datarc.bucket_file": str(out / "prepared" / "asr")},
        "ctc": {"config.downstream_expert.corpus.path": libri,
                # s3prl's g2p lexicon files, as the authors' PR, where the preparation caches them
                "config.downstream_expert.corpus.lexicon": [str(p) for p in g2p_paths()],
                "config.optimizer.lr": 5e-4},  # the paper's PR setting, explicit
    }
    it = iter(commands)
    for task, downstream, split, best in [("asr", "asr", "test-clean", "dev-clean-best.ckpt"),
                                          ("pr", "ctc", "test", "dev-best.ckpt")]:
        for upstream, ckpt_flags, label in [("hubert_base", {}, "hubert_base"),
                                            ("score_hubert", {"-k": str(ckpt)}, "score_hubert--score_hubert")]:
            run_dir = out / task / label / "seed1337"  # one seed by default: s3prl's own
            cwd, train = next(it)
            assert cwd == run_dir
            assert flags(train) == {"-m": "train", "-u": upstream, **ckpt_flags, "-d": downstream,
                                    "-p": str(run_dir / "train"), "--device": "cpu", "--seed": "1337",
                                    "-o": train[-1]}
            assert overrides(train[-1]) == data[downstream]
            cwd, evaluate = next(it)
            assert flags(evaluate) == {"-m": "evaluate", "-e": str(run_dir / "train" / best), "-t": split,
                                       "--device": "cpu", "-o": evaluate[-1]}
            assert overrides(evaluate[-1]) == {"args.expdir": str(run_dir / split)}
    for upstream, ckpt_flags, label in [("hubert_base", {}, "hubert_base"),
                                        ("score_hubert", {"-k": str(ckpt)}, "score_hubert--score_hubert")]:
        for split, layer, folder in [("test", "-1", "test"), ("dev", "0", "dev-layer0"), ("dev", "1", "dev-layer1")]:
            cwd, qbe = next(it)
            assert flags(qbe) == {"-m": "evaluate", "-t": split, "-u": upstream, **ckpt_flags, "-d": "quesst14_dtw",
                                  "-l": layer, "-p": str(out / "qbe" / label / folder), "--device": "cpu",
                                  "-o": qbe[-1]}
            assert overrides(qbe[-1]) == {"config.downstream_expert.datarc.dataset_root": quesst}
    assert any("[prepare/asr] length tables" in line for line in lines)
    assert any("[prepare/pr] lexicon" in line and "lexicon: s3prl 0.4.18 g2p" in line for line in lines)
    # the probe: one `score-s3prl probe` per upstream on the LibriSpeech root's dev-clean
    assert len(probes) == 2
    for line, (spec, label) in zip(probes, [("hubert_base", "hubert_base"),
                                            (f"score_hubert={ckpt}", "score_hubert--score_hubert")]):
        words = shlex.split(line[2:])
        assert words[:3] == ["cd", str(out / "probe" / label), "&&"]
        assert words[3:3 + len(plan.SCORE_CLI)] == plan.SCORE_CLI
        assert words[3 + len(plan.SCORE_CLI):] == [
            "probe", "--upstream", spec, "--audio", str(env["libri"] / "dev-clean"), "--max-utterances", "100",
            "--out", str(out / "probe" / label / "dev-clean"), "--device", "cpu", "--no-progress"]


def test_dry_run_with_the_cmudict_lexicon_writes_it_in_the_prepared_folder(env, capsys):
    run(env, "pr", "--dry-run", "--lexicon", "cmudict")
    lines = capsys.readouterr().out.splitlines()
    assert any("[prepare/pr] lexicon" in line and "lexicon: cmudict" in line for line in lines)
    train = parse_command(next(line for line in lines if line.startswith("$ ") and "-m train" in line))[1]
    assert overrides(train[-1])["config.downstream_expert.corpus.lexicon"] == [
        str(env["out"] / "prepared" / "pr" / "lexicon.txt")]


def test_dry_run_with_a_lexicon_uses_it_and_writes_none(env, capsys):
    lexicon = env["root"] / "lexicon.txt"
    lexicon.write_text("".join(f"{w} AH0\n" for w in WORDS))
    run(env, "pr", "--dry-run", "--lexicon", str(lexicon), "--steps", "30", "--workers", "2")
    lines = capsys.readouterr().out.splitlines()
    assert not any("prepare/pr" in line for line in lines)
    train = parse_command(next(line for line in lines if line.startswith("$ ") and "-m train" in line))[1]
    values = overrides(train[-1])
    assert values["config.downstream_expert.corpus.lexicon"] == [str(lexicon)]
    assert values["config.runner.total_steps"] == 30
    assert values["config.runner.eval_step"] == values["config.runner.save_step"] == 30  # a short run still saves
    assert values["config.downstream_expert.corpus.num_workers"] == 2


# --- bad input: a clear error before anything starts ------------------------------------------


def fails_before_start(env, match: str, *argv: str, task: str = "all", **kwargs) -> None:
    with pytest.raises(ScoreError, match=match):
        run(env, task, *argv, **kwargs)
    assert launches(env) == [] and not env["out"].exists()


def test_missing_data_roots(env, monkeypatch):
    monkeypatch.delenv("LIBRISPEECH_ROOT")
    fails_before_start(env, r"^LibriSpeech root not given: pass --libri-root DIR or set \$LIBRISPEECH_ROOT$")
    fails_before_start(env, r"/nowhere: LibriSpeech root not found \(from --libri-root or \$LIBRISPEECH_ROOT\)",
                       "--libri-root", "/nowhere")
    monkeypatch.delenv("QUESST14_ROOT")
    fails_before_start(env, r"^QUESST 2014 root not given: pass --quesst-root DIR or set \$QUESST14_ROOT$",
                       task="qbe")
    libri = ("--libri-root", str(env["libri"]))
    shutil.rmtree(env["libri"] / "dev-clean")
    fails_before_start(env, r"dev-clean: split folder not found \(present: test-clean, train-clean-100\)",
                       *libri, task="asr")
    (env["libri"] / "dev-clean").mkdir()
    fails_before_start(env, r"dev-clean: no .flac or .wav files", *libri, task="asr")


def test_word_missing_from_the_lexicon(env):
    lexicon = env["root"] / "lexicon.txt"
    lexicon.write_text("".join(f"{w} AH0\n" for w in WORDS if w != "G"))
    fails_before_start(env, rf"^{lexicon}: no entry for the word 'G' \(utterance 19-198-0001 in train-clean-100\)",
                       "--lexicon", str(lexicon), task="pr")
    lexicon.write_text("".join(f"{w} AH9\n" for w in WORDS))
    fails_before_start(env, rf"{lexicon}:1: phone 'AH9' is not in the phone vocabulary", "--lexicon", str(lexicon))
    fails_before_start(env, r"nope.txt: lexicon file not found \(from --lexicon or \$LIBRISPEECH_LEXICON\)",
                       "--lexicon", str(env["root"] / "nope.txt"))


def test_quesst_root_without_its_scoring_lists(env, monkeypatch):
    broken = env["root"] / "quesst14Database"
    shutil.copytree(env["quesst"], broken)
    monkeypatch.setenv("QUESST14_ROOT", str(broken))
    (broken / "scoring" / "language_key_eval.lst").unlink()
    fails_before_start(env, r"language_key_eval.lst: QUESST 2014 list not found", task="qbe")
    shutil.copy(env["quesst"] / "scoring" / "language_key_eval.lst", broken / "scoring")
    shutil.rmtree(broken / "scoring" / "groundtruth_quesst14_dev")
    run(env, "qbe", "--dry-run")  # the test split needs only the eval ground truth
    fails_before_start(env, r"groundtruth_quesst14_dev: ground truth directory not found", "--qbe-dev-layers", "3",
                       task="qbe")
    # the ground truth is read before the evaluation, not after it
    truth = broken / "scoring" / "groundtruth_quesst14_eval"
    rttm = next(truth.glob("*.rttm"))
    rttm.write_text("LEXEME f1 1 0.5\n")
    fails_before_start(env, rf"{rttm}:1: LEXEME line has 4 fields", task="qbe")
    rttm.write_text(";; no occurrences\n")
    fails_before_start(env, r"none of the \d+ tlist queries occurs in an ecf file", task="qbe")


def test_foreign_results_file(env):
    # an append would refuse it: that must not wait until the baseline's training is over
    env["csv"].parent.mkdir()
    env["csv"].write_text("name,score\nx,1\n")
    fails_before_start(env, rf"^{env['csv']}: not a SUPERB results file", task="asr")
    assert env["csv"].read_text() == "name,score\nx,1\n"
    env["csv"].unlink()
    env["csv"].mkdir()
    fails_before_start(env, rf"^{env['csv']}: results path is a folder", task="qbe")


def test_bad_upstreams(env, monkeypatch):
    fails_before_start(env, r"--upstream hubert_bsae: no such s3prl upstream \(close: hubert_base",
                       upstreams=("hubert_bsae",))
    fails_before_start(env, r"/nope.pt: checkpoint of --upstream hubert_local not found",
                       upstreams=("hubert_base", "hubert_local=/nope.pt"))
    fails_before_start(env, r"--upstream hubert_local: needs a checkpoint", upstreams=("hubert_local",))
    monkeypatch.setenv("SCORE_HUBERT_CKPT", "/missing/score.pt")
    fails_before_start(env, r"/missing/score.pt: checkpoint of --upstream score_hubert not found "
                            r"\(\$SCORE_HUBERT_CKPT or the default path\); make one with", upstreams=("score_hubert",))
    fails_before_start(env, r"given twice; each upstream runs once", upstreams=("hubert_local={base}", "hubert_local={base}"))
    with pytest.raises(ScoreError, match=r"expected \[SYSTEM:\]NAME\[=CKPT\]"):
        settings.parse_upstream("not a name")


def corrupt_checkpoint(path: Path, kind: str, good: Path) -> Path:
    """``good`` spoilt as ``kind`` says, written to ``path``."""
    state = tiny_hubert_state()
    if kind == "text":
        path.write_text("these are not the weights you are looking for\n")
    elif kind == "truncated":  # a copy cut short
        path.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    elif kind == "no model_weight":
        del state["model_weight"]
        torch.save(state, path)
    elif kind == "wrong shapes":  # weights of another model config
        torch.save({**state, "model_cfg": {**state["model_cfg"], "encoder_embed_dim": 48}}, path)
    elif kind == "nonsense config":
        torch.save({**state, "model_cfg": {**state["model_cfg"], "conv_feature_layers": "[(8,"}}, path)
    return path


@pytest.mark.parametrize(("kind", "problem"), [
    ("text", r"not a PyTorch checkpoint \(it starts with b'thes'"), ("truncated", r"not a PyTorch checkpoint \(a damaged zip"),
    ("no model_weight", r"not an s3prl converted HuBERT checkpoint \(missing model_weight\)"),
    ("wrong shapes", "weights do not fit the model config"), ("nonsense config", r"not a HuBERT model config \(SyntaxError"),
])
def test_corrupt_checkpoint_stops_the_run_before_any_stage(env, capsys, kind, problem):
    from score_s3prl import cli as top_cli

    bad = corrupt_checkpoint(env["root"] / "bad.pt", kind, env["score"])
    for upstream in ("score_hubert_local", "hubert_local"):  # ours, and s3prl's entry for the same format
        for dry_run in ((), ("--dry-run",)):  # a dry run opens them too: cheap, and it tells the user early
            argv = ["superb", "all", "--out", str(env["out"]), "--results", str(env["csv"]), "--device", "cpu",
                    *dry_run, "--upstream", f"hubert_local={env['base']}", "--upstream", f"{upstream}={bad}"]
            assert top_cli.main(argv) == 2
            out, err = capsys.readouterr()
            assert out == "" and err.count("\n") == 1, err
            assert re.match(rf"error: --upstream {upstream}: {re.escape(str(bad))}: {problem}", err), err
            # nothing ran: the baseline's stages (first in the plan) included
            assert launches(env) == [] and not env["out"].exists()


def test_corrupt_wavlm_checkpoint_stops_the_run_before_any_stage(env, capsys, tmp_path):
    from score_s3prl import cli as top_cli
    from score_s3prl.checkpoints.wavlm import tiny_wavlm_state, write_wavlm

    hubert = tmp_path / "hubert_shaped.pt"
    torch.save(tiny_hubert_state(), hubert)  # a good file, of the other architecture
    text = corrupt_checkpoint(tmp_path / "text.pt", "text", env["score"])
    wavlm = tiny_wavlm_state()
    del wavlm["model"]["encoder.layers.0.self_attn.relative_attention_bias.weight"]
    missing_bias = tmp_path / "no_bias.pt"
    write_wavlm(missing_bias, **wavlm)
    cases = {hubert: "not an s3prl WavLM checkpoint", text: "not a PyTorch checkpoint",
             missing_bias: "missing weights encoder.layers.0.self_attn.relative_attention_bias"}
    for bad, problem in cases.items():
        for upstream in ("score_wavlm_local", "wavlm_local"):
            argv = ["superb", "all", "--out", str(env["out"]), "--results", str(env["csv"]), "--device", "cpu",
                    "--upstream", f"hubert_local={env['base']}", "--upstream", f"{upstream}={bad}"]
            assert top_cli.main(argv) == 2
            out, err = capsys.readouterr()
            assert out == "" and err.count("\n") == 1, err
            assert re.match(rf"error: --upstream {upstream}: {re.escape(str(bad))}: .*{problem}", err), err
            assert launches(env) == [] and not env["out"].exists()


LOCK_HOLDER = """
import sys, time
from pathlib import Path
from score_s3prl.superb.lock import run_lock
with run_lock(Path(sys.argv[1])):
    print("held", flush=True)
    time.sleep(600)
"""


def test_one_run_per_out_and_a_killed_run_blocks_nothing(env, capsys):
    holder = subprocess.Popen([sys.executable, "-c", LOCK_HOLDER, str(env["out"])], stdout=subprocess.PIPE,
                              text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        assert holder.stdout.readline() == "held\n"
        with pytest.raises(ScoreError, match=rf"^{re.escape(str(env['out']))}: another run is using this --out "
                                             rf"\(PID {holder.pid}: .*-c .*run_lock.*\); wait for it"):
            run(env, "qbe")
        assert launches(env) == []
        assert run(env, "qbe", "--dry-run") == 0  # a dry run runs nothing and takes no lock
        assert launches(env) == []
    finally:
        holder.kill()  # SIGKILL: no clean-up ran, the lock file still names the dead holder
        holder.wait()
    assert f"PID {holder.pid}:" in (env["out"] / ".run.lock").read_text()
    capsys.readouterr()
    assert run(env, "qbe") == 0
    assert len(launches(env)) == 2 and len(read_rows(env["csv"])) == 2
    assert (env["out"] / ".run.lock").read_text().startswith(f"PID {os.getpid()}: ")
    assert run(env, "qbe") == 0  # released at the end of the run: the next one in this process proceeds


def test_layer_lists():
    assert cli.parse_layers("0-3,6,2") == (0, 1, 2, 3, 6)
    assert cli.parse_layers("") == ()
    with pytest.raises(ScoreError, match="expected layers like 0-12"):
        cli.parse_layers("a-b")
    with pytest.raises(ScoreError, match="12-0 is an empty range"):  # not a silently skipped sweep
        cli.parse_layers("12-0")


def test_command_pipe_is_closed(tmp_path, monkeypatch):
    from score_s3prl.superb import stages

    started = []

    class Recorded(stages.subprocess.Popen):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            started.append(self)

    monkeypatch.setattr(stages.subprocess, "Popen", Recorded)
    for code in (0, 3):  # success and failure alike: no file descriptor left open
        stage = stages.Stage(f"s{code}", tmp_path, f"s{code}", command=lambda: [sys.executable, "-c", f"exit({code})"])
        try:
            stages.run_command(stage, io.StringIO())
        except StageError:
            assert code
    assert len(started) == 2 and all(p.stdout.closed and p.returncode is not None for p in started)
