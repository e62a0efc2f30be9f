"""GQA's scoring: LLaVA's convert_gqa_for_eval.py strips trailing periods and lower-cases the
prediction, then the official GQA eval.py counts exact matches with the gold answer."""

from __future__ import annotations


def gqa_prediction(text: str) -> str:
    return text.rstrip(".").lower()


def gqa_correct(text: str, answer: str) -> bool:
    return gqa_prediction(text) == answer
