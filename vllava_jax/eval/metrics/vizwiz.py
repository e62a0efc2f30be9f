"""VizWiz-VQA accuracy as the VizWiz challenge's evaluator (`VQAEval.evaluate` of the VizWiz VQA API,
by Qing Li) computes it on what LLaVA's convert_vizwiz_for_submission.py uploads:

- the upload holds each reply through `EvalAIAnswerProcessor` (`vqa.evalai_answer`);
- the evaluator then strips the answer and puts it through `processPunctuation` +
  `processDigitArticle` with its own contraction table (below), but compares it with the ten
  human answers *as they are* (never normalized, unanimous or not);
- accuracy is min(#matching other answers / 3, 1) averaged over the leave-one-out subsets (by index).

The evaluator's contraction table is the one vqaEval.py carried before 2017: the EvalAI table with
curly apostrophes (’) in most keys and values, which matters for a reply such as "dont" (-> "don’t").
"""

from __future__ import annotations

from collections.abc import Sequence

from vllava_jax.eval.metrics.vqa import (CONTRACTIONS, VQA_COMMA_STRIP, evalai_answer, process_digit_article,
                                         process_punctuation)

_STRAIGHT_KEYS = {"couldn'tve", "hadn'tve"}
_STRAIGHT_VALUES = {"aint", "arent", "cant", "couldve", "couldnt", "weve", "wheres", "whove"}


def _curly(text: str) -> str:
    return text.replace("'", "’")


VIZWIZ_CONTRACTIONS = {(k if k in _STRAIGHT_KEYS else _curly(k)): (v if k in _STRAIGHT_VALUES else _curly(v))
                       for k, v in CONTRACTIONS.items()}


def human_answer(entry: dict | str) -> str:
    return entry["answer"] if isinstance(entry, dict) else entry


def vizwiz_eval_accuracy(submitted: str, human_answers: Sequence[dict | str]) -> float:
    """The evaluator's per-question accuracy of an answer as uploaded."""
    reply = submitted.replace("\n", " ").replace("\t", " ").strip()
    reply = process_digit_article(process_punctuation(reply, VQA_COMMA_STRIP), VIZWIZ_CONTRACTIONS)
    answers = [human_answer(a) for a in human_answers]
    per_subset = [min(1.0, sum(a == reply for j, a in enumerate(answers) if j != i) / 3) for i in range(len(answers))]
    return sum(per_subset) / len(per_subset) if per_subset else 0.0


def vizwiz_accuracy(reply: str, human_answers: Sequence[dict | str]) -> float:
    """The model's raw reply, uploaded as convert_vizwiz_for_submission.py uploads it."""
    return vizwiz_eval_accuracy(evalai_answer(reply), human_answers)


def vizwiz_submission(rows: Sequence[tuple[str, str]]) -> list[dict]:
    """convert_vizwiz_for_submission.py's upload: `{image, answer}` per (image, reply), in question order."""
    return [{"image": image, "answer": evalai_answer(reply)} for image, reply in rows]
