"""A held-out signal while fine-tuning: the invariance probe of the student, every few updates.

The training loss alone cannot tell learning from collapse: a student whose frames all become
alike makes the soft-DTW divergence small too. The probe (:mod:`score_s3prl.probe`) can: its
value is the divergence between an utterance and its view *relative to* the divergence between
different utterances, and a collapsed representation gives NaN (flagged), not a small number.

:class:`HeldOutProbe` fixes a few held-out utterances and one SCORE view of each (the config's
``views``, seeded by the config's ``seed``) when the run starts, and measures the student's last
layer (what the exported upstream's last hidden state is) on them in eval mode: the probe's
last-layer ``score`` value, as ``score-s3prl probe`` reports it for the exported model. Same
config, same utterances, same views: values of runs with the same ``monitor`` settings compare.

Config keys (``monitor`` section, :class:`score_s3prl.config.MonitorConfig`): ``every`` (updates
between probes, 0: off), ``audio`` (folder; default the bundled test-other clips, which are in
no training set), ``utterances`` (the first N files), ``max_seconds`` (each cut to this).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from .config import TrainConfig
from .corpora import BUNDLED_SPEECH
from .probe import SCORE, ViewPerturbation, find_audio, load_utterances, perturbation_generator, probe_model

DEFAULT_AUDIO = BUNDLED_SPEECH / "test-other"  # held out: not in train-clean-100 (nor in the demo's corpus)


@dataclass(frozen=True)
class ProbeReading:
    """The probe of the student's last layer at one update (see :class:`score_s3prl.probe.ProbeRow`)."""

    value: float  # same_utterance / different_utterance; NaN when collapsed
    same_utterance: float
    different_utterance: float
    length_floor: float
    collapsed: bool


class HeldOutProbe:
    """The probe's last-layer ``score`` value of a :class:`~score_s3prl.model.ScoreModel`'s student.

    Args:
        wavs: (T_i,) held-out 16 kHz waveforms, at least 2.
        views: their SCORE views, in the same order.
        gamma: soft-DTW smoothing (the config's ``loss.gamma``).
        device: where the student runs.
    """

    def __init__(self, wavs: Sequence[torch.Tensor], views: Sequence[torch.Tensor], gamma: float,
                 device: str | torch.device = "cpu") -> None:
        self.wavs, self.views, self.gamma, self.device = list(wavs), list(views), gamma, device

    @classmethod
    def from_config(cls, cfg: TrainConfig, device: str | torch.device = "cpu") -> "HeldOutProbe | None":
        """The probe ``cfg.monitor`` asks for, or None when it is off (``every: 0``, or no
        ``audio`` given and this installation has no bundled clips: said on stderr).

        Raises:
            ScoreError: the audio folder is missing, has fewer than 2 files, or a file is unreadable.
        """
        monitor = cfg.monitor
        if monitor.every == 0:
            return None
        folder = Path(monitor.audio) if monitor.audio else DEFAULT_AUDIO
        if monitor.audio is None and not folder.is_dir():
            print(f"monitor: no held-out probe ({folder} is not in this installation); set monitor.audio "
                  "to a folder of held-out speech, or monitor.every=0 to silence this", file=sys.stderr)
            return None
        wavs = load_utterances(find_audio(folder, monitor.utterances), monitor.max_seconds)
        view = ViewPerturbation(SCORE, tuple(cfg.views.speed_factors), tuple(cfg.views.semitones))
        return cls(wavs, view(wavs, perturbation_generator(cfg.seed, SCORE)), cfg.loss.gamma, device)

    def __call__(self, model) -> ProbeReading:
        """Probe ``model.student`` (a ScoreModel's) in eval mode; the model's mode is restored after."""
        from .model import last_layer_features

        student, normalize = model.student, model.normalize

        def upstream(wavs: list[torch.Tensor]) -> dict:
            lengths = torch.tensor([wav.shape[0] for wav in wavs])
            frames, _ = last_layer_features(student, torch.nn.utils.rnn.pad_sequence(wavs, batch_first=True),
                                            lengths, normalize)
            return {"hidden_states": [frames]}

        was_training = model.training
        model.eval()  # no dropout: the same weights give the same value
        try:
            (row,) = probe_model(upstream, self.wavs, {SCORE: self.views}, self.gamma, self.device, "student")
        finally:
            model.train(was_training)
        return ProbeReading(row.value, row.same_utterance, row.different_utterance, row.length_floor, row.collapsed)
