"""The demo of ``score-s3prl superb demo``: data, a tiny base model and its SCORE fine-tuning.

No data and no weights needed: a tiny LibriSpeech-layout corpus and a tiny QUESST-layout set from
the bundled audio, a tiny random HuBERT (``make-tiny``), SCORE-fine-tuned (``finetune``,
``upstream_configs/score_tiny.yaml``); the runner then evaluates both with each recipe's
``demo_settings``, and probes both on the bundled test-other utterances (:data:`PROBE_AUDIO`),
whose speakers the fine-tuning never heard.

The baseline is stock s3prl's ``hubert_local -k <tiny base>``: like the real baseline
``hubert_base`` it loads through s3prl's own code, none of ours, so a loader of ours cannot flatter
or handicap the baseline; the SCORE side is ``score_hubert_local -k <export>``. Both build s3prl's
HuBERT expert, so they differ only in weights. The demo's numbers show that the pipeline works end
to end; they are not SUPERB numbers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from . import demo_data
from .plan import SCORE_CLI
from .settings import Settings
from .stages import Stage

REPO = Path(__file__).resolve().parents[2]
DEMO_STEPS = 20  # downstream updates per ASR/PR training in the demo
# downstream seeds of the demo's PR (ASR keeps s3prl's one default seed): two, so that the summary
# shows mean ± sd over seeds and the paired bootstrap pools seed pairs; PR's, because its demo units
# take a third of ASR's (measured: ~22 s vs ~55 s each on 2 busy cores)
DEMO_TASK_SEEDS = (("pr", (1, 2)),)
# SCORE updates of the tiny model in the demo: enough for a measurable probe gain (measured on the
# bundled test-other: last-layer value 0.811 -> 0.726 after 40 updates; 200 gave 0.731, no better)
DEMO_FINETUNE_STEPS = 40
DEMO_NOTICE = "demo: tiny random models on a few bundled utterances; these numbers are NOT SUPERB numbers"
# The probe's held-out audio: test-other speakers, none of whom is in the fine-tuning subsets of
# upstream_configs/score_tiny.yaml (train-clean-100, transcribed) nor in the ASR/PR corpus.
PROBE_AUDIO = demo_data.ASSETS / "test-other"


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
