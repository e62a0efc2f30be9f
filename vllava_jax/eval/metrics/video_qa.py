"""Open-ended video QA from judge verdicts, as Video-ChatGPT's evaluate_*_qa.py (used by Video-LLaVA)
sums them up: every verdict counts toward the mean score (`int(score)`, so 4.8 counts 4); accuracy
is "yes" / ("yes" + "no") where a verdict containing "yes" is yes, else one containing "no" is no.
A verdict whose score or pred cannot be read adds 0 to the score and is left out of accuracy, which
is what the original's `except` branch does; those are counted as `unscorable`."""

from __future__ import annotations

from collections.abc import Iterable


def summarize(verdicts: Iterable[dict]) -> dict[str, float | int]:
    count = score_sum = yes = no = unscorable = 0
    for verdict in verdicts:
        count += 1
        try:
            score_sum += int(verdict["score"])
            pred = verdict["pred"].lower()
        except (KeyError, TypeError, ValueError, AttributeError):
            unscorable += 1
            continue
        if "yes" in pred:
            yes += 1
        elif "no" in pred:
            no += 1
    return {"accuracy": yes / (yes + no) if yes + no else 0.0, "score": score_sum / count if count else 0.0,
            "count": count, "yes": yes, "no": no, "unscorable": unscorable}
