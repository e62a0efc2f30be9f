"""VQAv2 accuracy along the path Video-LLaVA's number takes: LLaVA's convert_vqav2_for_submission.py
writes each reply through `EvalAIAnswerProcessor` (`vqa.evalai_answer`), then the server scores the
submission with GT-Vision-Lab/VQA's `vqaEval.py` (`VQAEval.evaluate`):

- the reply and every human answer get "\\n"/"\\t" replaced by spaces and are stripped;
- only when the ten human answers are not all the same string are they, and the reply, put
  through `processPunctuation` + `processDigitArticle`; a unanimous question compares raw
  strings, so "2" does not match ten "two";
- accuracy is min(#matching other answers / 3, 1) averaged over the ten leave-one-out subsets,
  where "other" means a different answer *record* (`item != gtAnsDatum` compares the dicts, which
  carry a unique `answer_id` in the released annotations).

Answers may be given as the annotation's dicts or as bare strings (each then its own record).
"""

from __future__ import annotations

from collections.abc import Sequence

from vllava_jax.eval.metrics.vqa import VQA_COMMA_STRIP, evalai_answer, process_digit_article, process_punctuation


def _clean(text: str) -> str:
    return text.replace("\n", " ").replace("\t", " ").strip()


def _normalize(text: str) -> str:
    return process_digit_article(process_punctuation(text, VQA_COMMA_STRIP))


def vqaeval_accuracy(submitted: str, human_answers: Sequence[dict | str]) -> float:
    """vqaEval.py's per-question accuracy of an answer as submitted (already EvalAI-processed)."""
    records = [dict(a) if isinstance(a, dict) else {"answer": a, "index": i} for i, a in enumerate(human_answers)]
    for r in records:
        r["answer"] = _clean(r["answer"])
    reply = _clean(submitted)
    if len({r["answer"] for r in records}) > 1:
        for r in records:
            r["answer"] = _normalize(r["answer"])
        reply = _normalize(reply)
    per_subset = [min(1.0, sum(o["answer"] == reply for o in records if o != r) / 3) for r in records]
    return sum(per_subset) / len(per_subset) if per_subset else 0.0


def vqav2_accuracy(reply: str, human_answers: Sequence[dict | str]) -> float:
    """The model's raw reply, submitted as convert_vqav2_for_submission.py submits it."""
    return vqaeval_accuracy(evalai_answer(reply), human_answers)


def vqav2_submission(predictions: dict[str, str], question_ids: Sequence) -> list[dict]:
    """convert_vqav2_for_submission.py's upload: one `{question_id, answer}` per question of the full
    test2015 list, in its order; a question without a prediction gets the answer ""."""
    return [{"question_id": qid, "answer": evalai_answer(predictions[str(qid)]) if str(qid) in predictions else ""}
            for qid in question_ids]
