"""The SCORE student/teacher model: HuBERT last-layer frames, a shared head, soft-DTW loss.

Two copies of one base HuBERT (s3prl's ``HubertModel``):

* the **student**, partly trainable: the top ``trainable_layers`` transformer layers and, with
  ``train_final_norm``, the model's two own LayerNorms (see ``FINAL_NORMS``); everything else
  is frozen;
* the **teacher** (SCORE only), frozen entirely and run without gradients; its dropout
  follows ``dropout`` (below).

Both branches give their last-layer output (what s3prl's hubert upstream returns as its last
hidden state: the encoder output), a shared ``Linear(D -> head_dim)`` maps every frame and
frames are L2-normalised. The loss is the soft-DTW divergence (squared Euclidean frame cost)
between the two sequences divided by their summed length, averaged over the batch.

Which LayerNorm is "the final layer norm" depends on where HuBERT puts its norms. In HuBERT
Base (post-LN, ``layer_norm_first=False``) every layer ends with its own norm
(``encoder.layers.i.final_layer_norm``, trained with the layer), and ``encoder.layer_norm`` is
applied *before* layer 1, to the projected CNN features plus the positional convolution; there
is no norm after the last layer. In HuBERT Large (pre-LN) ``encoder.layer_norm`` comes after
the last layer. The official SCORE code freezes Base by parameter position and so trains
``encoder.layer_norm`` and ``layer_norm`` (the LayerNorm on the CNN features), the last norms in
parameter order. ``train_final_norm`` reproduces that: it trains both model-level norms, in
Base as in Large. Because they sit at the bottom of Base, gradients then flow through all its
layers (frozen layers are differentiated, not updated), as in the official recipe.

Dropout (``dropout``): under ``"official"`` the student and the teacher run entirely in the
model's mode, so in training dropout (the base config's ``dropout``, ``attention_dropout`` and
``dropout_input`` on the projected features) is active in the teacher and in the student's
frozen layers too: the official code never puts its teacher in eval mode and trains the whole
upstream in train mode. Under ``"frozen-eval"`` frozen modules and the teacher run in eval
mode (deterministic) and only trainable modules follow the model's mode. Either way the
training loop reseeds torch's RNG every update, so dropout masks repeat on resume. Layer drop
is off, as in s3prl's upstreams.

LASER (``method="laser"``, Interspeech 2024) has no teacher: both views go through the
student, and the loss is :func:`score_s3prl.laser.laser_loss`. The official LASER runner freezes
by parameter index on s3prl's upstream (``runner_part_freeze.py``): on the real HuBERT Base
order (214 parameters of ``UpstreamExpert``) index 3..176 are frozen, 177.. train, plus
``model.layer_norm`` and ``model.final_proj`` frozen by name; on WavLM Base (248 parameters:
layer 1 holds the relative position bias, every layer a gated ``grep_*`` pair) index 2..206 are
frozen. Mapped to names, both give the same trainable set: transformer layers 11-12 and
``encoder.layer_norm`` (plus ``mask_emb`` / ``label_embs_concat``, which get no gradient).
``LASER_NORMS`` holds that norm; layer 1's relative position bias stays frozen.
The official LASER code runs both views of an utterance as one zero-padded batch of 2, which
changes the shorter view's frames; ``view_batching="official"`` does the same
(:func:`paired_view_features`), ``"separate"`` runs each view alone.
"""

from __future__ import annotations

import itertools
import math
from typing import Any, Iterable

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pad_sequence

from .checkpoints import build_base, load_base_state
from .errors import ScoreError

__all__ = [
    "FINAL_NORMS",
    "LASER_NORMS",
    "ScoreModel",
    "VIEW_BATCHING",
    "conv_frame_lengths",
    "correspondence_loss",
    "downsample_rate",
    "encode_cnn_frames",
    "last_layer_features",
    "load_base_state",
    "paired_view_features",
    "student_state_for_export",
    "trainable_summary",
]

# The model-level LayerNorms that ``train_final_norm`` trains (s3prl HubertModel names).
FINAL_NORMS = ("encoder.layer_norm", "layer_norm")
# The one the official LASER runner trains (it freezes ``model.layer_norm`` by name).
LASER_NORMS = ("encoder.layer_norm",)
DROPOUT_MODES = ("official", "frozen-eval")
METHODS = ("score", "laser")
# LASER: both views as one padded batch of 2 (official) or each view alone (separate).
VIEW_BATCHING = ("official", "separate")


def conv_frame_lengths(model: nn.Module, lengths: torch.Tensor) -> torch.Tensor:
    """Frames the CNN of a HubertModel gives for waveforms of ``lengths`` samples.

    Each unpadded convolution maps n samples to floor((n - kernel) / stride) + 1 (at least 0).
    Args:
        lengths: (B,) integer sample counts.
    Returns:
        (B,) int64 frame counts.
    """
    frames = lengths.long()
    for block in model.feature_extractor.conv_layers:
        conv = block[0]
        frames = (torch.div(frames - conv.kernel_size[0], conv.stride[0], rounding_mode="floor") + 1).clamp(min=0)
    return frames


def last_layer_features(
    model: nn.Module,
    wavs: torch.Tensor,
    lengths: torch.Tensor,
    normalize: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Last-layer frames of a HubertModel or WavLM for a padded batch, equal to each utterance alone.

    The same computation as ``HubertModel.extract_features`` / ``WavLM.extract_features``
    (s3prl's last hidden state), made
    exact for padded batches: the CNN runs per utterance (HuBERT Base's first CNN block
    normalises over time, so padding would leak into it), frame lengths come from the
    convolution arithmetic, and the transformer gets the matching padding mask. Parts of the
    model with no trainable parameter below them run without autograd.

    Args:
        model: s3prl ``HubertModel`` or ``WavLM``, with a post- or pre-LN transformer encoder.
        wavs: (B, L) float waveforms at the model's rate, zero-padded.
        lengths: (B,) valid samples per row.
        normalize: zero-mean unit-variance each waveform first (the task's ``normalize``).
    Returns:
        (frames, frame_lengths): (B, T, D) with T = max frame length, frames past a row's
        length are padding; and (B,) int64.
    """
    lengths = lengths.to(wavs.device)
    frame_lengths = _check_frames(model, lengths)
    with torch.no_grad():  # the CNN is never trained
        per_utterance = []
        for wav, n in zip(wavs, lengths.tolist()):
            wav = wav[:n]
            if normalize:
                wav = F.layer_norm(wav, wav.shape)
            per_utterance.append(model.feature_extractor(wav[None])[0].transpose(0, 1))
        x = pad_sequence(per_utterance, batch_first=True)  # (B, T, C)
    padding = torch.arange(x.shape[1], device=x.device)[None, :] >= frame_lengths[:, None]
    return encode_cnn_frames(model, x, padding), frame_lengths


def paired_view_features(
    model: nn.Module,
    wav_a: torch.Tensor,
    len_a: torch.Tensor,
    wav_b: torch.Tensor,
    len_b: torch.Tensor,
    normalize: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Last-layer frames of two views per pair, each pair run as the official LASER code runs it.

    The official ``collate_fn`` hands s3prl's runner both views of an utterance as one list of
    two waveforms, so they pass through the model as one zero-padded batch of 2 (s3prl's
    HuBERT / WavLM ``UpstreamExpert.forward``) and the runner's ``Featurizer`` cuts each row's
    last hidden state to ``round(samples / 320)`` frames. For the shorter view that differs
    from running it alone (``last_layer_features``) in three ways:

    * the CNN sees its zero padding: HuBERT Base's and WavLM Base's first block normalises each
      channel over time (GroupNorm), so every frame changes; the frames whose receptive field
      reaches into the padding change with any CNN;
    * the frame padding mask follows HuBERT's chunk rule (``forward_padding_mask``: the padded
      length is cut to a multiple of the frame count, a frame is padding only where its whole
      chunk is), so frames past the view's own convolution count can stay unmasked;
    * ``round(samples / 320)`` can exceed the convolution count by one: that frame is kept
      (25600 samples: 80 frames, 79 alone).

    Each pair is its own padded batch of 2 as in the official code (B = 1 there); the pairs
    of a batch then share one transformer pass, exact because every frame past a pair's
    frame count is masked and zero, which is what the positional convolution's own zero
    padding gives.

    Args:
        model: s3prl ``HubertModel`` or ``WavLM``.
        wav_a, wav_b: (B, L_a), (B, L_b) zero-padded waveforms of the two views.
        len_a, len_b: (B,) valid samples.
        normalize: zero-mean unit-variance each waveform first (before padding, as s3prl).
    Returns:
        (frames_a, kept_a, frames_b, kept_b): (B, T, D) frames and (B,) int64 frame counts
        kept per view; frames past a count are padding.
    """
    batch = wav_a.shape[0]
    len_a, len_b = len_a.to(wav_a.device), len_b.to(wav_b.device)
    _check_frames(model, torch.cat([len_a, len_b]))
    rate = downsample_rate(model)
    rows, masks, kept = [None] * (2 * batch), [None] * (2 * batch), [0] * (2 * batch)
    with torch.no_grad():  # the CNN is never trained
        for i, (n_a, n_b) in enumerate(zip(len_a.tolist(), len_b.tolist())):
            pair = [wav_a[i, :n_a], wav_b[i, :n_b]]
            if normalize:
                pair = [F.layer_norm(wav, wav.shape) for wav in pair]
            samples = torch.tensor([n_a, n_b], device=wav_a.device)
            padded = pad_sequence(pair, batch_first=True)  # (2, L): the official batch of 2
            sample_padding = torch.arange(padded.shape[1], device=padded.device)[None, :] >= samples[:, None]
            x = model.feature_extractor(padded).transpose(1, 2)  # (2, T, C)
            padding = model.forward_padding_mask(x, sample_padding)  # HuBERT's chunk rule
            for slot, row, n in ((i, 0, n_a), (batch + i, 1, n_b)):  # views a first, then views b
                rows[slot], masks[slot] = x[row], padding[row]
                kept[slot] = min(round(n / rate), x.shape[1])  # the Featurizer's cut (Python's round)
        x = pad_sequence(rows, batch_first=True)
        padding = pad_sequence(masks, batch_first=True, padding_value=True)
    frames = encode_cnn_frames(model, x, padding)
    kept = torch.tensor(kept, device=frames.device)
    return frames[:batch], kept[:batch], frames[batch:], kept[batch:]


def downsample_rate(model: nn.Module) -> int:
    """Samples per frame: the product of the CNN strides (320 for HuBERT and WavLM, the rate
    their s3prl ``UpstreamExpert.get_downsample_rates`` reports)."""
    return math.prod(block[0].stride[0] for block in model.feature_extractor.conv_layers)


def _check_frames(model: nn.Module, lengths: torch.Tensor) -> torch.Tensor:
    """Each length's convolution frame count; a ScoreError if one is below 1."""
    frame_lengths = conv_frame_lengths(model, lengths)
    if bool((frame_lengths < 1).any()):
        shortest = int(lengths.min())
        raise ScoreError(f"an utterance of {shortest} samples is too short: HuBERT's CNN gives it no frame")
    return frame_lengths


def encode_cnn_frames(model: nn.Module, x: torch.Tensor, padding: torch.Tensor) -> torch.Tensor:
    """The rest of ``extract_features`` after the CNN: norm, projection, positional convolution,
    transformer layers (and the final norm of a pre-LN encoder), with frames under ``padding``
    zeroed before the positional convolution and masked in attention.

    Args:
        model: s3prl ``HubertModel`` or ``WavLM``.
        x: (B, T, C) CNN frames.
        padding: (B, T) bool, True at padding frames.
    Returns:
        (B, T, D) last-layer frames.
    """
    encoder = model.encoder
    tracking = torch.is_grad_enabled()
    front = [model.layer_norm, model.post_extract_proj, encoder.pos_conv]
    if not encoder.layer_norm_first:
        front.append(encoder.layer_norm)
    grad = tracking and _trains(front)
    with torch.set_grad_enabled(grad):
        x = model.layer_norm(x)
        if model.post_extract_proj is not None:
            x = model.post_extract_proj(x)
        x = model.dropout_input(x)
        x = x.masked_fill(padding[..., None], 0.0)  # the positional conv must see zeros there
        x = x + encoder.pos_conv(x.transpose(1, 2)).transpose(1, 2)
        if not encoder.layer_norm_first:
            x = encoder.layer_norm(x)
        x = F.dropout(x, p=encoder.dropout, training=encoder.training)
    x = x.transpose(0, 1)  # the layers take (T, B, D)
    # WavLM: layer 1 computes the relative position bias and every layer passes it on (each
    # gates it with its own parameters); HuBERT's layers take and return no bias.
    wavlm, pos_bias = is_wavlm(model), None
    for layer in encoder.layers:
        grad = grad or (tracking and _trains([layer]))
        with torch.set_grad_enabled(grad):
            if wavlm:
                x, _, pos_bias = layer(x, self_attn_padding_mask=padding, need_weights=False, pos_bias=pos_bias)
            else:
                x, _ = layer(x, self_attn_padding_mask=padding, need_weights=False)
    x = x.transpose(0, 1)
    if encoder.layer_norm_first:
        with torch.set_grad_enabled(grad or (tracking and _trains([encoder.layer_norm]))):
            x = encoder.layer_norm(x)
    return x


def is_wavlm(model: nn.Module) -> bool:
    """True for s3prl's ``WavLM`` (its layers pass a relative position bias on)."""
    from s3prl.upstream.wavlm.WavLM import WavLM

    return isinstance(model, WavLM)


def _trains(modules: Iterable[nn.Module | None]) -> bool:
    return any(p.requires_grad for m in modules if m is not None for p in m.parameters())


def correspondence_loss(
    x: torch.Tensor,
    x_lengths: torch.Tensor,
    y: torch.Tensor,
    y_lengths: torch.Tensor,
    gamma: float = 0.1,
    bandwidth: int | None = None,
) -> torch.Tensor:
    """SCORE's loss per pair: soft-DTW divergence divided by (T_x + T_y).

    Args:
        x: (B, N, D) and y: (B, M, D) frame sequences, padded past their lengths.
        x_lengths, y_lengths: (B,) valid frames.
        gamma: soft-min smoothing; bandwidth: optional Sakoe-Chiba band in frames.
    Returns:
        (B,) losses.
    """
    from .softdtw import soft_dtw_divergence

    divergence = soft_dtw_divergence(
        x, y, x_lengths, y_lengths, gamma=gamma, cost="sqeuclidean", bandwidth=bandwidth
    )
    return divergence / (x_lengths + y_lengths).to(divergence.dtype)


class ScoreModel(nn.Module):
    """Student, frozen teacher (SCORE only) and shared head, built from one base checkpoint.

    Args:
        base_state: s3prl converted HuBERT dict (see ``load_base_state``).
        head_dim: output size of the shared head.
        head: "linear" (Linear(D -> head_dim)) or "mlp" (Linear, ReLU, Linear(head_dim -> head_dim),
            the official SCORE WavLM head).
        trainable_layers: how many of the top transformer layers train (paper: 2).
        train_final_norm: the model-level LayerNorms ``FINAL_NORMS`` train too (paper: yes;
            see the module docstring for what they are in Base and Large).
        gamma: soft-DTW smoothing. bandwidth: optional Sakoe-Chiba band in frames.
        dropout: "official" (everything follows the model's mode) or "frozen-eval".
        method: "score" (frozen teacher, SCORE loss) or "laser" (no teacher, LASER loss;
            ``train_final_norm`` then trains ``LASER_NORMS`` only).
        alpha, sigma, margin: LASER's regulariser settings (unused by SCORE).
        view_batching: LASER only: "official" runs both views of a pair as one zero-padded
            batch of 2 (:func:`paired_view_features`, the official code's collate_fn),
            "separate" runs each view alone (:func:`last_layer_features`).
    """

    def __init__(
        self,
        base_state: dict[str, Any],
        head_dim: int = 256,
        head: str = "linear",
        trainable_layers: int = 2,
        train_final_norm: bool = True,
        gamma: float = 0.1,
        bandwidth: int | None = None,
        dropout: str = "official",
        method: str = "score",
        alpha: float = 0.4,
        sigma: int = 0,
        margin: float = 1.1,
        view_batching: str = "official",
    ) -> None:
        super().__init__()
        if dropout not in DROPOUT_MODES:
            raise ScoreError(f"model.dropout: {dropout!r} is not one of {', '.join(DROPOUT_MODES)}")
        if view_batching not in VIEW_BATCHING:
            raise ScoreError(f"laser.view_batching: {view_batching!r} is not one of {', '.join(VIEW_BATCHING)}")
        self.view_batching = view_batching
        if method not in METHODS:
            raise ScoreError(f"method: {method!r} is not one of {', '.join(METHODS)}")
        self.dropout, self.method = dropout, method
        self.alpha, self.sigma, self.margin = alpha, sigma, margin
        self.student, normalize = build_base(base_state, "base model")
        # LASER has no teacher: both views go through the student.
        self.teacher = build_base(base_state, "base model")[0] if method == "score" else None
        from s3prl.upstream.wav2vec2.wav2vec2_model import TransformerEncoder
        from s3prl.upstream.wavlm.WavLM import TransformerEncoder as WavLMEncoder

        if type(self.student.encoder) not in (TransformerEncoder, WavLMEncoder):
            raise ScoreError(f"base model: encoder {type(self.student.encoder).__name__} is not supported")
        layers = len(self.student.encoder.layers)
        if not 0 <= trainable_layers <= layers:
            raise ScoreError(f"model.trainable_layers: {trainable_layers} is not within 0..{layers}")
        self.normalize = normalize
        self.gamma, self.bandwidth = gamma, bandwidth
        self.trainable_modules = [f"encoder.layers.{i}" for i in range(layers - trainable_layers, layers)]
        if train_final_norm:
            self.trainable_modules += list(FINAL_NORMS if method == "score" else LASER_NORMS)
        for model in self.branches():
            model.encoder.layerdrop = 0.0
            model.requires_grad_(False)
        for name in self.trainable_modules:
            self.student.get_submodule(name).requires_grad_(True)
        width = self.student.encoder.embedding_dim
        if head == "linear":
            self.head = nn.Linear(width, head_dim)
        elif head == "mlp":
            self.head = nn.Sequential(nn.Linear(width, head_dim), nn.ReLU(), nn.Linear(head_dim, head_dim))
        else:
            raise ScoreError(f"model.head: {head!r} is not one of linear, mlp")
        self.train()

    def branches(self) -> list[nn.Module]:
        """The HuBERT copies: the student, and the teacher for SCORE."""
        return [self.student] + ([self.teacher] if self.teacher is not None else [])

    def train(self, mode: bool = True) -> "ScoreModel":
        """Set the mode: under ``dropout="official"`` of everything (the teacher too), under
        ``"frozen-eval"`` of the trainable modules only (frozen ones and the teacher stay in eval)."""
        self.training = mode
        self.head.train(mode)
        for model in self.branches():
            model.train(mode if self.dropout == "official" else False)
        if self.dropout == "frozen-eval":
            for name in self.trainable_modules:
                self.student.get_submodule(name).train(mode)
        return self

    def project(self, frames: torch.Tensor) -> torch.Tensor:
        """(B, T, D) frames -> (B, T, head_dim) head outputs, L2-normalised per frame (fp32)."""
        return F.normalize(self.head(frames).float(), dim=-1)

    def forward(
        self,
        wav_student: torch.Tensor,
        len_student: torch.Tensor,
        wav_teacher: torch.Tensor,
        len_teacher: torch.Tensor,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The SCORE (or LASER) loss for a batch of view pairs.

        Args:
            wav_student, wav_teacher: (B, L_s) and (B, L_t) zero-padded 16 kHz waveforms; for
                LASER both go through the student (the names keep SCORE's roles).
            len_student, len_teacher: (B,) valid samples.
        Returns:
            (loss, stats): the batch mean of the per-pair losses; stats holds the detached
            per-pair ``losses`` (B,) and the frame counts ``student_frames``, ``teacher_frames``.
        """
        if self.method == "laser":
            from .laser import laser_loss

            if self.view_batching == "official":
                xs, ls, xt, lt = paired_view_features(self.student, wav_student, len_student, wav_teacher,
                                                      len_teacher, self.normalize)
            else:
                xs, ls = last_layer_features(self.student, wav_student, len_student, self.normalize)
                xt, lt = last_layer_features(self.student, wav_teacher, len_teacher, self.normalize)
            losses = laser_loss(self.project(xs), ls, self.project(xt), lt, self.gamma, self.alpha,
                                self.sigma, self.margin, self.bandwidth)
            stats = {"losses": losses.detach(), "student_frames": ls, "teacher_frames": lt}
            return losses.mean(), stats
        xs, ls = last_layer_features(self.student, wav_student, len_student, self.normalize)
        with torch.no_grad():
            xt, lt = last_layer_features(self.teacher, wav_teacher, len_teacher, self.normalize)
        losses = correspondence_loss(self.project(xs), ls, self.project(xt), lt, self.gamma, self.bandwidth)
        stats = {"losses": losses.detach(), "student_frames": ls, "teacher_frames": lt}
        return losses.mean(), stats


def student_state_for_export(model: ScoreModel) -> dict[str, torch.Tensor]:
    """The student's full state dict in s3prl ``HubertModel`` names, detached CPU copies."""
    return {name: value.detach().cpu().clone() for name, value in model.student.state_dict().items()}


def trainable_summary(model: ScoreModel) -> str:
    """A table of the student's parts in computation order: parameters, whether they train.

    Consecutive transformer layers with the same status share one row.
    """
    student, encoder = model.student, model.student.encoder

    def part(name: str, role: str) -> tuple[str, int, str, str]:
        return _row(name, student.get_submodule(name).parameters(), role)

    rows = [part("feature_extractor", "CNN waveform encoder"), part("layer_norm", "norm on the CNN features")]
    if student.post_extract_proj is not None:
        rows.append(part("post_extract_proj", "projection to the model width"))
    rows.append(part("encoder.pos_conv", "positional convolution"))
    layers = []
    for _, group in itertools.groupby(enumerate(encoder.layers), key=lambda item: _trains([item[1]])):
        ids = [i for i, _ in group]
        span = f"{ids[0]}-{ids[-1]}" if len(ids) > 1 else f"{ids[0]}"
        numbers = f"s {ids[0] + 1}-{ids[-1] + 1}" if len(ids) > 1 else f" {ids[0] + 1}"
        layers.append(_row(f"encoder.layers.{span}", (p for i in ids for p in encoder.layers[i].parameters()),
                           f"transformer layer{numbers}"))
    if encoder.layer_norm_first:
        rows += [*layers, part("encoder.layer_norm", "norm after the last layer (pre-LN)")]
    else:
        rows += [part("encoder.layer_norm", "norm on the transformer input (post-LN)"), *layers]
    heads = (getattr(student, "final_proj", None), getattr(student, "target_glu", None))  # WavLM has neither
    unused = [p for m in heads if m is not None for p in m.parameters()]
    unused += list(student.parameters(recurse=False))  # mask_emb, label_embs_concat
    rows.append(_row("(pre-training)", unused, "final_proj, mask_emb, label embeddings: unused"))
    rows.append(_row("head", model.head.parameters(), "shared head + L2 norm"))
    width = max(len(r[0]) for r in rows) + 2
    lines = [f"{'student module':<{width}}{'params':>12}  {'trains':<7}role"]
    lines += [f"{name:<{width}}{count:>12,}  {trains:<7}{role}" for name, count, trains, role in rows]
    trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in student.parameters())
    if model.teacher is None:
        lines.append(f"trainable: {trained:,} parameters (student {total:,}; LASER: no teacher)")
    else:
        teacher = sum(p.numel() for p in model.teacher.parameters())
        lines.append(f"trainable: {trained:,} parameters (student {total:,}, teacher {teacher:,} frozen)")
    return "\n".join(lines)


def _row(name: str, params: Iterable[nn.Parameter], role: str) -> tuple[str, int, str, str]:
    params = list(params)
    training = {p.requires_grad for p in params}
    trains = "partly" if len(training) > 1 else ("yes" if training == {True} else "no")
    return name, sum(p.numel() for p in params), trains, role
