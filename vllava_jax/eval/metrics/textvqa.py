"""TextVQA accuracy as LLaVA's eval_textvqa.py computes it (`TextVQAAccuracyEvaluator` in
m4c_evaluator.py): the reply and each human answer go through `EvalAIAnswerProcessor`; a reply
scores min(#other humans who gave it / 3, 1) averaged over the ten leave-one-out subsets.

eval_textvqa.py finds a prediction's annotation by (image id, lower-cased question), because
LLaVA's `llava_textvqa_val_v051_ocr.jsonl` puts the image id in `question_id`; the question is
recovered from the prompt by `prompt_question` (the original's `prompt_processor`). The original
asserts exactly ten human answers; any number works here, and none scores 0.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from vllava_jax.eval.metrics.vqa import evalai_answer

_OCR_QUESTION = re.compile(r"Question: (.*?) Short answer:", re.DOTALL)


def answer_scores(human_answers: Sequence[str]) -> dict[str, float]:
    """Processed answer -> its accuracy (`_compute_answer_scores`)."""
    answers = [evalai_answer(a) for a in human_answers]
    scores = {}
    for candidate in set(answers):
        per_subset = [min(1.0, sum(a == candidate for j, a in enumerate(answers) if j != i) / 3)
                      for i in range(len(answers))]
        scores[candidate] = sum(per_subset) / len(per_subset)
    return scores


def textvqa_accuracy(reply: str, human_answers: Sequence[str]) -> float:
    return answer_scores(human_answers).get(evalai_answer(reply), 0.0)


def prompt_question(prompt: str) -> str | None:
    """The lower-cased question inside a LLaVA TextVQA prompt, or None for a layout the original rejects."""
    lines = prompt.split("\n")
    if prompt.startswith("OCR tokens: "):
        match = _OCR_QUESTION.search(prompt)
        question = match.group(1) if match else None
    elif "Reference OCR token: " in prompt and len(lines) == 3:
        question = lines[1] if prompt.startswith("Reference OCR token:") else lines[0]
    elif len(lines) == 2:
        question = lines[0]
    else:
        question = None
    return None if question is None else question.lower()
