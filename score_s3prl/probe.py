"""Layer-wise invariance probe: how close an utterance and its perturbed view are, per layer.

What SCORE optimises is that a speed- and pitch-perturbed copy of an utterance and the original
get the same content representation. This measures that directly, for any s3prl upstream, on
held-out speech, with no labels. For each layer (the upstream's ``hidden_states``) and each
perturbation:

    same_utterance       mean over utterances u of  D(f(u), f(view(u)))
    different_utterance  mean over neighbour pairs (u, v) of  D(f(u), f(v))
    value                same_utterance / different_utterance

where f is the layer's frames, L2-normalised per frame, and D is SCORE's loss: the soft-DTW
divergence with squared Euclidean frame cost (gamma from the fine-tuning config), divided by
T_x + T_y. Neighbour pairs are consecutive utterances in length order, so the two utterances
of a pair have similar durations (as an utterance and its view do). 0 means invariant, 1 means
a view is no closer to its original than another utterance of similar length is.

Why the ratio: a model whose representations collapse (every frame alike) makes the raw
same-utterance divergence small without being invariant; the different-utterance divergence
shrinks with it, so the ratio does not reward collapse.

Collapse itself: with identical frames everywhere the cost matrix is all zeros, and the
divergence is not 0 but a small *length floor* that depends only on the two lengths (soft-DTW
with zero cost is -gamma log(number of alignment paths)). A fully collapsed model therefore
gives neither 0/0 nor 0, but floor/floor: a number with no meaning, and a dangerous one. For a
constant model on the bundled test-other speech it is 0 for pitch shifts (a view keeps its
length, so its floor is 0) and 0.11-0.16 for speed: it would look invariant. Each row reports that floor
for the neighbour pairs; when the different-utterance divergence does not exceed it by more than
:data:`COLLAPSE_TOLERANCE`, the row is flagged ``collapsed`` and its ``value`` is NaN (a NaN
cannot be mistaken for invariance in a table, a mean or a plot); the raw columns stay.

Layout (torchaudio style): pure functions on tensors (:func:`neighbour_pairs`,
:func:`pair_divergences`, :func:`length_floor`, :func:`layer_frames`, :func:`probe_model`), the
runner :func:`probe_upstreams` (loads upstreams through s3prl's hub, writes ``probe.csv`` and
``probe.png``) and the CLI ``score-s3prl probe`` (:func:`main`).

Phase-2 entry points for the SUPERB runner: :func:`probe_upstreams` and :func:`last_layer_value`.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import io
import math
import os
import re
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Callable, Iterable, Protocol, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from .audio import SAMPLE_RATE, load_audio
from .corpora import AUDIO_SUFFIXES, list_audio
from .errors import ArgumentParser, ScoreError
from .fileio import atomic_open, atomic_write_text
from .runtime import DEVICE_CHOICES, device_name, resolve_device

# A different-utterance divergence within this of the length floor (per frame, for unit-norm
# frames whose squared distances lie in [0, 4]) means different utterances are as alike as
# identical frames would make them: the representation has collapsed.
COLLAPSE_TOLERANCE = 1e-4
# Soft-DTW cells (pairs x N x M) per kernel call: the CPU kernel keeps 12 bytes a cell, so this
# bounds a call to about 200 MB whatever the utterance lengths.
MAX_CELLS = 1 << 24
# Utterances perturbed together: bounds the phase vocoder's (B, F, frames) tensors.
PERTURB_CHUNK = 8
# Shorter files are refused: a speed-up must still leave the upstream a few frames.
MIN_SECONDS = 0.5
SCORE = "score"  # the perturbation name of SCORE's own view distribution

Upstream = Callable[[list[torch.Tensor]], dict]  # s3prl contract: list of (T,) -> {"hidden_states": [...]}


# ----------------------------------------------------------------------------- perturbations


class Perturbation(Protocol):
    """A named, seeded transformation of waveforms. ``name`` goes in the CSV."""

    name: str

    def __call__(self, wavs: list[torch.Tensor], generator: torch.Generator) -> list[torch.Tensor]:
        """(T_i,) waveforms -> their views, (T'_i,) each; every random draw from ``generator``."""
        ...


@dataclass(frozen=True)
class ViewPerturbation:
    """Speed perturbation then pitch shift, each utterance drawing a factor and a shift uniformly.

    One factor and one shift is a fixed perturbation (``speed0.9``, ``pitch+2``); SCORE's view
    (``score``) draws from all of them, as :class:`~score_s3prl.augment.CorrespondenceViews` does.
    """

    name: str
    speed_factors: tuple[float, ...] = (1.0,)
    semitones: tuple[float, ...] = (0.0,)

    def __call__(self, wavs: list[torch.Tensor], generator: torch.Generator) -> list[torch.Tensor]:
        from .augment import pitch_shift, speed_perturb

        # All draws first, so the views do not depend on how the utterances are chunked.
        speeds = torch.randint(len(self.speed_factors), (len(wavs),), generator=generator).tolist()
        shifts = torch.randint(len(self.semitones), (len(wavs),), generator=generator).tolist()
        out: list[torch.Tensor] = []
        for start in range(0, len(wavs), PERTURB_CHUNK):
            rows = range(start, min(start + PERTURB_CHUNK, len(wavs)))
            batch, lengths = pad([wavs[i] for i in rows])
            batch, lengths = speed_perturb(batch, lengths, [self.speed_factors[speeds[i]] for i in rows])
            batch, lengths = pitch_shift(batch, lengths, [self.semitones[shifts[i]] for i in rows])
            out += [row[:n] for row, n in zip(batch, lengths.tolist())]
        return out


def default_perturbations(speed_factors: Sequence[float], semitones: Sequence[float]) -> list[ViewPerturbation]:
    """Each speed factor alone, each pitch shift alone (identities skipped), then ``score``.

    ``speed_factors`` and ``semitones`` are the fine-tuning config's ``views`` section.
    """
    perts = [ViewPerturbation(f"speed{f:g}", speed_factors=(float(f),)) for f in speed_factors if f != 1]
    perts += [ViewPerturbation(f"pitch{s:+g}", semitones=(float(s),)) for s in semitones if s != 0]
    perts.append(ViewPerturbation(SCORE, tuple(map(float, speed_factors)), tuple(map(float, semitones))))
    return perts


def perturbation_parts(name: str) -> tuple[str, float]:
    """A perturbation name split into (kind, amount): ``speed0.9`` -> ("speed", 0.9), ``pitch+2``
    -> ("pitch", 2.0), ``score`` -> ("score", NaN); any other name -> (name, NaN)."""
    match = re.fullmatch(r"(speed|pitch)([-+]?[0-9]*\.?[0-9]+(?:e[-+]?[0-9]+)?)", name)
    if match:
        return match[1], float(match[2])
    return name, math.nan


def perturbation_title(kind: str, amount: float) -> str:
    """A readable name for a plot panel: ``speed x0.9``, ``pitch +2 semitones``, ``SCORE views
    (speed+pitch)``."""
    if kind == SCORE:
        return "SCORE views (speed+pitch)"
    if kind == "speed" and not math.isnan(amount):
        return f"speed x{amount:g}"
    if kind == "pitch" and not math.isnan(amount):
        return f"pitch {amount:+g} semitones"
    return kind


def perturbation_generator(seed: int, name: str) -> torch.Generator:
    """A generator seeded from (seed, perturbation name): a perturbation's views do not depend
    on which other perturbations run, nor in which order, and are the same for every upstream."""
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))


# ----------------------------------------------------------------------------- pure functions


def pad(seqs: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(T_i, ...) tensors -> zero-padded (B, T_max, ...) and lengths (B,) int64."""
    lengths = torch.tensor([s.shape[0] for s in seqs], dtype=torch.long)
    return torch.nn.utils.rnn.pad_sequence(list(seqs), batch_first=True), lengths


def neighbour_pairs(lengths: Sequence[int]) -> list[tuple[int, int]]:
    """Pairs of different utterances of similar length: neighbours in length order.

    Utterances are sorted by (length, index) and each is paired with the next: n - 1 pairs of
    indices into ``lengths``, deterministic (ties broken by index).
    """
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    return list(zip(order[:-1], order[1:]))


def pair_divergences(
    xs: Sequence[torch.Tensor],
    ys: Sequence[torch.Tensor],
    gamma: float,
    max_cells: int = MAX_CELLS,
    progress: tqdm | None = None,
) -> torch.Tensor:
    """SCORE's per-pair loss between frame sequences: soft-DTW divergence / (T_x + T_y).

    Args:
        xs, ys: equally many (T_x, D) and (T_y, D) frame sequences (pair i is xs[i], ys[i]),
            used as given (normalise them first).
        gamma: soft-DTW smoothing.
        max_cells: pairs go to the batched, masked kernel in groups of similar size holding at
            most this many cells (one pair alone may exceed it).
        progress: a tqdm bar advanced by the number of pairs done.
    Returns:
        (P,) float64 divergences, in the order of the pairs (x and y of a pair share D). A pair's value does not depend on
        the group it was computed in (the kernel is masked per pair).
    """
    from .softdtw import soft_dtw_divergence

    if len(xs) != len(ys):
        raise ScoreError(f"pair_divergences: {len(xs)} x sequences but {len(ys)} y sequences")
    out = torch.empty(len(xs), dtype=torch.float64)
    # Similar sizes together (little padding); a group never mixes frame widths (layers of
    # different widths can come in one call).
    order = sorted(range(len(xs)), key=lambda i: (xs[i].shape[-1], xs[i].shape[0] * ys[i].shape[0], i))
    start = 0
    while start < len(order):
        stop, rows, cols = start, 0, 0
        while stop < len(order):
            i = order[stop]
            n, m = max(rows, xs[i].shape[0]), max(cols, ys[i].shape[0])
            if stop > start and ((stop - start + 1) * n * m > max_cells
                                 or xs[i].shape[-1] != xs[order[start]].shape[-1]):
                break
            rows, cols, stop = n, m, stop + 1
        group = order[start:stop]
        x, x_len = pad([xs[i].float() for i in group])
        y, y_len = pad([ys[i].float() for i in group])
        with torch.no_grad():
            div = soft_dtw_divergence(x, y, x_len, y_len, gamma=gamma, cost="sqeuclidean")
        out[group] = (div.double().cpu() / (x_len + y_len).double())
        if progress is not None:
            progress.update(len(group))
        start = stop
    return out


def length_floor(x_lengths: Sequence[int], y_lengths: Sequence[int], gamma: float) -> torch.Tensor:
    """The divergence / (T_x + T_y) of identical frames everywhere (all-zero costs), per pair.

    It depends on the two lengths only: what a fully collapsed representation gives.
    Returns (P,) float64.
    """
    def sdtw(n: int, m: int) -> float:
        return _zero_cost_soft_dtw(n, m, float(gamma))

    return torch.tensor(
        [(sdtw(n, m) - (sdtw(n, n) + sdtw(m, m)) / 2) / (n + m) for n, m in zip(x_lengths, y_lengths)],
        dtype=torch.float64,
    )


@functools.lru_cache(maxsize=65536)
def _zero_cost_soft_dtw(n: int, m: int, gamma: float) -> float:
    """Soft-DTW of an all-zero n x m cost matrix (cached: every layer and upstream asks again)."""
    from .softdtw import soft_dtw_from_cost

    return float(soft_dtw_from_cost(torch.zeros(1, n, m), gamma=gamma)[0])


def layer_frames(upstream: Upstream, wav: torch.Tensor, device: str | torch.device = "cpu") -> list[torch.Tensor]:
    """One utterance through an upstream: per layer, (T, D) frames L2-normalised per frame, on the CPU.

    The upstream sees the utterance alone, never padded in a batch: HuBERT's first conv layer
    group-normalises over the whole (padded) time axis, so padding would change its frames,
    and the probe's numbers would depend on which utterances share a batch.
    """
    with torch.no_grad():
        outputs = upstream([wav.to(device)])
    if not isinstance(outputs, dict) or "hidden_states" not in outputs:
        raise ScoreError("the upstream returned no `hidden_states` (s3prl's upstream contract)")
    layers = []
    for index, hidden in enumerate(outputs["hidden_states"]):
        if not isinstance(hidden, torch.Tensor) or hidden.dim() != 3 or hidden.shape[0] != 1 or hidden.shape[1] < 1:
            shape = tuple(hidden.shape) if isinstance(hidden, torch.Tensor) else type(hidden).__name__
            raise ScoreError(f"hidden_states[{index}] has shape {shape}; expected (1, T >= 1, D) for one utterance")
        layers.append(F.normalize(hidden[0].detach().float(), dim=-1).cpu())
    return layers


@dataclass
class ProbeRow:
    """One line of ``probe.csv``: one upstream, one layer, one perturbation."""

    upstream: str  # hub entry name
    checkpoint: str  # the ckpt given as NAME=CKPT, "" for none
    layer: int  # index into hidden_states (0: the input to the first transformer layer)
    perturbation: str  # speed<f>, pitch<+s>, score, or a caller's name
    kind: str  # speed, pitch, score, or the caller's name (see perturbation_parts)
    amount: float  # speed factor or semitones; NaN for score (a mixture) and callers' names
    value: float  # same_utterance / different_utterance; NaN when collapsed
    same_utterance: float  # mean divergence between an utterance and its view
    different_utterance: float  # mean divergence between neighbour pairs of utterances
    length_floor: float  # mean divergence those pairs would have with identical frames
    collapsed: bool  # different_utterance <= length_floor + COLLAPSE_TOLERANCE
    n: int  # utterances (same-utterance pairs)
    n_pairs: int  # different-utterance pairs


def probe_model(
    upstream: Upstream,
    wavs: Sequence[torch.Tensor],
    views: dict[str, Sequence[torch.Tensor]],
    gamma: float = 0.1,
    device: str | torch.device = "cpu",
    name: str = "model",
    checkpoint: str = "",
    progress: bool = False,
) -> list[ProbeRow]:
    """The probe for one upstream on given waveforms and their views.

    Args:
        upstream: an s3prl-style upstream (``upstream(list of (T,) tensors)["hidden_states"]``,
            each (1, T', D)); called one utterance at a time, under ``torch.no_grad``.
        wavs: (T_i,) float waveforms at 16 kHz, at least 2.
        views: perturbation name -> the views of ``wavs``, in the same order.
        gamma: soft-DTW smoothing (the fine-tuning config's ``loss.gamma``).
        name, checkpoint: copied into the rows.
        progress: show tqdm bars.
    Returns:
        rows for every layer x perturbation, layers outer, perturbations in ``views`` order.
    """
    if len(wavs) < 2:
        raise ScoreError(f"the probe needs at least 2 utterances (different-utterance pairs), got {len(wavs)}")
    for key, seqs in views.items():
        if len(seqs) != len(wavs):
            raise ScoreError(f"perturbation {key!r}: {len(seqs)} views for {len(wavs)} utterances")
    was_training = getattr(upstream, "training", False)
    if isinstance(upstream, nn.Module):
        upstream.eval()  # no dropout: the probe is deterministic
    try:
        jobs = [(None, wav) for wav in wavs] + [(key, wav) for key, seqs in views.items() for wav in seqs]
        frames: dict[str | None, list[list[torch.Tensor]]] = {None: []} | {key: [] for key in views}
        for key, wav in tqdm(jobs, desc=f"{name}: forward", unit="utt", disable=not progress, leave=False):
            frames[key].append(layer_frames(upstream, wav, device))
    finally:
        if isinstance(upstream, nn.Module):
            upstream.train(was_training)

    originals = frames[None]
    n_layers = len(originals[0])
    if any(len(f) != n_layers for seqs in frames.values() for f in seqs):
        raise ScoreError(f"{name}: the number of hidden_states differs between utterances")
    pairs = neighbour_pairs([wav.shape[0] for wav in wavs])
    # Every (layer, set) pair list goes to the kernel in one call, grouped by size.
    xs, ys, slices = [], [], {}
    for layer in range(n_layers):
        for key in [None, *views]:
            pair_list = pairs if key is None else [(i, i) for i in range(len(wavs))]
            first = len(xs)
            xs += [originals[i][layer] for i, _ in pair_list]
            ys += [(originals if key is None else frames[key])[j][layer] for _, j in pair_list]
            slices[(layer, key)] = slice(first, len(xs))
    with tqdm(total=len(xs), desc=f"{name}: soft-DTW", unit="pair", disable=not progress, leave=False) as bar:
        divergences = pair_divergences(xs, ys, gamma, progress=bar)

    rows = []
    for layer in range(n_layers):
        different = float(divergences[slices[(layer, None)]].mean())
        lengths = [originals[i][layer].shape[0] for i in range(len(wavs))]
        floor = float(length_floor([lengths[i] for i, _ in pairs], [lengths[j] for _, j in pairs], gamma).mean())
        collapsed = not different > floor + COLLAPSE_TOLERANCE  # (NaN counts as collapsed too)
        for key in views:
            same = float(divergences[slices[(layer, key)]].mean())
            kind, amount = perturbation_parts(key)
            rows.append(ProbeRow(
                upstream=name, checkpoint=checkpoint, layer=layer, perturbation=key, kind=kind, amount=amount,
                value=math.nan if collapsed else same / different,
                same_utterance=same, different_utterance=different, length_floor=floor,
                collapsed=collapsed, n=len(wavs), n_pairs=len(pairs),
            ))
    return rows


# ----------------------------------------------------------------------------- runner


def find_audio(folder: str | os.PathLike, max_utterances: int | None = None) -> list[Path]:
    """The audio files (.flac, .wav) under ``folder``, sorted by path; the first ``max_utterances``."""
    root = Path(folder)
    if not root.is_dir():
        raise ScoreError(f"{root}: audio folder not found")
    files = list_audio(root)  # the project's one scanner (corpora), sorted by path
    if not files:
        raise ScoreError(f"{root}: no audio files ({', '.join(AUDIO_SUFFIXES)}) found")
    if max_utterances is not None:
        if max_utterances < 2:
            raise ScoreError(f"--max-utterances must be at least 2, got {max_utterances}")
        files = files[:max_utterances]
    return files


def load_utterances(files: Sequence[str | os.PathLike], max_seconds: float | None = None) -> list[torch.Tensor]:
    """16 kHz mono waveforms; with ``max_seconds`` each is cut to its first ``max_seconds``."""
    if len(files) < 2:
        raise ScoreError(f"the probe needs at least 2 utterances, got {len(files)}")
    wavs = []
    for path in files:
        wav = load_audio(path, min_samples=int(MIN_SECONDS * SAMPLE_RATE))
        wavs.append(wav[: int(max_seconds * SAMPLE_RATE)] if max_seconds else wav)
    return wavs


def parse_upstream(spec: str) -> tuple[str, str]:
    """``NAME[=CKPT]`` -> (NAME, CKPT or "")."""
    name, _, ckpt = spec.partition("=")
    if not name.strip():
        raise ScoreError(f"--upstream {spec!r}: expected NAME or NAME=CKPT")
    return name.strip(), ckpt


def check_upstream(name: str, checkpoint: str = "") -> Callable:
    """The hub entry for ``name`` (ours registered too), after checking it exists and that a
    local ``checkpoint`` is a file; cheap, so every upstream is checked before any work."""
    from . import hub

    hub.register()  # compat.apply() first, then our entries beside s3prl's
    import s3prl.hub

    entry = getattr(s3prl.hub, name, None) if not name.startswith("_") else None
    if entry is None or not callable(entry) or name not in s3prl.hub.options():
        raise ScoreError(f"unknown upstream {name!r}: not an s3prl hub entry (e.g. hubert_local, score_hubert_local)")
    if checkpoint and "://" not in checkpoint and not os.path.isfile(checkpoint):
        raise ScoreError(f"{checkpoint}: checkpoint for upstream {name!r} not found")
    return entry


def load_upstream(name: str, checkpoint: str = "", device: str | torch.device = "cpu") -> nn.Module:
    """An s3prl hub entry (ours registered too), called with ``ckpt=checkpoint`` when one is given.

    Any failure (unknown entry, missing or unreadable checkpoint, a download that cannot
    happen) is one :class:`ScoreError` naming the entry and the file.
    """
    from .checkpoints.safeload import weights_only_torch_load

    entry = check_upstream(name, checkpoint)
    try:
        with weights_only_torch_load():  # stock entries' own loads too (some ask weights_only=False)
            model = entry(ckpt=checkpoint) if checkpoint else entry()
    except ScoreError:
        raise
    except Exception as exc:  # stock entries raise anything: pickle, KeyError, OSError, ...
        what = f" from {checkpoint}" if checkpoint else ""
        raise ScoreError(f"cannot load upstream {name!r}{what} ({type(exc).__name__}: {exc})".strip()) from exc
    return model.to(device)


def probe_upstreams(
    upstreams: Sequence[str | tuple[str, str]],
    audio_files: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike | None = None,
    *,
    config: str | os.PathLike | None = None,
    seed: int = 0,
    device: str = "auto",
    max_seconds: float | None = None,
    perturbations: Sequence[Perturbation] | None = None,
    loader: Callable[[str, str, str], Upstream] = load_upstream,
    progress: bool = True,
) -> list[ProbeRow]:
    """Probe several upstreams on the same utterances and the same views; write CSV and plot.

    Args:
        upstreams: ``"NAME"``, ``"NAME=CKPT"`` or (NAME, CKPT) for each upstream (s3prl hub
            entries, ours included).
        audio_files: held-out utterances (see :func:`find_audio`), at least 2.
        out_dir: where ``probe.csv`` and ``probe.png`` go (written atomically); None: no files.
        config: a fine-tuning YAML: its ``views`` give the perturbations, ``loss.gamma`` the
            smoothing (default: the paper's settings, score_s3prl/config.py).
        seed: seeds the views (same seed, same views, identical CSV).
        device: where the upstreams run (``auto``: CUDA if available); soft-DTW runs on the CPU.
        max_seconds: cut each utterance to its first ``max_seconds`` (bounds soft-DTW time).
        perturbations: override the config's (objects with ``name`` and ``__call__``).
        loader: ``loader(name, ckpt, device) -> upstream``; tests inject models here.
        progress: tqdm bars on stderr.
    Returns:
        the rows of ``probe.csv`` (upstreams in the order given).
    """
    from .config import load_config

    cfg = load_config(config)
    device = resolve_device(device)
    if perturbations is None:
        perturbations = default_perturbations(cfg.views.speed_factors, cfg.views.semitones)
    names = [p.name for p in perturbations]
    if len(set(names)) != len(names):
        raise ScoreError(f"perturbation names repeat: {names}")
    specs = [parse_upstream(u) if isinstance(u, str) else (u[0], u[1] or "") for u in upstreams]
    if not specs:
        raise ScoreError("no upstream to probe: give --upstream NAME[=CKPT]")
    if loader is load_upstream:  # fail on a bad name or path before minutes of work, not after
        for name, ckpt in specs:
            check_upstream(name, ckpt)
    wavs = load_utterances(audio_files, max_seconds)
    views = {}
    for pert in tqdm(perturbations, desc="views", unit="perturbation", disable=not progress, leave=False):
        views[pert.name] = pert(wavs, perturbation_generator(seed, pert.name))
    rows: list[ProbeRow] = []
    for name, ckpt in specs:
        upstream = loader(name, ckpt, device)
        rows += probe_model(upstream, wavs, views, cfg.loss.gamma, device, name, ckpt, progress)
        del upstream
    if out_dir is not None:
        write_csv(rows, Path(out_dir) / "probe.csv")
        plot(rows, Path(out_dir) / "probe.png")
    return rows


def last_layer_value(rows: Iterable[ProbeRow], upstream: str, perturbation: str = SCORE,
                     checkpoint: str | None = None) -> float:
    """The probe value at an upstream's last layer for one perturbation (NaN if collapsed).

    ``checkpoint`` picks among rows of the same upstream name probed with several checkpoints.
    """
    rows = [r for r in rows if r.upstream == upstream and r.perturbation == perturbation
            and (checkpoint is None or r.checkpoint == checkpoint)]
    if not rows:
        raise ScoreError(f"no probe rows for upstream {upstream!r}, perturbation {perturbation!r}")
    if len({r.checkpoint for r in rows}) > 1:
        raise ScoreError(f"upstream {upstream!r} was probed with several checkpoints: pass checkpoint=")
    return max(rows, key=lambda r: r.layer).value


def _fmt(value: float | int | bool | str) -> str:
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.8g}"
    return str(value)


def write_csv(rows: Sequence[ProbeRow], path: str | os.PathLike) -> None:
    """``probe.csv`` (columns: the :class:`ProbeRow` fields), written atomically."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow([f.name for f in fields(ProbeRow)])
    for row in rows:
        writer.writerow([_fmt(v) for v in asdict(row).values()])
    atomic_write_text(path, buffer.getvalue())


def read_csv(path: str | os.PathLike) -> list[ProbeRow]:
    """The rows of a ``probe.csv`` written by :func:`write_csv` (older files without the ``kind``
    and ``amount`` columns too: they are derived from ``perturbation``).

    Raises:
        ScoreError: the file is missing or is not a probe CSV.
    """
    types = {f.name: f.type for f in fields(ProbeRow)}
    parse = {"int": int, "float": float, "str": str, "bool": lambda text: text == "1"}
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            records = list(csv.DictReader(handle))
        for record in records:
            if "kind" not in record and "perturbation" in record:  # written before the columns existed
                kind, amount = perturbation_parts(record["perturbation"])
                record.update(kind=kind, amount=_fmt(amount))
        return [ProbeRow(**{k: parse[types[k]](r[k]) for k in types}) for r in records]
    except FileNotFoundError:
        raise ScoreError(f"{path}: probe CSV not found") from None
    except (KeyError, TypeError, ValueError) as exc:
        raise ScoreError(f"{path}: not a probe CSV ({type(exc).__name__}: {exc})") from exc


def _label(row: ProbeRow, rows: Sequence[ProbeRow]) -> str:
    """The upstream's name, with its checkpoint's file name when one name has several."""
    if len({r.checkpoint for r in rows if r.upstream == row.upstream}) > 1:
        return f"{row.upstream}={Path(row.checkpoint).name}"
    return row.upstream


REFERENCE_LABEL = "1.0 = as different as another utterance"
PROBE_SUPTITLE = "Invariance probe: view / other-utterance soft-DTW divergence per layer (lower = more invariant)"


def plot(rows: Sequence[ProbeRow], path: str | os.PathLike, title: str | None = None) -> None:
    """``probe.png`` (:func:`probe_figure`), written atomically."""
    fig = probe_figure(rows, title)
    with atomic_open(path, "wb") as handle:
        fig.savefig(handle, format="png", dpi=110)


def probe_figure(rows: Sequence[ProbeRow], title: str | None = None):
    """Value per layer, every upstream overlaid (one line each), one panel per perturbation;
    all panels share both axes, the y axis starts at 0 and includes the labelled 1.0 reference
    line. Returns a matplotlib ``Figure`` (Agg canvas, no pyplot)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # no pyplot: no global backend
    from matplotlib.figure import Figure

    # one panel per perturbation name (amounts are NaN for `score`, and NaN != NaN: never a key)
    perts = list({r.perturbation: (r.perturbation, r.kind, r.amount) for r in reversed(rows)}.values())[::-1]
    labels = list(dict.fromkeys(_label(r, rows) for r in rows))
    finite = [r.value for r in rows if math.isfinite(r.value)]
    top = max([1.0, *finite]) * 1.08
    fig = Figure(figsize=(3.4 * max(1, len(perts)), 3.6), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, max(1, len(perts)), sharex=True, sharey=True, squeeze=False)[0]
    for ax, (pert, kind, amount) in zip(axes, perts):
        for label in labels:
            line = sorted((r.layer, r.value) for r in rows if r.perturbation == pert and _label(r, rows) == label)
            ax.plot([layer for layer, _ in line], [v for _, v in line], marker="o", ms=3, label=label)
        ax.axhline(1.0, color="grey", lw=0.8, ls="--", label=REFERENCE_LABEL)
        ax.set_title(perturbation_title(kind, amount), fontsize="medium")
        ax.set_xlabel("layer")
        ax.set_ylim(0, top)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("view / other-utterance divergence\n(lower = more invariant)")
    axes[0].legend(fontsize="small", loc="lower left")
    fig.suptitle(title or PROBE_SUPTITLE, fontsize="medium")
    return fig


def plot_by_folder(csv_paths: Sequence[str | os.PathLike], out_dir: str | os.PathLike) -> list[Path]:
    """One figure per audio folder, every upstream overlaid: the rows of all ``csv_paths`` whose
    parent folders share a name (the probed split, as the SUPERB runner lays them out:
    ``<upstream>/<split>/probe.csv``) go to ``<out_dir>/<split>.png``. Returns the figures."""
    groups: dict[str, list[ProbeRow]] = {}
    for csv_path in csv_paths:
        groups.setdefault(Path(csv_path).parent.name, []).extend(read_csv(csv_path))
    figures = []
    for split, rows in groups.items():
        figure = Path(out_dir) / f"{split}.png"
        plot(rows, figure, title=f"{PROBE_SUPTITLE}\nheld-out audio: {split}")
        figures.append(figure)
    return figures


def format_table(rows: Sequence[ProbeRow]) -> str:
    """The rows as a fixed-width text table (one line per row)."""
    head = f"{'upstream':<34} {'layer':>5} {'perturbation':<12} {'value':>8} {'same':>9} {'different':>9} {'floor':>9}"
    lines = [head, "-" * len(head)]
    for r in rows:
        value = "collapsed" if r.collapsed else f"{r.value:8.4f}"
        lines.append(f"{_label(r, rows)[:34]:<34} {r.layer:>5} {r.perturbation:<12} {value:>8} "
                     f"{r.same_utterance:9.5f} {r.different_utterance:9.5f} {r.length_floor:9.5f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(
        prog="score-s3prl probe",
        description="Layer-wise invariance probe: soft-DTW divergence between held-out utterances and "
        "their perturbed views, relative to different utterances (0: invariant, 1: no closer than "
        "another utterance).",
    )
    parser.add_argument("--upstream", action="append", required=True, metavar="NAME[=CKPT]",
                        help="s3prl hub entry, with ckpt=CKPT when given (repeatable)")
    parser.add_argument("--audio", required=True, help="folder of held-out .flac/.wav utterances (searched recursively)")
    parser.add_argument("--out", required=True, help="output folder: probe.csv, probe.png")
    parser.add_argument("--device", default="auto", type=device_name, help=f"where upstreams run: {DEVICE_CHOICES}")
    parser.add_argument("--seed", type=int, default=0, help="seeds the views")
    parser.add_argument("--max-utterances", type=int, help="probe the first N files (sorted by path)")
    parser.add_argument("--max-seconds", type=float, help="cut each utterance to its first S seconds")
    parser.add_argument("--config", help="fine-tuning YAML: views and loss.gamma (default: the paper's)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    if args.max_seconds is not None and args.max_seconds < MIN_SECONDS:
        raise ScoreError(f"--max-seconds must be at least {MIN_SECONDS}, got {args.max_seconds}")
    files = find_audio(args.audio, args.max_utterances)
    rows = probe_upstreams(args.upstream, files, args.out, config=args.config, seed=args.seed,
                           device=args.device, max_seconds=args.max_seconds, progress=not args.no_progress)
    print(format_table(rows))
    print(f"{Path(args.out) / 'probe.csv'}\n{Path(args.out) / 'probe.png'}")
    return 0
