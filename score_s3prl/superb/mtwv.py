"""Native MTWV for query-by-example (QUESST 2014), as the MediaEval QUESST scoring tool defines it.

``score-s3prl qbe-score STDLIST_XML GROUNDTRUTH_DIR [--default-score -10] [--json]``

Inputs:
- the system output: s3prl's ``benchmark.stdlist.xml`` (NIST STD 2006 format:
  ``<stdlist><detected_termlist termid=Q><term file=F score=S decision=YES|NO/>``);
- the ground truth directory (e.g. ``quesst14Database/scoring/groundtruth_quesst14_dev``) with
  exactly one ``*.ecf.xml`` (``<excerpt audio_filename=...>``: the search utterances),
  ``*.tlist.xml`` (``<term termid=...>``: the queries) and ``*.rttm`` (lines
  ``LEXEME <file> <chan> <tbeg> <dur> <query_id> ...``: the occurrences).

Definitions (DESIGN.md section 4):
- trials are every tlist query x every ecf utterance; a trial is a target iff the rttm has a
  LEXEME line for that query in that file; queries without any target are dropped;
- a trial the stdlist does not give gets the default score (SUPERB uses -10);
- for a threshold t a trial is detected iff score > t; P_miss(t) is the mean over queries of
  misses / targets and P_fa(t) the mean over queries of false alarms / non-targets (a query
  occurring in every utterance contributes a P_fa of 0); TWV(t) = 1 - (P_miss + beta P_fa)
  with beta = (1 - p) / p for the effective prior p = C_miss P_target / (C_miss P_target +
  C_fa (1 - P_target)), P_target = 0.0008, C_miss = 100, C_fa = 1 (beta = 12.49);
- maxTWV (MTWV) is the maximum of TWV over t in {-inf} and every distinct score, the sweep
  starting from (1 - beta, -inf) and keeping the first (lowest) threshold of equal maxima;
- actTWV is the TWV of the system's own decisions: a trial is detected iff its stdlist entry
  says ``decision="YES"`` (trials missing from the stdlist are not detected). s3prl marks YES
  exactly when the (per-query normalised) score exceeds 2.0, so this is TWV(2.0) there. The
  official jar's own actTWV rule is not published with the data; it is not claimed here.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import subprocess
import warnings
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..errors import ArgumentParser, ScoreError
from ..fileio import atomic_open
from .metrics import split_lines

P_TARGET = 0.0008
C_MISS = 100.0
C_FA = 1.0
EFFECTIVE_PRIOR = C_MISS * P_TARGET / (C_MISS * P_TARGET + C_FA * (1.0 - P_TARGET))
BETA = (1.0 - EFFECTIVE_PRIOR) / EFFECTIVE_PRIOR
DEFAULT_SCORE = -10.0  # what SUPERB passes to the official script for missing trials

# extensions stripped from ecf/rttm/stdlist file names: s3prl names utterances by file stem
_AUDIO_SUFFIXES = {".wav", ".flac", ".sph", ".mp3", ".ogg"}


@dataclass(frozen=True)
class GroundTruth:
    """A QUESST ground truth set."""

    files: tuple[str, ...]  # search utterance ids (ecf), file order
    queries: tuple[str, ...]  # query ids (tlist), file order
    occurrences: dict[str, frozenset[str]]  # query id -> utterance ids it occurs in (rttm)


@dataclass(frozen=True)
class Trials:
    """Every (kept query, utterance) trial as dense (queries, files) matrices."""

    queries: tuple[str, ...]  # queries with at least one target, tlist order
    files: tuple[str, ...]
    scores: np.ndarray  # (queries, files) float64; the default score where not given
    decisions: np.ndarray  # (queries, files) bool; True where the stdlist says YES
    targets: np.ndarray  # (queries, files) bool; True where the query occurs in the file
    given: int  # trials the stdlist gave a score for
    dropped_queries: tuple[str, ...]  # tlist queries without any occurrence


@dataclass(frozen=True)
class QbeScore:
    """The QbE scores of one stdlist against one ground truth set."""

    max_twv: float  # MTWV
    threshold: float  # the (lowest) threshold reaching it: detected iff score > threshold
    p_miss: float  # P_miss at that threshold
    p_fa: float  # P_fa at that threshold
    act_twv: float  # TWV of the stdlist's YES decisions
    queries: int  # queries scored (with at least one target)
    dropped_queries: int  # tlist queries without targets
    files: int  # search utterances
    trials_given: int  # trials found in the stdlist
    trials_default: int  # trials scored with the default score
    default_score: float


def utterance_id(name: str) -> str:
    """``Audio/quesst14_00001.wav`` -> ``quesst14_00001``: base name without audio extension."""
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    stem, dot, suffix = base.rpartition(".")
    return stem if dot and stem and f".{suffix.lower()}" in _AUDIO_SUFFIXES else base


def find_groundtruth(directory: str | os.PathLike) -> tuple[Path, Path, Path]:
    """The (ecf, rttm, tlist) files of a ground truth directory.

    Raises:
        ScoreError: the directory is missing, or holds no file or several of a kind.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise ScoreError(f"{directory}: ground truth directory not found")
    found = []
    for pattern in ("*.ecf.xml", "*.rttm", "*.tlist.xml"):
        matches = sorted(directory.glob(pattern))
        if len(matches) != 1:
            names = ", ".join(m.name for m in matches)
            problem = f"{len(matches)} ({names})" if matches else "none"
            raise ScoreError(f"{directory}: expected exactly one {pattern} file, found {problem}")
        found.append(matches[0])
    return found[0], found[1], found[2]


def _parse_xml(path: Path, root_tag: str) -> ET.Element:
    try:
        root = ET.parse(path).getroot()
    except FileNotFoundError:
        raise ScoreError(f"{path}: file not found") from None
    except (ET.ParseError, OSError) as exc:
        raise ScoreError(f"{path}: not readable XML ({exc})") from exc
    if root.tag != root_tag:
        raise ScoreError(f"{path}: root element is <{root.tag}>, expected <{root_tag}>")
    return root


def _unique_attributes(root: ET.Element, path: Path, tag: str, attribute: str) -> tuple[str, ...]:
    """The ``attribute`` of every ``tag`` child, in order, duplicates dropped with a warning."""
    values: dict[str, None] = {}
    for element in root.iter(tag):
        value = element.get(attribute)
        if not value:
            raise ScoreError(f"{path}: a <{tag}> element has no {attribute} attribute")
        if value in values:
            message = f"{path}: {attribute} {value!r} is listed twice; counted once"
            warnings.warn(message, stacklevel=3)
        values[value] = None
    if not values:
        raise ScoreError(f"{path}: no <{tag}> elements")
    return tuple(values)


def read_ecf(path: str | os.PathLike) -> tuple[str, ...]:
    """Search utterance ids of an ``*.ecf.xml`` file (``<excerpt audio_filename=...>``)."""
    path = Path(path)
    names = _unique_attributes(_parse_xml(path, "ecf"), path, "excerpt", "audio_filename")
    return tuple(dict.fromkeys(utterance_id(name) for name in names))


def read_tlist(path: str | os.PathLike) -> tuple[str, ...]:
    """Query ids of a ``*.tlist.xml`` file (``<term termid=...>``)."""
    path = Path(path)
    return _unique_attributes(_parse_xml(path, "termlist"), path, "term", "termid")


def read_rttm(path: str | os.PathLike) -> dict[str, frozenset[str]]:
    """Occurrences in an ``*.rttm`` file: query id -> utterance ids with a LEXEME line for it.

    Only ``LEXEME <file> <chan> <tbeg> <dur> <query_id> ...`` lines count; other line types
    and ``;;`` comments are skipped.
    """
    occurrences: dict[str, set[str]] = {}
    for number, fields in split_lines(path, "rttm"):
        if fields[0] != "LEXEME":
            continue
        if len(fields) < 6:
            raise ScoreError(
                f"{path}:{number}: LEXEME line has {len(fields)} fields, expected "
                "LEXEME <file> <chan> <tbeg> <dur> <query_id> ..."
            )
        occurrences.setdefault(fields[5], set()).add(utterance_id(fields[1]))
    return {query: frozenset(files) for query, files in occurrences.items()}


def load_groundtruth(directory: str | os.PathLike) -> GroundTruth:
    """Read the ecf, tlist and rttm files of a ground truth directory."""
    ecf, rttm, tlist = find_groundtruth(directory)
    return GroundTruth(files=read_ecf(ecf), queries=read_tlist(tlist), occurrences=read_rttm(rttm))


def scored_queries(truth: GroundTruth) -> tuple[str, ...]:
    """The tlist queries occurring in at least one ecf file, tlist order (the others are dropped).

    Raises:
        ScoreError: no query occurs in an ecf file (nothing can be scored).
    """
    files = set(truth.files)
    kept = tuple(q for q in truth.queries if not files.isdisjoint(truth.occurrences.get(q, ())))
    if not kept:
        raise ScoreError(
            f"ground truth: none of the {len(truth.queries)} tlist queries occurs in an ecf file"
        )
    return kept


def read_stdlist(path: str | os.PathLike) -> Iterator[tuple[str, str, float, bool]]:
    """Stream the trials of an ``*.stdlist.xml`` file as (query, utterance, score, decision YES).

    Raises:
        ScoreError: missing or malformed file, or a term without a finite score or with a
            decision other than YES/NO.
    """
    path = Path(path)
    if not path.is_file():
        raise ScoreError(f"{path}: stdlist file not found")
    query, root = None, None
    try:
        for event, element in ET.iterparse(path, events=("start", "end")):
            if root is None:  # the first event: the root element opens
                root = element.tag
                if root != "stdlist":
                    raise ScoreError(f"{path}: root element is <{root}>, expected <stdlist> "
                                     "(an s3prl benchmark.stdlist.xml)")
            if event == "start" and element.tag == "detected_termlist":
                query = element.get("termid")
                if not query:
                    raise ScoreError(f"{path}: a <detected_termlist> has no termid attribute")
            elif event == "end" and element.tag == "term":
                if query is None:
                    raise ScoreError(f"{path}: a <term> lies outside any <detected_termlist>")
                yield (query, *_stdlist_term(path, query, element))
            elif event == "end" and element.tag == "detected_termlist":
                element.clear()  # keep memory flat on large stdlists
                query = None
    except ET.ParseError as exc:
        raise ScoreError(f"{path}: not readable XML ({exc})") from exc


def _stdlist_term(path: Path, query: str, element: ET.Element) -> tuple[str, float, bool]:
    name, score, decision = element.get("file"), element.get("score"), element.get("decision")
    try:
        value = float(score)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        value = math.nan
    if not name or not math.isfinite(value) or decision not in ("YES", "NO"):
        where = f"{path}: term of query {query!r}, file {name!r}"
        if not name:
            raise ScoreError(f"{where}: no file attribute")
        if not math.isfinite(value):
            raise ScoreError(f"{where}: score {score!r} is not a finite number")
        raise ScoreError(f"{where}: decision {decision!r} is neither YES nor NO")
    return utterance_id(name), value, decision == "YES"


def build_trials(
    truth: GroundTruth,
    detections: Iterable[tuple[str, str, float, bool]],
    default_score: float = DEFAULT_SCORE,
    source: str = "stdlist",
) -> Trials:
    """Place the stdlist's trials on the query x utterance grid of ``truth``.

    Trials of unknown queries or utterances are ignored with a warning naming ``source``.

    Raises:
        ScoreError: no query has a target, the default score is not finite, the stdlist
            gives one trial twice, or it matches no trial of the ground truth at all (a stdlist
            of another set would otherwise score MTWV 0 with only a warning).
    """
    if not math.isfinite(default_score):
        raise ScoreError(f"default score {default_score!r}: expected a finite number (SUPERB: -10)")
    col = {f: j for j, f in enumerate(truth.files)}
    kept = scored_queries(truth)
    row = {q: i for i, q in enumerate(kept)}
    dropped = tuple(q for q in truth.queries if q not in row)
    shape = (len(kept), len(truth.files))
    scores = np.full(shape, float(default_score))
    decisions = np.zeros(shape, dtype=bool)
    seen = np.zeros(shape, dtype=bool)
    targets = np.zeros(shape, dtype=bool)
    for q, i in row.items():
        targets[i, [col[f] for f in truth.occurrences[q] if f in col]] = True
    known_queries = set(truth.queries)
    unknown, matched, examples = 0, 0, []
    for query, name, score, decision in detections:
        if query not in known_queries or name not in col:
            unknown += 1
            examples += [f"{query}/{name}"] if len(examples) < 3 else []
            continue
        matched += 1
        if query not in row:  # a dropped query: it has no targets, so it is not scored
            continue
        i, j = row[query], col[name]
        if seen[i, j]:
            raise ScoreError(f"{source}: trial query {query!r} x file {name!r} is given twice")
        seen[i, j], scores[i, j], decisions[i, j] = True, score, decision
    if not matched:
        named = f"; it names e.g. {', '.join(examples)}" if examples else "; it lists no trial"
        raise ScoreError(
            f"{source}: matches no trial of the ground truth ({len(truth.queries)} queries x "
            f"{len(truth.files)} files){named}: a stdlist of another data set or split?"
        )
    if unknown:
        warnings.warn(
            f"{source}: {unknown} trials name a query or file absent from the ground truth "
            f"({', '.join(examples)}{', ...' if unknown > len(examples) else ''}); ignored",
            stacklevel=2,
        )
    return Trials(kept, truth.files, scores, decisions, targets, int(seen.sum()), dropped)


def _miss_fa_weights(targets: np.ndarray, beta: float) -> tuple[np.ndarray, np.ndarray]:
    """Per-trial weights whose sums over missed targets / detected non-targets are
    P_miss and beta * P_fa: 1 / (Q targets_q) and beta / (Q non-targets_q), shape (Q, N)."""
    n_queries, n_files = targets.shape
    n_targets = targets.sum(axis=1, keepdims=True)
    n_nontargets = n_files - n_targets
    if (n_targets == 0).any():
        raise ValueError("every query needs at least one target (drop the others first)")
    miss = np.where(targets, 1.0 / (n_queries * n_targets), 0.0)
    fa_rate = np.where(n_nontargets > 0, beta / (n_queries * np.maximum(n_nontargets, 1)), 0.0)
    return miss, np.where(targets, 0.0, fa_rate)


def miss_fa(detected: np.ndarray, targets: np.ndarray) -> tuple[float, float]:
    """(P_miss, P_fa) of boolean ``detected`` against ``targets``, both (queries, files)."""
    miss, fa = _miss_fa_weights(targets, beta=1.0)
    return float(miss[~detected].sum()), float(fa[detected].sum())


def twv(detected: np.ndarray, targets: np.ndarray, beta: float = BETA) -> float:
    """TWV = 1 - (P_miss + beta P_fa) of boolean ``detected``, shape (queries, files)."""
    p_miss, p_fa = miss_fa(detected, targets)
    return 1.0 - (p_miss + beta * p_fa)


def max_twv(scores: np.ndarray, targets: np.ndarray, beta: float = BETA) -> tuple[float, float]:
    """(MTWV, threshold): TWV maximised over t in {-inf} and every distinct score.

    ``scores`` (float) and ``targets`` (bool) are (queries, files); every query needs a target.
    A trial is detected iff score > t. One sort and two cumulative sums: at the threshold equal
    to a distinct score, the trials up to the last one holding that score are undetected.
    """
    miss, fa = _miss_fa_weights(targets, beta)
    order = np.argsort(scores, axis=None, kind="stable")
    ordered = scores.ravel()[order]
    missed = np.cumsum(miss.ravel()[order])
    missed[-1] = 1.0  # nothing detected: every target missed, P_miss is exactly 1 (no round-off)
    # false alarms still detected: suffix sums (not total - prefix, which leaves round-off
    # where nothing is detected)
    false_alarms = np.append(np.cumsum(fa.ravel()[order][::-1])[::-1][1:], 0.0)
    last = np.append(np.flatnonzero(np.diff(ordered)), ordered.size - 1)  # end of each value
    values = 1.0 - (missed[last] + false_alarms[last])
    best = int(np.argmax(values))  # first maximum: the lowest threshold
    if values[best] > 1.0 - beta:  # the sweep starts from (1 - beta, -inf)
        return float(values[best]), float(ordered[last[best]])
    return 1.0 - beta, -math.inf


@dataclass(frozen=True)
class QueryLosses:
    """Per-query detection data from which the MTWV of any multiset of queries follows.

    MTWV is a maximum over thresholds of a mean over queries, so it is not a mean of per-query
    numbers: a bootstrap over queries (:func:`resampled_mtwv`) re-maximises the threshold on each
    resample. TWV(t) of a multiset holding query q ``c_q`` times is
    ``1 - sum_q c_q losses[q, t] / sum_q c_q``, with ``losses[q, t]`` = query q's own
    misses / targets + beta * false alarms / non-targets at t.

    Only ``thresholds`` where a maximum can fall are kept: with non-negative weights, undetecting
    a group of equal scores that holds only non-targets never lowers TWV, so some maximum lies
    at a threshold whose lowest detected group holds a target (the largest distinct score below a
    target's score), or at the highest score (nothing detected). The sweep's start
    (1 - beta, -inf) is added by :func:`resampled_mtwv`.
    """

    thresholds: np.ndarray  # (K,) float64, ascending: detected iff score > threshold
    losses: np.ndarray  # (queries, K) float64
    lowest: np.ndarray  # (queries,) each query's lowest score (a draw's thresholds start there)
    beta: float


def query_losses(scores: np.ndarray, targets: np.ndarray, beta: float = BETA) -> QueryLosses:
    """:class:`QueryLosses` of ``scores`` (float) and ``targets`` (bool), both (queries, files);
    every query needs a target (as in :func:`max_twv`)."""
    n_targets = targets.sum(axis=1)
    if (n_targets == 0).any():
        raise ValueError("every query needs at least one target (drop the others first)")
    values = np.unique(scores)  # ascending distinct scores
    below = np.searchsorted(values, scores[targets], side="left") - 1  # largest value < a target
    thresholds = np.union1d(values[below[below >= 0]], values[-1:])
    n_nontargets = targets.shape[1] - n_targets
    losses = np.empty((scores.shape[0], thresholds.size))
    for q in range(scores.shape[0]):
        hits = np.sort(scores[q, targets[q]])
        others = np.sort(scores[q, ~targets[q]])
        missed = np.searchsorted(hits, thresholds, side="right")  # targets with score <= t
        alarms = others.size - np.searchsorted(others, thresholds, side="right")  # non-targets > t
        fa = beta * alarms / n_nontargets[q] if n_nontargets[q] else 0.0
        losses[q] = missed / n_targets[q] + fa
    return QueryLosses(thresholds, losses, scores.min(axis=1), float(beta))


def resampled_mtwv(losses: QueryLosses, counts: np.ndarray) -> np.ndarray:
    """MTWV of each resampled query set, the threshold re-maximised on each.

    ``counts`` is (draws, queries): how often each query is in each draw. Row b gives exactly
    ``max_twv(scores[idx], targets[idx])`` for the query indices ``idx`` that row counts (up to
    float round-off). Returns (draws,) float64.
    """
    counts = np.asarray(counts, dtype=np.float64)
    n_queries = counts.sum(axis=1, keepdims=True)
    values = 1.0 - (counts @ losses.losses) / n_queries
    # a threshold under every drawn score detects all: that is the sweep's start, (1 - beta, -inf)
    lowest = np.where(counts > 0, losses.lowest, np.inf).min(axis=1, keepdims=True)
    values = np.where(losses.thresholds >= lowest, values, -np.inf)
    return np.maximum(values.max(axis=1), 1.0 - losses.beta)


QUERY_LOSSES_FILE = "per_query.npz"  # what a SUPERB QbE score stage keeps beside the stdlist
_QUERY_LOSS_ARRAYS = ("queries", "thresholds", "losses", "lowest", "beta")


def save_query_losses(path: str | os.PathLike, losses: QueryLosses, queries: Sequence[str]) -> None:
    """Write ``losses`` of the queries ``queries`` (ids, row order) as a plain ``.npz`` (no pickles),
    atomically."""
    with atomic_open(path, "wb") as handle:
        np.savez(handle, queries=np.asarray(queries, dtype=str), thresholds=losses.thresholds,
                 losses=losses.losses, lowest=losses.lowest, beta=np.float64(losses.beta))


def load_query_losses(path: str | os.PathLike) -> tuple[QueryLosses, tuple[str, ...]]:
    """Read what :func:`save_query_losses` wrote: (losses, query ids).

    Raises:
        ScoreError: the file is missing, not an npz of these arrays, or inconsistent.
    """
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {name: data[name] for name in _QUERY_LOSS_ARRAYS}
    except FileNotFoundError:
        raise ScoreError(f"{path}: per-query QbE file not found (the QbE score stage writes it)") from None
    except (OSError, ValueError, KeyError) as exc:  # KeyError: an array is missing
        raise ScoreError(f"{path}: not a per-query QbE file ({exc})") from None
    queries, thresholds, losses, lowest = (arrays[n] for n in _QUERY_LOSS_ARRAYS[:4])
    n = queries.shape[0] if queries.ndim == 1 else -1
    shapes_ok = n > 0 and thresholds.ndim == 1 and losses.shape == (n, thresholds.size) and lowest.shape == (n,)
    if not shapes_ok or arrays["beta"].shape != () or not all(
            np.issubdtype(a.dtype, np.floating) and np.isfinite(a).all() for a in (losses, lowest, arrays["beta"])):
        raise ScoreError(f"{path}: per-query QbE file has inconsistent or non-finite arrays")
    return QueryLosses(thresholds.astype(np.float64), losses.astype(np.float64), lowest.astype(np.float64),
                       float(arrays["beta"])), tuple(str(q) for q in queries)


def score_trials(
    trials: Trials, default_score: float = DEFAULT_SCORE, beta: float = BETA
) -> QbeScore:
    """MTWV, its threshold and error rates, and actTWV of ``trials``."""
    best, threshold = max_twv(trials.scores, trials.targets, beta)
    p_miss, p_fa = miss_fa(trials.scores > threshold, trials.targets)
    return QbeScore(
        max_twv=best,
        threshold=threshold,
        p_miss=p_miss,
        p_fa=p_fa,
        act_twv=twv(trials.decisions, trials.targets, beta),
        queries=len(trials.queries),
        dropped_queries=len(trials.dropped_queries),
        files=len(trials.files),
        trials_given=trials.given,
        trials_default=trials.scores.size - trials.given,
        default_score=float(default_score),
    )


def qbe_score(
    stdlist: str | os.PathLike,
    groundtruth_dir: str | os.PathLike,
    default_score: float = DEFAULT_SCORE,
    per_query: str | os.PathLike | None = None,
) -> QbeScore:
    """Score an s3prl ``benchmark.stdlist.xml`` against a QUESST ground truth directory; with
    ``per_query``, also write the per-query data of a bootstrap over queries there
    (:func:`save_query_losses`)."""
    truth = load_groundtruth(groundtruth_dir)
    trials = build_trials(truth, read_stdlist(stdlist), default_score, source=str(stdlist))
    if per_query is not None:
        save_query_losses(per_query, query_losses(trials.scores, trials.targets), trials.queries)
    return score_trials(trials, default_score)


# -- the official scorer, when the QUESST 2014 package is at hand --------------------------

_MAX_TWV = re.compile(r"maxTWV:\s*(\S+)")


def parse_official_output(text: str, source: str = "score-TWV-Cnxe.sh") -> float:
    """maxTWV from the official tool's output (its first, "Main Results" line:
    ``actTWV: <v>  maxTWV: <v>  Threshold: <t>``)."""
    match = _MAX_TWV.search(text)
    try:
        return float(match.group(1))  # type: ignore[union-attr]
    except (AttributeError, ValueError):
        tail = text.strip().splitlines()[-5:]
        raise ScoreError(f"{source}: no maxTWV value in its output: {' | '.join(tail)!r}") from None


def official_mtwv(
    quesst_root: str | os.PathLike,
    stdlist: str | os.PathLike,
    groundtruth_name: str,
    default_score: float = DEFAULT_SCORE,
    timeout_s: float = 3600.0,
) -> float | None:
    """MTWV from the official ``scoring/score-TWV-Cnxe.sh`` of a QUESST 2014 root.

    Runs ``score-TWV-Cnxe.sh <stdlist dir> <groundtruth_name> <default_score>`` in the
    scoring directory (it needs Java, and writes score.out, DET.pdf and TWV.pdf beside the
    stdlist). Returns None when the script is absent.

    Raises:
        ScoreError: the script ran but printed no maxTWV (its output tail is in the message).
    """
    script = Path(quesst_root) / "scoring" / "score-TWV-Cnxe.sh"
    if not script.is_file():
        return None
    stdlist_dir = str(Path(stdlist).resolve().parent)
    command = ["bash", script.name, stdlist_dir, groundtruth_name, f"{default_score:g}"]
    try:
        done = subprocess.run(
            command, cwd=script.parent, capture_output=True, text=True, timeout=timeout_s
        )
    except subprocess.TimeoutExpired:
        raise ScoreError(f"{script}: did not finish within {timeout_s:g} s") from None
    source = f"{script} (exit {done.returncode})"
    return parse_official_output(done.stdout + done.stderr, source=source)


# -- CLI -----------------------------------------------------------------------------------


def as_json(score: QbeScore) -> dict:
    """JSON has no infinities: a threshold of -inf becomes null."""
    return {
        key: None if isinstance(value, float) and not math.isfinite(value) else value
        for key, value in asdict(score).items()
    }


def _finite_float(text: str) -> float:
    value = float(text)  # argparse reports a ValueError as "invalid _finite_float value"
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


_finite_float.__name__ = "number"  # argparse names the type in "invalid number value: 'x'"


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(
        prog="score-s3prl qbe-score",
        description="MTWV (and actTWV) of a QbE stdlist against QUESST 2014 ground truth.",
    )
    parser.add_argument("stdlist", help="system output, e.g. s3prl's benchmark.stdlist.xml")
    parser.add_argument("groundtruth", help="directory with one *.ecf.xml, *.rttm and *.tlist.xml")
    parser.add_argument(
        "--default-score",
        type=_finite_float,
        default=DEFAULT_SCORE,
        help="score of the trials the stdlist lacks (SUPERB: -10)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    args = parser.parse_args(argv)
    score = qbe_score(args.stdlist, args.groundtruth, args.default_score)
    if args.json:
        print(json.dumps(as_json(score), indent=2))
        return 0
    print(
        f"Scores: {score.queries * score.files} ({score.queries} model x {score.files} test)  "
        f"given: {score.trials_given}  default({score.default_score:g}): {score.trials_default}  "
        f"dropped models: {score.dropped_queries}"
    )
    print(
        f"actTWV: {score.act_twv:.8g}  maxTWV: {score.max_twv:.8g}  "
        f"Threshold: {score.threshold:.8g}"
    )
    return 0
