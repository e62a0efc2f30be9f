"""Scoring rules against hand-checked cases of the official evaluation code (VQA, POPE, ScienceQA,
GQA, the video QA judge summary) and the offline judge."""

from __future__ import annotations

import pytest

from vllava_jax.eval.judge import OfflineJudge, parse_verdict
from vllava_jax.eval.metrics.gqa import gqa_correct
from vllava_jax.eval.metrics.pope import answer_is_yes, pope_metrics
from vllava_jax.eval.metrics.scienceqa import predicted_index, predicted_letter
from vllava_jax.eval.metrics.video_qa import summarize
from vllava_jax.eval.metrics.textvqa import textvqa_accuracy
from vllava_jax.eval.metrics.vqa import evalai_answer


@pytest.mark.parametrize("raw, normalized", [
    ("Two", "2"),                          # number words become digits
    ("ten dollars", "10 dollars"),
    ("10 dollars", "10 dollars"),
    ("none", "0"),
    ("a dog.", "dog"),                     # trailing period and article go
    ("The Dog", "dog"),
    ("an apple", "apple"),
    ("dont", "don't"),                     # contractions are restored
    ("isnt", "isn't"),
    ("whats", "what's"),
    ("it's", "it 's"),                     # EvalAI's tokenizer splits "'s" before anything else
    ("somebody'd", "somebodyd"),           # the original table's quirk, kept
    ("yes!", "yes"),                       # "!" not next to a space becomes a space
    ("black-and-white", "black and white"),
    ("t - shirt", "t shirt"),              # "-" next to a space is deleted
    ("1,000", "1000"),
    ("3.5", "3.5"),                        # a period before a digit stays
    ("mr. smith", "mr smith"),
    ("hello\nworld", "hello world"),
    ("Is it?", "is it"),
    ("  Red  ", "red"),
])
def test_vqa_normalization(raw, normalized):
    assert evalai_answer(raw) == normalized


def test_textvqa_accuracy_averages_leave_one_out_subsets():
    assert textvqa_accuracy("two", ["2"] * 3 + ["3"] * 7) == pytest.approx(0.9)   # (3 * 2/3 + 7 * 1) / 10
    assert textvqa_accuracy("dog", ["dog"] + ["cat"] * 9) == pytest.approx(0.3)   # 9 subsets with one match
    assert textvqa_accuracy("dog", ["dog"] * 2 + ["cat"] * 8) == pytest.approx(0.6)
    assert textvqa_accuracy("A dog.", ["dog"] * 10) == 1.0
    assert textvqa_accuracy("ten dollars", ["10 dollars"] * 4 + ["$10"] * 6) == 1.0
    assert textvqa_accuracy("horse", ["dog"] * 10) == 0.0
    assert textvqa_accuracy("", ["dog"] * 10) == 0.0


@pytest.mark.parametrize("text, yes", [
    ("Yes, there is a dog in the image.", True),
    ("No, there is no dog.", False),
    ("There is not a dog in the image.", False),
    ("Yes. But it is not clear.", True),   # only the first sentence counts
    ("no.", False),
    ("No,", False),
    ("NO", True),                          # the original only knows "No", "no", "not"
    ("Nope", True),
    ("", True),
])
def test_pope_first_sentence_rule(text, yes):
    assert answer_is_yes(text) is yes


def test_pope_metrics():
    m = pope_metrics(["Yes", "yes", "No", "no"], ["yes", "no", "no", "yes"])
    assert (m["accuracy"], m["precision"], m["recall"], m["f1"], m["yes_ratio"]) == (0.5, 0.5, 0.5, 0.5, 0.5)
    m = pope_metrics(["Yes", "Yes", "Yes", "No"], ["yes", "yes", "no", "no"])
    assert m["accuracy"] == 0.75 and m["precision"] == pytest.approx(2 / 3) and m["recall"] == 1.0
    assert m["f1"] == pytest.approx(0.8) and m["yes_ratio"] == 0.75
    assert pope_metrics(["No"], ["yes"])["f1"] == 0.0   # no positive prediction: 0, not a ZeroDivisionError


@pytest.mark.parametrize("text, letter", [
    ("A", "A"), ("B. Solution A", "B"), ("The answer is C.", "C"),
    ("The answer is A. The answer is B.", "FAILED"), ("b", "FAILED"), ("(A)", "FAILED"), ("A.", "FAILED"),
])
def test_scienceqa_letter(text, letter):
    assert predicted_letter(text) == letter


def test_scienceqa_letter_beyond_the_choices_is_wrong():
    assert predicted_index("C", 3) == 2
    assert predicted_index("C", 2) == -1
    assert predicted_index("FAILED", 5) == -1


def test_gqa_exact_match():
    assert gqa_correct("Yes.", "yes")
    assert gqa_correct("left", "left")
    assert not gqa_correct("a dog", "dog")
    assert not gqa_correct("dogs", "dog")


def test_video_qa_summary_scores_as_the_original():
    verdicts = [{"pred": "yes", "score": 4.8}, {"pred": "no", "score": "2"}, {"pred": "Yes", "score": 5},
                {"malformed": 3, "error": "..."}, {"pred": "maybe", "score": 3}]
    m = summarize(verdicts)
    assert m["count"] == 5 and m["unscorable"] == 1
    assert m["score"] == pytest.approx((4 + 2 + 5 + 0 + 3) / 5)   # int(4.8) == 4; unreadable adds 0
    assert m["accuracy"] == pytest.approx(2 / 3)                  # "maybe" and the unreadable one are left out
    assert (m["yes"], m["no"]) == (2, 1)


def test_parse_verdict():
    assert parse_verdict("{'pred': 'yes', 'score': 4}") == {"pred": "yes", "score": 4}
    assert parse_verdict(" {'pred': 'no', 'score': 0}\n") == {"pred": "no", "score": 0}
    for bad in ("```python\n{'pred': 'yes'}\n```", "[1, 2]", "yes, 4", "", "{'pred': os.system('x')}"):
        with pytest.raises(ValueError):
            parse_verdict(bad)


@pytest.mark.parametrize("answer, pred, match", [
    ("dog", "A dog.", True), ("dog", "the dog is running", True), ("dog", "hotdog", False),
    ("two", "2", True), ("cat", "dog", False), ("dog", "", False),
])
def test_offline_judge(answer, pred, match):
    verdict = OfflineJudge()("what is it", answer, pred)
    assert verdict == ({"pred": "yes", "score": 5} if match else {"pred": "no", "score": 0})
