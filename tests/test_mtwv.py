"""Native MTWV against hand-computed cases, the QUESST file formats, the CLI and the official
scorer's output."""

import json
import math
import warnings
from pathlib import Path

import numpy as np
import pytest

from score_s3prl.errors import ScoreError
from score_s3prl.superb import mtwv
from score_s3prl.superb.mtwv import (
    BETA,
    EFFECTIVE_PRIOR,
    find_groundtruth,
    max_twv,
    official_mtwv,
    parse_official_output,
    qbe_score,
    twv,
)

ECF = """<?xml version="1.0" encoding="UTF-8"?>
<ecf source_signal_duration="20.0" language="multiple" version="test">
<excerpt audio_filename="Audio/f1.wav" channel="1" tbeg="0.000" dur="5.0" source_type="splitcts"/>
<excerpt audio_filename="Audio/f2.wav" channel="1" tbeg="0.000" dur="5.0" source_type="splitcts"/>
<excerpt audio_filename="Audio/f3.wav" channel="1" tbeg="0.000" dur="5.0" source_type="splitcts"/>
<excerpt audio_filename="Audio/f4.wav" channel="1" tbeg="0.000" dur="5.0" source_type="splitcts"/>
</ecf>
"""
TLIST = """<?xml version="1.0" encoding="UTF-8"?>
<termlist ecf_filename="t.ecf.xml" language="multiple" encoding="UTF-8" version="test">
<term termid="q1"><termtext>q1</termtext></term>
<term termid="q2"><termtext>q2</termtext></term>
<term termid="q3"><termtext>q3</termtext></term>
</termlist>
"""
# q1 occurs in f1 (twice: still one target trial) and f2; q2 in f3; q3 nowhere (dropped)
RTTM = """;; test ground truth
SPEAKER f1 1 0.000 5.000 <NA> <NA> spk <NA>
LEXEME f1 1 0.500 0.600 q1 <NA> <NA> <NA>
LEXEME f1 1 2.500 0.600 q1 <NA> <NA> <NA>
LEXEME f2 1 1.000 0.500 q1 <NA> <NA> <NA>
LEXEME f3 1 3.000 0.700 q2 <NA> <NA> <NA>
"""
# (query, file, score, decision) as s3prl writes them; q1 x f4 is missing (default -10)
TERMS = {
    "q1": [("f1", 3.0, "YES"), ("f2", 1.0, "NO"), ("f3", 1.0, "NO")],
    "q2": [("f1", 0.5, "NO"), ("f2", 2.0, "YES"), ("f3", 2.0, "YES"), ("f4", -1.0, "NO")],
    "q3": [("f1", 5.0, "YES")],
}


def stdlist_xml(terms):
    lists = []
    for query, entries in terms.items():
        rows = "".join(
            f'<term file="{f}" channel="1" tbeg="0.000" dur="0.00" score="{s:.4f}" '
            f'decision="{d}"/>\n'
            for f, s, d in entries
        )
        lists.append(
            f'<detected_termlist termid="{query}" term_search_time="1.0" oov_term_count="1">\n'
            f"{rows}</detected_termlist>\n"
        )
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<stdlist termlist_filename="benchmark.stdlist.xml" '
        'indexing_time="1.00" language="english" index_size="1" system_id="benchmark">\n'
        + "".join(lists)
        + "</stdlist>\n"
    )


def write_groundtruth(directory: Path) -> Path:
    """The hand-built QUESST ground truth above (ecf, tlist, rttm) in a new ``directory``."""
    directory.mkdir()
    (directory / "t.ecf.xml").write_text(ECF)
    (directory / "t.tlist.xml").write_text(TLIST)
    (directory / "t.rttm").write_text(RTTM)
    return directory


@pytest.fixture
def groundtruth(tmp_path):
    return write_groundtruth(tmp_path / "groundtruth_test")


@pytest.fixture
def stdlist(tmp_path):
    path = tmp_path / "exp" / "benchmark.stdlist.xml"
    path.parent.mkdir()
    path.write_text(stdlist_xml(TERMS))
    return path


def test_constants_match_the_quesst_tool():
    assert EFFECTIVE_PRIOR == pytest.approx(0.0741289, abs=1e-7)
    assert BETA == pytest.approx(12.49)  # (1 - p) / p = 0.9992 / 0.08


def test_hand_computed_case(groundtruth, stdlist):
    # Kept queries: q1 (targets f1 f2, non-targets f3 f4) and q2 (target f3, non-targets
    # f1 f2 f4); q3 has no target and is dropped. q1 x f4 is missing: score -10.
    # TWV(t) = 1 - [(miss1/2 + miss2/1)/2 + beta (fa1/2 + fa2/3)/2], detected iff score > t:
    #   t=-inf: P_miss 0,    P_fa 1              -> 1 - beta          = -11.49
    #   t=-10:  P_miss 0,    P_fa (1/2 + 1)/2    -> 1 - 0.75 beta     = -8.3675
    #   t=-1:   P_miss 0,    P_fa (1/2 + 2/3)/2  -> 1 - 7/12 beta     = -6.285833
    #   t=0.5:  P_miss 0,    P_fa (1/2 + 1/3)/2  -> 1 - 5/12 beta     = -4.204167
    #   t=1.0:  q1's f2 (target) and f3 (non-target) tie at 1.0: both undetected;
    #           P_miss (1/2)/2,   P_fa (1/3)/2   -> 0.75 - beta/6     = -1.331667
    #   t=2.0:  P_miss (1/2 + 1)/2, P_fa 0       -> 0.25   <- maximum
    #   t=3.0:  nothing detected                 -> 0
    # actTWV (YES: q1 f1, q2 f2, q2 f3) = TWV(1.0) = 0.75 - beta/6.
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # q3's trial is dropped silently: it is a known query
        score = qbe_score(stdlist, groundtruth)
    assert score.max_twv == pytest.approx(0.25, abs=1e-12)
    assert score.threshold == 2.0
    assert (score.p_miss, score.p_fa) == (pytest.approx(0.75), 0.0)
    assert score.act_twv == pytest.approx(0.75 - BETA / 6, abs=1e-12)
    assert (score.queries, score.dropped_queries, score.files) == (2, 1, 4)
    # 7 of the 8 kept trials are given (q3's trial belongs to a dropped query), 1 default
    assert (score.trials_given, score.trials_default) == (7, 1)


def test_default_score_enters_the_sweep(groundtruth, stdlist):
    # With default +5 the missing q1 x f4 (a non-target) outranks every target, so every
    # threshold below 5 pays its false alarm, beta (1/2)/2 = beta/4: the former best becomes
    # TWV(2.0) = 0.25 - beta/4 < 0, and the best is TWV(5.0) = 0 (nothing detected).
    score = qbe_score(stdlist, groundtruth, default_score=5.0)
    assert score.max_twv == pytest.approx(0.0, abs=1e-12) and score.threshold == 5.0
    assert score.trials_default == 1


def test_sweep_starts_from_one_minus_beta_and_keeps_the_lowest_threshold():
    # beta = 1, one query, target scored 1.0, non-target 2.0:
    # t=-inf: 1 - (0 + 1) = 0; t=1: 1 - (1 + 1) = -1; t=2: 1 - (1 + 0) = 0.
    # The maximum 0 is reached first at -inf: equal later values do not replace it.
    assert max_twv(np.array([[1.0, 2.0]]), np.array([[True, False]]), beta=1.0) == (0.0, -math.inf)
    # targets at 4 and 2, non-targets at 1 and 3 (beta = 1, 2 targets, 2 non-targets):
    # t=1: 1 - (0 + 1/2) = 0.5; t=2: 1 - (1/2 + 1/2) = 0; t=3: 1 - (1/2 + 0) = 0.5; t=4: 0.
    scores, targets = np.array([[4.0, 1.0, 2.0, 3.0]]), np.array([[True, False, True, False]])
    assert max_twv(scores, targets, beta=1.0) == (0.5, 1.0)


def test_max_twv_matches_brute_force_with_ties():
    rng = np.random.default_rng(0)
    targets = rng.random((7, 40)) < 0.15
    targets[np.arange(7), rng.integers(0, 40, 7)] = True  # every query has a target
    targets[3] = True  # a query occurring everywhere: no non-targets, P_fa term 0
    targets[3, :] = True
    scores = np.round(rng.normal(size=(7, 40)) + 1.5 * targets, 1)  # rounding makes ties
    best, threshold = max_twv(scores, targets)
    candidates = [-math.inf] + sorted(set(scores.ravel()))
    values = [twv(scores > t, targets) for t in candidates]
    assert best == pytest.approx(max(values), abs=1e-12)
    assert threshold == candidates[int(np.argmax(values))]


def test_perfect_and_useless_systems():
    targets = np.array([[True, False, False], [False, False, True]])
    assert max_twv(targets.astype(float), targets) == (1.0, 0.0)
    assert max_twv(np.zeros((2, 3)), targets)[0] == 0.0  # one score: best is detecting none


def test_groundtruth_dir_errors_name_the_directory(tmp_path, groundtruth):
    with pytest.raises(ScoreError, match="nowhere.*not found"):
        find_groundtruth(tmp_path / "nowhere")
    (groundtruth / "t.tlist.xml").unlink()
    expected = r"groundtruth_test: expected exactly one \*\.tlist\.xml file, found no"
    with pytest.raises(ScoreError, match=expected):
        find_groundtruth(groundtruth)
    (groundtruth / "t.tlist.xml").write_text(TLIST)
    (groundtruth / "u.rttm").write_text(RTTM)
    expected = r"groundtruth_test: .*\*\.rttm file, found 2 \(t.rttm, u.rttm\)"
    with pytest.raises(ScoreError, match=expected):
        find_groundtruth(groundtruth)


def test_bad_inputs_are_clear_errors(tmp_path, groundtruth, stdlist):
    with pytest.raises(ScoreError, match="nope.stdlist.xml: stdlist file not found"):
        qbe_score(tmp_path / "nope.stdlist.xml", groundtruth)
    stdlist.write_text(stdlist_xml(TERMS)[:-20])
    with pytest.raises(ScoreError, match="benchmark.stdlist.xml: not readable XML"):
        qbe_score(stdlist, groundtruth)
    stdlist.write_text(stdlist_xml({"q1": [("f1", 1.0, "YES"), ("f1", 2.0, "NO")]}))
    with pytest.raises(ScoreError, match="'q1' x file 'f1' is given twice"):
        qbe_score(stdlist, groundtruth)
    stdlist.write_text(stdlist_xml({"q1": [("f1", 1.0, "MAYBE")]}))
    with pytest.raises(ScoreError, match="decision 'MAYBE'"):
        qbe_score(stdlist, groundtruth)
    text = stdlist_xml({"q1": [("f1", 1.0, "NO")]})
    stdlist.write_text(text.replace('score="1.0000"', 'score="high"'))
    with pytest.raises(ScoreError, match="file 'f1': score 'high' is not a finite number"):
        qbe_score(stdlist, groundtruth)
    (groundtruth / "t.rttm").write_text("LEXEME f1 1 0.5\n")
    with pytest.raises(ScoreError, match=r"t.rttm:1: LEXEME line has 4 fields"):
        qbe_score(stdlist, groundtruth)
    (groundtruth / "t.rttm").write_text(";; nothing\n")
    with pytest.raises(ScoreError, match="none of the 3 tlist queries"):
        qbe_score(stdlist, groundtruth)


def test_unknown_trials_are_ignored_with_a_warning(groundtruth, stdlist):
    terms = dict(TERMS, qX=[("f1", 9.0, "YES")])
    terms["q2"] = TERMS["q2"] + [("f9", 9.0, "YES")]
    stdlist.write_text(stdlist_xml(terms))
    with pytest.warns(UserWarning, match="2 trials name a query or file absent.*qX/f1"):
        score = qbe_score(stdlist, groundtruth)
    assert score.max_twv == pytest.approx(0.25)


def test_cli_prints_like_the_official_tool(groundtruth, stdlist, capsys):
    assert mtwv.main([str(stdlist), str(groundtruth)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("Scores: 8 (2 model x 4 test)  given: 7  default(-10): 1")
    assert parse_official_output(lines[1]) == pytest.approx(0.25)
    assert lines[1] == f"actTWV: {0.75 - BETA / 6:.8g}  maxTWV: 0.25  Threshold: 2"
    assert mtwv.main([str(stdlist), str(groundtruth), "--json", "--default-score", "-5"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["max_twv"] == pytest.approx(0.25) and result["default_score"] == -5.0


OFFICIAL_SAMPLE = """Loading tlist file: groundtruth_quesst14_dev/quesst14_dev.tlist.xml ...  Done (size: 560)
Loading ecf file: groundtruth_quesst14_dev/quesst14.ecf.xml ...  Done (size: 12492)
Loading rttm file: groundtruth_quesst14_dev/quesst14_dev.rttm ...  Done (size: 1123)
Loading stdlist file: /runs/qbe/benchmark.stdlist.xml ... Done
Scores: 6995520 (560 model x 12492 test)  given: 1234567  default(-10.0): 5760953  minScore: -10.0  maxScore: 6.1

Main Results:

actTWV: 0.0581  maxTWV: 0.0736412  Threshold: 2.3141
actCnxe: 3.21  minCnxe: 0.97

Model-dependent calibration Results:

Upper-bound TWV (model-dependent offset)  -  actTWV: 0.31  maxTWV: 0.31  Threshold: 0.0
"""


def test_parse_official_output_reads_the_main_result():
    assert parse_official_output(OFFICIAL_SAMPLE) == pytest.approx(0.0736412)
    with pytest.raises(ScoreError, match="score-TWV-Cnxe.sh: no maxTWV.*Exception"):
        parse_official_output("Exception in thread main\n")


def test_official_mtwv_absent_and_present(tmp_path, stdlist):
    assert official_mtwv(tmp_path, stdlist, "groundtruth_quesst14_dev") is None
    scoring = tmp_path / "scoring"
    scoring.mkdir()
    # a stand-in for the official script: checks its arguments, prints the tool's output
    (scoring / "sample.out").write_text(OFFICIAL_SAMPLE)
    (scoring / "score-TWV-Cnxe.sh").write_text(
        f'[ "$1" = "{stdlist.parent}" ] && [ "$2" = gt ] && [ "$3" = -10 ] && cat sample.out\n'
    )
    assert official_mtwv(tmp_path, stdlist, "gt") == pytest.approx(0.0736412)
    with pytest.raises(ScoreError, match=r"exit 1\): no maxTWV"):
        official_mtwv(tmp_path, stdlist, "other")


def test_nothing_detected_scores_exactly_zero():
    # 2 queries with 1 and 3 targets among 7 files: 1/2 + 3 * 1/6 sums to 0.9999999999999999
    # in floating point, so the all-missed end of the sweep must be exact.
    targets = np.zeros((2, 7), dtype=bool)
    targets[0, :1] = targets[1, :3] = True
    scores = np.where(targets, 0.0, 1.0)  # every non-target outranks every target
    value, threshold = max_twv(scores, targets)
    assert value == 0.0 and threshold == 1.0
