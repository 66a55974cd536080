"""WER / PER recomputed from s3prl's hyp/ref transcript files."""

import random

import pytest
from s3prl.downstream.ctc.metric import wer as s3prl_wer

from score_s3prl.errors import ScoreError
from score_s3prl.superb.metrics import (
    error_rate,
    file_error_rate,
    read_transcripts,
    recipe_error_rate,
    transcript_paths,
)


def write(path, lines):
    path.write_text("".join(f"{line}\n" for line in lines))
    return path


def test_read_transcripts_keeps_empty_hypotheses(tmp_path):
    path = write(tmp_path / "h.ark", ["u1 A B", "u2 ", "", "u3 C  D"])
    assert read_transcripts(path) == {"u1": ["A", "B"], "u2": [], "u3": ["C", "D"]}


def test_read_transcripts_errors_name_the_file(tmp_path):
    with pytest.raises(ScoreError, match="missing.ark.*not found"):
        read_transcripts(tmp_path / "missing.ark")
    with pytest.raises(ScoreError, match=r"dup.ark:2: utterance 'u1' appears twice"):
        read_transcripts(write(tmp_path / "dup.ark", ["u1 A", "u1 B"]))


def test_word_error_rate_known_case():
    refs = {"u1": "a b c d".split(), "u2": "e f".split()}
    hyps = {"u1": "a x c".split(), "u2": "e f g".split()}
    # u1: b->x substitution + d deleted = 2 edits; u2: g inserted = 1 edit; 6 reference words
    result = error_rate(hyps, refs)
    assert (result.edits, result.ref_tokens, result.utterances) == (3, 6, 2)
    assert result.percent == pytest.approx(50.0)


def test_missing_hypothesis_counts_as_deletions_with_warning():
    refs = {"u1": "a b".split(), "u2": "c d e".split()}
    hyps = {"u1": "a b".split(), "extra": ["z"]}
    with pytest.warns(UserWarning) as record:
        result = error_rate(hyps, refs, source="run/test-hyp.ark")
    messages = [str(w.message) for w in record]
    assert any("no hypothesis for 1 of 2" in m and "u2" in m for m in messages)
    assert any("have no reference" in m and "extra" in m for m in messages)
    # u2's three reference words are all deleted; the extra hypothesis is ignored
    assert (result.edits, result.ref_tokens) == (3, 5)
    assert result.percent == pytest.approx(60.0)


def test_empty_references_are_an_error():
    with pytest.raises(ScoreError, match="no tokens"):
        error_rate({"u1": ["a"]}, {"u1": []})


def test_agrees_with_s3prl_metric_on_random_transcripts():
    rng = random.Random(0)
    vocab = ["aa", "b", "ch", "d", "eh"]
    refs = {f"u{i}": rng.choices(vocab, k=rng.randint(1, 12)) for i in range(40)}
    hyps = {
        utt: [t for t in ref if rng.random() > 0.2] + rng.choices(vocab, k=rng.randint(1, 3))
        for utt, ref in refs.items()
    }
    ours = error_rate(hyps, refs).percent
    theirs = 100 * s3prl_wer([" ".join(hyps[u]) for u in refs], [" ".join(refs[u]) for u in refs])
    assert ours == pytest.approx(theirs, rel=1e-12)


def test_recipe_file_names_and_phone_error_rate(tmp_path):
    assert transcript_paths(tmp_path, "asr", "test-clean") == (
        tmp_path / "test-clean-noLM-hyp.ark",
        tmp_path / "test-clean-noLM-ref.ark",
    )
    assert transcript_paths(tmp_path, "asr", "dev-clean", lm=True)[0].name == "dev-clean-LM-hyp.ark"
    hyp, ref = transcript_paths(tmp_path, "pr", "test")
    assert (hyp.name, ref.name) == ("test-hyp.ark", "test-ref.ark")
    write(ref, ["1089-1 hh ah l ow", "1089-2 w er l d"])
    write(hyp, ["1089-1 hh eh l ow", "1089-2 w er d"])
    # one substitution (ah->eh) and one deletion (l) over 8 reference phones
    result = recipe_error_rate(tmp_path, "pr", "test")
    assert result.percent == pytest.approx(25.0)
    assert file_error_rate(hyp, ref) == result


def test_recipe_error_rate_missing_file_names_it(tmp_path):
    with pytest.raises(ScoreError, match="test-clean-noLM-hyp.ark.*not found.*-m evaluate"):
        recipe_error_rate(tmp_path, "asr", "test-clean")
    with pytest.raises(ScoreError, match="qbe"):
        transcript_paths(tmp_path, "qbe", "test")
