"""The scores and file layouts of the official evaluation code, on hand-built cases from each rule:
GT-Vision-Lab/VQA vqaEval.py after LLaVA's convert_vqav2_for_submission.py (EvalAIAnswerProcessor),
LLaVA's eval_textvqa.py join and m4c_evaluator.py, the VizWiz evaluator, LLaVA's eval_pope.py with
llava_pope_test.jsonl, and Video-LLaVA's eval_video_qa.py summary. Expected values are worked out
from the official rules by hand (in the comments), not taken from our output."""

from __future__ import annotations

import json

import pytest

from vllava_jax.eval.__main__ import parse_args
from vllava_jax.eval.judge import parse_verdict
from vllava_jax.eval.metrics.textvqa import prompt_question, textvqa_accuracy
from vllava_jax.eval.metrics.video_qa import summarize
from vllava_jax.eval.metrics.vizwiz import vizwiz_accuracy, vizwiz_submission
from vllava_jax.eval.metrics.vqav2 import vqav2_accuracy, vqav2_submission
from vllava_jax.errors import UsageError
from vllava_jax.eval.tasks import registry
from vllava_jax.errors import DataError


def answers(*pairs):
    """The annotation's answer records: (text, count) pairs, each record with its own answer_id."""
    texts = [text for text, count in pairs for _ in range(count)]
    return [{"answer": a, "answer_confidence": "yes", "answer_id": i + 1} for i, a in enumerate(texts)]


@pytest.mark.parametrize("reply, humans, official", [
    ("2", answers(("two", 10)), 0.0),            # unanimous: raw strings compared, "two" is never made "2"
    ("dog", answers(("the dog", 10)), 0.0),      # unanimous: the article stays in the human answer
    ("1000", answers(("1,000", 10)), 0.0),       # unanimous: the comma stays
    ("man's hat", answers(("man's hat", 6), ("hat", 4)), 0.0),  # reply "man 's hat" (EvalAI) vs "man's hat"
    ("x y", answers(("x,y", 5), ("xy", 5)), 1.0),  # "x,y" -> "x y" in vqaEval; EvalAI would drop the comma
    ("a b", answers(("a,b", 5), ("ab", 5)), 1.0),  # "a,b" -> "a b" -> "b" (article), reply "a b" -> "b"
    ("two", answers(("2", 10)), 1.0),            # the reply is still EvalAI-processed: "two" -> "2"
    ("Two", answers(("2", 3), ("3", 7)), 0.9),   # not unanimous: (7 * 1 + 3 * 2/3) / 10
    ("dog", answers(("dog", 1), ("cat", 9)), 0.3),
    ("the dog", answers(("dog", 10)), 1.0),      # EvalAI drops the reply's article
])
def test_vqav2_as_vqaeval_scores_the_submission(reply, humans, official):
    assert vqav2_accuracy(reply, humans) == pytest.approx(official)


def test_vqav2_submission_covers_the_full_test_list():
    preds = {"1": "Two dogs.", "3": "Yes"}
    assert vqav2_submission(preds, [1, 2, 3]) == [{"question_id": 1, "answer": "2 dogs"},
                                                   {"question_id": 2, "answer": ""},
                                                   {"question_id": 3, "answer": "yes"}]


@pytest.mark.parametrize("reply, humans, official", [
    ("man's hat", ["man's hat"] * 6 + ["hat"] * 4, 1.0),   # TextVQA processes both sides alike
    ("2", ["two"] * 10, 1.0),
    ("Nikon", ["nikon"] * 3 + ["canon"] * 7, 0.9),
])
def test_textvqa_processes_reply_and_answers_alike(reply, humans, official):
    assert textvqa_accuracy(reply, humans) == pytest.approx(official)


@pytest.mark.parametrize("prompt, question", [
    ("What brand?\nReference OCR token: Nikon, D40\nAnswer the question using a single word or phrase.", "what brand?"),
    ("Reference OCR token: Nikon\nWhat brand?\nAnswer the question using a single word or phrase.", "what brand?"),
    ("What brand?\nAnswer the question using a single word or phrase.", "what brand?"),
    ("OCR tokens: a b Question: What Is It? Short answer:", "what is it?"),
    ("one line only", None),                      # the original's `assert False`
])
def test_textvqa_question_from_prompt(prompt, question):
    assert prompt_question(prompt) == question


@pytest.mark.parametrize("reply, humans, official", [
    ("2", ["two"] * 10, 0.0),                     # human answers are never normalized
    ("two", ["2"] * 10, 1.0),                     # the reply is
    ("unanswerable", ["unanswerable"] * 10, 1.0),
    ("The dog.", ["dog"] * 2 + ["the dog"] * 8, 0.6),  # reply -> "dog": (2 * 1/3 + 8 * 2/3) / 10
    ("dont", ["don't"] * 10, 1.0),                # EvalAI (straight quote) runs first on the upload
    ("dont", ["don’t"] * 10, 0.0),
    ("somebody’d", ["somebodyd"] * 10, 1.0),      # VizWiz's own (curly) contraction table
])
def test_vizwiz_evaluator(reply, humans, official):
    assert vizwiz_accuracy(reply, [{"answer": a, "answer_confidence": "yes"} for a in humans]) == pytest.approx(
        official)


def test_vizwiz_submission():
    rows = [("VizWiz_test_00000000.jpg", "A Bottle."), ("VizWiz_test_00000001.jpg", "unanswerable")]
    assert vizwiz_submission(rows) == [{"image": "VizWiz_test_00000000.jpg", "answer": "bottle"},
                                       {"image": "VizWiz_test_00000001.jpg", "answer": "unanswerable"}]


def test_video_qa_summary_skips_what_the_original_skips():
    verdicts = [parse_verdict("{'pred': 'yes', 'score': 1e999}"),   # int(inf): OverflowError, skipped
                parse_verdict("{'pred': b'yes', 'score': 3}"),      # "yes" in b"yes": TypeError after the score
                parse_verdict("{'pred': ['no'], 'score': 2}"),      # a list has no .lower()
                {"pred": "yes", "score": float("nan")},             # int(nan): ValueError
                {"pred": "no", "score": 4}]
    cached = [json.loads(json.dumps(v)) for v in verdicts]          # what a rerun reads back from the cache
    for batch in (verdicts, cached):
        m = summarize(batch)
        assert m["count"] == 5 and m["unscorable"] == 4
        assert m["score"] == pytest.approx((3 + 2 + 4) / 5)         # scores read before the failure stay
        assert (m["yes"], m["no"], m["accuracy"]) == (0, 1, 0.0)


def write(path, rows, lines=False):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) if lines else json.dumps(rows))


SUFFIX = "Answer the question using a single word or phrase."


def test_textvqa_published_files_join_on_image_and_question(tmp_path):
    """Two questions share an image id as `question_id`; eval_textvqa.py tells them apart by question."""
    write(tmp_path / "llava_textvqa_val_v051_ocr.jsonl", [
        {"question_id": "003a8ae2ef43b901", "image": "003a8ae2ef43b901.jpg",
         "text": f"what is the brand of this camera?\nReference OCR token: dakota, digital\n{SUFFIX}"},
        {"question_id": "003a8ae2ef43b901", "image": "003a8ae2ef43b901.jpg",
         "text": f"what does the small white text spell?\nReference OCR token: dakota, digital\n{SUFFIX}"}], lines=True)
    write(tmp_path / "TextVQA_0.5.1_val.json", {"dataset_type": "val", "dataset_name": "textvqa", "data": [
        {"question": "what does the small white text spell?", "image_id": "003a8ae2ef43b901", "image_classes": [],
         "question_id": 34603, "answers": ["copenhagen"] * 10, "set_name": "val"},
        {"question": "What is the brand of this camera?", "image_id": "003a8ae2ef43b901", "image_classes": [],
         "question_id": 34602, "answers": ["dakota"] * 10, "set_name": "val"}]})
    task = registry()["textvqa"]
    samples = task.load(tmp_path)
    assert [(s.id, s.answer[0]) for s in samples] == [("34602", "dakota"), ("34603", "copenhagen")]
    records = [{"pred": "Dakota", "answer": samples[0].answer}, {"pred": "dakota", "answer": samples[1].answer}]
    assert task.score(records)[1]["accuracy"] == 0.5


def test_vqav2_test_dev_is_server_scored_with_a_full_submission(tmp_path):
    row = {"question_id": 262144000, "image": "COCO_test2015_000000262144.jpg",
           "text": f"Is the ball flying towards the batter?\n{SUFFIX}", "category": "default"}
    write(tmp_path / "llava_vqav2_mscoco_test-dev2015.jsonl", [row], lines=True)
    write(tmp_path / "llava_vqav2_mscoco_test2015.jsonl", [row, row | {"question_id": 262144001}], lines=True)
    task = registry()["vqav2"]
    samples = task.load(tmp_path)
    assert [s.id for s in samples] == ["262144000"] and samples[0].answer is None
    records = [{"id": "262144000", "pred": "Yes.", "answer": None, "extra": samples[0].extra}]
    assert task.score(records)[1] == {"count": 1, "server_scored": True}
    assert task.submission(records, tmp_path) == [{"question_id": 262144000, "answer": "yes"},
                                                   {"question_id": 262144001, "answer": ""}]


def test_vizwiz_test_questions_and_val_annotations(tmp_path):
    instruction = "When the provided information is insufficient, respond with 'Unanswerable'."
    test = tmp_path / "test"
    write(test / "llava_test.jsonl", [{"question_id": 0, "image": "VizWiz_test_00000000.jpg",
                                       "text": f"What is this?\n{instruction}\n{SUFFIX}"}], lines=True)
    write(test / "val.json", [{"image": "VizWiz_val_00000000.jpg", "question": "x", "answers": []}])
    task = registry()["vizwiz"]
    (sample,) = task.load(test)                                  # val.json beside the test file is ignored
    assert sample.answer is None and sample.media_name == "VizWiz_test_00000000.jpg"
    val = tmp_path / "val"
    write(val / "val.json", [{"image": "VizWiz_val_00000000.jpg", "question": "What is this?",
                              "answers": [{"answer": "soup", "answer_confidence": "yes"}] * 10,
                              "answer_type": "other", "answerable": 1}])
    (sample,) = task.load(val)
    assert sample.text == f"What is this?\n{instruction}\n{SUFFIX}"
    assert task.score([{"pred": "Soup.", "answer": sample.answer}])[1]["accuracy"] == 1.0


def test_pope_llava_questions_paired_with_coco_labels_by_position(tmp_path):
    questions, labels = [], {}
    for category, base in (("adversarial", 0), ("popular", 3000), ("random", 6000)):
        for i, (label, obj) in enumerate((("yes", "dog"), ("no", "cat"))):
            image = f"COCO_val2014_00000000{i}.jpg"
            questions.append({"question_id": base + i + 1, "image": image, "category": category,
                              "text": f"Is there a {obj} in the image?\n{SUFFIX}"})
            labels.setdefault(category, []).append({"question_id": i + 1, "image": image,
                                                    "text": f"Is there a {obj} in the image?", "label": label})
    write(tmp_path / "llava_pope_test.jsonl", questions, lines=True)
    for category, rows in labels.items():
        write(tmp_path / "coco" / f"coco_pope_{category}.json", rows, lines=True)
    task = registry()["pope"]
    samples = task.load(tmp_path)
    assert [s.id for s in samples] == ["1", "2", "3001", "3002", "6001", "6002"]
    assert [s.answer for s in samples] == ["yes", "no"] * 3 and samples[0].text == questions[0]["text"]
    records = [{"pred": p, "answer": s.answer, "missing": False, "extra": s.extra}
               for p, s in zip(["Yes", "No", "Yes", "Yes", "No", "No"], samples)]
    metrics = task.score(records)[1]
    assert (metrics["adversarial"]["accuracy"], metrics["popular"]["accuracy"], metrics["random"]["accuracy"]) == (
        1.0, 0.5, 0.5)
    labels["random"].pop()
    write(tmp_path / "coco" / "coco_pope_random.json", labels["random"], lines=True)
    with pytest.raises(DataError, match="more random questions than"):
        task.load(tmp_path)


@pytest.mark.parametrize("value, ok", [("0/2", (0, 2)), ("1/2", (1, 2)), ("2/2", None), ("a/2", None), ("1", None)])
def test_shard_flag(value, ok):
    argv = ["--task", "msvd_qa", "--model", "m", "--data", "d", "--output", "o", "--shard", value]
    if ok is None:
        with pytest.raises(UsageError, match="--shard"):
            parse_args(argv)
    else:
        assert parse_args(argv).shard == ok
