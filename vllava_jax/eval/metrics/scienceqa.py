"""ScienceQA's scoring (LLaVA's eval_science_qa.py): the answer's letter, read as the original reads it."""

from __future__ import annotations

import re

OPTIONS = ("A", "B", "C", "D", "E")
_THE_ANSWER_IS = re.compile(r"The answer is ([A-Z]).")


def predicted_letter(text: str) -> str:
    """"B", "B. text", or exactly one "The answer is B." -> "B"; anything else -> "FAILED"."""
    if text in OPTIONS:
        return text
    if len(text) >= 3 and text[0] in OPTIONS and text[1:3] == ". ":
        return text[0]
    found = _THE_ANSWER_IS.findall(text)
    return found[0] if len(found) == 1 else "FAILED"


def predicted_index(text: str, num_choices: int) -> int:
    """The choice index, or -1 when the letter is not among the first `num_choices` (counted wrong)."""
    letter = predicted_letter(text)
    return OPTIONS.index(letter) if letter in OPTIONS[:num_choices] else -1
